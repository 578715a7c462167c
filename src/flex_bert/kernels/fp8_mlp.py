"""The MLP block `Wo(gelu(a) * g)`, `a, g = Wi(x).chunk(2)`, with FP8 matrix products where the operands allow:
the opt-in `fp8_mlp` path. FP8 here is `fp8.py`'s: e4m3 scaled per row. Three of the block's six products run so:

    forward:   h = x Wi^T       (x and Wi quantized per row)
               y = z Wo^T       (z = gelu(a) * g and Wo quantized per row)
    backward:  dx = dh Wi       (dh and Wi^T quantized per row)

The others stay in the dtype the block runs in (bf16 under autocast): Wo's input gradient `dz = dy Wo` (dy comes
from outside the block, without an FP8 copy) and the weight gradients `dWo = dy^T z`, `dWi = dh^T x`, whose row
scales would lie along the summed dimension. Quantizing needs a row's amax before its first element is written,
so the cast costs a pass over the tensor unless the kernel that writes the tensor also writes its FP8 copy:
`fused_glu`'s FP8 kernels do so for z and dh (whole rows a program), and `fused_norm`'s for x
(`ops.add_norm_fp8`, the joint before the block); the weights are cast here, small, in one pass each
(`fp8_rows`; `scripts/bench_fp8.py` measures what casts cost).

The block is one op (`op.autograd_op`): its backward needs the FP8 copies of dh and of Wi^T, which autograd
would not pass between separate ops. Saved for the backward: x, h, z and the weights, what the bf16 block's
three ops save. The GELU gate runs as `fused_glu`'s kernels on CUDA, composed in PyTorch elsewhere (the CPU,
where `torch._scaled_mm` also runs, slowly, for tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import policy
from .fp8 import FP8, mm_rows, operands, quantize_rows, to_fp8_rows
from .op import autograd_op

_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def gate(h: torch.Tensor, fused: bool) -> torch.Tensor:
    """gelu(a) * g of h = (a, g): `fused_glu`'s kernel where the policy runs it, else its computation in fp32."""
    module = policy.kernel("gelu_gate", h, enabled=fused)
    if module is not None:
        return module.forward(h)
    a, g = h.float().chunk(2, dim=-1)
    return (F.gelu(a, approximate="none") * g).to(h.dtype)


def gate_backward(dz: torch.Tensor, h: torch.Tensor, fused: bool) -> torch.Tensor:
    """The gradient of h = (a, g) from dz: `fused_glu`'s backward kernel, else its computation in fp32."""
    module = policy.kernel("gelu_gate", h, enabled=fused)
    if module is not None:
        return module.backward(dz, h)
    a, g = h.float().chunk(2, dim=-1)
    dz = dz.float()
    cdf = 0.5 * (1.0 + torch.erf(a * _SQRT1_2))
    pdf = torch.exp(-0.5 * a * a) * _INV_SQRT_2PI
    return torch.cat([dz * g * (cdf + a * pdf), dz * a * cdf], dim=-1).to(h.dtype)


def gate_fp8(h: torch.Tensor, fused: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(z, quantize_rows(z)) for z = `gate(h)`: in one pass where `fused_glu`'s kernels run."""
    module = policy.kernel("gelu_gate", h, enabled=fused)
    if module is not None:
        z, z8, s = module.forward_fp8(h, FP8)
        return z, (z8, s)
    z = gate(h, fused)
    return z, quantize_rows(z)


def gate_backward_fp8(
    dz: torch.Tensor, h: torch.Tensor, fused: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(dh, quantize_rows(dh)) for dh = `gate_backward(dz, h)`: in one pass where `fused_glu`'s kernels run."""
    module = policy.kernel("gelu_gate", h, enabled=fused)
    if module is not None:
        dh, dh8, s = module.backward_fp8(dz, h, FP8)
        return dh, (dh8, s)
    dh = gate_backward(dz, h, fused)
    return dh, quantize_rows(dh)


def _fwd(
    x: torch.Tensor, wi: torch.Tensor, wo: torch.Tensor, x8: torch.Tensor, x_scale: torch.Tensor, fused: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, h, z): the block's output in x's dtype, and Wi's output and the gate's, which the backward reads.
    (x8, x_scale) is `quantize_rows(x)`."""
    h = mm_rows((x8, x_scale), to_fp8_rows(wi, fused), fast_accum=True).to(x.dtype)
    z, z_fp8 = gate_fp8(h, fused)
    return mm_rows(z_fp8, to_fp8_rows(wo, fused), fast_accum=True).to(x.dtype), h, z


def _fwd_fake(x, wi, wo, x8, x_scale, fused):
    T = x.shape[0]
    return x.new_empty((T, wo.shape[0])), x.new_empty((T, wi.shape[0])), x.new_empty((T, wo.shape[1]))


def _bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    z: torch.Tensor,
    wi: torch.Tensor,
    wo: torch.Tensor,
    fused: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dWi, dWo)."""
    dh, dh_fp8 = gate_backward_fp8(dy @ wo, h, fused)
    dx = mm_rows(dh_fp8, to_fp8_rows(wi.t(), fused), fast_accum=False).to(x.dtype)
    return dx, dh.t() @ x, dy.t() @ z


def _bwd_fake(dy, x, h, z, wi, wo, fused):
    return torch.empty_like(x), torch.empty_like(wi), torch.empty_like(wo)


def _save(inputs, outputs):
    x, wi, wo, _x8, _x_scale, fused = inputs
    _, h, z = outputs
    return (x, h, z, wi, wo), (fused,)


_glu, _ = autograd_op("fp8_glu", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,))


def fp8_glu(
    x_TC: torch.Tensor,
    wi: torch.Tensor,
    wo: torch.Tensor,
    fused: bool,
    x_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`Wo(gelu(a) * g)` for `a, g = Wi(x).chunk(2)` with FP8 products as the module says; weights (2N, C) and
    (C, N), no biases. Everything runs in the dtype the block runs in; `x_fp8`: x's FP8 copy where its producer
    wrote it (`ops.add_norm_fp8`), else made here (`fp8.operands`). `fused`: the gate's kernels where the policy
    allows."""
    x, (wi, wo), x8, x_scale = operands(x_TC, (wi, wo), fused, x_fp8)
    return _glu(x, wi, wo, x8, x_scale, fused)[0]
