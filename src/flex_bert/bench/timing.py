"""Timing one benchmark: the device, warm-up until nothing compiles, timed steps, guarded measurements."""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

PEAK_FLOPS = 989e12  # H100/H200 dense bf16, datasheet


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Env:
    device: torch.device
    peak_flops: float = PEAK_FLOPS
    started: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def event(self):
        """A CUDA event recorded now (None on the CPU)."""
        if not self.cuda:
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # private API: diagnostics only
        return -1


def free_memory(env: Env) -> None:
    """Collect the last model and its cached GPU memory.

    Compiled graphs stay: FlexBERT's layers and the HF model are compiled with dynamic shapes, so a later
    configuration of the same model size reuses them (whole-model compilation of HF takes about a minute).
    Should they keep GPU memory alive, they are dropped.
    """
    gc.collect()
    if not env.cuda:
        return
    torch.cuda.empty_cache()
    if torch.cuda.memory_allocated(env.device) > 2**28:
        log("  compiled graphs hold GPU memory: torch._dynamo.reset()")
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
    log(
        f"  GPU memory still allocated after cleanup: {torch.cuda.memory_allocated(env.device) / 2**30:.2f} GiB"
    )


@dataclass
class Timing:
    batches: list  # the batches of the timed steps, in order
    seconds: float
    waited: float  # seconds spent in next(batches)
    warmup_seconds: float
    losses: list[float]  # of the timed steps, in order
    new_graphs: int  # graphs compiled during the timed steps (0 unless recompiling)
    warmup_graphs: int
    warmup_steps: int
    median_step_ms: float


def warm_up(batches: Iterator, step: Callable, warmup: int) -> int:
    """At least ``warmup`` steps, more (up to 3x) while the last step still compiled a graph. Returns steps."""
    done, compiled_last = 0, False
    while done < warmup or (done < 3 * warmup and compiled_last):
        before = compiled_graphs()
        step(next(batches))
        done += 1
        compiled_last = compiled_graphs() != before
    return done


def run_timed(env: Env, batches: Iterator, step: Callable, warmup: int, steps: int) -> Timing:
    """Warm-up steps (compilation happens here), then ``steps`` timed ones: one sync at each end, plus CUDA
    events between steps for the median step time (robust to a stray recompilation)."""
    graphs, t0 = compiled_graphs(), time.perf_counter()
    warmup_steps = warm_up(batches, step, warmup)
    env.sync()
    warmup_seconds, warmup_graphs = time.perf_counter() - t0, compiled_graphs() - graphs
    env.reset_peak()
    graphs = compiled_graphs()
    events = [env.event()]
    seen, waited, losses = [], 0.0, []
    t0 = time.perf_counter()
    for _ in range(steps):
        t_wait = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t_wait
        losses.append(step(batch))
        seen.append(batch)
        events.append(env.event())
    env.sync()
    seconds = time.perf_counter() - t0
    step_ms = [a.elapsed_time(b) for a, b in zip(events, events[1:])] if env.cuda else []
    median_ms = float(np.median(step_ms)) if step_ms else 1e3 * seconds / steps
    new_graphs = compiled_graphs() - graphs
    losses = [float(x) for x in losses]  # after the sync: no host sync between steps
    return Timing(
        seen, seconds, waited, warmup_seconds, losses, new_graphs, warmup_graphs, warmup_steps, median_ms
    )


def guarded(config: str, kind: str, fn: Callable) -> dict:
    """Run one measurement; an OOM or any other failure becomes a result with "error" (the run goes on)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        return {"config": config, "kind": kind, "error": "OOM"}
    except Exception as e:  # a benchmark must finish unattended: report and continue
        traceback.print_exc()
        return {"config": config, "kind": kind, "error": f"{type(e).__name__}: {e}"[:300]}
