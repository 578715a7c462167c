"""Where a training step's GPU time goes: a torch.profiler window summarised per kernel category.

`kernel_summary` reads a finished `torch.profiler.profile` and reports, per step: kernel time by category
(matrix products, attention forward/backward, Inductor's fused kernels, optimizer, NCCL, ...), the 20 most
expensive kernels, and from the kernels' own start/end times the GPU's busy time (the union of all kernel
intervals on the device, so overlapping streams are not double-counted), the compute busy time, and the NCCL
time that no compute kernel overlapped ("exposed" communication). Wall time minus busy time is the time the
GPU sat idle (host-bound stretches, syncs, data loading).

`TorchProfile` is the callback (`callbacks: torch_profile: {...}` in the YAML) that profiles a window of
training batches on every rank and writes `<folder>/kernels_rank<r>.json` (and optionally a Chrome trace).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from torch.autograd import DeviceType

from flex_bert.kernels import BACKENDS
from flex_bert.train.checks import COUNT, setting

NCCL = "communication (NCCL)"


def kernel_categories() -> tuple[tuple[str, str], ...]:
    """(category, regular expression) pairs, first match wins: kernel names of NCCL, FlexBERT's kernels, every
    attention backend of `kernels.BACKENDS` (read at each call, so none is left out), cuBLAS, Inductor, optimi."""
    return (
        (NCCL, r"nccl"),
        (
            "FlexBERT's Triton kernels (residual joints, GLU gate, rotary)",
            r"^_add_norm_|^_gelu_gate_|^_rotary_qkv_",
        ),
        ("MLM loss (FlexBERT's cross-entropy kernels)", r"^_ce_(fwd|bwd)"),
        # every backend's kernels (kernels.BACKENDS), backward first: a backward name may contain a forward pattern
        ("attention backward", "|".join(b.backward_kernels for b in BACKENDS.values())),
        ("attention forward", "|".join(b.forward_kernels for b in BACKENDS.values())),
        (
            "matrix products",
            r"gemm|nvjet|cutlass|xmma|cublas|wgmma|sm\d\d_|^_qkv_rotary_",
        ),  # the last: fused_qkv
        ("optimizer", r"stableadamw|adam"),
        ("copies and fills", r"memcpy|memset|copy_kernel|fill_kernel|FillFunctor|CatArrayBatched"),
        ("Inductor fused (head norm, loss, ...)", r"^triton_"),
        ("eager elementwise", r"elementwise|vectorized|unrolled"),
        ("eager reductions and indexing", r"reduce|softmax|norm|index|scatter|gather|sort|scan"),
    )


def categorize(kernel_name: str) -> str:
    return next((c for c, rx in kernel_categories() if re.search(rx, kernel_name, re.I)), "other")


def _union_us(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in _merged(intervals))


def _minus_us(intervals: list[tuple[float, float]], cover: list[tuple[float, float]]) -> float:
    """Length of the union of `intervals` not covered by the union of `cover`."""
    return _union_us(intervals + cover) - _union_us(cover)


def _merged(spans: list[tuple[float, float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def idle_gaps(
    kernel_spans: list[tuple[float, float]], host_events: list[tuple], min_us: float = 50.0, detail: int = 0
) -> tuple[dict[str, list[float]], list[dict]]:
    """Idle stretches of the device between kernels (>= `min_us`), attributed to the innermost host event that
    covers at least half of each gap (what the CPU was doing while the GPU waited): name -> [us, count].
    "(host, unprofiled)" when no recorded op covers it (Python between ops). `host_events` are
    (name, start, end[, thread]) tuples. The `detail` longest gaps are also listed with every host event that
    overlaps them (name, thread, duration), longest first."""
    import numpy as np

    names = [e[0] for e in host_events]
    threads = [e[3] if len(e) > 3 else None for e in host_events]
    starts = np.array([e[1] for e in host_events], dtype=np.float64)
    ends = np.array([e[2] for e in host_events], dtype=np.float64)
    merged = _merged(kernel_spans)
    out: dict[str, list[float]] = {}
    gaps = []
    for (_, a), (b, _) in zip(merged, merged[1:]):
        if b - a < min_us:
            continue
        overlap = np.minimum(ends, b) - np.maximum(starts, a)
        cover = np.flatnonzero(overlap >= 0.5 * (b - a))
        name = names[cover[np.argmin(ends[cover] - starts[cover])]] if cover.size else "(host, unprofiled)"
        acc = out.setdefault(name, [0.0, 0])
        acc[0] += b - a
        acc[1] += 1
        gaps.append((b - a, a, np.flatnonzero(overlap > 0)))
    t0 = merged[0][0] if merged else 0.0
    longest = []
    for dur, a, over in sorted(gaps, key=lambda g: -g[0])[:detail]:
        ev = sorted(over, key=lambda i: -(ends[i] - starts[i]))[:10]
        longest.append(
            {
                "gap_ms": round(dur / 1e3, 3),
                "at_ms": round((a - t0) / 1e3, 3),
                "host": [
                    f"{names[i][:80]} [tid {threads[i]}] {(ends[i] - starts[i]) / 1e3:.3f} ms" for i in ev
                ],
            }
        )
    return out, longest


def kernel_summary(prof, steps: int, wall_s: float, *, device_type: DeviceType = DeviceType.CUDA) -> dict:
    """Per-step GPU kernel time by category, top kernels, busy/idle time, exposed NCCL time and the idle gaps
    between kernels with the host work that filled them (ms)."""
    events = prof.events()
    # the device rows of record_function ranges ("Optimizer.step#...", "nccl:all_reduce") are not kernels
    kernels = [
        e for e in events if e.device_type == device_type and not getattr(e, "is_user_annotation", False)
    ]
    by_cat: dict[str, float] = {}
    by_name: dict[str, list] = {}
    spans: dict[str, list[tuple[float, float]]] = {"compute": [], "nccl": []}
    for e in kernels:
        dur = e.time_range.end - e.time_range.start
        cat = categorize(e.name)
        by_cat[cat] = by_cat.get(cat, 0.0) + dur
        acc = by_name.setdefault(e.name, [0.0, 0])
        acc[0] += dur
        acc[1] += 1
        spans["nccl" if cat == NCCL else "compute"].append((e.time_range.start, e.time_range.end))
    per_step = lambda us: round(us / 1e3 / steps, 3)  # noqa: E731
    busy = _union_us(spans["compute"] + spans["nccl"])
    wall_us = wall_s * 1e6
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:20]
    gaps, longest = {}, []
    if device_type != DeviceType.CPU:  # on the CPU the "kernels" are the host events themselves
        host = [
            (e.name, e.time_range.start, e.time_range.end, getattr(e, "thread", None))
            for e in events
            if e.device_type == DeviceType.CPU
        ]
        gaps, longest = idle_gaps(spans["compute"] + spans["nccl"], host, detail=5)
    return {
        "steps": steps,
        "wall_ms_per_step": per_step(wall_us),
        "kernel_ms_per_step": per_step(sum(by_cat.values())),
        "gpu_busy_ms_per_step": per_step(busy),
        "gpu_idle_ms_per_step": per_step(max(wall_us - busy, 0.0)),
        "compute_busy_ms_per_step": per_step(_union_us(spans["compute"])),
        "nccl_exposed_ms_per_step": per_step(_minus_us(spans["nccl"], spans["compute"])),
        "categories_ms_per_step": {c: per_step(t) for c, t in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:160], "ms_per_step": per_step(t), "calls_per_step": n / steps}
            for name, (t, n) in top
        ],
        "idle_gaps_between_kernels": [
            {"host": name[:120], "ms_per_step": per_step(t), "gaps_per_step": n / steps}
            for name, (t, n) in sorted(gaps.items(), key=lambda kv: -kv[1][0])[:15]
        ],
        "longest_idle_gaps": longest,
    }


@dataclass
class TorchProfileConfig:
    folder: str | None = None  # default: <save_folder>/profile
    start_batch: int = setting(10, COUNT)  # profile batches [start_batch, start_batch + num_batches)
    num_batches: int = setting(3, COUNT)
    trace: bool = False  # also write a Chrome trace per rank (tens of MB)

    def build(self, run) -> Callback:
        from flex_bert.train.shape import fill_run_name

        folder = fill_run_name(self.folder, run.run_name) or (
            run.save_folder and os.path.join(run.save_folder, "profile")
        )
        if not folder:
            raise ValueError("callbacks.torch_profile needs a folder (or a save_folder)")
        return TorchProfile(folder, self.start_batch, self.num_batches, self.trace)


class TorchProfile(Callback):
    """torch.profiler over batches [start_batch, start_batch + num_batches) on every rank (0-based: batch k is
    the (k + 1)-th, the record with `"batch": k + 1` in metrics.jsonl).

    The profiler starts one batch earlier and discards it (CUPTI's start-up, tens of ms, would otherwise land
    in the first profiled batch, and on one rank only). The window is timed from the first profiled batch's
    start to the last one's end, after a device synchronisation at both ends. Writes
    `folder/kernels_rank<r>.json` (`kernel_summary`) and, with `trace: true`, a Chrome trace
    `folder/trace_rank<r>.json`; summarising takes a few seconds after the window (the next batch, and the
    throughput averaged over it, are slower). A run that ends inside the window summarises what it profiled.
    """

    def __init__(
        self, folder: str, start_batch: int, num_batches: int, trace: bool = TorchProfileConfig.trace
    ):
        if start_batch < 1 or num_batches < 1:
            raise ValueError("callbacks.torch_profile: start_batch and num_batches must be >= 1")
        self.folder = Path(folder)
        self.start_batch, self.num_batches, self.trace = start_batch, num_batches, trace
        self._prof = None
        self._t0 = None
        self._cuda = False

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def batch_start(self, state: State, logger: Logger) -> None:
        from composer.devices import DeviceGPU
        from torch.profiler import ProfilerActivity, profile, schedule

        batch = int(state.timestamp.batch)
        if batch == self.start_batch - 1 and self._prof is None:
            self._cuda = isinstance(state.device, DeviceGPU)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
            plan = schedule(wait=0, warmup=1, active=self.num_batches, repeat=1)
            self._prof = profile(activities=activities, schedule=plan)
            self._prof.__enter__()
        elif batch == self.start_batch and self._prof is not None:
            self._sync()
            self._t0 = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._prof is None:
            return
        if int(state.timestamp.batch) == self.start_batch + self.num_batches:
            self._finish(self.num_batches)
        else:
            self._prof.step()

    def fit_end(self, state: State, logger: Logger) -> None:
        """Training ended inside the window: summarise the batches profiled so far (or say none were)."""
        done = int(state.timestamp.batch) - self.start_batch
        if self._prof is not None and done > 0 and self._t0 is not None:
            self._finish(done)
        elif self._prof is not None:
            self._stop()
        if done <= 0:
            print(
                f"torch_profile: training stopped before batch {self.start_batch}: nothing profiled",
                flush=True,
            )

    def _stop(self):
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        return prof

    def _finish(self, batches: int) -> None:
        from composer.utils import dist

        self._sync()
        wall = time.perf_counter() - self._t0
        prof = self._stop()
        rank = dist.get_global_rank()
        self.folder.mkdir(parents=True, exist_ok=True)
        device = DeviceType.CUDA if self._cuda else DeviceType.CPU
        summary = kernel_summary(prof, batches, wall, device_type=device)
        summary.update(rank=rank, world_size=dist.get_world_size(), first_batch=self.start_batch)
        (self.folder / f"kernels_rank{rank}.json").write_text(json.dumps(summary, indent=1))
        if self.trace:
            prof.export_chrome_trace(str(self.folder / f"trace_rank{rank}.json"))
        print(
            f"torch_profile rank {rank}: batches {self.start_batch}..{self.start_batch + batches - 1}: "
            f"{summary['wall_ms_per_step']} ms/step wall, GPU busy {summary['gpu_busy_ms_per_step']}, "
            f"idle {summary['gpu_idle_ms_per_step']}, NCCL exposed {summary['nccl_exposed_ms_per_step']} "
            f"-> {self.folder}",
            flush=True,
        )
