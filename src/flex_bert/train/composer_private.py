"""Every place this recipe reaches into a private part of composer (or of torch's LR scheduler), one function
each, so that a composer upgrade that moves one breaks here, where tests/test_composer_private.py notices.

- ``take_resumed_rng_state``: the Trainer's ``_rng_state``, the random state of a mid-epoch checkpoint that
  composer restores only when it spins the loader (a resumable dataset skips that).
- ``set_scheduler_lr``: torch's ``LRScheduler._last_lr`` beside the public ``base_lrs`` (restart_override).
- ``wrap_checkpoint_writer``: composer's ``checkpoint._write_checkpoint_file``, which every save goes through.
- ``route_checkpoint_reads``: composer's ``checkpoint._torch_load_with_validation`` (every single-file load)
  and ``_ensure_valid_checkpoint`` (the file behind the temporary link composer reads through).
- ``convert_time``: ``composer.optim.scheduler._convert_time`` (``dur`` and epochs into the schedule's unit).
- ``logs_artifacts``: ``WandBLogger._log_artifacts``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def take_resumed_rng_state(trainer) -> list | None:
    """The random state composer would restore when spinning the loader mid-epoch; composer's copy is cleared,
    so that the caller restores it instead (just before the first batch)."""
    state, trainer._rng_state = trainer._rng_state, None
    return state


def set_scheduler_lr(scheduler, lr: float) -> None:
    """A scheduler's base lrs and the last lr it reports, all ``lr``."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    scheduler._last_lr = [lr for _ in scheduler.base_lrs]


def wrap_checkpoint_writer(wrap: Callable[[Callable], Callable]) -> None:
    """Replace composer's checkpoint-file writer ``(state_dict, filename)`` with ``wrap(original)``, once."""
    from composer.utils import checkpoint

    original = checkpoint._write_checkpoint_file
    if getattr(original, "_flexbert_wrapped", False):
        return
    wrapped = wrap(original)
    wrapped._flexbert_wrapped = True
    checkpoint._write_checkpoint_file = wrapped


def route_checkpoint_reads(load: Callable[[str], Any]) -> None:
    """Every single-file checkpoint composer loads is read by ``load(path)`` (the file itself, not composer's
    temporary link to it); set again on each call."""
    from composer.utils import checkpoint

    def read(checkpoint_filepath, map_location: str = "cpu") -> Any:
        return load(os.path.realpath(checkpoint._ensure_valid_checkpoint(checkpoint_filepath)))

    checkpoint._torch_load_with_validation = read


def convert_time(time, state, ssr: float = 1.0):
    """A duration (time string or Time) in the units the schedule counts, as composer's schedulers do."""
    from composer.optim.scheduler import _convert_time

    return _convert_time(time, state, ssr)


def logs_artifacts(logger) -> bool:
    """Whether composer's WandBLogger uploads (and so holds) checkpoints."""
    return bool(logger._log_artifacts)
