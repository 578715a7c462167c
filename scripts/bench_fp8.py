"""FP8 matrix products in ModernBERT's MLP block against bf16: what an FP8 path could gain (issue 24).

The MLP block's forward and backward, `h = x Wi^T; z = gelu(a) * g; y = z Wo^T` and `dz = dy Wo, dWo = dy^T z,
dh = gate'(dz), dx = dh Wi, dWi = dh^T x`, for one micro-batch (base: 98,304 tokens, hidden 768,
intermediate 1152; large: 57,344 tokens, 1024, 2624), timed (median ms) two ways with the same gate:
  bf16  every product in bf16, as FlexBERT trains now;
  fp8   Wi's and Wo's forward and Wi's input gradient as `torch._scaled_mm` on float8_e4m3fn operands scaled
        per row (per token, per weight row; per input feature for Wi's gradient), cast before timing; the
        weight gradients and Wo's input gradient stay bf16 (their operands would need column scales).
So `fp8` is the block if the kernels that write those operands (the joint's LayerNorm, the gate forward and
backward) wrote them in FP8 as well: what such a path can save at most. `torch_casts` times the three
activation casts as PyTorch passes (amax, then scale and cast), `kernel_casts` as `fp8_rows`' one-pass kernel
(PyTorch on the CPU): what FP8 costs without copies written by the producing kernels. `fp8_bytes_gb` is what
writing the FP8 copies adds to those kernels (one byte an element). Accuracy: the relative (Frobenius) error of
each FP8 product against fp32 products of the same bf16 operands.

Usage (GPU): python scripts/bench_fp8.py [--json OUT]
CPU smoke test: python scripts/bench_fp8.py --device cpu --scale 0.002 (the gate computed in PyTorch)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flex_bert.kernels.fp8 import mm_rows, quantize_rows, to_fp8_rows
from flex_bert.kernels.fp8_mlp import gate, gate_backward

SHAPES = {"base": (98_304, 768, 1152), "large": (57_344, 1024, 2624)}  # tokens, hidden, intermediate


def timer(device: torch.device):
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median")

    def once(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return once


def bench(T: int, C: int, N: int, device: torch.device) -> dict:
    bf = dict(device=device, dtype=torch.bfloat16)
    x, dy = torch.randn(T, C, **bf), torch.randn(T, C, **bf)
    wi, wo = torch.randn(2 * N, C, **bf) / C**0.5, torch.randn(C, N, **bf) / N**0.5
    h = x @ wi.t()
    z, dh = gate(h, True), gate_backward(dy @ wo, h, True)
    x8, z8, dh8 = quantize_rows(x), quantize_rows(z), quantize_rows(dh)
    wi8, wo8, wi_t8 = quantize_rows(wi), quantize_rows(wo), quantize_rows(wi.t().contiguous())

    def bf16():
        h = x @ wi.t()
        gate(h, True) @ wo.t()
        dz = dy @ wo
        dy.t() @ z, dh.t() @ x
        gate_backward(dz, h, True) @ wi

    def fp8():
        h = mm_rows(x8, wi8, fast_accum=True)
        gate(h, True)
        mm_rows(z8, wo8, fast_accum=True)
        dz = dy @ wo
        dy.t() @ z, dh.t() @ x
        gate_backward(dz, h, True)
        mm_rows(dh8, wi_t8, fast_accum=False)

    def torch_casts():
        return quantize_rows(x), quantize_rows(z), quantize_rows(dh)

    def kernel_casts():
        return to_fp8_rows(x, True), to_fp8_rows(z, True), to_fp8_rows(dh, True)

    run = timer(device)
    result = {
        name: round(run(fn), 4)
        for name, fn in (
            ("bf16_ms", bf16),
            ("fp8_ms", fp8),
            ("torch_casts_ms", torch_casts),
            ("kernel_casts_ms", kernel_casts),
        )
    }
    result["fp8_bytes_gb"] = round(T * (C + N + 2 * N) / 1e9, 3)
    for name, (a, b, a8, b8, fast) in {  # fast accumulation as fp8_mlp runs each product
        "wi_forward": (x, wi, x8, wi8, True),
        "wo_forward": (z, wo, z8, wo8, True),
        "wi_input_grad": (dh, wi.t(), dh8, wi_t8, False),
    }.items():
        want = a.float() @ b.float().t()
        result[f"{name}_rel_err"] = float((mm_rows(a8, b8, fast).float() - want).norm() / want.norm())
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each shape's tokens (smoke tests)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    results = {}
    for name, (T, C, N) in SHAPES.items():
        results[name] = bench(max(16, int(T * args.scale)), C, N, device)
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
