"""One progress line every few seconds: batch, loss, lr, tokens/s, MFU where the GPU's peak is known, ETA.

It reads only what the step already computed (composer's loss, the timestamp, the optimizer's lr) and a wall
clock, so it adds no device sync. Printed by global rank 0, to stdout, one line at a time, so a log file stays
readable (composer's progress bar is for terminals: run.py turns it off when stdout is not one).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

import torch
from composer.core import Callback, State, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

from flex_bert.train.checks import NON_NEGATIVE, setting


def peak_flops(precision: str) -> float | None:
    """Dense bf16/fp16 peak of the H100/H200 (989 TFLOP/s); composer's own table for other GPUs."""
    if torch.cuda.is_available() and precision != "fp32":
        name = torch.cuda.get_device_name()
        if "H100" in name or "H200" in name:
            return 989e12
    return None


@dataclass
class ProgressConfig:
    # one line (batch, loss, lr, tokens/s, MFU, ETA) at most every N seconds, and at the first and last batch
    every_seconds: float = setting(30.0, NON_NEGATIVE)
    enabled: bool = True

    def build(self, run) -> Callback | None:
        return ProgressLine(self.every_seconds, peak_flops(run.precision)) if self.enabled else None


class ProgressLine(Callback):
    def __init__(self, every_seconds: float, peak_flops: float | None = None):
        self.every_seconds = every_seconds
        self.peak_flops = peak_flops  # per GPU; None: no MFU
        self._since: tuple[float, int, int] | None = None  # (time, tokens, batch) of the last line
        self._start: tuple[float, int, int] | None = None  # after the first batch: compilation excluded

    def fit_start(self, state: State, logger: Logger) -> None:
        self._since = self._start = None

    def batch_end(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        now, stamp = time.monotonic(), state.timestamp
        point = (now, int(stamp.token), int(stamp.batch))
        if self._start is None:  # the first batch of this process: a line, then time from here
            self._start = self._since = point
            print(self.line(state, None, None), flush=True)
            return
        done = stamp.get(state.max_duration.unit) >= state.max_duration
        if not done and now - self._since[0] < self.every_seconds:
            return
        rate = (point[1] - self._since[1]) / max(now - self._since[0], 1e-9)
        self._since = point
        print(self.line(state, rate, self._eta(state, now)), flush=True)

    def line(self, state: State, tokens_per_s: float | None, eta: float | None) -> str:
        stamp, duration = state.timestamp, state.max_duration
        of = f"/{int(duration.value):,}" if duration.unit == TimeUnit.BATCH else ""
        parts = [f"[batch {int(stamp.batch):,}{of}]"]
        loss = (state.total_loss_dict or {}).get("loss/train/total")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if state.optimizers:
            parts.append(f"lr {state.optimizers[0].param_groups[-1]['lr']:.3g}")
        parts.append(f"tokens {int(stamp.token):,}")
        if tokens_per_s is not None:
            parts.append(f"{tokens_per_s:,.0f} tokens/s")
            mfu = self._mfu(state, tokens_per_s)
            if mfu is not None:
                parts.append(f"MFU {mfu:.1%}")
        if eta is not None:
            parts.append(f"ETA {datetime.timedelta(seconds=round(eta))}")
        return " | ".join(parts)

    def _mfu(self, state: State, tokens_per_s: float) -> float | None:
        """Model FLOPs of this batch per token (the model's own count) x tokens/s, over the GPUs' peak."""
        flops_per_batch = getattr(state.model, "flops_per_batch", None)
        batch = state.batch if isinstance(state.batch, dict) else {}
        tokens = sum(n for row in batch.get("doc_lengths", []) for n in row)
        if self.peak_flops is None or flops_per_batch is None or not tokens:
            return None
        per_token = flops_per_batch(batch) / tokens
        return tokens_per_s * per_token / (self.peak_flops * dist.get_world_size())

    def _eta(self, state: State, now: float) -> float | None:
        """Seconds left at the average pace since the first batch of this process."""
        start_time, start_tokens, start_batch = self._start
        duration, stamp, elapsed = state.max_duration, state.timestamp, now - start_time
        if duration.unit == TimeUnit.BATCH and int(stamp.batch) > start_batch:
            per_batch = elapsed / (int(stamp.batch) - start_batch)
            return max(duration.value - int(stamp.batch), 0) * per_batch
        if duration.unit == TimeUnit.TOKEN and int(stamp.token) > start_tokens:
            per_token = elapsed / (int(stamp.token) - start_tokens)
            return max(duration.value - int(stamp.token), 0) * per_token
        return None
