"""The QKV projection's FP8 forward (`model_config.fp8_qkv`): `fused_qkv`'s kernel on FP8 operands, alone and
inside `fused_qkv_band`, and `fp8.linear` (the composition), against float64 computations on the same
row-quantized operands (forward), and on the unquantized ones (the gradients, which stay in the dtype the
projection runs in). On the CPU the kernels run in Triton's interpreter (tests/conftest.py). A model with it:
test_fp8_model.py."""

import pytest
import torch
from _attention_references import band_attention_reference, qkv_rotary_reference

from flex_bert.kernels import fp8, fp8_rows, fused_qkv, fused_qkv_band
from flex_bert.kernels.fp8 import FP8, quantize_rows
from flex_bert.kernels.rotary import positions_from_cu_seqlens, rotary_cos_sin
from flex_bert.model.padding import cu_seqlens_from_lengths
from tests._parity import tiny_config


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _deq(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    values, scales = pair
    return values.double().cpu() * scales.double().cpu()


def _case(lengths, H, D, C, dtype, device):
    """cos, sin, cu_seqlens, x (rows of very different sizes), the weight, x's FP8 copy (`quantize_rows`), the
    float64 leaves and the dequantized operands of the forward: x's, and the weight's as `fp8_rows` quantizes it
    inside `fused_qkv` (on a GPU bitwise `quantize_rows`; in the interpreter the same kernel)."""
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    T = int(cu[-1])
    cos, sin = rotary_cos_sin(positions_from_cu_seqlens(cu, T), D, 10000.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, C, generator=g) * torch.logspace(-2, 2, T)[torch.randperm(T, generator=g), None]
    w = torch.randn(3 * H * D, C, generator=g) / C**0.5
    x, w = (t.to(device, dtype).requires_grad_(True) for t in (x, w))
    x_fp8 = quantize_rows(x.detach())
    operands = (_deq(x_fp8), _deq(fp8_rows.quantize_rows(w.detach(), FP8)))
    leaves = tuple(t.detach().cpu().double().requires_grad_(True) for t in (x, w))
    return cos.to(device), sin.to(device), cu.to(device), x, w, x_fp8, leaves, operands


def _check_qkv(lengths, H, D, C, dtype, device, tol, config=None):
    cos, sin, _, x, w, x_fp8, (x64, w64), operands = _case(lengths, H, D, C, dtype, device)
    if config is not None:  # the forward kernel alone, in another tile configuration
        outs = fused_qkv.launch(x.detach(), w.detach(), None, cos, sin, H, config, x_fp8)
    else:
        outs = fused_qkv.qkv_rotary(x, w, None, cos, sin, H, x_fp8)
    args = (None, cos.double().cpu(), sin.double().cpu(), H)
    want = qkv_rotary_reference(x64, w64, *args, forward_operands=operands)
    exact = qkv_rotary_reference(x64.detach(), w64.detach(), *args)
    for got, ref, unquantized in zip(outs, want, exact):
        assert got.dtype == dtype and got.shape == ref.shape
        assert _rel(got.cpu(), ref) < tol, _rel(got.cpu(), ref)
        assert _rel(got.cpu(), unquantized) > 5e-3  # FP8 is really used (about 3% for these operands)
    if config is None:
        grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(o) for o in outs]
        torch.autograd.backward(outs, grads)
        torch.autograd.backward(want, [gr.double().cpu() for gr in grads])
        for got, ref in zip((x, w), (x64, w64)):
            err = (got.grad.cpu().double() - ref.grad).abs().max().item()
            assert err <= tol * ref.grad.abs().max().item()


@pytest.mark.parametrize(
    "lengths, H, D, C", [([5, 17, 1, 9], 3, 8, 64), ([40, 30], 4, 16, 128)]
)  # BLOCK_K 64 (C allows no more) and 128 (FP8's doubled box); one and several heads a tile
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.interpreter
def test_fused_qkv_fp8_matches_float64_on_its_quantized_operands_in_the_interpreter(
    lengths, H, D, C, dtype, tol
):
    """Forward: the product of the two row-quantized operands, scaled per token and per weight row (the weight's
    scales in the tiles' row order), rotated, rounded once. Gradients: those of the unquantized projection."""
    _check_qkv(lengths, H, D, C, dtype, "cpu", tol)


@pytest.mark.parametrize(
    "config", [(16, 2, 32, 3, 4, 2, 0), (32, 1, 64, 2, 4, 3, 1)]
)  # partial group, persistent
@pytest.mark.interpreter
def test_fused_qkv_fp8_forward_in_other_tiles_in_the_interpreter(config):
    _check_qkv([33, 7, 60], 4, 16, 64, torch.float32, "cpu", 1e-5, config)


def _check_band(lengths, H, D, C, window, dtype, device, tol):
    cos, sin, cu, x, w, x_fp8, (x64, w64), operands = _case(lengths, H, D, C, dtype, device)
    out = fused_qkv_band.qkv_band_attention(x, w, None, cos, sin, cu, H, window, x_fp8)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    out.backward(grad)
    args = (None, cos.double().cpu(), sin.double().cpu(), H)
    q, k, v = qkv_rotary_reference(x64, w64, *args, forward_operands=operands)
    want = band_attention_reference(q, k, v, lengths, window // 2)
    want.backward(grad.double().cpu())
    assert _rel(out.detach().cpu(), want.detach()) < tol
    for got, ref in zip((x, w), (x64, w64)):
        err = (got.grad.cpu().double() - ref.grad).abs().max().item()
        assert err <= tol * ref.grad.abs().max().item()


@pytest.mark.interpreter
def test_qkv_band_attention_fp8_matches_float64_in_the_interpreter(backward_path):
    """The local layer's op with an FP8 projection: attention of the quantized product's q, k, v; the band
    backward at those q, k, v, then the projection's gradients on the unquantized x and weight."""
    _check_band([5, 40, 1, 90, 3], 2, 16, 64, 32, torch.float32, "cpu", 1e-4)


def test_fp8_linear_forward_is_the_quantized_product_and_its_gradients_the_exact_ones():
    """`fp8.linear` (the composition, `torch._scaled_mm` on the CPU): the product of the row-quantized operands
    rounded to bf16 (what `_scaled_mm` writes: within one bf16 rounding of the float64 product), gradients dy W
    and dy^T x of the unquantized operands."""
    _, _, _, x, w, _, (x64, w64), (xq, wq) = _case([50, 30], 2, 16, 64, torch.float32, "cpu")
    w_fp8 = quantize_rows(w.detach())  # what the composition quantizes with (PyTorch's rounding)
    y = fp8.linear(x, w, fused=False)
    assert y.dtype == torch.float32
    want = xq @ _deq(w_fp8).t()
    assert ((y.detach().double() - want).abs() <= 2**-8 * want.abs() + 1e-30).all()
    assert _rel(y.detach(), x64 @ w64.t()) > 5e-3
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    y.backward(dy)
    for got, ref in ((x.grad, dy.double() @ w64.detach()), (w.grad, dy.double().t() @ x64.detach())):
        assert (got.double() - ref).abs().max() <= 1e-6 * ref.abs().max()  # fp32 sums, against the largest


@pytest.mark.interpreter
def test_quantize_rows_op_under_compile_feeds_fused_qkv_and_its_backward_in_the_interpreter():
    """`fp8_rows.quantize_rows` is an op torch.compile keeps whole, and its outputs carry no gradient: it runs
    outside other ops' implementations (layer 0's joint quantizes x, which requires grad, for `fused_qkv`). Traced
    by AOT autograd (`aot_eager`: the graphs compile_layers builds, without Inductor), forward and backward give
    eager's values; an op without that autograd fails the backward there."""
    cos, sin, _, x, w, _, _, _ = _case([30, 10], 4, 16, 64, torch.float32, "cpu")

    def f(x, w):
        h = x * 2
        qkv = fused_qkv.qkv_rotary(h, w, None, cos, sin, 4, fp8_rows.quantize_rows(h, FP8))
        return sum(t.sum() for t in qkv)

    runs = []
    for fn in (f, torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")):
        x.grad = w.grad = None
        out = fn(x, w)
        out.backward()
        runs.append((out.detach(), x.grad, w.grad))
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "overrides", [{"attn_qkv_bias": True}, {"hidden_size": 72, "num_attention_heads": 3}]
)
def test_fp8_qkv_refuses_what_its_product_does_not_compute(overrides):
    with pytest.raises(ValueError, match="fp8_qkv needs attn_qkv_bias false"):
        tiny_config(128, fp8_qkv=True, **overrides)


@pytest.mark.gpu
@pytest.mark.parametrize("H", [12, 16])  # ModernBERT-base and -large, head dim 64
def test_fused_qkv_fp8_matches_float64_on_gpu(H):
    _check_qkv([600, 1024, 77, 3000, 1], H, 64, 64 * H, torch.bfloat16, "cuda", 1e-2)


@pytest.mark.gpu
def test_qkv_band_attention_fp8_matches_float64_on_gpu(backward_path):
    _check_band([600, 1024, 77, 300, 1, 64, 65], 12, 64, 768, 128, torch.bfloat16, "cuda", 2e-2)
