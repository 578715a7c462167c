"""The fused GLU gate (kernels/fused_glu.py) against a float64 reference: `gelu(a) * g` (exact erf GELU) and
its gradients by autograd. On the CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

import pytest
import torch
import torch.nn.functional as F

from flex_bert.kernels import fused_glu
from tests._fp8 import assert_fp8_rows


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
@pytest.mark.interpreter
def test_gelu_gate_matches_float64_reference_in_the_interpreter(T, N, dtype, tol):

    _check(T, N, dtype, "cpu", tol)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1152, 2624])  # ModernBERT-base and -large
def test_gelu_gate_matches_float64_reference_on_gpu(N):
    _check(3000, N, torch.bfloat16, "cuda", 2e-2)


def _check_fp8(T, N, device, exact_fp8: bool):
    """`forward_fp8` and `backward_fp8`: their bf16 outputs those of `forward` and `backward` bitwise, their FP8
    copies `quantize_rows` of those (`assert_fp8_rows`), a zero row too."""
    from flex_bert.kernels.fp8 import FP8

    g = torch.Generator().manual_seed(0)
    h = (2 * torch.randn(T, 2 * N, generator=g)).to(device, torch.bfloat16)
    dz = torch.randn(T, N, generator=g).to(device, torch.bfloat16)
    h[1], dz[2] = 0, 0
    for (out, out8, scale), want in (
        (fused_glu.forward_fp8(h, FP8), fused_glu.forward(h)),
        (fused_glu.backward_fp8(dz, h, FP8), fused_glu.backward(dz, h)),
    ):
        assert torch.equal(out, want)
        assert_fp8_rows(out8, scale, want, exact_fp8)


@pytest.mark.interpreter
def test_gelu_gate_fp8_outputs_in_the_interpreter():

    _check_fp8(7, 48, "cpu", exact_fp8=False)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1152, 2624])  # ModernBERT-base and -large
def test_gelu_gate_fp8_outputs_on_gpu(N):
    _check_fp8(3000, N, "cuda", exact_fp8=True)
