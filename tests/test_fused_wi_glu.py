"""The MLP's input projection with the GLU gate in its epilogue (kernels/fused_wi_glu.py) against a float64
reference: `gelu(a) * g` of `a, g = (x @ W.T + b).chunk(2)`, forward and the gradients of x, W and b by autograd.
On the CPU the kernel runs in Triton's interpreter (tests/conftest.py), in fp32 and fp16 (its bf16 products are
wrong there)."""

import pytest
import torch
import torch.nn.functional as F

from flex_bert.kernels import fused_glu, fused_wi_glu


def _reference(x, w, b):
    a, g = (x @ w.t() + (0 if b is None else b)).chunk(2, dim=-1)
    return F.gelu(a, approximate="none") * g


def _check(T, C, N, bias, dtype, device, tol, config=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, C, generator=g).to(device, dtype).requires_grad_(True)
    w = (torch.randn(2 * N, C, generator=g) / C**0.5).to(device, dtype).requires_grad_(True)
    b = torch.randn(2 * N, generator=g).to(device, dtype).requires_grad_(True) if bias else None
    grad = torch.randn(T, N, generator=g).to(device, dtype)
    if device == "cuda":
        assert fused_wi_glu.fits(x, w)
    if config is not None:  # the forward kernel alone, in another tile configuration
        z, h = fused_wi_glu.launch(x.detach(), w.detach(), None if b is None else b.detach(), config)
        # the stored projection is the gate's input: the gate kernel of it gives z again, bit for bit
        assert torch.equal(fused_glu.gelu_gate(h), z)
    else:
        z = fused_wi_glu.wi_gelu_gate(x, w, b)
        z.backward(grad)
    assert z.shape == (T, N) and z.dtype == dtype and z.is_contiguous()
    leaves = [t.detach().cpu().double().requires_grad_(True) for t in (x, w) + ((b,) if bias else ())]
    want = _reference(leaves[0], leaves[1], leaves[2] if bias else None)
    torch.testing.assert_close(z.detach().cpu().double(), want.detach(), rtol=tol, atol=tol)
    if config is None:
        want.backward(grad.cpu().double())
        for got, ref in zip((x, w, b), leaves):
            # sums over T (weight, bias) or 2 N (x) products, rounded once to the dtype: against the largest
            err = (got.grad.cpu().double() - ref.grad).abs().max().item()
            assert err <= tol * ref.grad.abs().max().item()


def _interpreter_only():
    import triton

    if not triton.knobs.runtime.interpret:
        pytest.skip("Triton's interpreter is off (a GPU is present: the gpu tests run the kernel)")


# ragged token tiles; a gate width that is not a multiple of the tile (the last tile reads g's rows, or past
# the weight's end, for columns it does not store); with and without bias
@pytest.mark.parametrize("T, C, N, bias", [(37, 64, 24, True), (130, 128, 160, False), (5, 64, 128, True)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_wi_gelu_gate_matches_float64_reference_in_the_interpreter(T, C, N, bias, dtype, tol):
    _interpreter_only()
    _check(T, C, N, bias, dtype, "cpu", tol)


@pytest.mark.parametrize(
    "config", [(16, 32, 32, 3, 4, 2, 0), (32, 16, 64, 2, 4, 3, 1), (32, 32, 64, 2, 4, 3, 2)]
)  # a partial last group of 3 token tiles and tails in N, persistent, warp-specialised
def test_wi_gelu_gate_forward_in_other_tiles_in_the_interpreter(config):
    _interpreter_only()
    _check(100, 64, 40, True, torch.float16, "cpu", 1e-2, config)


def test_no_tokens_and_a_misaligned_weight_in_the_interpreter():
    _interpreter_only()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 64, generator=g)
    storage = torch.randn(2 * 24 * 64 + 1, generator=g) / 8
    w = storage[1:].view(48, 64)  # 4 bytes off the 16-byte boundary a TMA box needs: copied
    assert w.data_ptr() % 16
    torch.testing.assert_close(
        fused_wi_glu.wi_gelu_gate(x, w, None).double(),
        _reference(x.double(), w.double(), None),
        rtol=1e-5,
        atol=1e-5,
    )
    assert fused_wi_glu.wi_gelu_gate(x[:0], w, None).shape == (0, 24)


def test_fits_refuses_what_the_kernel_cannot_take():
    x, w = torch.zeros(4, 768, dtype=torch.bfloat16), torch.zeros(2304, 768, dtype=torch.bfloat16)
    assert fused_wi_glu.fits(x, w)
    assert not fused_wi_glu.fits(x.float(), w.float())  # fp32 runs the composition on a GPU
    assert not fused_wi_glu.fits(x, w.half())  # mixed dtypes
    assert not fused_wi_glu.fits(x, w[:2303])  # an odd number of rows is no (a, g) pair
    assert not fused_wi_glu.fits(x[:, :720], w[:, :720])  # C not a multiple of BLOCK_K


@pytest.mark.gpu
@pytest.mark.parametrize("C, N, bias", [(768, 1152, False), (1024, 2624, True)])  # ModernBERT-base, -large
def test_wi_gelu_gate_matches_float64_reference_on_gpu(C, N, bias):
    _check(5000, C, N, bias, torch.bfloat16, "cuda", 2e-2)
    _check(777, C, N, bias, torch.bfloat16, "cuda", 2e-2, fused_wi_glu.CONFIG)
