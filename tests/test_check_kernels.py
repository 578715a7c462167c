"""scripts/check_kernels.py: every FlexBERT Triton kernel the ops launch compiles for the H100 (sm_90) with
Triton's own compiler and ptxas, on this CPU machine (the interpreter tests do not compile for a GPU)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def launched_kernels() -> set[str]:
    """The kernels of FlexBERT's kernel modules: @triton.jit functions that no code calls as `name(...)` (the
    helpers are called from kernels, in their module or another; kernels are launched as `name[grid](...)`)."""
    source = "\n".join(path.read_text() for path in (ROOT / "src/flex_bert/kernels").glob("*.py"))
    defined = re.findall(r"@triton\.jit(?:\(.*\))?[^\n]*\ndef (\w+)\(", source)
    return {name for name in defined if len(re.findall(rf"\b{name}\(", source)) == 1}  # its def only


def test_every_launched_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    out = tmp_path / "kernels.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts/check_kernels.py"), "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert not [r for r in results if "error" in r]
    assert {r["kernel"] for r in results} == launched_kernels() and len(launched_kernels()) >= 12
    assert all(0 < r["registers"] <= 255 for r in results)  # read back from each cubin
    # both backwards of the band kernel, each with and without the rotary fold, and both dropouts of the joint
    band = {
        (r["constexprs"]["ATOMIC_DQ"], r["constexprs"]["ROTARY"])
        for r in results
        if r["kernel"] == "_band_bwd"
    }
    assert band == {(True, False), (False, False), (True, True), (False, True)}
    assert {r["constexprs"]["ROTARY"] for r in results if r["kernel"] == "_band_bwd_dq"} == {True, False}
    assert {r["constexprs"]["DROPOUT"] for r in results if r["kernel"] == "_add_norm_fwd"} == {True, False}


def test_specialise_gives_the_alignment_a_launch_specialises_on():
    """Triton's JIT marks 16-byte-aligned pointers and integers divisible by 16 (`tt.divisibility`); compiled
    without those marks a kernel vectorises no load, and its register count is another kernel's."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    import check_kernels
    from triton.runtime.jit import JITFunction

    from flex_bert.kernels import fused_rotary

    kernel = fused_rotary._rotary_qkv_fwd
    kernel = (
        JITFunction(kernel.fn) if not isinstance(kernel, JITFunction) else kernel
    )  # under the interpreter
    x = torch.empty(256, dtype=torch.bfloat16)  # the allocator aligns it; x[1:] is 2 bytes off
    args = (x, x[1:], x, x, x, x, 48, 12, 64)  # QKV, COS, SIN, Q, K, V, T, H, D
    signature, constexprs, attrs, options = check_kernels.specialise(
        kernel, args, {"BLOCK_T": 4, "BLOCK_J": 512, "num_warps": 4}
    )
    names = [p.name for p in kernel.params]
    marked = {names[i] for (i,) in attrs}
    assert marked == {"QKV", "SIN", "Q", "K", "V", "T"}  # not COS (misaligned), not H or D (constexpr)
    assert all(a == [["tt.divisibility", 16]] for a in attrs.values())
    assert signature["T"] == "i32" and constexprs["H"] == 12 and options == {"num_warps": 4}
