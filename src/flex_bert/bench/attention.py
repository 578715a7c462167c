"""Attention kernels on one packed row: inputs, useful (query, key) pairs, timing and errors against the
exact SDPA reference (`scripts/bench_attention.py`)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from flex_bert.kernels.backends import sdpa_attention


def useful_pairs(lengths: list[int], window: int | None) -> int:
    """Allowed (query, key) pairs: L^2 per document, minus those farther apart than window // 2."""
    h = None if window is None else window // 2
    return sum(L * L - (0 if h is None else max(L - h - 1, 0) * max(L - h, 0)) for L in lengths)


def make_inputs(lengths, H, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), H, D, generator=g).to(device, dtype) for _ in range(3))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32, device=device)
    return q, k, v, cu, max(lengths)


def time_ms(fn, inputs, backward: bool, iters: int, warmup: int = 3) -> float:
    def step():
        if backward:
            for t in inputs:
                t.grad = None
            fn().backward(grad)
        else:
            with torch.no_grad():
                fn()

    grad = torch.randn_like(inputs[0]) if backward else None
    cuda = inputs[0].is_cuda
    times = []
    for i in range(warmup + iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            step()
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    return statistics.median(times)


def max_errors(fn, lengths, H, D, dtype, device, window, backward):
    q, k, v, cu, max_len = make_inputs(lengths, H, D, dtype, device, seed=1)
    ours = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    ref = [t.float().requires_grad_(backward) for t in (q, k, v)]
    out, want = fn(*ours, cu, max_len, window), sdpa_attention(*ref, cu, max_len, window)
    err = {"err_out": (out.float() - want).abs().max().item()}
    if backward:
        grad = torch.randn_like(want)
        out.backward(grad.to(out.dtype))
        want.backward(grad)
        err["err_grad"] = max((a.grad.float() - b.grad).abs().max().item() for a, b in zip(ours, ref))
    return err
