"""The `fa4` backend (flash-attn-4's kernels, optional): our ops around FA4's forward and backward.

Three levels, each against something independent of the code under test:
- CPU, always: the custom ops, their autograd and torch.compile, with FA4's two entry points replaced by a
  float64 dense computation that follows FA4's documented contract (window = keys on each side, varlen lse of
  shape (H, T), backward taking (q, k, v, out, dout, lse)). It checks our side: the window passed, the order of
  the backward's arguments, the saved tensors, the fake shapes.
- CPU, with flash-attn-4 installed: FA4's real sm_90 kernels compile (its cross-compilation, no GPU) for our
  calls, global and local, and return what our fake implementations promise.
- GPU (device machine), with flash-attn-4 installed: the kernels against the exact SDPA backend.
"""

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flex_bert.kernels import fa4_attention, get_backend
from flex_bert.kernels.backends import sdpa_attention
from flex_bert.model.padding import cu_seqlens_from_lengths

H, D = 3, 16
LENGTHS = [1, 5, 23, 40, 8]  # a one-token document, documents shorter and longer than the window


def dense(q, k, v, cu_seqlens, left, right):
    """FA4's contract in float64: query i sees key j of its document with i - left <= j <= i + right."""
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~dense_mask(q.shape[0], cu_seqlens, left, right)[None], float("-inf"))
    out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).contiguous()
    return out, scores.logsumexp(-1)  # (T, H, D), (H, T)


def dense_mask(T, cu_seqlens, left, right):
    doc = torch.searchsorted(cu_seqlens.long(), torch.arange(T), right=True)
    i = torch.arange(T)
    allowed = doc[:, None] == doc[None, :]
    if left is not None:
        allowed &= (i[None, :] >= i[:, None] - left) & (i[None, :] <= i[:, None] + right)
    return allowed


class ReferenceFA4:
    """`flash_attn.cute.interface`'s two entry points, as the float64 computation above."""

    calls: list

    def __init__(self):
        self.calls = []

    def _flash_attn_fwd(self, q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        window_size_left, window_size_right, return_lse):  # fmt: skip
        assert return_lse and torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
        assert cu_seqlens_q.dtype == torch.int32
        self.calls.append(("fwd", window_size_left, window_size_right))
        out, lse = dense(
            q.double(), k.double(), v.double(), cu_seqlens_q, window_size_left, window_size_right
        )
        return out.to(q.dtype), lse.float(), None, None, None

    def _flash_attn_bwd(self, q, k, v, out, dout, lse, *, window_size_left, window_size_right, cu_seqlens_q,
                        cu_seqlens_k, max_seqlen_q, max_seqlen_k, deterministic):  # fmt: skip
        """Softmax attention's gradients written out (FlashAttention-2's equations), in float64."""
        self.calls.append(("bwd", window_size_left, window_size_right))
        self.deterministic = deterministic
        dtype = q.dtype
        q, k, v, out, dout = (t.double() for t in (q, k, v, out, dout))
        ref_out, ref_lse = dense(q, k, v, cu_seqlens_q, window_size_left, window_size_right)
        torch.testing.assert_close(out, ref_out)  # the forward's out and lse came back unchanged
        torch.testing.assert_close(lse.double(), ref_lse)
        scale = 1 / math.sqrt(q.shape[-1])
        p = torch.exp(torch.einsum("qhd,khd->hqk", q, k) * scale - ref_lse[..., None]).nan_to_num()
        p = p * (dense_mask(q.shape[0], cu_seqlens_q, window_size_left, window_size_right)[None])
        dv = torch.einsum("hqk,qhd->khd", p, dout)
        dp = torch.einsum("qhd,khd->hqk", dout, v)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq = torch.einsum("hqk,khd->qhd", ds, k) * scale
        dk = torch.einsum("hqk,qhd->khd", ds, q) * scale
        return tuple(t.to(dtype).contiguous() for t in (dq, dk, dv))


@pytest.fixture
def reference_fa4(monkeypatch):
    ref = ReferenceFA4()
    monkeypatch.setattr(fa4_attention, "_interface", lambda: ref)
    return ref


def _inputs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), H, D, generator=g, requires_grad=True) for _ in range(3))
    return q, k, v, cu_seqlens_from_lengths(torch.tensor(lengths)).int(), max(lengths)


def _op(q, k, v, cu, max_len, window):  # the backend past its CUDA check: the ops, on any device
    return fa4_attention.fa4_attention(q, k, v, cu, max_len, window)


def _check_against_float64(fn, window):
    q, k, v, cu, max_len = _inputs(LENGTHS)
    out = fn(q, k, v, cu, max_len, window)
    side = None if window is None else window // 2
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    want, _ = dense(q64, k64, v64, cu, side, side)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    want.backward(grad.double())
    for ours, theirs in zip((q, k, v), (q64, k64, v64)):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [None, 8, 9, 128])
def test_fa4_contract_reference_is_our_attention(window):
    """The stand-in's computation (FA4's window of keys each side) is the project's SDPA reference."""
    q, k, v, cu, max_len = _inputs(LENGTHS)
    side = None if window is None else window // 2
    want = sdpa_attention(q.double(), k.double(), v.double(), cu, max_len, window)
    torch.testing.assert_close(dense(q.double(), k.double(), v.double(), cu, side, side)[0], want)


@pytest.mark.parametrize("window", [None, 8, 128])
def test_ops_pass_the_window_and_backward_arguments(reference_fa4, window):
    _check_against_float64(_op, window)
    side = None if window is None else window // 2
    assert reference_fa4.calls == [("fwd", side, side), ("bwd", side, side)]


def test_ops_compile_into_one_graph(reference_fa4):
    torch._dynamo.reset()
    _check_against_float64(torch.compile(_op, fullgraph=True), 8)
    assert [c[0] for c in reference_fa4.calls] == ["fwd", "bwd"]


@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_follows_the_deterministic_mode(reference_fa4, deterministic):
    q, k, v, cu, max_len = _inputs([7, 3])
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        _op(q, k, v, cu, max_len, 8).sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
    assert reference_fa4.deterministic is deterministic


def test_older_gpu_is_a_clear_error(reference_fa4, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    fa4_attention._supported_gpu.cache_clear()
    q, k, v, cu, max_len = _inputs([4])
    try:
        with pytest.raises(
            ValueError, match=r"compute capability 9.x or 10.x\), this one is 8.0; use 'auto'"
        ):
            fa4_attention.forward(q, k, v, cu, max_len, -1)
    finally:
        fa4_attention._supported_gpu.cache_clear()
    assert reference_fa4.calls == []


def test_clear_errors():
    q, k, v, cu, max_len = _inputs([4])
    with pytest.raises(ValueError, match="'fa4' needs CUDA fp16/bf16"):
        get_backend("fa4")(q, k, v, cu, max_len, None)
    if importlib.util.find_spec("flash_attn") is None:
        fa4_attention._interface.cache_clear()
        with pytest.raises(ValueError, match=r"needs the flash-attn-4 package \(pip install flash-attn-4=="):
            fa4_attention._interface()


CROSS_COMPILE = textwrap.dedent(
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from flex_bert.kernels import fa4_attention as fa4

    T, H, D = 3000, 12, 64
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v = (torch.empty(T, H, D, dtype=torch.bfloat16, device="cuda") for _ in range(3))
        cu = torch.tensor([0, 1, 700, 3000], dtype=torch.int32, device="cuda")
        for window in (-1, 128):
            out, lse = fa4.forward(q, k, v, cu, 2300, window)  # FA4's own code: compiles, does not launch
            fake_out, fake_lse = fa4._fwd(q, k, v, cu, 2300, window)  # our register_fake
            assert (out.shape, out.dtype, lse.shape, lse.dtype) == (
                fake_out.shape, fake_out.dtype, fake_lse.shape, fake_lse.dtype), (out.shape, lse.shape)
            grads = fa4.backward(torch.empty_like(out), q, k, v, out, lse, cu, 2300, window)
            fake_grads = fa4._bwd(torch.empty_like(out), q, k, v, out, lse, cu, 2300, window)
            assert [(g.shape, g.dtype) for g in grads] == [(g.shape, g.dtype) for g in fake_grads]
    print("compiled", len(fa4._interface()._flash_attn_fwd.compile_cache.cache),
          "forward kernels for sm_90a")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn-4 not installed")
def test_fa4_kernels_compile_for_sm90_without_a_gpu():
    """FA4's cross-compilation (its documented variables), in a subprocess: they are read once per process."""
    pytest.importorskip("flash_attn.cute")
    env = dict(
        os.environ, FLASH_ATTENTION_ARCH="sm_90a", CUTE_DSL_ARCH="sm_90a", FLASH_ATTENTION_NUM_SMS="132"
    )
    env.pop("TRITON_INTERPRET", None)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", CROSS_COMPILE], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "compiled 2 forward kernels for sm_90a" in run.stdout


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 16, 128])
def test_fa4_matches_sdpa_reference(window):
    pytest.importorskip("flash_attn.cute")
    if torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip("attention_backend 'fa4' needs compute capability 9.x or 10.x")
    from test_model_backends import _kernel_vs_reference

    _kernel_vs_reference("fa4", window)
