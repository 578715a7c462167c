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
    helpers are called from kernels; kernels are launched as `name[grid](...)`)."""
    names = set()
    for module in ("band_attention", "fused_cross_entropy", "fused_glu", "fused_norm", "fused_rotary"):
        source = (ROOT / "src/flex_bert/kernels" / f"{module}.py").read_text()
        for name in re.findall(r"@triton\.jit\s*\ndef (\w+)\(", source):
            if len(re.findall(rf"\b{name}\(", source)) == 1:  # its def only
                names.add(name)
    return names


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
    # both backwards of the band kernel and both dropouts of the joint were compiled
    assert {r["constexprs"]["ATOMIC_DQ"] for r in results if r["kernel"] == "_band_bwd"} == {True, False}
    assert {r["constexprs"]["DROPOUT"] for r in results if r["kernel"] == "_add_norm_fwd"} == {True, False}
