"""The MLP block with FP8 products (`kernels/fp8_mlp.py`, `model_config.fp8_mlp`) against float64 computations:
of the block itself (FP8's rounding bounds the distance) and of the same row-quantized products (emulated
in float64 with torch's own float64 -> e4m3 rounding, so only bf16 roundings and rare ties separate them)."""

import pytest
import torch
import torch.nn.functional as F

from flex_bert.kernels import fp8_mlp
from flex_bert.kernels.fp8 import FP8, FP8_MAX, quantize_rows
from tests._fp8 import assert_fp8_rows
from tests._parity import tiny_config


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _deq64(x: torch.Tensor) -> torch.Tensor:
    """x quantized per row in float64 (scale amax / 448, torch's float64 -> e4m3 rounding) and dequantized."""
    s = x.double().abs().amax(1, keepdim=True).clamp(min=1e-300) / FP8_MAX
    return (x.double() / s).to(FP8).double() * s


def _block64(x, wi, wo, quantized: bool):
    """(y, dx, dwi, dwo) of the block for dy = 1 / T, in float64; quantized: the three FP8 products on
    row-quantized operands (h and y rounded to bf16 as `torch._scaled_mm` writes them)."""
    q = _deq64 if quantized else (lambda t: t.double())
    r = (lambda t: t.to(torch.bfloat16).double()) if quantized else (lambda t: t)
    x, wi, wo = (t.detach().double() for t in (x, wi, wo))
    h = r(q(x) @ q(wi).t()).requires_grad_(True)
    a, g = h.chunk(2, dim=-1)
    z = F.gelu(a) * g
    y = r(q(z) @ q(wo).t())
    dy = torch.full_like(y, 1 / y.shape[0])
    dz = dy @ wo
    dh = torch.autograd.grad(z, h, dz)[0]
    return y, r(q(dh) @ q(wi.t()).t()), dh.t() @ x, dy.t() @ z.detach()


def _inputs(T=96, C=64, N=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, generator=g) * torch.logspace(-2, 2, T)[:, None]  # rows of very different sizes
    wi = torch.randn(2 * N, C, generator=g) / C**0.5
    wo = torch.randn(C, N, generator=g) / N**0.5
    return x, wi, wo


def test_quantize_rows_scales_each_row_to_e4m3s_range():
    x = torch.randn(6, 32) * torch.tensor([1e-3, 1.0, 50.0, 1e4, 0.0, 3.0])[:, None]
    x8, s = quantize_rows(x)
    assert x8.dtype == FP8 and s.shape == (6, 1) and s.dtype == torch.float32
    amax = x.abs().amax(1)
    assert torch.equal(s[:, 0][amax > 0], (amax / FP8_MAX)[amax > 0])
    assert torch.equal(
        x8.float().abs().amax(1)[amax > 0], torch.full((5,), FP8_MAX)
    )  # each row's amax -> 448
    assert torch.equal(x8[4].float(), torch.zeros(32))  # a zero row stays zero
    back = x8.float() * s
    assert ((back - x).abs() <= x.abs() * 2**-4 + s * 2**-9).all()  # e4m3: 3 mantissa bits, subnormals 2^-9


def _check_quantize_kernel(device, exact):
    """`fp8_rows.quantize_rows` against `quantize_rows`, on a row-major tensor and on a transposed view (Wi^T),
    with a zero row."""
    from flex_bert.kernels import fp8_rows

    x = _inputs(T=40, C=48)[0].to(device, torch.bfloat16)
    x[5] = 0
    for t in (x, x.t()):
        out8, scale = fp8_rows.quantize_rows(t, FP8)
        assert out8.is_contiguous()
        assert_fp8_rows(out8, scale, t, exact)


@pytest.mark.interpreter
def test_quantize_kernel_in_the_interpreter():

    _check_quantize_kernel("cpu", exact=False)


@pytest.mark.gpu
def test_quantize_kernel_on_gpu():
    _check_quantize_kernel("cuda", exact=True)


def test_fp8_glu_matches_float64_references_forward_and_backward():
    """Forward and all three gradients: within 0.2% of the float64 emulation of its own row-quantized products,
    and within FP8's rounding of the exact block (about 4% a product for random operands; dx goes through four
    roundings: x, Wi, dh and Wi^T), and not closer than FP8 would be (an unquantized product would). A
    transposed operand or a scale on the wrong side would be off by order 1 in both."""
    x, wi, wo = _inputs()
    xs, wis, wos = (t.clone().requires_grad_(True) for t in (x, wi, wo))
    y = fp8_mlp.fp8_glu(xs, wis, wos, fused=True)  # CPU: the composition
    assert y.dtype == torch.float32 and y.shape == (96, 64)
    y.backward(torch.full_like(y, 1 / y.shape[0]))
    got = (y.detach(), xs.grad, wis.grad, wos.grad)
    emulated, exact = _block64(x, wi, wo, quantized=True), _block64(x, wi, wo, quantized=False)
    for name, a, e, ex in zip(("y", "dx", "dwi", "dwo"), got, emulated, exact):
        assert _rel(a, e) < 2e-3, (name, _rel(a, e))
        assert 5e-3 < _rel(a, ex) < 0.15, (name, _rel(a, ex))


def test_fp8_glu_compiles_to_one_graph_and_matches_eager():
    x, wi, wo = _inputs(T=64)
    fn = torch.compile(lambda x, wi, wo: fp8_mlp.fp8_glu(x, wi, wo, True), fullgraph=True, dynamic=True)
    torch.testing.assert_close(fn(x, wi, wo), fp8_mlp.fp8_glu(x, wi, wo, True), rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mlp_dropout_prob": 0.1}, "mlp_dropout_prob 0"),
        ({"mlp_in_bias": True}, "mlp_in_bias"),
        ({"intermediate_size": 100}, "divisible by 16"),
    ],
)
def test_fp8_mlp_refuses_what_its_block_does_not_compute(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(128, fp8_mlp=True, **overrides)


@pytest.mark.gpu
def test_fp8_glu_on_gpu_matches_float64_references():
    """On CUDA (Hopper): the gate's kernels and cuBLAS's FP8 products, bf16 operands as under autocast, against
    the same float64 references as on the CPU."""
    x, wi, wo = (t.cuda().to(torch.bfloat16) for t in _inputs(T=1000, C=256, N=384))
    xs, wis, wos = (t.clone().requires_grad_(True) for t in (x, wi, wo))
    y = fp8_mlp.fp8_glu(xs, wis, wos, fused=True)
    assert y.dtype == torch.bfloat16
    y.backward(torch.full_like(y, 1 / y.shape[0]))
    got = (y.detach(), xs.grad, wis.grad, wos.grad)
    emulated, exact = _block64(x, wi, wo, quantized=True), _block64(x, wi, wo, quantized=False)
    for name, a, e, ex in zip(("y", "dx", "dwi", "dwo"), got, emulated, exact):
        assert _rel(a, e) < 2e-2, (name, _rel(a, e))
        assert _rel(a, ex) < 0.15, (name, _rel(a, ex))
