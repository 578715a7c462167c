"""The MLP `Wo(gelu(a) * g)`, `a, g = Wi(x).chunk(2, -1)`, as one op (CUDA): forward `fused_wi_glu` (Wi with the
gate in its epilogue) then cuBLAS's Wo; backward cuBLAS's dWo, then Wo's input gradient as a Triton matrix product
with the gate's backward in its epilogue, then cuBLAS's gradients of x and Wi.

`mlp(x_TC, wi, bi, wo, bo) -> y_TC`. Why one op: the backward. Apart, cuBLAS writes the gate output's gradient dz
(T, N) and `fused_glu`'s backward kernel reads it again with h = (a, g) to write dh (T, 2 N). Here each (tokens x
gate columns) tile of `dy @ wo` stays in registers: the epilogue loads that tile's a and g (TMA boxes) and stores
da and dg. dz is never written: 2 T N elements less to move, and one kernel less. In fp32 before the one rounding
of da and dg (the unfused path rounds dz first). Saved for the backward: x, h and z, as the unfused ops save.

No dropout between the gate and Wo (`mlp_dropout_prob` 0, as ModernBERT's recipes; ops.py runs this op only
then).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import fused_wi_glu, tma_product
from .op import autograd_op
from .tma_product import launch_options, linear_gradients, programs, tile_coords, weight_gradients

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit(do_not_specialize=["T", "PROGRAMS"])  # no recompilation as the token count changes
def _mlp_gate_bwd(
    dy_desc,
    wo_desc,
    h_desc,
    dh_desc,
    T,
    C: tl.constexpr,
    N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PROGRAMS,
    PERSISTENT: tl.constexpr,
    SPECIALISE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dy_desc: (T, C) in (BLOCK_M, BLOCK_K) boxes; wo_desc: Wo's weight (C, N) in (BLOCK_K, BLOCK_N) boxes;
    h_desc, dh_desc: (T, 2 N) viewed as (T, 2, N), in (BLOCK_M, 1, BLOCK_N) boxes (clipped past T and N).
    PROGRAMS: each program runs tiles pid, pid + PROGRAMS, ...; PERSISTENT, SPECIALISE: `tma_product`'s modes."""
    num_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    tiles = tl.cdiv(T, BLOCK_M) * num_n
    for t in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=PERSISTENT, warp_specialize=SPECIALISE):
        pid_m, pid_n = tile_coords(t, T, num_n, BLOCK_M, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        dz = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, C, BLOCK_K):
            dz = tl.dot(dy_desc.load([m0, k]), wo_desc.load([k, n0]), dz, input_precision=PRECISION)
        a = tl.reshape(h_desc.load([m0, 0, n0]), (BLOCK_M, BLOCK_N)).to(tl.float32)
        g = tl.reshape(h_desc.load([m0, 1, n0]), (BLOCK_M, BLOCK_N)).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(a * _SQRT1_2))
        pdf = tl.exp(-0.5 * a * a) * _INV_SQRT_2PI
        dtype = dh_desc.dtype
        dh_desc.store([m0, 0, n0], tl.reshape((dz * g * (cdf + a * pdf)).to(dtype), (BLOCK_M, 1, BLOCK_N)))
        dh_desc.store([m0, 1, n0], tl.reshape((dz * a * cdf).to(dtype), (BLOCK_M, 1, BLOCK_N)))


# `tma_product`'s configuration (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, programs)
CONFIG = (128, 128, 64, 8, 8, 3, 0)
MIN_CAPABILITY = tma_product.MIN_CAPABILITY  # policy.py reads it


def gate_input_gradient(dy, wo, h, config=CONFIG) -> torch.Tensor:
    """dh (T, 2 N): the gradient of the gate's input h from that of Wo's output dy (T, C), Wo's weight (C, N)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    T, C = dy.shape
    N = wo.shape[1]
    dh = torch.empty_like(h)
    if T == 0:  # a TMA descriptor takes no empty tensor
        return dh
    block_m, block_n, block_k, group_m, warps, stages, mode = config
    n = programs(triton.cdiv(T, block_m) * triton.cdiv(N, block_n), mode, dy.device)
    boxes = [block_m, 1, block_n]
    _mlp_gate_bwd[(n,)](
        TensorDescriptor.from_tensor(tma_product.aligned(dy), [block_m, block_k]),
        TensorDescriptor.from_tensor(tma_product.aligned(wo), [block_k, block_n]),
        TensorDescriptor.from_tensor(h.view(T, 2, N), boxes), TensorDescriptor.from_tensor(dh.view(T, 2, N), boxes),
        T, C, N, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, PROGRAMS=n,
        **launch_options(mode, warps, stages, dy.dtype),
    )  # fmt: skip
    return dh


def _fwd(
    x: torch.Tensor,
    wi: torch.Tensor,
    bi: torch.Tensor | None,
    wo: torch.Tensor,
    bo: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, z, h): the MLP's output, and the gate's output and input the backward needs."""
    z, h = fused_wi_glu.launch(x, wi, bi)
    return torch.nn.functional.linear(z, wo, bo), z, h


def _fwd_fake(x, wi, bi, wo, bo):
    T, N = x.shape[0], wi.shape[0] // 2
    return x.new_empty((T, wo.shape[0])), x.new_empty((T, N)), x.new_empty((T, 2 * N))


def _bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    wi: torch.Tensor,
    wo: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    has_bi: bool,
    has_bo: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d_wo, d_bo = weight_gradients(dy, z, wo, has_bo)  # Wo's input gradient is the kernel's
    dx, d_wi, d_bi = linear_gradients(gate_input_gradient(dy, wo, h), x, wi, has_bi)
    return dx, d_wi, d_bi, d_wo, d_bo


def _bwd_fake(dy, x, wi, wo, z, h, has_bi, has_bo):
    def bias(w, has):
        return w.new_empty(w.shape[0] if has else 0)

    return torch.empty_like(x), torch.empty_like(wi), bias(wi, has_bi), torch.empty_like(wo), bias(wo, has_bo)


def _save(inputs, outputs):
    x, wi, bi, wo, bo = inputs
    _, z, h = outputs
    return (x, wi, wo, z, h), (bi is not None, bo is not None)


_fwd, _bwd = autograd_op("mlp", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,))


def fits(x: torch.Tensor, wi: torch.Tensor, wo: torch.Tensor) -> bool:
    """What the kernels take: `fused_wi_glu.fits`, and Wo's weight (C, N) of the same dtype."""
    return fused_wi_glu.fits(x, wi) and wo.dtype == x.dtype and wo.shape == (x.shape[-1], wi.shape[0] // 2)


def mlp(x_TC, wi, bi, wo, bo) -> torch.Tensor:
    """`gelu(a) * g @ wo.T + bo` for `a, g = (x @ wi.T + bi).chunk(2, -1)`: (T, C)."""
    bi, bo = (None if b is None else b.contiguous() for b in (bi, bo))
    return _fwd(x_TC.contiguous(), wi.contiguous(), bi, wo.contiguous(), bo)[0]
