"""Rotary embedding of the fused QKV projection in one Triton kernel each way (CUDA).

`rotary_qkv(qkv_T3HD, cos_TD, sin_TD) -> (q, k, v)`: q and k rotated (rotate-half layout, fp32 arithmetic,
as `rotary.apply_rotary`), v copied, each a contiguous (T, H, D) tensor in qkv's dtype. Backward
(`rotary_qkv_backward`): one kernel reads dq, dk, dv and writes the (T, 3, H, D) gradient of qkv with the
inverse rotation. The model's projection usually rotates in its own epilogue (`fused_qkv`, which uses this
backward); the forward here runs where that kernel does not take the shapes.

Unfused, the backward is one Inductor kernel (rotation of dq and dk, stack with dv) well below the GPU's
bandwidth (docs/PERFORMANCE.md). The forward also copies v (the unfused forward leaves it a strided view of
qkv), so that the attention kernels save contiguous q, k, v and qkv itself is not kept alive.

The tables hold equal halves (`rotary.rotary_cos_sin`), so only their first D/2 columns are read. With x1, x2
the halves of a head: out = (x1 cos - x2 sin, x2 cos + x1 sin); d_x = (d1 cos + d2 sin, d2 cos - d1 sin).
`fits(qkv, cos)` says which tensors it takes; `policy.py` decides where it runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .op import autograd_op

BLOCK_TOKENS, WARPS = 4, 4


@triton.jit
def _rotate_copy(SRC, src, DST, dst, half, c, s, m):
    """Load the two halves of heads at SRC + src (+ half), store (x1 c - x2 s, x2 c + x1 s) at DST + dst."""
    x1 = tl.load(SRC + src, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(SRC + src + half, mask=m, other=0.0).to(tl.float32)
    tl.store(DST + dst, (x1 * c - x2 * s).to(DST.dtype.element_ty), mask=m)
    tl.store(DST + dst + half, (x2 * c + x1 * s).to(DST.dtype.element_ty), mask=m)


@triton.jit
def _copy(SRC, src, DST, dst, half, m):
    tl.store(DST + dst, tl.load(SRC + src, mask=m, other=0.0), mask=m)
    tl.store(DST + dst + half, tl.load(SRC + src + half, mask=m, other=0.0), mask=m)


@triton.jit
def _offsets(T, H: tl.constexpr, D: tl.constexpr, COS, SIN, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr):
    """Tile of BLOCK_T tokens x all (head, d < D/2) pairs: offsets of each pair's first half in a (T, 3, H, D)
    and in a (T, H, D) tensor, the mask, and the pair's cos and sin."""
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_J)
    half = D // 2
    h, d = j // half, j % half
    m = (tok < T)[:, None] & (j < H * half)[None, :]
    row = tok[:, None].to(tl.int64)
    packed = row * (3 * H * D) + (h * D + d)[None, :]
    single = row * (H * D) + (h * D + d)[None, :]
    cs = row * D + d[None, :]
    c = tl.load(COS + cs, mask=m, other=0.0)
    s = tl.load(SIN + cs, mask=m, other=0.0)
    return packed, single, m, c, s


@triton.jit
def _rotary_qkv_fwd(
    QKV, COS, SIN, Q, K, V, T, H: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr
):
    packed, single, m, c, s = _offsets(T, H, D, COS, SIN, BLOCK_T, BLOCK_J)
    C = H * D
    _rotate_copy(QKV, packed, Q, single, D // 2, c, s, m)
    _rotate_copy(QKV, packed + C, K, single, D // 2, c, s, m)
    _copy(QKV, packed + 2 * C, V, single, D // 2, m)


@triton.jit
def _rotary_qkv_bwd(
    DQ,
    DK,
    DV,
    COS,
    SIN,
    DQKV,
    T,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    packed, single, m, c, s = _offsets(T, H, D, COS, SIN, BLOCK_T, BLOCK_J)
    C = H * D
    _rotate_copy(DQ, single, DQKV, packed, D // 2, c, -s, m)
    _rotate_copy(DK, single, DQKV, packed + C, D // 2, c, -s, m)
    _copy(DV, single, DQKV, packed + 2 * C, D // 2, m)


def _launch(kernel, T: int, H: int, D: int, *tensors) -> None:
    grid = (triton.cdiv(T, BLOCK_TOKENS),)
    block_j = triton.next_power_of_2(H * D // 2)
    kernel[grid](*tensors, T, H, D, BLOCK_T=BLOCK_TOKENS, BLOCK_J=block_j, num_warps=WARPS)


def _fwd(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T, _, H, D = qkv.shape
    q, k, v = _fwd_fake(qkv, cos, sin)
    _launch(_rotary_qkv_fwd, T, H, D, qkv, cos, sin, q, k, v)
    return q, k, v


def _fwd_fake(qkv, cos, sin):
    T, _, H, D = qkv.shape
    return tuple(qkv.new_empty((T, H, D)) for _ in range(3))


def rotary_qkv_backward(
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """The (T, 3, H, D) gradient of the projection from those of q, k, v (None: an output no loss reached)."""
    some = next(g for g in (dq, dk, dv) if g is not None)
    dq, dk, dv = (torch.zeros_like(some) if g is None else g for g in (dq, dk, dv))
    T, H, D = dq.shape
    dqkv = _bwd_fake(dq, dk, dv, cos, sin)
    _launch(_rotary_qkv_bwd, T, H, D, dq, dk, dv, cos, sin, dqkv)
    return dqkv


def _bwd_fake(dq, dk, dv, cos, sin):
    some = next(g for g in (dq, dk, dv) if g is not None)
    T, H, D = some.shape
    return some.new_empty((T, 3, H, D))


_fwd, _bwd = autograd_op(
    "rotary_qkv",
    _fwd,
    _fwd_fake,
    rotary_qkv_backward,
    _bwd_fake,
    save=lambda inputs, outputs: (inputs[1:], ()),
)


def fits(qkv: torch.Tensor, cos: torch.Tensor) -> bool:
    """The tensors the kernels take: a (T, 3, H, D) projection, fp32 tables."""
    return qkv.dim() == 4 and qkv.shape[1] == 3 and cos.dtype == torch.float32


def rotary_qkv(qkv_T3HD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor):
    """(q, k, v) of a (T, 3, H, D) projection: q and k rotated, v copied; each contiguous (T, H, D)."""
    return _fwd(qkv_T3HD.contiguous(), cos_TD.contiguous(), sin_TD.contiguous())
