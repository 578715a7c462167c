"""The fused residual add + dropout + LayerNorm kernels (kernels/fused_norm.py) against float64 references.

On the CPU the Triton kernels run in Triton's interpreter (the same kernel source, executed with numpy); on a
GPU (`-m gpu`) compiled, eager and inside torch.compile. The reference is the plain composition
`x + dropout(branch)` then `layer_norm`, in float64, given the kernel's dropout mask (recovered by feeding it
a branch of ones).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flex_bert.kernels import add_norm, add_norm_fp8, fused_norm
from flex_bert.kernels.fp8 import FP8, quantize_rows
from tests._fp8 import assert_fp8_rows


@pytest.fixture
def interpreted(monkeypatch):
    """The kernels in Triton's interpreter, on CPU tensors: for tests marked `interpreter` (tests/conftest.py)."""
    monkeypatch.setattr(fused_norm, "_bwd_programs", lambda device: 3)  # several programs, a ragged last one


def _inputs(T, C, x_dtype, br_dtype, device, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, generator=g).to(device, x_dtype)
    br = torch.randn(T, C, generator=g).to(device, br_dtype)
    norm = nn.LayerNorm(C, bias=bias).to(device)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(C, generator=g))
        if bias:
            norm.bias.copy_(0.3 * torch.randn(C, generator=g))
    d_out = torch.randn(T, C, generator=g).to(device)
    d_x_new = torch.randn(T, C, generator=g).to(device)
    return x, br, norm, d_out, d_x_new


def _kernel_mask(T, C, p, device, rng_seed):
    """The keep-mask the kernel draws after `torch.manual_seed(rng_seed)` (same seed -> same mask)."""
    norm = nn.LayerNorm(C, bias=False).to(device)
    torch.manual_seed(rng_seed)
    x_new, _ = fused_norm.add_dropout_layer_norm(
        torch.zeros(T, C, device=device), torch.ones(T, C, device=device), norm, p
    )
    return x_new != 0


def _reference(x, br, norm, keep, p, d_out, d_x_new, x_new):
    """float64. x_new = x + br * keep / (1 - p), the dropout output rounded to br's dtype as F.dropout returns
    it. The LayerNorm and its gradients are taken at the kernel's own `x_new` (so that the rounding of x_new
    is not mistaken for an error of the norm): out = layer_norm(x_new), and for L = <out, d_out> +
    <x_new, d_x_new>: dL/dx = dL/dx_new, dL/dbr = dL/dx_new * keep / (1 - p), dL/dweight, dL/dbias."""
    want_x_new = x.double() + (br.double() * keep.double() / (1 - p)).to(br.dtype).double()
    xn = x_new.detach().double().requires_grad_(True)
    w64 = norm.weight.detach().double().requires_grad_(True)
    b64 = None if norm.bias is None else norm.bias.detach().double().requires_grad_(True)
    out = F.layer_norm(xn, (x.shape[1],), w64, b64, norm.eps)
    ((out * d_out.double()).sum() + (xn * d_x_new.double()).sum()).backward()
    grads = dict(
        x=xn.grad, br=xn.grad * keep.double() / (1 - p), w=w64.grad, b=None if b64 is None else b64.grad
    )
    return want_x_new, out.detach(), grads


def _check(T, C, p, x_dtype, br_dtype, out_dtype, bias, device, tol):
    x, br, norm, d_out, d_x_new = _inputs(T, C, x_dtype, br_dtype, device, bias)
    keep = _kernel_mask(T, C, p, device, rng_seed=7) if p > 0 else torch.ones(T, C, dtype=torch.bool)
    x_ = x.clone().requires_grad_(True)
    br_ = br.clone().requires_grad_(True)
    torch.manual_seed(7)
    x_new, out = fused_norm.add_dropout_layer_norm(x_, br_, norm, p, out_dtype)
    assert x_new.dtype == x_dtype and out.dtype == out_dtype
    ((out.float() * d_out).sum() + (x_new.float() * d_x_new).sum()).backward()
    # the gradients reach the kernel rounded to the dtypes of out and x_new
    d_out, d_x_new = d_out.to(out_dtype), d_x_new.to(x_dtype)
    ref_x_new, ref_out, ref = _reference(x, br, norm, keep.to(device), p, d_out, d_x_new, x_new)
    # x_new holds the branch rounded to br's dtype, as the reference does (but Triton's interpreter rounds to
    # bf16 toward zero, the GPU to nearest): one rounding of br's dtype apart
    x_tol = max(tol[x_dtype], tol[br_dtype])
    torch.testing.assert_close(x_new.double(), ref_x_new, rtol=x_tol, atol=x_tol)
    torch.testing.assert_close(out.double(), ref_out, rtol=tol[out_dtype], atol=tol[out_dtype])
    torch.testing.assert_close(x_.grad.double(), ref["x"], rtol=tol[x_dtype], atol=4 * tol[x_dtype])
    torch.testing.assert_close(br_.grad.double(), ref["br"], rtol=tol[br_dtype], atol=4 * tol[br_dtype])
    torch.testing.assert_close(norm.weight.grad.double(), ref["w"], rtol=1e-4, atol=1e-3)
    if bias:
        torch.testing.assert_close(norm.bias.grad.double(), ref["b"], rtol=1e-4, atol=1e-3)
    return keep


CPU_TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize(
    "T, C, p, x_dtype, br_dtype, out_dtype, bias",
    [
        (37, 48, 0.0, torch.float32, torch.float32, torch.float32, False),  # ragged rows, C not a power of 2
        (37, 48, 0.25, torch.float32, torch.bfloat16, torch.bfloat16, False),  # the autocast case
        (20, 64, 0.1, torch.float32, torch.float32, torch.float32, True),
        (9, 24, 0.0, torch.bfloat16, torch.bfloat16, torch.bfloat16, True),  # a bf16 stream
    ],
)
@pytest.mark.interpreter
def test_kernels_match_float64_reference_in_the_interpreter(
    interpreted, T, C, p, x_dtype, br_dtype, out_dtype, bias
):
    _check(T, C, p, x_dtype, br_dtype, out_dtype, bias, "cpu", CPU_TOL)


@pytest.mark.interpreter
def test_dropout_mask_is_bernoulli_and_the_same_in_both_passes(interpreted):
    """About p of the elements dropped, independently of the row; the backward uses the forward's mask
    (checked inside _check: the branch gradient is d_x_new + LN-grad masked by the forward's keep)."""
    keep = _kernel_mask(64, 64, 0.3, "cpu", rng_seed=1)
    assert abs((~keep).float().mean().item() - 0.3) < 0.03
    assert not torch.equal(keep[:32], keep[32:])  # offsets differ per element, not repeated per row
    # one Philox call serves 4 neighbouring columns: each of its 4 uniforms goes to a column of its own, and
    # every column position in a group drops about p
    groups = [keep[:, i::4] for i in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(groups) for b in groups[i + 1 :])
    assert all(abs((~g).float().mean().item() - 0.3) < 0.06 for g in groups)
    # the drops of two columns of one group are independent: P(both dropped) ~ p^2
    both = ((~groups[0]) & (~groups[1])).float().mean().item()
    assert abs(both - 0.09) < 0.03
    assert not torch.equal(keep, _kernel_mask(64, 64, 0.3, "cpu", rng_seed=2))  # a new seed, a new mask


def test_add_norm_falls_back_to_the_composition_on_cpu():
    """`add_norm` on CPU tensors is exactly `x + dropout(branch)` and `norm(x)` (the golden losses rely on
    this; the fused kernels run on CUDA only)."""
    x, br, norm, _, _ = _inputs(5, 16, torch.float32, torch.float32, "cpu", bias=False)
    torch.manual_seed(3)
    x_new, out = add_norm(x, br, norm, 0.5, training=True, fused=True)
    torch.manual_seed(3)
    want = x + F.dropout(br, 0.5, True)
    assert torch.equal(x_new, want) and torch.equal(out, norm(want))
    assert add_norm(x, None, norm, None, True, True)[0] is x


GPU_TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("C", [768, 1024])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_kernels_match_float64_reference_on_gpu(C, p):
    _check(3000, C, p, torch.float32, torch.bfloat16, torch.bfloat16, False, "cuda", GPU_TOL)


def _check_fp8(T, C, device, exact_fp8: bool):
    """The joint with `fp8_dtype`: x_new and out bitwise those of the joint without (same dropout mask: same
    seed), out's FP8 copy `quantize_rows(out)` (`assert_fp8_rows`), a zero row of out too; gradients equal."""
    x, br, norm, d_out, d_x_new = _inputs(T, C, torch.float32, torch.bfloat16, device, bias=False)
    with torch.no_grad():
        norm.weight[:] = norm.weight.abs() + 0.1
    x[3], br[3] = 0, 0  # a zero row: LayerNorm's output is zero there
    runs = []
    for fp8 in (None, FP8):
        xs, brs = x.clone().requires_grad_(True), br.clone().requires_grad_(True)
        torch.manual_seed(5)
        outs = fused_norm.add_dropout_layer_norm(xs, brs, norm, 0.1, torch.bfloat16, fp8_dtype=fp8)
        ((outs[0] * d_x_new).sum() + (outs[1].float() * d_out).sum()).backward()
        runs.append((outs, xs.grad, brs.grad))
    (x_new, out), dx, dbr = runs[0]
    (x_new8, out_, (out8, scale)), dx8, dbr8 = runs[1]
    assert torch.equal(x_new8, x_new) and torch.equal(out_, out) and not out[3].any()
    assert torch.equal(dx8, dx) and torch.equal(dbr8, dbr)
    assert_fp8_rows(out8, scale, out, exact_fp8)


@pytest.mark.interpreter
def test_fp8_copy_of_the_output_in_the_interpreter(interpreted):
    _check_fp8(9, 48, "cpu", exact_fp8=False)


def test_add_norm_fp8_falls_back_to_the_composition_on_cpu():
    """Without the kernel: `add_norm`'s outputs, and `quantize_rows` of norm(x)."""
    x, br, norm, _, _ = _inputs(6, 32, torch.float32, torch.float32, "cpu", bias=True)
    x_new, out, (out8, scale) = add_norm_fp8(x, br, norm, None, False, fused=False)
    want_x, want_out = add_norm(x, br, norm, None, False, fused=False)
    want8, want_scale = quantize_rows(want_out)
    assert torch.equal(x_new, want_x) and torch.equal(out, want_out)
    assert torch.equal(out8.float(), want8.float()) and torch.equal(scale, want_scale)


@pytest.mark.gpu
@pytest.mark.parametrize("C", [768, 1024])
def test_fp8_copy_of_the_output_on_gpu(C):
    _check_fp8(3000, C, "cuda", exact_fp8=True)
