"""The MLP as one op (kernels/fused_mlp.py) against a float64 reference: `Wo(gelu(a) * g)` of
`a, g = Wi(x).chunk(2)`, forward and the gradients of x, Wi, bi, Wo and bo by autograd, the gate's gradient
computed in the epilogue of Wo's input gradient. On the CPU the kernels run in Triton's interpreter
(tests/conftest.py), in fp32 and fp16 (their bf16 products are wrong there)."""

import pytest
import torch
import torch.nn.functional as F

from flex_bert.kernels import fused_glu, fused_mlp


def _reference(x, wi, bi, wo, bo):
    a, g = F.linear(x, wi, bi).chunk(2, dim=-1)
    return F.linear(F.gelu(a, approximate="none") * g, wo, bo)


def _check(T, C, N, bias, dtype, device, tol):
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype).requires_grad_(True)

    x, wi, wo = leaf(T, C), leaf(2 * N, C, scale=C**-0.5), leaf(C, N, scale=N**-0.5)
    bi, bo = (leaf(2 * N), leaf(C)) if bias else (None, None)
    grad = torch.randn(T, C, generator=gen).to(device, dtype)
    if device == "cuda":
        assert fused_mlp.fits(x, wi, wo)
    y = fused_mlp.mlp(x, wi, bi, wo, bo)
    assert y.shape == (T, C) and y.dtype == dtype
    y.backward(grad)
    params = (x, wi, bi, wo, bo) if bias else (x, wi, wo)
    leaves = [t.detach().cpu().double().requires_grad_(True) for t in params]
    x64, wi64, bi64, wo64, bo64 = leaves if bias else (leaves[0], leaves[1], None, leaves[2], None)
    want = _reference(x64, wi64, bi64, wo64, bo64)
    torch.testing.assert_close(y.detach().cpu().double(), want.detach(), rtol=tol, atol=tol)
    want.backward(grad.cpu().double())
    for got, ref in zip(params, leaves):
        # sums over T (weights, biases) or N, 2 N (x) products, rounded once to the dtype: against the largest
        err = (got.grad.cpu().double() - ref.grad).abs().max().item()
        assert err <= tol * ref.grad.abs().max().item()


def _interpreter_only():
    import triton

    if not triton.knobs.runtime.interpret:
        pytest.skip("Triton's interpreter is off (a GPU is present: the gpu tests run the kernels)")


# ragged token tiles, gate widths that are not a multiple of the tile, with and without biases
@pytest.mark.parametrize("T, C, N, bias", [(37, 64, 24, True), (130, 128, 160, False)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_mlp_matches_float64_reference_in_the_interpreter(T, C, N, bias, dtype, tol):
    _interpreter_only()
    _check(T, C, N, bias, dtype, "cpu", tol)


@pytest.mark.parametrize(
    "config", [(16, 32, 32, 3, 4, 2, 0), (32, 16, 64, 2, 4, 3, 1), (32, 32, 64, 2, 4, 3, 2)]
)
def test_gate_input_gradient_in_other_tiles_in_the_interpreter(config):
    """The backward kernel alone in other tile configurations (a partial last group, tails in N, persistent,
    warp-specialised) against Wo's input gradient followed by the gate's backward kernel, in fp32."""
    _interpreter_only()
    gen = torch.Generator().manual_seed(0)
    T, C, N = 100, 64, 40
    dy, wo, h = (
        torch.randn(T, C, generator=gen),
        torch.randn(C, N, generator=gen),
        torch.randn(T, 2 * N, generator=gen),
    )
    want = fused_glu.gate_backward(dy @ wo, h)
    torch.testing.assert_close(fused_mlp.gate_input_gradient(dy, wo, h, config), want, rtol=1e-5, atol=1e-5)


def test_fits_refuses_what_the_kernels_cannot_take():
    x = torch.zeros(4, 768, dtype=torch.bfloat16)
    wi, wo = torch.zeros(2304, 768, dtype=torch.bfloat16), torch.zeros(768, 1152, dtype=torch.bfloat16)
    assert fused_mlp.fits(x, wi, wo)
    assert not fused_mlp.fits(x, wi, wo.float())  # mixed dtypes
    assert not fused_mlp.fits(x, wi, wo[:, :1000])  # Wo not (C, N)
    assert not fused_mlp.fits(x, wi[:2300], wo[:, :1150])  # N = 1150: rows of h not 16-byte aligned


@pytest.mark.gpu
@pytest.mark.parametrize("C, N, bias", [(768, 1152, False), (1024, 2624, True)])  # ModernBERT-base, -large
def test_mlp_matches_float64_reference_on_gpu(C, N, bias):
    _check(5000, C, N, bias, torch.bfloat16, "cuda", 2e-2)


@pytest.mark.parametrize(
    "dropout, training, one_op",
    [(0.0, True, True), (0.1, False, True), (0.1, True, False), (0.0, False, True)],
)
def test_glu_mlp_runs_the_one_op_only_where_no_dropout_applies(monkeypatch, dropout, training, one_op):
    """`ops.glu_mlp` routes to `fused_mlp` (no dropout between the gate and Wo) only where dropout is a no-op
    (CPU test: a stand-in for the kernel module the policy would give on a GPU)."""
    from types import SimpleNamespace

    from flex_bert.kernels import ops, policy

    calls = []
    stub = SimpleNamespace(mlp=lambda x, *args: calls.append("mlp") or torch.zeros_like(x))
    monkeypatch.setattr(
        policy, "kernel", lambda name, *tensors, enabled=True: stub if name == "mlp" else None
    )
    wi, wo = torch.nn.Linear(8, 32), torch.nn.Linear(16, 8)
    x = torch.randn(5, 8)
    out = ops.glu_mlp(x, wi, dropout, wo, training, fused=True)
    assert (calls == ["mlp"]) == one_op
    if not one_op:  # the composition, with its dropout
        assert out.shape == (5, 8) and not torch.equal(out, torch.zeros_like(out))


def test_no_tokens_backward_in_the_interpreter():
    """T = 0 forward and backward: empty outputs, zero-size input gradients, zero weight gradients."""
    _interpreter_only()
    from flex_bert.kernels import fused_wi_glu

    x = torch.randn(0, 64, requires_grad=True)
    wi, wo = torch.randn(48, 64, requires_grad=True), torch.randn(64, 24, requires_grad=True)
    for out in (fused_mlp.mlp(x, wi, None, wo, None), fused_wi_glu.wi_gelu_gate(x, wi, None)):
        out.sum().backward()
        assert out.shape[0] == 0 and x.grad.shape == (0, 64) and not wi.grad.any()


def test_backward_runs_three_cublas_products_in_the_interpreter():
    """Wo's input gradient is the kernel's: the backward leaves cuBLAS only dWo, dx and dWi (a fourth product would
    compute the gradient of the gate's output the kernel exists not to write)."""
    _interpreter_only()
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountProducts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                self.shapes.append(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    x = torch.randn(37, 64, requires_grad=True)
    wi, wo = torch.randn(48, 64, requires_grad=True), torch.randn(64, 24, requires_grad=True)
    y = fused_mlp.mlp(x, wi, None, wo, None)
    with CountProducts() as products:
        y.sum().backward()
    assert len(products.shapes) == 3, products.shapes
