"""Callbacks: each one a YAML's ``callbacks`` section can name has its config (defaults and valid values,
``checks.setting``) beside it, whose ``build(run)`` makes it; ``CALLBACKS`` is the section's table. Composer's
own callbacks get a config here too. ``DataResume`` and ``RunInfo`` are the run's own, always on.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger

from flex_bert.train.checks import COUNT, POSITIVE, OneOf, Range, parse_section, setting
from flex_bert.train.profiling import TorchProfileConfig
from flex_bert.train.progress import ProgressConfig, peak_flops
from flex_bert.train.shape import RunShape


@dataclass
class SpeedMonitorConfig:  # composer's SpeedMonitor
    window_size: int = setting(100, COUNT)
    gpu_flops_available: float | None = setting(None, POSITIVE)  # peak FLOP/s for MFU (default: H100/H200's)

    def build(self, run: RunShape) -> Callback:
        from composer.callbacks import SpeedMonitor

        peak = self.gpu_flops_available or peak_flops(run.precision)
        return SpeedMonitor(window_size=self.window_size, gpu_flops_available=peak)


@dataclass
class LrMonitorConfig:  # composer's LRMonitor
    def build(self, run: RunShape) -> Callback:
        from composer.callbacks import LRMonitor

        return LRMonitor()


@dataclass
class MemoryMonitorConfig:  # composer's MemoryMonitor
    def build(self, run: RunShape) -> Callback:
        from composer.callbacks import MemoryMonitor

        return MemoryMonitor()


@dataclass
class OptimizerMonitorConfig:  # composer's OptimizerMonitor
    log_optimizer_metrics: bool = True
    batch_log_interval: int = setting(10, COUNT)

    def build(self, run: RunShape) -> Callback:
        from composer.callbacks import OptimizerMonitor

        return OptimizerMonitor(self.log_optimizer_metrics, self.batch_log_interval)


@dataclass
class RuntimeEstimatorConfig:  # composer's RuntimeEstimator
    skip_batches: int = setting(1, Range(lo=0))
    time_unit: str = setting("hours", OneOf(("seconds", "minutes", "hours", "days")))

    def build(self, run: RunShape) -> Callback:
        from composer.callbacks import RuntimeEstimator

        return RuntimeEstimator(self.skip_batches, self.time_unit)


@dataclass
class ScheduledGcConfig:
    # run Python's garbage collector every N batches (automatic gc off meanwhile)
    batch_interval: int = setting(1000, COUNT)

    def build(self, run: RunShape) -> Callback:
        return ScheduledGc(self.batch_interval)


class ScheduledGc(Callback):
    """Python's cyclic garbage collector off, a full collection every ``batch_interval`` batches on all ranks.

    Uncoordinated collections stall one rank and so all of them (llm-foundry's ScheduledGarbageCollector does
    the same). Full collections, so long-lived cycles (generation 2) are freed too.
    """

    def __init__(self, batch_interval: int):
        self.batch_interval = batch_interval
        self._was_enabled = gc.isenabled()

    def fit_start(self, state: State, logger: Logger) -> None:
        gc.disable()
        gc.collect()

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.batch_interval == 0:
            gc.collect()

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._was_enabled:
            gc.enable()


@dataclass
class LogGradNormConfig:
    batch_log_interval: int = setting(10, COUNT)
    log_optimizer_metrics: bool = True  # upstream's switch: false logs nothing

    def build(self, run: RunShape) -> Callback | None:
        return LogGradNorm(self.batch_log_interval) if self.log_optimizer_metrics else None


class LogGradNorm(Callback):
    """The global L2 norm of the gradients (after all micro-batches, before the optimizer step clears them)."""

    def __init__(self, batch_log_interval: int):
        self.batch_log_interval = batch_log_interval

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event != Event.AFTER_TRAIN_BATCH or int(state.timestamp.batch) % self.batch_log_interval:
            return
        grads = [p.grad.float() for p in state.model.parameters() if p.grad is not None]  # no copy if fp32
        if grads:  # torch's multi-tensor norm: a few kernels, not one per parameter
            logger.log_metrics({"train/grad_norm": float(torch.nn.utils.get_total_norm(grads))})


@dataclass
class PackingEfficiencyConfig:
    log_interval: int = setting(10, COUNT)

    def build(self, run: RunShape) -> Callback:
        return PackingEfficiency(self.log_interval)


class PackingEfficiency(Callback):
    """Share of packed-row slots holding real tokens (the rest is padding), averaged over the interval."""

    def __init__(self, log_interval: int):
        self.log_interval = log_interval
        self._real = self._slots = 0

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        self._real += int(batch["num_tokens"])
        self._slots += int(batch["input_ids"].numel())
        if int(state.timestamp.batch) % self.log_interval == 0 and self._slots:
            logger.log_metrics({"train/packing_efficiency": self._real / self._slots})
            self._real = self._slots = 0


@dataclass
class DataloaderSpeedConfig:
    def build(self, run: RunShape) -> Callback:
        return DataloaderSpeed()


class DataloaderSpeed(Callback):
    """How long each batch took to come out of the loader (upstream's dataloader_speed callback)."""

    def before_dataloader(self, state: State, logger: Logger) -> None:
        self._start = time.perf_counter_ns()

    def after_dataloader(self, state: State, logger: Logger) -> None:
        elapsed = time.perf_counter_ns() - self._start
        logger.log_metrics(
            {"throughput/batch_serve_time_ns": elapsed, "throughput/batch_serve_time_ms": elapsed / 1e6}
        )


class NonFiniteLoss(ValueError):
    """The run stopped on a non-finite loss. A ValueError, so main.py prints it as one line: what to do is a
    config change (roll back with a lower lr, or skip such batches)."""


@dataclass
class NanGuardConfig:
    action: str = setting("stop", OneOf(("stop", "skip")))
    max_consecutive_skips: int = setting(10, COUNT)  # skip: more non-finite batches in a row stop the run

    def build(self, run: RunShape) -> Callback:
        return NanGuard(self.action, run.save_folder, self.max_consecutive_skips)


class NanGuard(Callback):
    """A NaN or inf training loss stops the run (naming the batch and the newest checkpoint with finite weights
    to roll back to), or with ``action: skip`` drops that batch's gradients so the optimizer leaves the weights
    alone, and counts it; more than ``max_consecutive_skips`` such batches in a row stop the run too.

    One host sync per batch, after the last micro-batch (composer syncs the loss for logging anyway).
    """

    def __init__(
        self,
        action: str,
        save_folder: str | None = None,
        max_consecutive_skips: int = NanGuardConfig.max_consecutive_skips,
    ):
        self.action = action
        self.save_folder = save_folder
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = self.consecutive = 0
        self._bad = None

    def after_loss(self, state: State, logger: Logger) -> None:
        losses = state.loss.values() if isinstance(state.loss, dict) else [state.loss]
        bad = torch.stack([~torch.isfinite(torch.as_tensor(v).detach()).all() for v in losses]).any()
        self._bad = bad if self._bad is None else self._bad | bad

    def after_train_batch(self, state: State, logger: Logger) -> None:
        from composer.utils import dist

        bad, self._bad = self._bad, None
        if bad is None:
            return
        flag = bad.float().reshape(1)
        if dist.get_world_size() > 1:  # one decision for all ranks: gradients are already averaged
            dist.all_reduce(flag, reduce_operation="MAX")
        if not bool(flag):
            self.consecutive = 0
            return
        batch = int(state.timestamp.batch) + 1
        self.consecutive += 1
        if self.action == "skip" and self.consecutive <= self.max_consecutive_skips:
            for p in state.model.parameters():
                p.grad = None  # the optimizer skips parameters without gradients
            self.skipped += 1
            logger.log_metrics({"train/nonfinite_batches_skipped": self.skipped})
            print(
                f"non-finite loss at batch {batch}: its update was skipped ({self.skipped} so far)",
                flush=True,
            )
            return
        what, fix = f"non-finite training loss at batch {batch}", "or set callbacks.nan_guard.action: skip"
        if self.action == "skip":
            what = (
                f"{what}: {self.consecutive} in a row, more than callbacks.nan_guard.max_consecutive_skips "
                f"({self.max_consecutive_skips})"
            )
            fix = "or raise max_consecutive_skips"
        raise NonFiniteLoss(f"{what}. {rollback_advice(self.save_folder)} with a lower lr, {fix}")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))


def rollback_advice(save_folder: str | None) -> str:
    """Which checkpoint of this run to roll back to: the newest whose model weights are all finite (a run can
    diverge before its loss does). Rank 0 reads them; safe loading runs no code from the files."""
    import glob
    import re

    from composer.utils import dist

    if dist.get_global_rank() != 0:
        return "Roll back to the checkpoint rank 0 names"
    named = [
        (re.search(r"-ba(\d+)-rank0\.pt$", p), p)
        for p in glob.glob(os.path.join(glob.escape(save_folder or ""), "ep*-ba*-rank0.pt"))
    ]
    found = [p for _, p in sorted(((int(m.group(1)), p) for m, p in named if m), reverse=True)]
    for i, path in enumerate(found):
        if _finite_weights(path):
            return f"Roll back to {path} ({'load_path, or autoresume' if i == 0 else 'as load_path'})"
    if found:
        return f"None of this run's {len(found)} checkpoints holds finite weights: restart the phase"
    return "Roll back to the last good checkpoint (none saved in this run yet)"


def _finite_weights(path: str) -> bool:
    from flex_bert.checkpoint_io import safe_torch_load

    try:
        model = safe_torch_load(path)["state"]["model"]
    except (ValueError, KeyError, TypeError):  # unreadable, or not a composer checkpoint
        return False
    return all(bool(torch.isfinite(t).all()) for t in model.values() if torch.is_tensor(t))


class DataResume(Callback):
    """Keeps the packed dataset in step with the trainer, for exact resumption.

    - each epoch start tells the dataset its epoch (its order and masks depend on it);
    - each batch reports the packing state after it, which composer saves as the dataset's state;
    - on a mid-epoch resume, the random state saved with the checkpoint (dropout) is restored just before the
      first batch runs, as composer itself does when it spins a loader (it skips that when the dataset resumes).
    """

    def __init__(self):
        self.rng_state = None

    def epoch_start(self, state: State, logger: Logger) -> None:
        dataset = getattr(state.dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.timestamp.epoch))

    def after_dataloader(self, state: State, logger: Logger) -> None:
        dataset = getattr(state.dataloader, "dataset", None)
        packing_state = state.batch.get("packing_state") if isinstance(state.batch, dict) else None
        if packing_state is not None and hasattr(dataset, "note_consumed"):
            dataset.note_consumed(packing_state)
        if self.rng_state is not None:
            from composer.utils import reproducibility

            reproducibility.load_rng_state(self.rng_state)
            self.rng_state = None


CALLBACKS: dict[str, type] = {
    "speed_monitor": SpeedMonitorConfig,
    "lr_monitor": LrMonitorConfig,
    "scheduled_gc": ScheduledGcConfig,
    "log_grad_norm": LogGradNormConfig,
    "packing_efficiency": PackingEfficiencyConfig,
    "memory_monitor": MemoryMonitorConfig,
    "nan_guard": NanGuardConfig,
    "progress": ProgressConfig,
    "torch_profile": TorchProfileConfig,
    "optimizer_monitor": OptimizerMonitorConfig,
    "runtime_estimator": RuntimeEstimatorConfig,
    "dataloader_speed": DataloaderSpeedConfig,  # upstream's: how long each batch took to leave the loader
}


def parse_callbacks(entries, log_grad_norm: bool) -> dict:
    """The ``callbacks`` section checked (name -> config), with those on unless configured otherwise: a
    diverged run must not train on silently (nan_guard), a running job says what it does (progress;
    ``enabled: false`` silences it), and ``optimizer.log_grad_norm`` logs the norm every batch."""
    section = parse_section("callbacks", entries, CALLBACKS)
    for name in ("nan_guard", "progress"):
        section.setdefault(name, CALLBACKS[name]())
    if log_grad_norm:
        section.setdefault("log_grad_norm", LogGradNormConfig(batch_log_interval=1))
    return section


def build_callbacks(section: dict, run: RunShape) -> list[Callback]:
    """The callbacks of a checked ``callbacks`` section (``parse_callbacks``)."""
    return [c for c in (settings.build(run) for settings in section.values()) if c is not None]


class RunInfo(Callback):
    """Saved with every checkpoint: the model config, the resolved run config and the tokenizer's files.

    ``scripts/convert_to_hf.py`` and ``scripts/evaluate_mlm.py`` read it, so a checkpoint of this project is
    self-describing (upstream's need ``--config``).
    """

    def __init__(self, model_config: dict, run_config: dict, tokenizer_files: dict):
        self.info = {"flex_bert_config": model_config, "run_config": run_config, "tokenizer": tokenizer_files}

    def state_dict(self) -> dict:
        return dict(self.info)

    def load_state_dict(self, state: dict) -> None:
        pass  # this run's own config describes it; the loaded one described the previous phase
