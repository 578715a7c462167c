"""The fused rotary kernel (kernels/fused_rotary.py) against a float64 reference of rotate-half RoPE, forward and
gradients by autograd. On the CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

import pytest
import torch

from flex_bert.kernels import fused_rotary
from flex_bert.kernels.rotary import positions_from_cu_seqlens, rotary_cos_sin
from flex_bert.model.padding import cu_seqlens_from_lengths


def _reference(x, cos, sin):
    """float64 rotate-half: x * cos + cat(-x2, x1) * sin, per head."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]


def _check(lengths, H, D, dtype, device, tol):
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    T = int(cu[-1])
    cos, sin = rotary_cos_sin(positions_from_cu_seqlens(cu, T), D, 10000.0)
    cos, sin = cos.to(device), sin.to(device)
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(T, 3, H, D, generator=g).to(device, dtype).requires_grad_(True)
    grads = [torch.randn(T, H, D, generator=g).to(device, dtype) for _ in range(3)]
    outs = fused_rotary.rotary_qkv(qkv, cos, sin)
    assert all(o.shape == (T, H, D) and o.dtype == dtype and o.is_contiguous() for o in outs)
    torch.autograd.backward(outs, grads)
    x64 = qkv.detach().double().requires_grad_(True)
    c64, s64 = cos.double(), sin.double()
    want = (_reference(x64[:, 0], c64, s64), _reference(x64[:, 1], c64, s64), x64[:, 2])
    torch.autograd.backward(want, [gr.double() for gr in grads])
    for got, ref in zip(outs, want):
        torch.testing.assert_close(got.double(), ref.detach(), rtol=tol, atol=tol)
    assert torch.equal(outs[2], qkv[:, 2])  # v is copied bit for bit
    torch.testing.assert_close(qkv.grad.double(), x64.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("lengths, H, D", [([5, 17, 1, 9], 3, 8), ([40], 2, 32)])  # ragged token tiles
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.interpreter
def test_rotary_qkv_matches_float64_reference_in_the_interpreter(lengths, H, D, dtype, tol):

    _check(lengths, H, D, dtype, "cpu", tol)


@pytest.mark.gpu
@pytest.mark.parametrize("H", [12, 16])  # ModernBERT-base and -large, head dim 64
def test_rotary_qkv_matches_float64_reference_on_gpu(H):
    _check([600, 1024, 77, 3000, 1], H, 64, torch.bfloat16, "cuda", 2e-2)
