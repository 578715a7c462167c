"""The MLP's input projection with the GLU gate in its epilogue: one Triton matrix product (CUDA).

`wi_gelu_gate(x_TC, weight, bias) -> z_TN`: `gelu(a) * g` for `a, g = (x @ weight.T + bias).chunk(2, -1)`,
weight (2 N, C), exact erf GELU (ModernBERT's). It replaces Wi's matrix product and the gate kernel's forward
(`fused_glu`), which read the whole projection (T, 2 N) once more. The projection h = (a, g) is still written,
rounded to x's dtype, for the backward; z is the gate of that rounded h in fp32, rounded once: what
`fused_glu`'s kernel computes from h. The epilogue stores h and z by TMA boxes.

Each tile is BLOCK_M tokens x BLOCK_N gate columns, computed as two accumulators (`tma_product`): the weight's
rows n0.. (a) and N + n0.. (g), two boxes of the weight as it is (no reordering; a last, partial tile reads
rows of g or past the end for columns it does not store).

Backward: `fused_glu`'s gate backward kernel (h and dz to dh), then cuBLAS for the gradients of x, weight and bias.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import fused_glu, tma_product
from .op import autograd_op
from .tma_product import descriptors, launch_options, linear_gradients, paired_product, programs, tile_coords

_SQRT1_2 = tl.constexpr(0.7071067811865476)


@triton.jit(do_not_specialize=["T", "PROGRAMS"])  # no recompilation as the token count changes
def _wi_glu_fwd(
    x_desc,
    w_desc,
    BIAS,
    h_desc,
    z_desc,
    T,
    C: tl.constexpr,
    N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PROGRAMS,
    PERSISTENT: tl.constexpr,
    SPECIALISE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """x_desc: (T, C) in (BLOCK_M, BLOCK_K) boxes; w_desc: the weight (2 N, C) in (BLOCK_N, BLOCK_K) boxes.
    h_desc: the projection (T, 2 N) viewed as (T, 2, N), in (BLOCK_M, 1, BLOCK_N) boxes; z_desc: (T, N) in
    (BLOCK_M, BLOCK_N) boxes (boxes clip what lies past T and N: no masks, no pointer tiles). PROGRAMS: each program runs tiles pid, pid + PROGRAMS, ...;
    PERSISTENT, SPECIALISE: `tma_product`'s programs modes."""
    num_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    tiles = tl.cdiv(T, BLOCK_M) * num_n
    c = tl.arange(0, BLOCK_N)
    for t in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=PERSISTENT, warp_specialize=SPECIALISE):
        pid_m, pid_n = tile_coords(t, T, num_n, BLOCK_M, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        a, g = paired_product(x_desc, w_desc, m0, n0, N + n0, C, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        if HAS_BIAS:
            in_n = n0 + c < N
            a += tl.load(BIAS + n0 + c, mask=in_n, other=0.0).to(tl.float32)[None, :]
            g += tl.load(BIAS + N + n0 + c, mask=in_n, other=0.0).to(tl.float32)[None, :]
        dtype = z_desc.dtype
        a = a.to(dtype)
        g = g.to(dtype)
        h_desc.store([m0, 0, n0], tl.reshape(a, (BLOCK_M, 1, BLOCK_N)))
        h_desc.store([m0, 1, n0], tl.reshape(g, (BLOCK_M, 1, BLOCK_N)))
        af = a.to(tl.float32)
        z_desc.store([m0, n0], (0.5 * af * (1.0 + tl.math.erf(af * _SQRT1_2)) * g.to(tl.float32)).to(dtype))


# `tma_product`'s configuration (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, programs)
CONFIG = (128, 128, 64, 8, 8, 3, 0)
MIN_CAPABILITY = tma_product.MIN_CAPABILITY  # policy.py reads it


def launch(x, weight, bias, config=CONFIG) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel with a tile configuration (`CONFIG`'s fields): (z, h)."""
    T, C = x.shape
    N = weight.shape[0] // 2
    z, h = _fwd_fake(x, weight, bias)
    if T == 0:  # a TMA descriptor takes no empty tensor
        return z, h
    from triton.tools.tensor_descriptor import TensorDescriptor

    block_m, block_n, block_k, group_m, warps, stages, mode = config
    n = programs(triton.cdiv(T, block_m) * triton.cdiv(N, block_n), mode, x.device)
    x_desc, w_desc = descriptors(x, weight, block_m, block_n, block_k)
    h_desc = TensorDescriptor.from_tensor(h.view(T, 2, N), [block_m, 1, block_n])
    z_desc = TensorDescriptor.from_tensor(z, [block_m, block_n])
    _wi_glu_fwd[(n,)](
        x_desc, w_desc, bias if bias is not None else weight, h_desc, z_desc, T, C, N, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, PROGRAMS=n,
        **launch_options(mode, warps, stages, x.dtype),
    )  # fmt: skip
    return z, h


def _fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch(x, weight, bias)


def _fwd_fake(x, weight, bias):
    T, N = x.shape[0], weight.shape[0] // 2
    return x.new_empty((T, N)), x.new_empty((T, 2 * N))


def _bwd(
    dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, h: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_gradients(fused_glu.gate_backward(dz, h), x, weight, has_bias)


def _bwd_fake(dz, x, weight, h, has_bias):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0] if has_bias else 0)


def _save(inputs, outputs):
    x, weight, bias = inputs
    return (x, weight, outputs[1]), (bias is not None,)


_fwd, _bwd = autograd_op("wi_gelu_gate", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,))


def fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """What the kernel takes: half-precision x and weight of one dtype, the weight a (2 N, C) projection with N a
    multiple of 8 (the rows of h and z then start 16-byte aligned, as TMA boxes need), C a multiple of BLOCK_K. The
    GPU: `MIN_CAPABILITY` (policy.py reads it)."""
    return (
        x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.dim() == 2
        and weight.shape[0] % 16 == 0
        and weight.shape[1] == x.shape[-1]
        and x.shape[-1] % CONFIG[2] == 0
    )


def wi_gelu_gate(x_TC, weight, bias) -> torch.Tensor:
    """`gelu(a) * g` for `a, g = (x @ weight.T + bias).chunk(2, -1)`: (T, N)."""
    bias = None if bias is None else bias.contiguous()
    return _fwd(x_TC.contiguous(), weight.contiguous(), bias)[0]
