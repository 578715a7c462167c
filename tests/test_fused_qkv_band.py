"""A local layer's attention from its input as one op (kernels/fused_qkv_band.py) against a float64 reference:
the projection, q and k rotated, band attention; forward and the gradients of x, weight and bias by autograd,
through both band backwards. On the CPU the kernels run in Triton's interpreter (tests/conftest.py), in fp32 and
fp16 (bf16 products are wrong there)."""

import pytest
import torch
from _attention_references import band_attention_reference, qkv_rotary_reference

from flex_bert.kernels import backends, fused_qkv_band, policy
from flex_bert.kernels.rotary import positions_from_cu_seqlens, rotary_cos_sin
from flex_bert.model.padding import cu_seqlens_from_lengths


def _check(lengths, H, D, C, bias, window, dtype, device, tol):
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    T = int(cu[-1])
    cos, sin = rotary_cos_sin(positions_from_cu_seqlens(cu, T), D, 10000.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, C, generator=g).to(device, dtype).requires_grad_(True)
    w = (torch.randn(3 * H * D, C, generator=g) / C**0.5).to(device, dtype).requires_grad_(True)
    b = torch.randn(3 * H * D, generator=g).to(device, dtype).requires_grad_(True) if bias else None
    grad = torch.randn(T, H, D, generator=g).to(device, dtype)
    if device == "cuda":
        assert fused_qkv_band.fits(x, w, cos, H)
    out = fused_qkv_band.qkv_band_attention(x, w, b, cos.to(device), sin.to(device), cu.to(device), H, window)
    assert out.shape == (T, H, D) and out.dtype == dtype
    out.backward(grad)
    leaves = [t.detach().cpu().double().requires_grad_(True) for t in (x, w) + ((b,) if bias else ())]
    x64, w64, b64 = leaves[0], leaves[1], leaves[2] if bias else None
    q, k, v = qkv_rotary_reference(x64, w64, b64, cos.double(), sin.double(), H)
    want = band_attention_reference(q, k, v, lengths, window // 2)
    want.backward(grad.cpu().double())
    torch.testing.assert_close(out.detach().cpu().double(), want.detach(), rtol=tol, atol=tol)
    for got, ref in zip((x, w, b), leaves):
        # sums over T (weight, bias) or 3 H D (x) products, rounded once to the dtype: against the largest
        err = (got.grad.cpu().double() - ref.grad).abs().max().item()
        assert err <= tol * ref.grad.abs().max().item()


# Documents shorter than the window and longer than several tiles, one token, a row that ends mid-tile; one and
# several heads per projection tile, with and without bias.
@pytest.mark.parametrize(
    "lengths, H, D, C, bias, window",
    [
        ([5, 40, 1, 90, 3], 2, 16, 64, True, 32),
        ([150, 7], 4, 16, 64, False, 128),
        ([70], 1, 32, 128, True, 16),
    ],
)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 1e-2)])
@pytest.mark.interpreter
def test_qkv_band_attention_matches_float64_reference_in_the_interpreter(
    lengths, H, D, C, bias, window, dtype, tol, backward_path
):

    _check(lengths, H, D, C, bias, window, dtype, "cpu", tol)


@pytest.mark.gpu
@pytest.mark.parametrize("H, bias", [(12, False), (16, True)])  # ModernBERT-base and -large, head dim 64
def test_qkv_band_attention_matches_float64_reference_on_gpu(H, bias, backward_path):
    _check([600, 1024, 77, 3000, 1, 64, 65], H, 64, 64 * H, bias, 128, torch.bfloat16, "cuda", 2e-2)


@pytest.mark.parametrize(
    "backend, band_fits, fa4_on_local, runs",
    [
        ("band", True, False, True),
        ("band", False, False, False),  # the band backend then refuses the layer with its own message
        ("auto", True, False, True),
        ("auto", True, True, False),  # were auto to run FA4 on local layers
        ("varlen", True, False, False),
        ("sdpa", True, False, False),
    ],
)
def test_runs_band_follows_the_backends_choice(monkeypatch, backend, band_fits, fa4_on_local, runs):
    """`runs_band`, which decides where the fused op replaces the projection and the backend, agrees with what the
    backend itself would run on a local layer (CPU test: a stand-in for the CUDA q and the GPU)."""
    from types import SimpleNamespace

    q = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=torch.bfloat16, shape=(0, 12, 64))
    monkeypatch.setattr(policy, "_major", lambda device_index: 9)
    monkeypatch.setattr(policy.KERNELS["band_attention"], "fits", lambda q: band_fits)
    monkeypatch.setattr(policy, "fa4_usable", lambda q: True)
    layers = {"global", "local"} if fa4_on_local else {"global"}
    monkeypatch.setattr(backends, "AUTO_FA4_LAYERS", frozenset(layers))
    assert backends.runs_band(backend, q, 128) == runs and not backends.runs_band(backend, q, None)
    if backend == "auto":
        assert (backends.auto_kernel(q, 128) is backends.band_backend) == runs


def test_fits_needs_both_kernels():
    cos = torch.zeros(4, 64)
    x, w = torch.zeros(4, 768, dtype=torch.bfloat16), torch.zeros(3 * 768, 768, dtype=torch.bfloat16)
    assert fused_qkv_band.fits(x, w, cos, 12)
    assert not fused_qkv_band.fits(x.float(), w.float(), cos, 12)  # neither kernel takes fp32 on a GPU
    x64, w64 = torch.zeros(4, 64, dtype=torch.bfloat16), torch.zeros(3 * 64, 64, dtype=torch.bfloat16)
    assert not fused_qkv_band.fits(x64, w64, cos, 8)  # head dim 8: fused_qkv takes it, the band kernel not


@pytest.mark.gpu
def test_deterministic_backward_is_bitwise_reproducible_on_gpu(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) (the band kernel's split backward, no atomics), two backwards
    of the same inputs give the same bits."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as composer's deterministic mode sets it
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            cu = cu_seqlens_from_lengths(torch.tensor([600, 77, 3000])).cuda()
            cos, sin = (t.cuda() for t in rotary_cos_sin(positions_from_cu_seqlens(cu.cpu(), 3677), 64, 1e4))
            g = torch.Generator().manual_seed(0)
            x = torch.randn(3677, 768, generator=g).cuda().bfloat16().requires_grad_()
            w = (torch.randn(2304, 768, generator=g) / 28).cuda().bfloat16().requires_grad_()
            fused_qkv_band.qkv_band_attention(x, w, None, cos, sin, cu, 12, 128).sum().backward()
            grads.append([x.grad, w.grad])
        for a, b in zip(*grads):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.interpreter
def test_no_tokens_backward_in_the_interpreter():
    """T = 0 forward and backward: empty outputs, zero-size input gradients, zero weight gradients."""

    from flex_bert.kernels import fused_qkv

    x = torch.randn(0, 64, requires_grad=True)
    w = torch.randn(3 * 64, 64, requires_grad=True)
    cos, sin = torch.zeros(0, 16), torch.zeros(0, 16)
    cu = torch.zeros(1, dtype=torch.int32)
    outs = (
        fused_qkv_band.qkv_band_attention(x, w, None, cos, sin, cu, 4, 32),
        *fused_qkv.qkv_rotary(x, w, None, cos, sin, 4),
    )
    sum(o.sum() for o in outs).backward()
    assert all(o.shape == (0, 4, 16) for o in outs) and x.grad.shape == (0, 64) and not w.grad.any()
