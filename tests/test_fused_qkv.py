"""The QKV projection with rotary in its epilogue (kernels/fused_qkv.py) against a float64 reference: the
projection, split into heads, q and k rotated (rotate-half), forward and gradients by autograd. On the CPU the
kernel runs in Triton's interpreter (tests/conftest.py), in fp32 and fp16 (its bf16 products are wrong there)."""

import pytest
import torch
from _attention_references import qkv_rotary_reference

from flex_bert.kernels import fused_qkv
from flex_bert.kernels.rotary import positions_from_cu_seqlens, rotary_cos_sin
from flex_bert.model.padding import cu_seqlens_from_lengths


def _check(lengths, H, D, C, bias, dtype, device, tol, config=None):
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    T = int(cu[-1])
    cos, sin = rotary_cos_sin(positions_from_cu_seqlens(cu, T), D, 10000.0)
    cos, sin = cos.to(device), sin.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, C, generator=g).to(device, dtype).requires_grad_(True)
    w = (torch.randn(3 * H * D, C, generator=g) / C**0.5).to(device, dtype).requires_grad_(True)
    b = torch.randn(3 * H * D, generator=g).to(device, dtype).requires_grad_(True) if bias else None
    grads = [torch.randn(T, H, D, generator=g).to(device, dtype) for _ in range(3)]
    if device == "cuda":
        assert fused_qkv.fits(x, w, cos, H)
    if config is not None:  # the forward kernel alone, in another tile configuration
        outs = fused_qkv.launch(
            x.detach(), w.detach(), None if b is None else b.detach(), cos, sin, H, config
        )
    else:
        outs = fused_qkv.qkv_rotary(x, w, b, cos, sin, H)
        torch.autograd.backward(outs, grads)
    assert all(o.shape == (T, H, D) and o.dtype == dtype and o.is_contiguous() for o in outs)
    leaves = [t.detach().double().requires_grad_(True) for t in (x, w) + ((b,) if bias else ())]
    x64, w64, b64 = leaves[0], leaves[1], leaves[2] if bias else None
    want = qkv_rotary_reference(x64, w64, b64, cos.double(), sin.double(), H)
    for got, ref in zip(outs, want):
        torch.testing.assert_close(got.double(), ref.detach(), rtol=tol, atol=tol)
    if config is None:
        torch.autograd.backward(want, [gr.double() for gr in grads])
        for got, ref in zip((x, w, b), leaves):
            # sums over T (weight, bias) or 3 H D (x) products, rounded once to the dtype: against the largest
            err = (got.grad.double() - ref.grad).abs().max().item()
            assert err <= tol / 2 * ref.grad.abs().max().item()


INTERPRETER_CASES = [  # ragged token tiles, one and several heads per tile, with and without bias; tiles
    # narrower than a GPU's matrix product takes (`fits` keeps those from the GPU) run in the interpreter
    ([5, 17, 1, 9], 3, 8, 64, True),
    ([40, 30], 4, 16, 64, False),
    ([70], 2, 32, 128, True),
]


@pytest.mark.parametrize("lengths, H, D, C, bias", INTERPRETER_CASES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.interpreter
def test_qkv_rotary_matches_float64_reference_in_the_interpreter(lengths, H, D, C, bias, dtype, tol):
    _check(lengths, H, D, C, bias, dtype, "cpu", tol)


@pytest.mark.parametrize(
    "config", [(16, 2, 32, 3, 4, 2, 0), (32, 1, 64, 2, 4, 3, 1), (32, 2, 64, 2, 4, 3, 2)]
)  # a partial last group of 3 token tiles, persistent, warp-specialised
@pytest.mark.interpreter
def test_qkv_rotary_forward_in_other_tiles_in_the_interpreter(config):
    _check([33, 7, 60], 4, 16, 64, True, torch.float32, "cpu", 1e-5, config)


def test_fits_refuses_what_the_kernel_cannot_take():
    cos = torch.zeros(4, 64)
    x, w = torch.zeros(4, 768, dtype=torch.bfloat16), torch.zeros(3 * 768, 768, dtype=torch.bfloat16)
    assert fused_qkv.fits(x, w, cos, 12)
    assert not fused_qkv.fits(x.float(), w.float(), cos, 12)  # fp32 runs the composition on a GPU
    assert not fused_qkv.fits(x, w.half(), cos, 12)  # mixed dtypes
    assert not fused_qkv.fits(x, w, cos.bfloat16(), 12)  # bf16 tables
    assert not fused_qkv.fits(x, w, cos, 8)  # head dim 96: not a power of two
    x16, w16 = torch.zeros(4, 64, dtype=torch.bfloat16), torch.zeros(3 * 64, 64, dtype=torch.bfloat16)
    assert fused_qkv.fits(x16, w16, cos, 4) and not fused_qkv.fits(x16, w16, cos, 16)  # tiles 32 and 8 wide
    w512 = torch.zeros(3 * 1024, 256, dtype=torch.bfloat16)  # head dim 512: one head is a 256-wide tile
    assert not fused_qkv.fits(x[:, :256], w512, cos, 2)
    assert fused_qkv._heads_per_tile(8, 128, 4) == 2  # head dim 128: 2 heads make the widest tile, 128
    assert not fused_qkv.fits(x[:, :720], w[:, :720], cos, 12)  # C not a multiple of BLOCK_K


@pytest.mark.gpu
@pytest.mark.parametrize("H, bias", [(12, False), (16, True)])  # ModernBERT-base and -large, head dim 64
def test_qkv_rotary_matches_float64_reference_on_gpu(H, bias):
    _check([600, 1024, 77, 3000, 1], H, 64, 64 * H, bias, torch.bfloat16, "cuda", 2e-2)


@pytest.mark.interpreter
def test_awkward_inputs_in_the_interpreter():
    """A bias that is a strided view, a weight 4 bytes off the 16-byte boundary a TMA box needs (one head per
    tile, where the weight is not copied), no tokens, and an output that reaches no loss."""
    g = torch.Generator().manual_seed(0)
    T, C, H, D = 37, 64, 3, 16
    cos, sin = rotary_cos_sin(torch.arange(T) % 11, D, 10000.0)
    x = torch.randn(T, C, generator=g)
    storage = torch.randn(3 * H * D * C + 1, generator=g) / C**0.5
    w = storage[1:].view(3 * H * D, C)  # starts 4 bytes into its storage
    b = torch.randn(3 * H * D, 2, generator=g)[:, 1]  # stride 2
    assert w.data_ptr() % 16 and not b.is_contiguous()
    want = qkv_rotary_reference(x.double(), w.double(), b.double(), cos.double(), sin.double(), H)
    for got, ref in zip(fused_qkv.qkv_rotary(x, w, b, cos, sin, H), want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    empty = fused_qkv.qkv_rotary(x[:0], w, b, cos[:0], sin[:0], H)
    assert all(o.shape == (0, H, D) for o in empty)
    xg = x.clone().requires_grad_(True)
    q, k, v = fused_qkv.qkv_rotary(xg, w, None, cos, sin, H)
    (q.sum() + k.sum()).backward()  # v reaches no loss: its gradient is zero, not an error
    x64 = x.double().requires_grad_(True)
    q64, k64, _ = qkv_rotary_reference(x64, w.double(), None, cos.double(), sin.double(), H)
    (q64.sum() + k64.sum()).backward()
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("major, runs", [(8, False), (9, True), (10, True)])
def test_policy_runs_it_on_hopper_and_newer_only(monkeypatch, major, runs):
    """`policy.kernel` keeps a kernel off GPUs below its module's MIN_CAPABILITY (CPU test: stand-ins for the
    CUDA tensors and the GPU's generation)."""
    from types import SimpleNamespace

    from flex_bert.kernels import policy

    monkeypatch.setattr(policy, "_major", lambda device_index: major)
    cuda0 = torch.device("cuda", 0)
    x = SimpleNamespace(is_cuda=True, device=cuda0, dtype=torch.bfloat16, shape=(8, 768))
    w = SimpleNamespace(dtype=torch.bfloat16, shape=(3 * 768, 768))
    cos = SimpleNamespace(dtype=torch.float32)
    assert (policy.kernel("qkv_rotary", x, w, cos, 12) is fused_qkv) == runs
    assert (policy.usable("qkv_rotary", x) is fused_qkv) == runs  # what qkv_attention asks before casting
    assert policy.kernel("qkv_rotary", x, w, cos, 12, enabled=False) is None
