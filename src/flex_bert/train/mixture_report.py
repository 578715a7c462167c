"""What the training data is made of, per stream, so that a weighted mixture can be checked while it runs.

- Each epoch start prints one line per stream of `train_loader.dataset.streams`: its samples in the epoch
  (streaming's `resample_streams`), their share of the epoch against the configured weight, and their tokens
  and share of the epoch's tokens (from the conversion stats; "about" where the epoch takes a random subset
  of a stream's samples). A single split gets one line: its samples and tokens. `--dry_run` prints the same
  lines for epoch 0 (preflight.py), without a trainer.
- Every batch logs `data/samples/<stream>`: the samples of that stream trained on so far in this run (a
  resumed run continues the count; a new phase, `reset_time`, starts it again). They are counted from the
  packer's position in the epoch order, a few samples per batch, never the whole order.

Samples are MDS samples: documents, or the pieces of a document longer than max_seq_len.
"""

from __future__ import annotations

import os

import numpy as np
from composer.core import Callback, State
from composer.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from flex_bert.data.loaders import PackingState


def stream_labels(dataset_cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The streams' names (the YAML keys; a single split's name) and each one's configured weight, in words."""
    if not dataset_cfg.streams:
        return [dataset_cfg.split or os.path.basename(str(dataset_cfg.local).rstrip("/"))], [""]
    specs = OmegaConf.to_container(dataset_cfg.streams, resolve=True)
    proportions = [s.get("proportion") for s in specs.values()]
    if all(p is not None for p in proportions):
        weights = [f"configured {p / sum(proportions):.1%}" for p in proportions]
    else:
        weights = [
            f"configured repeat {s['repeat']:g}" if s.get("repeat") is not None else "configured: each once"
            for s in specs.values()
        ]
    return list(specs), weights


def stream_of(documents, ids: np.ndarray) -> np.ndarray:
    """The stream of each sample id (streaming numbers the samples of all streams one after another)."""
    offsets = getattr(documents, "sample_offset_per_stream", None)
    if offsets is None:
        return np.zeros(len(ids), np.int64)
    return np.searchsorted(offsets, ids, side="right") - 1


def missing_stats(names: list[str], documents) -> str | None:
    """The streams whose tokens cannot be counted (no conversion stats), in one line; None if there are none."""
    missing = [n for n, t in zip(names, stream_tokens(documents)) if t is None]
    if not missing:
        return None
    return (
        f"no conversion stats (<folder>.conversion.json) for {', '.join(missing)}, so its tokens cannot be "
        "counted: convert it with data/convert_dataset_to_mds.py"
    )


def stream_tokens(documents) -> list[int | None]:
    """Tokens of each stream's folder (a dataset folder, or a split of them), from the conversion stats."""
    from flex_bert.data.merge import dataset_folders, read_conversion_stats

    out = []
    for stream in getattr(documents, "streams", []):
        local = os.path.join(stream.local, stream.split or "")
        try:
            out.append(int(read_conversion_stats(local)["tokens"]))
        except ValueError:  # not a dataset folder: a merged split of them
            try:
                out.append(sum(int(read_conversion_stats(f)["tokens"]) for f in dataset_folders(local)))
            except ValueError:
                out.append(None)  # a remote split, or not converted by this project: no stats
    return out


class MixtureReport(Callback):
    """The per-stream lines and metrics of the module docstring (rank 0; the others have nothing to log)."""

    def __init__(self, names: list[str], weights: list[str]):
        self.names, self.weights = names, weights
        self.samples = np.zeros(len(names), np.int64)  # trained on so far in this run, per stream
        self._loaded: dict | None = None
        self._dataset = None
        self._epoch: int | None = None
        self._streams: np.ndarray | None = None  # the stream of each sample of the epoch order
        self._position, self._buffered = 0, np.zeros(len(names), np.int64)

    def fit_start(self, state: State, logger: Logger) -> None:
        from composer.utils import dist

        dataset = getattr(state.dataloader, "dataset", None)
        if dist.get_global_rank() != 0 or not hasattr(dataset, "epoch_order"):
            return
        self._dataset = dataset
        loaded = self._loaded or {}
        new_phase = dataset.saved_position == "ignore"  # reset_time: the data starts again
        if not new_phase and loaded.get("names") == self.names:
            self.samples = np.asarray(loaded["samples"], np.int64)
        if dataset.resume is not None and int(state.timestamp.batch_in_epoch):  # mid-epoch: no epoch_start
            self._begin_epoch(dataset.resume.epoch, dataset.resume)

    def epoch_start(self, state: State, logger: Logger) -> None:
        if self._dataset is not None and self._epoch != int(state.timestamp.epoch):
            self._begin_epoch(int(state.timestamp.epoch), None)

    def after_dataloader(self, state: State, logger: Logger) -> None:
        after = state.batch.get("packing_state") if isinstance(state.batch, dict) else None
        if self._dataset is None or after is None:
            return
        if after.epoch != self._epoch:
            self._begin_epoch(after.epoch, None)
        # samples read into the packer since the last batch, less those still in its buffer
        read = np.bincount(self._streams[self._position : after.position], minlength=len(self.names))
        buffered = self._count(after.buffer)
        self.samples += read + self._buffered - buffered
        self._position, self._buffered = after.position, buffered
        logger.log_metrics({f"data/samples/{n}": int(c) for n, c in zip(self.names, self.samples)})

    def state_dict(self) -> dict:
        return {"names": list(self.names), "samples": self.samples.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state  # applied at fit_start, which knows whether this is a resume or a new phase

    def _count(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        return np.bincount(stream_of(self._dataset.documents, ids), minlength=len(self.names))

    def _begin_epoch(self, epoch: int, start: PackingState | None) -> None:
        streams = epoch_streams(self._dataset, epoch, self.names)
        self._streams = streams.astype(np.int16)  # compact: held for the whole epoch
        self._epoch = epoch
        self._position = start.position if start else 0
        self._buffered = self._count(start.buffer) if start else np.zeros(len(self.names), np.int64)
        chosen = np.bincount(streams, minlength=len(self.names))
        parts = stream_lines(self.names, self.weights, self._dataset.documents, chosen)
        where = f" (resuming at sample {self._position:,})" if self._position else ""
        print(epoch_report(f"training data, epoch {epoch}{where}", parts, chosen), flush=True)


def epoch_streams(dataset, epoch: int, names: list[str]) -> np.ndarray:
    """The stream of each sample of the epoch, in packing order (streaming's resampling of a mixture)."""
    streams = stream_of(dataset.documents, dataset.epoch_order(epoch))
    if streams.size and streams.max() >= len(names):
        raise ValueError(f"the training data has more streams than the config names ({names})")
    return streams


def stream_lines(names: list[str], weights: list[str], documents, chosen: np.ndarray) -> list[str]:
    """One line per stream: the samples the epoch takes from it (`chosen`), their share of the epoch against
    the configured weight, and their tokens and share of the epoch's tokens (from the conversion stats)."""
    total = int(chosen.sum())
    available = getattr(documents, "samples_per_stream", chosen)
    tokens = stream_tokens(documents) or [None] * len(chosen)
    taken = [None if t is None else t * n / have for t, n, have in zip(tokens, chosen, available)]
    all_tokens = None if None in taken else sum(taken)
    parts = []
    for name, weight, n, have, tok in zip(names, weights, chosen, available, taken):
        line = f"{name}: {int(n):,} samples"
        if len(chosen) > 1:
            line += f" ({n / total:.1%} of the epoch; {weight})"
        if tok is not None:
            exact = n % have == 0  # whole copies of the stream: its tokens are known exactly
            line += f", {'' if exact else 'about '}{round(tok):,} tokens"
            notes = [f"{tok / all_tokens:.1%} of the tokens"] if len(chosen) > 1 and all_tokens else []
            notes += [f"{n / have:.2f} x its {int(have):,} samples"] if n != have else []
            line += f" ({'; '.join(notes)})" if notes else ""
        parts.append(line)
    return parts


def epoch_report(header: str, parts: list[str], chosen: np.ndarray) -> str:
    """The header and the lines of stream_lines: one line for a single split, else one per stream."""
    if len(parts) == 1:
        return f"{header}: {parts[0]}"
    return "\n  ".join([f"{header}: {int(chosen.sum()):,} samples from {len(parts)} streams", *parts])
