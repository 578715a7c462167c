"""The GLU gate `gelu(a) * g` of `a, g = Wi(x).chunk(2)`, in one Triton kernel each way (CUDA).

Inductor's backward of this gate (one pointwise kernel writing the concatenated (a, g) gradient) runs well
below the GPU's bandwidth (docs/PERFORMANCE.md). Here both passes work on (rows x columns) tiles of the gate,
read a and g straight from the two halves of Wi's output and write da and dg into the two halves of its
gradient.

Exact erf GELU (ModernBERT's `gelu`), computed in fp32; the output and the gradient are rounded once to the
input's dtype (the eager composition rounds gelu(a) and the product separately; Inductor, like this, once).
`fits(h)` says which tensors it takes; `policy.py` decides where it runs. Tests also run it in Triton's
interpreter on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8_rows import row_scale
from .op import autograd_op

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
def _gate(a, g):
    """gelu(a) * g in fp32 (exact erf GELU)."""
    return 0.5 * a * (1.0 + tl.math.erf(a * _SQRT1_2)) * g


@triton.jit
def _gate_grads(DZ, a, g, z_offs, m):
    """(da, dg) in fp32 from the output gradient at z_offs of DZ."""
    dz = tl.load(DZ + z_offs, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(a * _SQRT1_2))
    pdf = tl.exp(-0.5 * a * a) * _INV_SQRT_2PI
    return dz * g * (cdf + a * pdf), dz * a * cdf


@triton.jit
def _gelu_gate_fwd(Hin, Z, T, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    a, g, _, z_offs, m = _load_gate(Hin, T, N, BLOCK_R, BLOCK_N)
    tl.store(Z + z_offs, _gate(a, g).to(Z.dtype.element_ty), mask=m)


@triton.jit
def _gelu_gate_bwd(DZ, Hin, DH, T, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    a, g, a_offs, z_offs, m = _load_gate(Hin, T, N, BLOCK_R, BLOCK_N)
    da, dg = _gate_grads(DZ, a, g, z_offs, m)
    tl.store(DH + a_offs, da.to(DH.dtype.element_ty), mask=m)
    tl.store(DH + a_offs + N, dg.to(DH.dtype.element_ty), mask=m)


@triton.jit
def _gelu_gate_fwd_fp8(
    Hin, Z, Z8, ZS, T, N, FP8_MAX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr
):  # fmt: skip
    """`_gelu_gate_fwd` over whole rows, also writing z row-quantized to FP8 (Z8, scales ZS)."""
    a, g, _, z_offs, m = _load_gate(Hin, T, N, BLOCK_R, BLOCK_N)
    z = _gate(a, g).to(Z.dtype.element_ty)
    tl.store(Z + z_offs, z, mask=m)
    z = z.to(tl.float32)
    s = row_scale(tl.max(tl.where(m, tl.abs(z), 0.0), axis=1), FP8_MAX)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    tl.store(ZS + rows, s, mask=rows < T)
    tl.store(Z8 + z_offs, tl.math.div_rn(z, s[:, None]).to(Z8.dtype.element_ty), mask=m)


@triton.jit
def _gelu_gate_bwd_fp8(
    DZ, Hin, DH, DH8, DHS, T, N, FP8_MAX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr
):  # fmt: skip
    """`_gelu_gate_bwd` over whole rows, also writing dh = (da, dg) row-quantized to FP8 (DH8, scales DHS): one
    scale for both halves of a row."""
    a, g, a_offs, z_offs, m = _load_gate(Hin, T, N, BLOCK_R, BLOCK_N)
    da, dg = _gate_grads(DZ, a, g, z_offs, m)
    da, dg = da.to(DH.dtype.element_ty), dg.to(DH.dtype.element_ty)
    tl.store(DH + a_offs, da, mask=m)
    tl.store(DH + a_offs + N, dg, mask=m)
    da, dg = da.to(tl.float32), dg.to(tl.float32)
    amax = tl.maximum(
        tl.max(tl.where(m, tl.abs(da), 0.0), axis=1), tl.max(tl.where(m, tl.abs(dg), 0.0), axis=1)
    )
    s = row_scale(amax, FP8_MAX)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    tl.store(DHS + rows, s, mask=rows < T)
    tl.store(DH8 + a_offs, tl.math.div_rn(da, s[:, None]).to(DH8.dtype.element_ty), mask=m)
    tl.store(DH8 + a_offs + N, tl.math.div_rn(dg, s[:, None]).to(DH8.dtype.element_ty), mask=m)


def _grid(T: int, N: int) -> tuple[int, int]:
    return triton.cdiv(T, BLOCK_ROWS), triton.cdiv(N, BLOCK_COLS)


def forward(h: torch.Tensor) -> torch.Tensor:
    """gelu(a) * g of h = (a, g), the forward kernel (the op's forward, also called inside other ops)."""
    T, N = h.shape[0], h.shape[1] // 2
    z = _fwd_fake(h)
    _gelu_gate_fwd[_grid(T, N)](h, z, T, N, BLOCK_R=BLOCK_ROWS, BLOCK_N=BLOCK_COLS, num_warps=WARPS)
    return z


def _fwd_fake(h):
    return h.new_empty((h.shape[0], h.shape[1] // 2))


def backward(dz: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The gradient of h from the output's dz, the backward kernel."""
    T, N = dz.shape
    dh = _bwd_fake(dz, h)
    _gelu_gate_bwd[_grid(T, N)](dz, h, dh, T, N, BLOCK_R=BLOCK_ROWS, BLOCK_N=BLOCK_COLS, num_warps=WARPS)
    return dh


def _bwd_fake(dz, h):
    return h.new_empty(h.shape)


def _row_blocks(N: int) -> tuple[int, int]:
    """(padded row width, warps) of the FP8 kernels, one row a program: 16 elements a thread up to 2048."""
    block = triton.next_power_of_2(N)
    return block, max(4, min(16, block // 512))


def forward_fp8(h: torch.Tensor, fp8: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, z8, s): `forward(h)`, and z row-quantized to `fp8` with its (T, 1) fp32 scales, as
    `fp8.quantize_rows(z)` computes them, in the same pass."""
    T, N = h.shape[0], h.shape[1] // 2
    z = _fwd_fake(h)
    z8, zs = torch.empty_like(z, dtype=fp8), h.new_empty((T, 1), dtype=torch.float32)
    block, warps = _row_blocks(N)
    fp8_max = torch.finfo(fp8).max
    _gelu_gate_fwd_fp8[(T, 1)](h, z, z8, zs, T, N, fp8_max, BLOCK_R=1, BLOCK_N=block, num_warps=warps)
    return z, z8, zs


def backward_fp8(
    dz: torch.Tensor, h: torch.Tensor, fp8: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dh8, s): `backward(dz, h)`, and dh row-quantized to `fp8` with its (T, 1) fp32 scales (one scale for
    the whole row of 2N), as `fp8.quantize_rows(dh)` computes them, in the same pass."""
    T, N = dz.shape
    dh = _bwd_fake(dz, h)
    dh8, dhs = torch.empty_like(dh, dtype=fp8), h.new_empty((T, 1), dtype=torch.float32)
    block, warps = _row_blocks(N)
    fp8_max = torch.finfo(fp8).max
    _gelu_gate_bwd_fp8[(T, 1)](dz, h, dh, dh8, dhs, T, N, fp8_max, BLOCK_R=1, BLOCK_N=block, num_warps=warps)
    return dh, dh8, dhs


_fwd, _bwd = autograd_op(
    "gelu_gate", forward, _fwd_fake, backward, _bwd_fake, save=lambda inputs, outputs: (inputs, ())
)


def fits(h: torch.Tensor) -> bool:
    """The tensors the kernels take: (tokens, 2 x intermediate)."""
    return h.dim() == 2 and h.shape[1] % 2 == 0


def gelu_gate(h: torch.Tensor) -> torch.Tensor:
    """`gelu(a) * g` for `a, g = h.chunk(2, dim=-1)`, h of shape (tokens, 2 x intermediate)."""
    return _fwd(h.contiguous())
