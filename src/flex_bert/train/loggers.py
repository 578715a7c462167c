"""Where metrics go: ``{save_folder}/metrics.jsonl`` always (with a save_folder), and the loggers a YAML names,
each with its config (defaults and valid values) beside it. ``LOGGERS`` is the ``loggers`` section's table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination

from flex_bert.train.composer_private import logs_artifacts
from flex_bert.train.shape import RunShape


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


@dataclass
class WandbConfig:  # composer's WandBLogger arguments
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_artifacts: bool = False
    rank_zero_only: bool = True
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to wandb.init (resume, id, mode, ...)

    def build(self, run: RunShape) -> LoggerDestination:
        kwargs = {k: v for k, v in asdict(self).items() if k not in ("tags", "init_kwargs")}
        return _wandb_logger()(**kwargs, tags=self.tags or None, init_kwargs=self.init_kwargs or None)


@dataclass
class TensorboardConfig:
    log_dir: str | None = None

    def build(self, run: RunShape) -> LoggerDestination:
        from composer.loggers import TensorboardLogger

        return TensorboardLogger(log_dir=self.log_dir)


LOGGERS: dict[str, type] = {"wandb": WandbConfig, "tensorboard": TensorboardConfig}


def build_loggers(section: dict, run: RunShape) -> list[LoggerDestination]:
    """The metrics file, then each checked logger config of the ``loggers`` section."""
    out: list[LoggerDestination] = []
    if run.save_folder:
        out.append(JsonlLogger(os.path.join(run.save_folder, "metrics.jsonl")))
    return out + [settings.build(run) for settings in section.values()]


def _wandb_logger() -> type:
    from composer.loggers import WandBLogger

    class Wandb(WandBLogger):
        """composer's WandBLogger. It holds checkpoints only with ``log_artifacts``; without, autoresume does not
        ask wandb's API for one (that needs a login, even for a run that logs offline)."""

        def download_file(self, remote_file_name: str, destination: str, overwrite=False, progress_bar=True):
            if not logs_artifacts(self):
                raise FileNotFoundError(
                    f"{remote_file_name}: wandb holds no checkpoints without log_artifacts"
                )
            return super().download_file(remote_file_name, destination, overwrite, progress_bar)

    return Wandb
