"""Starting a phase from a checkpoint: ``reset_time``, ``restart_override``, and the autoresume rule.

The rule for phase transitions: ``load_path`` (with ``reset_time`` / ``restart_override``) applies only when the
run starts fresh. When ``autoresume`` finds this run's own checkpoint in ``save_folder`` (a crash, a
preemption), training continues from it as it was: time is not reset and the overrides are not applied again,
because that checkpoint already carries them.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def own_checkpoint(save_folder: str | None, rank: int = 0) -> str | None:
    """The checkpoint composer's autoresume would pick in ``save_folder``, if there is one."""
    if not save_folder:
        return None
    latest = os.path.join(save_folder, f"latest-rank{rank}.pt")
    return latest if os.path.exists(latest) else None


def apply_restart_override(trainer, lr: float, weight_decay: float, override_max_lr: bool) -> str:
    """Upstream's ``restart_override``: the YAML's lr and weight decay replace the checkpoint's.

    Every group's lr and the schedulers' base lrs become ``lr``; groups with weight decay (the no-decay group
    keeps 0) get ``weight_decay``. Upstream keeps the checkpoint's ``max_lr``, so decoupled weight decay
    stays scaled by lr / max_lr(previous phase); ``override_max_lr`` sets it to ``lr`` instead.
    Returns the one log line that says what changed.
    """
    optimizer = trainer.state.optimizers[0]
    before = [(g["lr"], g["weight_decay"], g.get("max_lr")) for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["initial_lr"] = lr
        if group["weight_decay"] > 0:
            group["weight_decay"] = weight_decay
        if override_max_lr:
            group["max_lr"] = lr
    for scheduler in trainer.state.schedulers:
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
        scheduler._last_lr = [lr for _ in scheduler.base_lrs]
    after = [(g["lr"], g["weight_decay"], g.get("max_lr")) for g in optimizer.param_groups]
    line = f"restart_override: (lr, weight_decay, max_lr) per param group {before} -> {after}"
    log.warning(line)
    print(line, flush=True)
    return line
