"""Starting a phase from a checkpoint: ``reset_time``, ``restart_override``, and the autoresume rule.

The rule for phase transitions: ``load_path`` (with ``reset_time`` / ``restart_override``) applies only when the
run starts fresh. When ``autoresume`` finds this run's own checkpoint in ``save_folder`` (a crash, a
preemption), training continues from it as it was: time is not reset and the overrides are not applied again,
because that checkpoint already carries them. ``resolve_phase`` turns this rule into a value, once, before
anything is built; the trainer's builder and ``train`` read it.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass

from flex_bert.train.composer_private import set_scheduler_lr, wrap_checkpoint_writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """How this launch starts."""

    save_folder: str | None  # {run_name} filled
    resuming: bool  # autoresume found this run's own checkpoint: it continues as it was
    load_path: str | None  # what composer restores in full (None when resuming: autoresume finds its own)
    # weights only: ``load_path`` with ``load_weights_only``, or ``model.pretrained_checkpoint`` (both spellings
    # of upstream's YAMLs), loaded into the model as it is built
    weights_path: str | None
    reset_time: bool  # a new phase from load_path with reset_time: time starts at 0
    apply_overrides: bool  # restart_override: the YAML's lr and weight decay replace the checkpoint's
    data_position: (
        str  # the packed dataset's saved position: "check", "ignore" (a new phase) or "restart_if_changed"
    )


def resolve_phase(cfg) -> Phase:
    """This launch's start, from the config and the save folder. Global rank 0 first clears the unfinished
    checkpoint writes of a killed run and, with autoresume, repairs the ``latest`` link; the other ranks wait
    for it. Reads no checkpoint: composer does, once, when the trainer is built."""
    from composer.utils import dist

    from flex_bert.train.shape import fill_run_name

    folder = fill_run_name(cfg.save_folder, cfg.run_name)
    if dist.get_global_rank() == 0:
        remove_unfinished(folder)
        if cfg.autoresume:
            repair_latest(folder)
    if dist.is_initialized():
        dist.barrier()
    resuming = bool(cfg.autoresume and own_checkpoint(folder))
    new = bool(cfg.load_path) and not resuming
    weights_only = (
        cfg.load_path if cfg.load_weights_only and cfg.load_path else cfg.model.pretrained_checkpoint
    )
    return Phase(
        save_folder=folder,
        resuming=resuming,
        load_path=cfg.load_path if new and not cfg.load_weights_only else None,
        weights_path=None if resuming else weights_only,
        reset_time=new and cfg.reset_time,
        apply_overrides=new and cfg.restart_override,
        data_position=(
            "ignore"  # a new phase: its data starts at the beginning, whatever the checkpoint held
            if new and cfg.reset_time
            else "restart_if_changed"
            if cfg.restart_data_if_changed
            else "check"
        ),
    )


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
        set_scheduler_lr(scheduler, lr)
    after = [(g["lr"], g["weight_decay"], g.get("max_lr")) for g in optimizer.param_groups]
    line = f"restart_override: (lr, weight_decay, max_lr) per param group {before} -> {after}"
    log.warning(line)
    print(line, flush=True)
    return line


def _batch_of(path: str) -> tuple[int, float]:
    match = re.search(r"-ba(\d+)-", os.path.basename(path))
    return (int(match.group(1)) if match else -1, os.path.getmtime(path))


def _intact(path: str) -> bool:
    """A torch checkpoint is a zip file: every member's CRC must check out (no unpickling)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def remove_unfinished(save_folder: str | None) -> None:
    """Delete the temporary files of checkpoint writes a killed run left (``write_checkpoint_atomically``).

    Call it only while holding the folder's lock: then no other process is writing there."""
    if not save_folder or not os.path.isdir(save_folder):
        return
    left = sorted(f for f in os.listdir(save_folder) if re.match(r"^\.tmp-\d+-", f))
    for name in left:
        os.remove(os.path.join(save_folder, name))
    if left:
        print(
            f"removed {len(left)} unfinished checkpoint write(s) in {save_folder}: {', '.join(left)}",
            flush=True,
        )


def repair_latest(save_folder: str | None, rank: int = 0) -> str | None:
    """Before autoresume: point ``latest-rank{rank}.pt`` at the newest intact checkpoint in the folder, whatever
    state the link is in (missing, dangling, or older: a kill between composer's removing and re-creating it),
    saying so. A truncated or corrupted checkpoint is set aside (``.corrupt``). A regular file named
    ``latest-rank{rank}.pt`` (put there by hand) is left as it is. Returns the checkpoint to resume, or None
    when the folder holds no checkpoint (a fresh start)."""
    if not save_folder or not os.path.isdir(save_folder):
        return None
    latest = os.path.join(save_folder, f"latest-rank{rank}.pt")
    if os.path.isfile(latest) and not os.path.islink(latest):
        return latest
    pattern = re.compile(rf"^ep\d+-ba\d+-rank{rank}\.pt$")
    candidates = sorted(
        (os.path.join(save_folder, f) for f in os.listdir(save_folder) if pattern.search(f)), key=_batch_of
    )
    had_any = bool(candidates) or os.path.lexists(latest)
    while candidates:
        newest = candidates.pop()
        if _intact(newest):
            if os.path.realpath(latest) != os.path.realpath(newest):
                _relink(latest, newest)
            return newest
        os.replace(newest, newest + ".corrupt")
        print(f"autoresume: {newest} is truncated or corrupted; set aside as {newest}.corrupt", flush=True)
    if had_any:
        raise ValueError(f"autoresume: no intact checkpoint left in {save_folder}")
    return None


def _relink(latest: str, newest: str) -> None:
    was = f"pointed at {os.readlink(latest)}" if os.path.lexists(latest) else "was missing"
    if os.path.lexists(latest):
        os.remove(latest)
    os.symlink(os.path.basename(newest), latest)
    print(f"autoresume: {latest} {was}; it now points at the newest intact checkpoint, {newest}", flush=True)


def write_checkpoint_atomically() -> None:
    """Composer writes checkpoint files in place, so a crash mid-write leaves a partial file under the final
    name. Write to a temporary sibling and rename it into place instead: a checkpoint file is whole or absent
    (composer links ``latest`` and deletes old checkpoints only after this returns)."""

    def atomic(original):
        def write(state_dict, filename: str) -> None:
            head, tail = os.path.split(filename)  # keep the extension: composer picks the format from it
            tmp = os.path.join(head, f".tmp-{os.getpid()}-{tail}")
            try:
                original(state_dict, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, filename)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

        return write

    wrap_checkpoint_writer(atomic)
