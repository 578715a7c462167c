"""The fused kernels (kernels/fused_norm.py, fused_glu.py, fused_qkv.py) against what they replace, alone.

For one micro-batch of T tokens (default 98,304: 96 x 1024 or 12 x 8192): the residual joint
`x + dropout(branch)` -> LayerNorm (fp32 stream, bf16 branch and output, p = 0.1 and 0) and the GLU gate
`gelu(a) * g` (bf16) against Inductor's compiled composition, in ms (triton.testing.do_bench, median) and in
TB/s of the bytes each pass must move (joint: 12 bytes per element forward, 16 backward; gate: 6 and 10 bytes
per gate element); the QKV projection with rotary in its epilogue (`fused_qkv`) against cuBLAS's projection +
the rotary kernel (`fused_rotary`), and against cuBLAS's projection alone, in ms and the projection's TFLOP/s,
and `fused_qkv` on FP8 operands (`fp8_qkv`);
a local layer's attention from its input as one op (`fused_qkv_band`) against `fused_qkv` then the band kernel.
All forward and backward. `--sweep` also times the joint's kernels over tile shapes (rows per tile, warps,
backward programs per SM) and `fused_qkv`'s forward over its tile configurations at ModernBERT-base's width
(bf16 and FP8 operands), to choose the defaults.

Usage (GPU): python scripts/bench_fused.py [--tokens 98304] [--sweep] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flex_bert.kernels import band_attention, fused_glu, fused_norm, fused_qkv, fused_qkv_band, fused_rotary
from flex_bert.kernels.fp8 import quantize_rows
from flex_bert.kernels.rotary import rotary_cos_sin

# the recipe's two joints: attention output (attn_out_dropout_prob 0.1) and MLP output (mlp_dropout_prob 0.0)
JOINT_DROPOUTS = (0.1, 0.0)


def _bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _fwd_bwd_ms(fn, inputs) -> tuple[float, float]:
    """Median ms of fn(*inputs), and of the backward from random gradients of all its outputs."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]
    fwd = _bench(lambda: fn(*inputs))
    bwd = _bench(lambda: torch.autograd.grad(outs, inputs, grads, retain_graph=True))
    return fwd, bwd


def _compare(fns, inputs, fwd_work: int, bwd_work: int, unit: str = "TBps") -> dict:
    """{name: fwd/bwd ms and rate} for each (name, fn) computing the same op on `inputs`; the rate is the bytes
    (TB/s) or FLOPs (TFLOP/s) each pass must do, per second."""
    out = {}
    for name, fn in fns:
        fwd, bwd = _fwd_bwd_ms(fn, inputs)
        out[name] = {
            "fwd_ms": round(fwd, 4),
            "bwd_ms": round(bwd, 4),
            f"fwd_{unit}": round(fwd_work / fwd / 1e9, 2),
            f"bwd_{unit}": round(bwd_work / bwd / 1e9, 2),
        }
    return out


def joint_inputs(T: int, C: int):
    x = torch.randn(T, C, device="cuda", requires_grad=True)
    br = torch.randn(T, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    norm = nn.LayerNorm(C, bias=False).cuda()
    return x, br, norm


def bench_joint(T: int, C: int, p: float) -> dict:
    x, br, norm = joint_inputs(T, C)

    def fused(x, br):
        return fused_norm.add_dropout_layer_norm(x, br, norm, p, torch.bfloat16)

    @torch.compile(dynamic=True)
    def composed(x, br):
        x_new = x + F.dropout(br, p, True)
        return x_new, F.layer_norm(x_new, (C,), norm.weight, None, norm.eps).to(torch.bfloat16)

    return _compare((("fused", fused), ("inductor", composed)), (x, br), 12 * T * C, 16 * T * C)


def bench_gate(T: int, N: int) -> dict:
    h = torch.randn(T, 2 * N, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    @torch.compile(dynamic=True)
    def composed(h):
        a, g = h.chunk(2, dim=-1)
        return F.gelu(a) * g

    return _compare((("fused", fused_glu.gelu_gate), ("inductor", composed)), (h,), 6 * T * N, 10 * T * N)


def qkv_inputs(T: int, C: int, H: int):
    x = torch.randn(T, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(3 * C, C, device="cuda") / C**0.5).to(torch.bfloat16).requires_grad_(True)
    positions = torch.arange(T, device="cuda") % 1024  # documents of 1024 tokens
    cos, sin = rotary_cos_sin(positions, C // H, 160_000.0)
    return x, w, cos, sin


def bench_qkv(T: int, C: int, H: int) -> dict:
    """The projection + rotary four ways; the rates are the projection's TFLOP/s (2 T C 3C a product).
    `fused_fp8`: `fp8_qkv`'s forward, x's FP8 copy made before timing (the joint before writes it), the weight's
    quantization timed (each call makes it); its backward is `fused`'s."""
    x, w, cos, sin = qkv_inputs(T, C, H)
    x_fp8 = quantize_rows(x.detach())

    def fused(x, w):
        return fused_qkv.qkv_rotary(x, w, None, cos, sin, H)

    def fused_fp8(x, w):
        return fused_qkv.qkv_rotary(x, w, None, cos, sin, H, x_fp8)

    def unfused(x, w):
        return fused_rotary.rotary_qkv(F.linear(x, w).view(T, 3, H, -1), cos, sin)

    fns = (("fused", fused), ("fused_fp8", fused_fp8), ("cublas+rotary", unfused), ("cublas_only", F.linear))
    flops = 2 * T * C * 3 * C
    res = _compare(fns, (x, w), flops, 2 * flops, "TFLOPs")
    ref = [o.float() for o in unfused(x, w)]
    res["fused_vs_unfused_max_abs"] = max(
        (a.float() - b).abs().max().item() for a, b in zip(fused(x, w), ref)
    )
    res["fp8_vs_unfused_rel"] = max(  # FP8 rounding: a few percent for random operands
        ((a.float() - b).norm() / b.norm()).item() for a, b in zip(fused_fp8(x, w), ref)
    )
    return res


def bench_qkv_band(T: int, C: int, H: int) -> dict:
    """A local layer's attention from its input (window 128, documents of 1024 tokens): `fused_qkv_band`, one op
    whose band backward writes the projection's gradient, against `fused_qkv` then the band kernel; the rates are
    the projection's TFLOP/s."""
    x, w, cos, sin = qkv_inputs(T, C, H)
    cu = torch.arange(0, T + 1, 1024, device="cuda", dtype=torch.int32)

    def one_op(x, w):
        return fused_qkv_band.qkv_band_attention(x, w, None, cos, sin, cu, H, 128)

    def two_ops(x, w):
        return band_attention.band_attention(*fused_qkv.qkv_rotary(x, w, None, cos, sin, H), cu, 128)

    flops = 2 * T * C * 3 * C
    res = _compare((("one_op", one_op), ("fused_qkv+band", two_ops)), (x, w), flops, 2 * flops, "TFLOPs")
    res["max_abs_difference"] = (one_op(x, w).float() - two_ops(x, w).float()).abs().max().item()
    return res


# `fused_qkv`'s tile configurations to time (BLOCK_M, HEADS, BLOCK_K, GROUP_M, warps, stages, programs): those
# that compile for sm_90 without spills (scripts/check_kernels.py), around the default
QKV_SWEEP = [
    (bm, heads, 64, 8, 8, stages, programs)
    for bm, heads in ((128, 4), (128, 2), (256, 2))
    for stages in (3, 4)
    for programs in (0, 1, 2)
] + [(128, 4, 32, 8, 8, 5, 2), (64, 4, 64, 8, 8, 4, 0), (128, 4, 64, 4, 8, 4, 0)]  # fmt: skip


def sweep_qkv(T: int, C: int, H: int, fp8: bool = False) -> list[dict]:
    """`fused_qkv`'s forward over `QKV_SWEEP` (FP8 operands: BLOCK_K doubled, the same bytes a box); a
    configuration that fails to launch is listed with its error."""
    x, w, cos, sin = qkv_inputs(T, C, H)
    x_fp8 = quantize_rows(x.detach()) if fp8 else None
    configs = [c[:2] + (2 * c[2],) + c[3:] for c in QKV_SWEEP] if fp8 else QKV_SWEEP
    results = []
    for config in configs:
        try:
            ms = _bench(lambda c=config: fused_qkv.launch(x, w, None, cos, sin, H, c, x_fp8))
        except Exception as e:  # out of shared memory
            results.append({"config": config, "error": f"{type(e).__name__}: {str(e)[:120]}"})
            continue
        results.append({"config": config, "fwd_ms": ms, "TFLOPs": round(2 * T * C * 3 * C / ms / 1e9, 1)})
    return sorted(results, key=lambda r: r.get("fwd_ms", float("inf")))


def sweep_joint(T: int, C: int, p: float) -> list[dict]:
    """Rows per tile x warps (4 backward programs per SM), then programs per SM for the best of those."""
    import triton

    x, br, norm = joint_inputs(T, C)
    block_c = triton.next_power_of_2(C)
    default_blocks, default_programs = fused_norm._blocks, fused_norm._bwd_programs

    def run(rows, warps, per_sm):
        fused_norm._blocks = lambda C: (rows, block_c, warps)
        fused_norm._bwd_programs = lambda device: per_sm * fused_norm._num_sms(0)
        fwd, bwd = _fwd_bwd_ms(
            lambda x, br: fused_norm.add_dropout_layer_norm(x, br, norm, p, torch.bfloat16), (x, br)
        )
        return {"rows": rows, "warps": warps, "programs_per_sm": per_sm, "fwd_ms": fwd, "bwd_ms": bwd}

    try:
        shapes = [(r, w) for r in (1, 2, 4, 8) for w in (2, 4, 8, 16) if r * block_c // (32 * w) >= 4]
        results = sorted((run(r, w, 4) for r, w in shapes), key=lambda r: r["fwd_ms"] + r["bwd_ms"])
        best = results[0]
        results += [run(best["rows"], best["warps"], k) for k in (1, 2, 8, 16)]
    finally:
        fused_norm._blocks, fused_norm._bwd_programs = default_blocks, default_programs
    return sorted(results, key=lambda r: r["fwd_ms"] + r["bwd_ms"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=98_304)
    ap.add_argument(
        "--sweep", action="store_true", help="time the joint's and fused_qkv's kernels over tile shapes"
    )
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fused.py needs a CUDA GPU")
        return 1
    torch._functorch.config.donated_buffer = False  # the compiled backward is replayed (retain_graph)
    T = args.tokens
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": T}
    for C, N in ((768, 1152), (1024, 2624)):  # ModernBERT-base, -large
        for p in JOINT_DROPOUTS:
            res[f"joint_C{C}_p{p}"] = bench_joint(T, C, p)
            print(f"joint C={C} p={p}: {res[f'joint_C{C}_p{p}']}", flush=True)
        res[f"gate_N{N}"] = bench_gate(T, N)
        print(f"gate N={N}: {res[f'gate_N{N}']}", flush=True)
        res[f"qkv_C{C}"] = bench_qkv(T, C, C // 64)
        print(f"qkv C={C}: {res[f'qkv_C{C}']}", flush=True)
        res[f"qkv_band_C{C}"] = bench_qkv_band(T, C, C // 64)
        print(f"qkv+band C={C}: {res[f'qkv_band_C{C}']}", flush=True)
        if args.sweep and C == 768:  # the tile defaults are chosen on ModernBERT-base
            res[f"sweep_C{C}"] = sweep = sweep_joint(T, C, 0.1)
            print(f"sweep C={C}, best 5 of {len(sweep)}: {sweep[:5]}", flush=True)
            for fp8 in (False, True):
                key = f"sweep_qkv{'_fp8' if fp8 else ''}_C{C}"
                res[key] = sweep = sweep_qkv(T, C, C // 64, fp8)
                print(f"{key}, best 8 of {len(sweep)}: {sweep[:8]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
