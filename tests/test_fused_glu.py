"""The fused GLU gate (kernels/fused_glu.py) against a float64 reference: `gelu(a) * g` (exact erf GELU) and
its gradients by autograd. On the CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

import pytest
import torch
import torch.nn.functional as F

from flex_bert.kernels import fused_glu


def _check(T, N, dtype, device, tol):
    g = torch.Generator().manual_seed(0)
    h = (2 * torch.randn(T, 2 * N, generator=g)).to(device, dtype).requires_grad_(True)
    dz = torch.randn(T, N, generator=g).to(device, dtype)
    z = fused_glu.gelu_gate(h)
    assert z.shape == (T, N) and z.dtype == dtype
    z.backward(dz)
    h64 = h.detach().double().requires_grad_(True)
    a, gate = h64.chunk(2, dim=-1)
    want = F.gelu(a) * gate
    want.backward(dz.double())
    torch.testing.assert_close(z.double(), want.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("T, N", [(37, 48), (5, 200)])  # ragged row and column tiles
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gelu_gate_matches_float64_reference_in_the_interpreter(T, N, dtype, tol):
    import triton

    if not triton.knobs.runtime.interpret:
        pytest.skip("Triton's interpreter is off (a GPU is present: the gpu tests run the kernels)")
    _check(T, N, dtype, "cpu", tol)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1152, 2624])  # ModernBERT-base and -large
def test_gelu_gate_matches_float64_reference_on_gpu(N):
    _check(3000, N, torch.bfloat16, "cuda", 2e-2)


def _check_fp8(T, N, device, exact_fp8: bool):
    """`forward_fp8` and `backward_fp8` against `forward`, `backward` and `fp8_mlp.quantize_rows` of their
    outputs (PyTorch's amax, division and e4m3 rounding): the bf16 outputs and the scales bitwise, a zero row
    too; the FP8 values bitwise where `exact_fp8`. Triton's interpreter mis-rounds values that round to a power
    of two (it drops the carry into the exponent, triton-lang/triton#8322 and #11897): there, and only there,
    its value may be off, by at most PyTorch's magnitude (mostly half of it)."""
    from flex_bert.kernels.fp8_mlp import FP8, quantize_rows

    g = torch.Generator().manual_seed(0)
    h = (2 * torch.randn(T, 2 * N, generator=g)).to(device, torch.bfloat16)
    dz = torch.randn(T, N, generator=g).to(device, torch.bfloat16)
    h[1], dz[2] = 0, 0
    for (out, out8, scale), want in (
        (fused_glu.forward_fp8(h, FP8), fused_glu.forward(h)),
        (fused_glu.backward_fp8(dz, h, FP8), fused_glu.backward(dz, h)),
    ):
        assert torch.equal(out, want)
        want8, want_scale = quantize_rows(want)
        assert scale.shape == (T, 1) and torch.equal(scale, want_scale)
        assert out8.dtype == FP8 and out8.shape == want.shape
        got, ref = out8.float(), want8.float()
        differ = got != ref
        if not exact_fp8:
            got, ref = got[differ], ref[differ]
            assert torch.equal(ref.abs().log2(), ref.abs().log2().round())  # powers of two
            assert ((got - ref).abs() <= ref.abs()).all() and differ.float().mean() < 0.1
        else:
            assert not differ.any()


def test_gelu_gate_fp8_outputs_in_the_interpreter():
    import triton

    if not triton.knobs.runtime.interpret:
        pytest.skip("Triton's interpreter is off (a GPU is present: the gpu tests run the kernels)")
    _check_fp8(7, 48, "cpu", exact_fp8=False)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1152, 2624])  # ModernBERT-base and -large
def test_gelu_gate_fp8_outputs_on_gpu(N):
    _check_fp8(3000, N, "cuda", exact_fp8=True)
