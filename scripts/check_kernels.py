"""Compile every FlexBERT Triton kernel for a GPU architecture on a machine without a GPU, as the real launch
code calls it, and report each compiled kernel's registers, spilled bytes and shared memory.

Each kernel op runs forward and backward on CPU tensors of ModernBERT-base's shapes with every `kernel[grid]`
launch recorded instead of run (nothing is computed: the outputs are uninitialised); each distinct recorded
launch (kernel, constexprs, launch options) is then compiled for the target with Triton's compiler and the
ptxas it bundles. A kernel that Triton's interpreter runs but the GPU compiler rejects (a tl.dot operand below
16, a type or layout error) fails here, in CI; the figures show register pressure and spills before a GPU run.

Usage (CPU): python scripts/check_kernels.py [--arch 90] [--json OUT]    (exit 1 if a kernel fails to compile)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from flex_bert.kernels import (
    band_attention,
    fp8_rows,
    fused_cross_entropy,
    fused_glu,
    fused_norm,
    fused_qkv,
    fused_qkv_band,
    fused_rotary,
)

MODULES = (fused_norm, fused_glu, fused_rotary, fused_qkv, fused_cross_entropy, band_attention, fp8_rows)
# ModernBERT-base: tokens, hidden, GLU width, heads, head dim, vocabulary (masked rows)
T, C, N, H, D, V, ROWS = 512, 768, 1152, 12, 64, 50368, 64


class Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` records the call instead of launching it."""

    def __init__(self, fn: JITFunction, calls: list):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs))


def run_ops() -> None:
    """Every kernel op forward and backward, as the model calls them (both dropouts of the joint, the joint's
    backward with and without the residual's gradient, the joint and the gate with and without FP8 outputs, the QKV
    projection with bf16 and FP8 operands, both backwards of the band kernel, alone and with the projection's
    rotary folded in)."""
    req = dict(requires_grad=True)
    for p, both in ((0.1, True), (0.0, False)):
        x, br = torch.randn(T, C, **req), torch.randn(T, C, dtype=torch.bfloat16, **req)
        norm = torch.nn.LayerNorm(C, bias=False)
        x_new, out = fused_norm.add_dropout_layer_norm(x, br, norm, p, torch.bfloat16)
        (out.float().sum() + (x_new.sum() if both else 0)).backward()
    fused_norm.add_dropout_layer_norm(
        x, br, norm, 0.1, torch.bfloat16, fp8_dtype=torch.float8_e4m3fn
    )  # fp8_mlp
    h = torch.randn(T, 2 * N, dtype=torch.bfloat16, **req)
    fused_glu.gelu_gate(h).float().sum().backward()
    wi = torch.randn(2 * N, C, dtype=torch.bfloat16)
    fp8_rows.quantize_rows(wi, torch.float8_e4m3fn), fp8_rows.quantize_rows(wi.t(), torch.float8_e4m3fn)
    fused_glu.forward_fp8(h.detach(), torch.float8_e4m3fn)  # fp8_mlp's gate, both ways
    fused_glu.backward_fp8(torch.randn(T, N, dtype=torch.bfloat16), h.detach(), torch.float8_e4m3fn)
    qkv = torch.randn(T, 3, H, D, dtype=torch.bfloat16, **req)
    cos, sin = torch.randn(T, D), torch.randn(T, D)
    sum(x.float().sum() for x in fused_rotary.rotary_qkv(qkv, cos, sin)).backward()
    x, w = torch.randn(T, C, dtype=torch.bfloat16, **req), torch.randn(3 * C, C, dtype=torch.bfloat16, **req)
    sum(y.float().sum() for y in fused_qkv.qkv_rotary(x, w, None, cos, sin, H)).backward()
    x_fp8 = (torch.randn(T, C).to(torch.float8_e4m3fn), torch.rand(T, 1))
    fused_qkv.qkv_rotary(x.detach(), w.detach(), None, cos, sin, H, x_fp8)  # fp8_qkv (the backward is bf16's)
    logits = torch.randn(ROWS, V, dtype=torch.bfloat16, **req)
    fused_cross_entropy.cross_entropy(logits, torch.randint(0, V, (ROWS,))).backward()
    cu = torch.tensor([0, 100, 400, T], dtype=torch.int32)
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        q, k, v = (torch.randn(T, H, D, dtype=torch.bfloat16, **req) for _ in range(3))
        band_attention.band_attention(q, k, v, cu, 128).float().sum().backward()
        fused_qkv_band.qkv_band_attention(x, w, None, cos, sin, cu, H, 128).float().sum().backward()
    fused_qkv_band.qkv_band_attention(x.detach(), w.detach(), None, cos, sin, cu, H, 128, x_fp8)
    torch.use_deterministic_algorithms(False)


def record() -> list[tuple]:
    """The kernel launches of `run_ops`, each (kernel, args, kwargs)."""
    calls: list[tuple] = []
    originals = {
        (m, name): obj for m in MODULES for name, obj in vars(m).items() if isinstance(obj, JITFunction)
    }
    for (m, name), fn in originals.items():
        setattr(m, name, Recorder(fn, calls))
    try:
        run_ops()
    finally:
        for (m, name), fn in originals.items():
            setattr(m, name, fn)
    return calls


def specialise(fn: JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attributes, compile options) of one launch, by the function Triton's JIT
    specialises a launch's arguments with: types (a tensor descriptor's box included), the integer 1 as a
    constant, and the alignment attributes (a pointer or integer divisible by 16). Without those the compiler
    can vectorise no load and pipeline no copy, and the registers counted here would be another kernel's."""
    names = [p.name for p in fn.params]
    values = {**dict(zip(names, args, strict=False)), **{k: v for k, v in kwargs.items() if k in names}}
    options = {k: v for k, v in kwargs.items() if k not in names}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        kind, spec = native_specialize_impl(
            CUDABackend, value, False, not p.do_not_specialize, not p.do_not_specialize_on_alignment
        )
        signature[p.name] = kind
        if kind == "constexpr":
            constexprs[p.name] = value
        elif spec:
            attrs[(i,)] = CUDABackend.parse_attr(spec)
    return signature, constexprs, attrs, options


def resources(cubin: bytes) -> dict:
    """Registers, spill stack and static shared memory of a cubin (cuobjdump, bundled with Triton)."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    found = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    return (
        {"registers": int(found[1]), "spill_stack_bytes": int(found[2])}
        if found
        else {"cuobjdump": out[-200:]}
    )


def compile_all(calls: list[tuple], arch: int) -> list[dict]:
    target = GPUTarget("cuda", arch, 32)
    results, seen = [], set()
    for fn, args, kwargs in calls:
        signature, constexprs, attrs, options = specialise(fn, args, kwargs)
        key = (  # what makes two launches two compiled kernels
            fn.__name__,
            tuple(signature.items()),
            tuple(sorted(attrs)),
            tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
            tuple(sorted(options.items())),
        )
        if key in seen:
            continue
        seen.add(key)
        shown = {k: v for k, v in constexprs.items() if k.isupper() and v is not None and k not in ("H", "D")}
        row = {"kernel": fn.__name__, "constexprs": shown, **options}
        try:
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options)  # fmt: skip
            row.update(shared_bytes=kernel.metadata.shared, **resources(kernel.asm["cubin"]))
        except Exception as e:  # noqa: BLE001 (reported, and the exit status says it)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        results.append(row)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter's @triton.jit objects cannot be compiled
        print("check_kernels.py compiles kernels: run it without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    results = compile_all(record(), args.arch)
    print(
        f"| kernel (sm_{args.arch}) | constexprs | warps | stages | registers | spill bytes | shared bytes |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['kernel']} | {r['constexprs']} | | | FAILED: {r['error']} | | |")
            continue
        print(f"| {r['kernel']} | {r['constexprs']} | {r.get('num_warps', '')} | {r.get('num_stages', '')} "
              f"| {r.get('registers')} | {r.get('spill_stack_bytes')} | {r['shared_bytes']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
