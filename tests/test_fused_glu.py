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
