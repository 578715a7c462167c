"""The sliding-window Triton kernel (kernels/band_attention.py) against a float64 reference: explicit scores over
each document with the |i - j| <= window // 2 mask, softmax, forward and gradients by autograd. On the CPU the
kernels run in Triton's interpreter (tests/conftest.py)."""

import pytest
import torch
from _attention_references import band_attention_reference

from flex_bert.kernels import band_attention
from flex_bert.model.padding import cu_seqlens_from_lengths


def _check(lengths, H, D, window, dtype, device, tol, compiled=False):
    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).to(device)
    T = sum(lengths)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(T, H, D, generator=g).to(device, dtype).requires_grad_(True) for _ in range(3))
    grad = torch.randn(T, H, D, generator=g).to(device, dtype)
    attend = band_attention.band_attention
    if compiled:  # as under compile_layers: dynamic shapes, the backward compiled too
        attend = torch.compile(attend, dynamic=True, fullgraph=True)
    out = attend(q, k, v, cu, window)
    assert out.shape == (T, H, D) and out.dtype == dtype
    out.backward(grad)
    ref64 = [x.detach().cpu().double().requires_grad_(True) for x in (q, k, v)]
    want = band_attention_reference(*ref64, lengths, window // 2)
    want.backward(grad.cpu().double())
    torch.testing.assert_close(out.detach().cpu().double(), want.detach(), rtol=tol, atol=tol)
    for got, ref in zip((q, k, v), ref64):
        torch.testing.assert_close(got.grad.cpu().double(), ref.grad, rtol=tol, atol=tol)


# Documents shorter than the window, longer than several tiles, of one token, an empty segment (cu_seqlens
# repeats an offset), and a row that ends mid-tile.
@pytest.mark.parametrize(
    "lengths, H, D, window", [([5, 40, 0, 1, 90, 3], 2, 16, 32), ([150, 7], 1, 32, 128), ([70], 2, 16, 16)]
)
# fp16, not bf16: Triton's interpreter (3.8) multiplies bf16 tl.dot operands wrongly; bf16 runs on the GPU.
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 5e-3)])
@pytest.mark.interpreter
def test_band_attention_matches_float64_reference_in_the_interpreter(
    lengths, H, D, window, dtype, tol, backward_path
):

    _check(lengths, H, D, window, dtype, "cpu", tol)


@pytest.mark.interpreter
def test_band_attention_compiles_forward_and_backward_in_the_interpreter(backward_path):

    _check([5, 40, 0, 1, 90, 3], 2, 16, 32, torch.float32, "cpu", 1e-4, compiled=True)


@pytest.mark.gpu
@pytest.mark.parametrize("H", [12, 16])  # ModernBERT-base and -large, head dim 64
@pytest.mark.parametrize("compiled", [False, True])
def test_band_attention_matches_float64_reference_on_gpu(H, compiled, backward_path):
    _check([600, 1024, 77, 3000, 1, 64, 65], H, 64, 128, torch.bfloat16, "cuda", 2e-2, compiled)


@pytest.mark.gpu
def test_split_backward_is_bitwise_reproducible_on_gpu():
    """Under torch.use_deterministic_algorithms(True), two backwards of the same inputs give the same bits."""
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            cu = cu_seqlens_from_lengths(torch.tensor([600, 77, 3000])).cuda()
            g = torch.Generator().manual_seed(0)
            q, k, v = (
                torch.randn(3677, 12, 64, generator=g).cuda().bfloat16().requires_grad_() for _ in range(3)
            )
            band_attention.band_attention(q, k, v, cu, 128).sum().backward()
            grads.append([x.grad for x in (q, k, v)])
        for a, b in zip(*grads):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)
