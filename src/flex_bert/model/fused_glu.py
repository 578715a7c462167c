"""The GLU gate `gelu(a) * g` of `a, g = Wi(x).chunk(2)`, in one Triton kernel each way (CUDA).

Inductor's backward of this gate (one pointwise kernel writing the concatenated (a, g) gradient) ran at about
a third of an H200's bandwidth: 0.81 ms a layer at 98k tokens x 1152, where its bytes (read dz, a, g; write
da, dg: 10 bytes per gate element in bf16) take 0.26 ms (docs/PERFORMANCE.md). Here both passes work on
(rows x columns) tiles of the gate, read a and g straight from the two halves of Wi's output and write da and
dg into the two halves of its gradient.

Exact erf GELU (ModernBERT's `gelu`), computed in fp32; the output and the gradient are rounded once to the
input's dtype (the eager composition rounds gelu(a) and the product separately; Inductor, like this, once).
`supported(h)` says where it runs: CUDA with Triton; tests also run it in Triton's interpreter on the CPU.

Both passes are opaque custom ops (`torch.library.custom_op`), not `triton_op`s: as a `triton_op` inside
`compile_layers`, torch 2.11's Inductor copied a gate-sized buffer before every backward kernel (a 0.21 ms
pointwise kernel a layer at 98k tokens on an H200, 4.6 ms a base @1024 step), and it fuses nothing into user
kernels anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
BLOCK_ROWS, BLOCK_COLS, WARPS = 16, 128, 4


@triton.jit
def _load_gate(Hin, T, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's tile: a and g (fp32) from the two halves of Hin (T, 2N), their offset in Hin, the
    tile's offset in a (T, N) tensor, and the mask."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = (rows < T)[:, None] & (cols < N)[None, :]
    a_offs = rows[:, None].to(tl.int64) * (2 * N) + cols[None, :]
    a = tl.load(Hin + a_offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(Hin + a_offs + N, mask=m, other=0.0).to(tl.float32)
    return a, g, a_offs, rows[:, None].to(tl.int64) * N + cols[None, :], m


@triton.jit
def _gelu_gate_fwd(Hin, Z, T, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    a, g, _, z_offs, m = _load_gate(Hin, T, N, BLOCK_R, BLOCK_N)
    z = 0.5 * a * (1.0 + tl.math.erf(a * _SQRT1_2)) * g
    tl.store(Z + z_offs, z.to(Z.dtype.element_ty), mask=m)


@triton.jit
def _gelu_gate_bwd(DZ, Hin, DH, T, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    a, g, a_offs, z_offs, m = _load_gate(Hin, T, N, BLOCK_R, BLOCK_N)
    dz = tl.load(DZ + z_offs, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(a * _SQRT1_2))
    pdf = tl.exp(-0.5 * a * a) * _INV_SQRT_2PI
    tl.store(DH + a_offs, (dz * g * (cdf + a * pdf)).to(DH.dtype.element_ty), mask=m)
    tl.store(DH + a_offs + N, (dz * a * cdf).to(DH.dtype.element_ty), mask=m)


def _grid(T: int, N: int) -> tuple[int, int]:
    return triton.cdiv(T, BLOCK_ROWS), triton.cdiv(N, BLOCK_COLS)


@torch.library.custom_op("flex_bert::gelu_gate", mutates_args=())
def _fwd(h: torch.Tensor) -> torch.Tensor:
    T, N = h.shape[0], h.shape[1] // 2
    z = h.new_empty((T, N))
    _gelu_gate_fwd[_grid(T, N)](h, z, T, N, BLOCK_R=BLOCK_ROWS, BLOCK_N=BLOCK_COLS, num_warps=WARPS)
    return z


@_fwd.register_fake
def _(h):
    return h.new_empty((h.shape[0], h.shape[1] // 2))


@torch.library.custom_op("flex_bert::gelu_gate_bwd", mutates_args=())
def _bwd(dz: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    T, N = dz.shape
    dh = h.new_empty(h.shape)
    _gelu_gate_bwd[_grid(T, N)](dz, h, dh, T, N, BLOCK_R=BLOCK_ROWS, BLOCK_N=BLOCK_COLS, num_warps=WARPS)
    return dh


@_bwd.register_fake
def _(dz, h):
    return h.new_empty(h.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dz):
    (h,) = ctx.saved_tensors
    return _bwd(dz.contiguous(), h)


torch.library.register_autograd("flex_bert::gelu_gate", _backward, setup_context=_setup_context)


def supported(h: torch.Tensor) -> bool:
    return h.is_cuda and h.dim() == 2 and h.shape[1] % 2 == 0


def gelu_gate(h: torch.Tensor) -> torch.Tensor:
    """`gelu(a) * g` for `a, g = h.chunk(2, dim=-1)`, h of shape (tokens, 2 x intermediate)."""
    return _fwd(h.contiguous())
