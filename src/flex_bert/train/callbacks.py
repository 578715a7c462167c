"""Callbacks the seed YAML names that composer lacks, the JSONL metrics file, and the builders of the callbacks,
loggers and algorithms a YAML names."""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict
from typing import Any

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger, LoggerDestination

from flex_bert.train import registry
from flex_bert.train.mixture_report import MixtureReport, stream_labels
from flex_bert.train.profiling import TorchProfile
from flex_bert.train.progress import ProgressLine


class ScheduledGc(Callback):
    """Python's cyclic garbage collector off, a full collection every ``batch_interval`` batches on all ranks.

    Uncoordinated collections stall one rank and so all of them (llm-foundry's ScheduledGarbageCollector does
    the same). Full collections, so long-lived cycles (generation 2) are freed too.
    """

    def __init__(self, batch_interval: int = 1000):
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


class LogGradNorm(Callback):
    """The global L2 norm of the gradients (after all micro-batches, before the optimizer step clears them)."""

    def __init__(self, batch_log_interval: int = 10):
        self.batch_log_interval = batch_log_interval

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event != Event.AFTER_TRAIN_BATCH or int(state.timestamp.batch) % self.batch_log_interval:
            return
        grads = [p.grad.float() for p in state.model.parameters() if p.grad is not None]  # no copy if fp32
        if grads:  # torch's multi-tensor norm: a few kernels, not one per parameter
            logger.log_metrics({"train/grad_norm": float(torch.nn.utils.get_total_norm(grads))})


class PackingEfficiency(Callback):
    """Share of packed-row slots holding real tokens (the rest is padding), averaged over the interval."""

    def __init__(self, log_interval: int = 10):
        self.log_interval = log_interval
        self._real = self._slots = 0

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        self._real += int(batch["num_tokens"])
        self._slots += int(batch["input_ids"].numel())
        if int(state.timestamp.batch) % self.log_interval == 0 and self._slots:
            logger.log_metrics({"train/packing_efficiency": self._real / self._slots})
            self._real = self._slots = 0


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


class NanGuard(Callback):
    """A NaN or inf training loss stops the run (naming the batch and the newest checkpoint with finite weights
    to roll back to), or with ``action: skip`` drops that batch's gradients so the optimizer leaves the weights
    alone, and counts it; more than ``max_consecutive_skips`` such batches in a row stop the run too.

    One host sync per batch, after the last micro-batch (composer syncs the loss for logging anyway).
    """

    def __init__(
        self,
        action: str = registry.NanGuardSettings.action,
        save_folder: str | None = None,
        max_consecutive_skips: int = registry.NanGuardSettings.max_consecutive_skips,
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


class JsonlLogger(LoggerDestination):
    """``{save_folder}/metrics.jsonl``: one JSON object per batch with batch, tokens, loss, lr and the rest."""

    def __init__(self, path: str):
        self.path = path
        self._pending: dict[str, Any] = {}

    def fit_start(self, state: State, logger: Logger) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._drop_records_after(int(state.timestamp.batch))

    def _drop_records_after(self, batch: int) -> None:
        """A run resumed at ``batch`` trains the batches after it again: the records an interrupted attempt
        wrote for them (and a line cut short by the kill) go, so the file keeps one record per batch."""
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(record, dict)
                    and isinstance(record.get("batch"), int)
                    and record["batch"] <= batch
                ):
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self._pending[k] = float(v) if torch.is_tensor(v) or isinstance(v, (int, float)) else v

    def batch_end(self, state: State, logger: Logger) -> None:
        self._flush(state, "train")

    def eval_end(self, state: State, logger: Logger) -> None:
        self._flush(state, "eval")

    def _flush(self, state: State, kind: str) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            self._pending.clear()
            return
        record = {"kind": kind, "batch": int(state.timestamp.batch), "tokens": int(state.timestamp.token)}
        if "loss/train/total" in self._pending:
            record["loss"] = self._pending.pop("loss/train/total")
        if state.schedulers:
            record["lr"] = state.optimizers[0].param_groups[-1]["lr"]
        record.update(self._pending)
        self._pending.clear()
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def build_callbacks(cfg) -> list[Callback]:
    from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor

    out: list[Callback] = []
    names = dict(cfg.callbacks)
    names.setdefault("nan_guard", {})  # always on: a diverged run must not train on silently
    names.setdefault("progress", {})  # on unless `enabled: false`: a running job says what it does
    if cfg.optimizer.log_grad_norm and "log_grad_norm" not in names:
        names["log_grad_norm"] = {"batch_log_interval": 1}
    for name, settings in names.items():
        s = registry.check_named("callbacks", name, settings or {}, registry.CALLBACKS)
        if name == "speed_monitor":
            peak = s.gpu_flops_available or _peak_flops(cfg.precision)
            out.append(SpeedMonitor(window_size=s.window_size, gpu_flops_available=peak))
        elif name == "lr_monitor":
            out.append(LRMonitor())
        elif name == "memory_monitor":
            out.append(MemoryMonitor())
        elif name == "scheduled_gc":
            out.append(ScheduledGc(s.batch_interval))
        elif name == "log_grad_norm" and s.log_optimizer_metrics:
            out.append(LogGradNorm(s.batch_log_interval))
        elif name == "optimizer_monitor":
            out.append(OptimizerMonitor(s.log_optimizer_metrics, s.batch_log_interval))
        elif name == "runtime_estimator":
            out.append(RuntimeEstimator(s.skip_batches, s.time_unit))
        elif name == "dataloader_speed":
            out.append(DataloaderSpeed())
        elif name == "packing_efficiency":
            out.append(PackingEfficiency(s.log_interval))
        elif name == "nan_guard":
            folder = cfg.save_folder.format(run_name=cfg.run_name) if cfg.save_folder else None
            out.append(NanGuard(s.action, folder, s.max_consecutive_skips))
        elif name == "progress":
            if s.enabled:
                out.append(ProgressLine(s.every_seconds, _peak_flops(cfg.precision)))
        elif name == "torch_profile":
            folder = s.folder or (cfg.save_folder and os.path.join(cfg.save_folder, "profile"))
            if not folder:
                raise ValueError("callbacks.torch_profile needs a folder (or a save_folder)")
            out.append(
                TorchProfile(folder.format(run_name=cfg.run_name), s.start_batch, s.num_batches, s.trace)
            )
    out.append(MixtureReport(*stream_labels(cfg.train_loader.dataset)))  # what the data is made of
    return out


def build_algorithms(cfg) -> list:
    """Composer's algorithms, with composer's meaning (upstream's main.py builds the same ones)."""
    from composer.algorithms import EMA, GradientClipping

    out = []
    for name, settings in cfg.algorithms.items():
        s = registry.check_named("algorithms", name, settings or {}, registry.ALGORITHMS)
        out.append(GradientClipping(**asdict(s)) if name == "gradient_clipping" else EMA(**asdict(s)))
    return out


def _peak_flops(precision: str) -> float | None:
    """Dense bf16/fp16 peak of the H100/H200 (989 TFLOP/s); composer's own table for other GPUs."""
    if torch.cuda.is_available() and precision != "fp32":
        name = torch.cuda.get_device_name()
        if "H100" in name or "H200" in name:
            return 989e12
    return None


def build_loggers(cfg) -> list[LoggerDestination]:
    out: list[LoggerDestination] = []
    if cfg.save_folder:
        out.append(JsonlLogger(os.path.join(cfg.save_folder.format(run_name=cfg.run_name), "metrics.jsonl")))
    for name, settings in cfg.loggers.items():
        s = registry.check_named("loggers", name, settings or {}, registry.LOGGERS)
        if name == "wandb":
            kwargs = {k: v for k, v in asdict(s).items() if k not in ("tags", "init_kwargs")}
            out.append(_wandb_logger()(**kwargs, tags=s.tags or None, init_kwargs=s.init_kwargs or None))
        elif name == "tensorboard":
            from composer.loggers import TensorboardLogger

            out.append(TensorboardLogger(log_dir=s.log_dir))
    return out


def _wandb_logger() -> type:
    from composer.loggers import WandBLogger

    class Wandb(WandBLogger):
        """composer's WandBLogger. It holds checkpoints only with ``log_artifacts``; without, autoresume does not
        ask wandb's API for one (that needs a login, even for a run that logs offline)."""

        def download_file(self, remote_file_name: str, destination: str, overwrite=False, progress_bar=True):
            if not self._log_artifacts:
                raise FileNotFoundError(
                    f"{remote_file_name}: wandb holds no checkpoints without log_artifacts"
                )
            return super().download_file(remote_file_name, destination, overwrite, progress_bar)

    return Wandb


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
