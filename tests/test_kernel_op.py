"""`kernels.op.autograd_op`, the one way a kernel becomes an op: gradients against autograd of the same
computation, None for None inputs and constants, the fake under FakeTensorMode and torch.compile(fullgraph)."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from flex_bert.kernels.op import autograd_op

RAN = []  # names of the real implementations that ran


def _fwd(x: torch.Tensor, y: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    RAN.append("fwd")
    out = x * scale if y is None else x * scale + y
    return out, x.sum(0)


def _fwd_fake(x, y, scale):
    return torch.empty_like(x), x.new_empty(x.shape[1:])


def _bwd(d_out: torch.Tensor, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    RAN.append("bwd")
    assert d_out.is_contiguous()
    return d_out * scale * x / x, d_out.clone()  # (d_x, d_y): d_y unused when y is None


def _bwd_fake(d_out, x, scale):
    return torch.empty_like(x), torch.empty_like(x)


FWD, BWD = autograd_op(
    "test_scaled_add",
    _fwd,
    _fwd_fake,
    _bwd,
    _bwd_fake,
    save=lambda inputs, outputs: ((inputs[0],), (inputs[2],)),
    differentiable=(0,),
)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.5
    return x.requires_grad_(True), torch.rand(5, 3, generator=g, dtype=torch.float64).requires_grad_(True)


def test_gradients_match_autograd_of_the_composition():
    x, y = _inputs()
    grad = torch.randn(3, 5, dtype=torch.float64).T  # not contiguous: the helper makes it so
    out, total = FWD(x, y, 2.5)
    assert not total.requires_grad  # not in `differentiable`
    out.backward(grad)
    xr, yr = (t.detach().clone().requires_grad_(True) for t in (x, y))
    (xr * 2.5 + yr).backward(grad)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(y.grad, yr.grad)


def test_a_none_input_gets_no_gradient():
    x, _ = _inputs()
    out, _ = FWD(x, None, 2.0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_fake_mode_and_compile_use_the_fakes():
    with FakeTensorMode():
        RAN.clear()
        out, total = FWD(torch.empty(7, 4), None, 1.0)
        assert out.shape == (7, 4) and total.shape == (4,) and RAN == []
    x, y = _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: FWD(a, b, 3.0)[0].sum(), backend="aot_eager", fullgraph=True)
    compiled(x, y).backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    torch.testing.assert_close(y.grad, torch.ones_like(y))


def test_eager_calls_skip_the_custom_op_and_compute_what_it_computes():
    """In plain eager mode the op runs as an autograd.Function (no custom-op dispatch); the registered custom op
    (what torch.compile and FakeTensorMode use) gives the same outputs and gradients."""
    grads = []
    for op in (FWD, torch.ops.flex_bert.test_scaled_add.default):
        x, y = _inputs()
        out, total = op(x, y, 1.5)
        grads.append((out.detach(), total.detach(), type(out.grad_fn).__name__))
        (out * out).sum().backward()
        grads[-1] += (x.grad, y.grad)
    (out_e, total_e, fn_e, dx_e, dy_e), (out_c, total_c, fn_c, dx_c, dy_c) = grads
    assert fn_e == "EagerBackward" and fn_c.startswith("GeneratedBackwardFor_flex_bert_test_scaled_add")
    for a, b in ((out_e, out_c), (total_e, total_c), (dx_e, dx_c), (dy_e, dy_c)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
