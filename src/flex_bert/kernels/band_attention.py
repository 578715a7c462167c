"""Sliding-window attention over packed documents in Triton (CUDA): the local layers' kernel.

`band_attention(q, k, v, cu_seqlens, window) -> out`, q, k, v and out (T, H, D) in fp16/bf16: query i attends
to key j when both lie in one document and |i - j| <= window // 2 (ModernBERT's local layers: window 128, 129
keys). Softmax scale 1/sqrt(D), as SDPA and flash-attn.

Why a kernel of our own: PyTorch's varlen flash kernel visits whole 128 x 128 tiles, three key tiles per query
tile, for 129 useful keys per query. Here a query tile of BLOCK_M visits the key tiles of BLOCK_N that cover
[m0 - w/2, m0 + BLOCK_M + w/2): with 64-token tiles and w = 128, 192 keys per query, clipped to the documents
of the tile (short documents visit fewer). Measurements: docs/PERFORMANCE.md.

Forward: online softmax in the exp2 domain (FlashAttention-2), float32 accumulation; saves the row
log-sum-exp. Backward, FlashAttention-2's recomputation: one kernel computes `delta = rowsum(dO * O)`, then
  one pass (default): one program per key tile walks the query tiles of its band, accumulates dK and dV, and
    adds each query tile's share of dQ to a float32 buffer with atomics (as FlashAttention-2 does): scores
    and dP are computed once. Atomics add in no fixed order, so dQ may differ in the last bits between runs.
  split (under `torch.use_deterministic_algorithms(True)`): one kernel per key tile for dK and dV, one per
    query tile for dQ (the mask is symmetric, so both walk the same band); no atomics, bitwise reproducible,
    the scores recomputed in both (a little slower).
Document bounds enter as two (T,) int32 tensors, the start and end of each token's document, computed once
per call from `cu_seqlens`.

`band_attention_rope(qkv, cos, sin, cu_seqlens, window)` runs the same kernels on the packed (T, 3, H, D)
projection, before rotary: they rotate each q and k tile as they load it (fp32, then the input dtype, as
`rotary.apply_rotary`) and store dK, and dQ, through the inverse rotation, so the gradient they write is the
projection's. Neither the rotary kernel's forward (q, k, v copied out of qkv) nor its backward (dq, dk, dv read
back) runs; in the one-pass backward the inverse rotation of dQ takes the place of its float32 -> bf16 copy.

Both passes are opaque custom ops (`op.autograd_op`): Inductor gains nothing from seeing inside attention
kernels. `fits(q)` says which tensors it takes; `policy.py` decides where it runs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .op import autograd_op

# Tile shapes and launch parameters of the kernels, the fastest of `bench_attention.py --sweep`.
FWD = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=4)
DKDV = dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=4)
DQ = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
BWD = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)  # the one-pass backward
# The same kernels rotating q and k (`band_attention_rope`): more registers, so more warps where the settings above
# spill (scripts/check_kernels.py) and the fastest of `bench_attention.py --rope --sweep`.
FWD_ROPE = dict(FWD)
DKDV_ROPE = dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)
DQ_ROPE = dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=1)
BWD_ROPE = dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)
LOG2E = 1.4426950408889634


@triton.jit
def _rows(X, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h):
    """Rows `offs` of head h, as (len(offs), D), of a tensor whose rows are STRIDE elements apart."""
    d = tl.arange(0, D)
    row = offs.to(tl.int64) * STRIDE + h * D
    return tl.load(X + row[:, None] + d[None, :], mask=in_range[:, None], other=0.0)


@triton.jit
def _store_rows(X, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h, value):
    """Store a (len(offs), D) tile as rows `offs` of head h, in X's dtype."""
    d = tl.arange(0, D)
    row = offs.to(tl.int64) * STRIDE + h * D
    tl.store(X + row[:, None] + d[None, :], value.to(X.dtype.element_ty), mask=in_range[:, None])


@triton.jit
def _cols(X, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h):
    """The same rows transposed, (D, len(offs)), loaded directly in that layout."""
    d = tl.arange(0, D)
    row = offs.to(tl.int64) * STRIDE + h * D
    return tl.load(X + row[None, :] + d[:, None], mask=in_range[None, :], other=0.0)


@triton.jit
def _rope_rows(
    X,
    COS,
    SIN,
    offs,
    in_range,
    STRIDE: tl.constexpr,
    D: tl.constexpr,
    h,
    BLOCK: tl.constexpr,
    TRANS: tl.constexpr,
):
    """`_rows` (or `_cols` with TRANS) of q or k rotated as `rotary.apply_rotary` rotates them, in fp32, returned
    in X's dtype: with x1, x2 the halves of a head, (x1 cos - x2 sin, x2 cos + x1 sin). The (T, D) tables hold
    equal halves, so only their first D/2 columns are read."""
    j = tl.arange(0, D // 2)
    tok = offs.to(tl.int64)
    if TRANS:  # (D/2, BLOCK) halves
        m = in_range[None, :]
        ptr = X + (tok * STRIDE + h * D)[None, :] + j[:, None]
        table = tok[None, :] * D + j[:, None]
    else:  # (BLOCK, D/2) halves
        m = in_range[:, None]
        ptr = X + (tok * STRIDE + h * D)[:, None] + j[None, :]
        table = tok[:, None] * D + j[None, :]
    x1 = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + D // 2, mask=m, other=0.0).to(tl.float32)
    c = tl.load(COS + table, mask=m, other=0.0)
    s = tl.load(SIN + table, mask=m, other=0.0)
    y1 = (x1 * c - x2 * s).to(X.dtype.element_ty)
    y2 = (x2 * c + x1 * s).to(X.dtype.element_ty)
    if TRANS:  # join -> (D/2, BLOCK, 2) -> (2, D/2, BLOCK) -> (D, BLOCK): y1 above y2
        rotated = tl.reshape(tl.permute(tl.join(y1, y2), (2, 0, 1)), (D, BLOCK))
    else:  # join -> (BLOCK, D/2, 2) -> (BLOCK, 2, D/2) -> (BLOCK, D): y1 beside y2
        rotated = tl.reshape(tl.permute(tl.join(y1, y2), (0, 2, 1)), (BLOCK, D))
    return rotated


@triton.jit
def _load_rows(
    X,
    COS,
    SIN,
    offs,
    in_range,
    STRIDE: tl.constexpr,
    D: tl.constexpr,
    h,
    BLOCK: tl.constexpr,
    ROPE: tl.constexpr,
):
    """BLOCK rows of q or k: rotated in the kernel with ROPE (the packed projection's op), as stored without."""
    if ROPE:
        x = _rope_rows(X, COS, SIN, offs, in_range, STRIDE, D, h, BLOCK, False)
    else:
        x = _rows(X, offs, in_range, STRIDE, D, h)
    return x


@triton.jit
def _load_cols(
    X,
    COS,
    SIN,
    offs,
    in_range,
    STRIDE: tl.constexpr,
    D: tl.constexpr,
    h,
    BLOCK: tl.constexpr,
    ROPE: tl.constexpr,
):
    """`_load_rows` transposed."""
    if ROPE:
        x = _rope_rows(X, COS, SIN, offs, in_range, STRIDE, D, h, BLOCK, True)
    else:
        x = _cols(X, offs, in_range, STRIDE, D, h)
    return x


@triton.jit
def _store_unrotated(
    X, COS, SIN, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h, value, BLOCK: tl.constexpr
):
    """Store the (BLOCK, D) fp32 gradient of rotated q or k as the gradient of the projection's q or k, the
    inverse rotation: with d1, d2 its halves, (d1 cos + d2 sin, d2 cos - d1 sin)."""
    halves = tl.permute(tl.reshape(value, (BLOCK, 2, D // 2)), (0, 2, 1))
    d1, d2 = tl.split(halves)
    j = tl.arange(0, D // 2)
    tok = offs.to(tl.int64)
    m = in_range[:, None]
    table = tok[:, None] * D + j[None, :]
    c = tl.load(COS + table, mask=m, other=0.0)
    s = tl.load(SIN + table, mask=m, other=0.0)
    ptr = X + (tok * STRIDE + h * D)[:, None] + j[None, :]
    tl.store(ptr, (d1 * c + d2 * s).to(X.dtype.element_ty), mask=m)
    tl.store(ptr + D // 2, (d2 * c - d1 * s).to(X.dtype.element_ty), mask=m)


@triton.jit
def _store_grad(
    X, COS, SIN, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h, value, BLOCK: tl.constexpr,
    ROPE: tl.constexpr,
):  # fmt: skip
    """Store the gradient of q or k: through the inverse rotation with ROPE, as it is without."""
    if ROPE:
        _store_unrotated(X, COS, SIN, offs, in_range, STRIDE, D, h, value, BLOCK)
    else:
        _store_rows(X, offs, in_range, STRIDE, D, h, value)


@triton.jit
def _head_and_start(H: tl.constexpr, BLOCK: tl.constexpr):
    """(head, first token) of this program of a one-dimensional grid of (token tiles x H) programs, heads
    fastest: the programs running at once cover all heads of a few neighbouring tiles, so they share the rotary
    tables' rows (the same for every head) as well as the band's overlapping key tiles."""
    pid = tl.program_id(0)
    return pid % H, (pid // H) * BLOCK


@triton.jit
def _span(start, size, LO, HI, T, HALF: tl.constexpr, BLOCK: tl.constexpr, STEP: tl.constexpr):
    """Tokens start..start+size-1 (those < T): their document bounds, and the range [first, last) of tokens,
    aligned down to STEP, that any of them may attend to."""
    offs = start + tl.arange(0, BLOCK)
    in_range = offs < T
    lo = tl.load(LO + offs, mask=in_range, other=T)
    hi = tl.load(HI + offs, mask=in_range, other=0)
    first = tl.maximum(start - HALF, tl.min(lo, axis=0))
    first = (first // STEP) * STEP
    last = tl.minimum(start + BLOCK + HALF, tl.max(hi, axis=0))
    return offs, in_range, lo, hi, first, last


@triton.jit
def _allowed(rows, cols, lo, hi, HALF: tl.constexpr):
    """Mask (len(rows), len(cols)): same document (bounds lo, hi of each row) and |row - col| <= HALF."""
    c = cols[None, :]
    r = rows[:, None]
    return (c >= lo[:, None]) & (c < hi[:, None]) & (c - r <= HALF) & (r - c <= HALF)


# Every kernel below reads q, k and v (and writes their gradients) as rows STRIDE elements apart, k at SLOT
# elements past q and v at 2 SLOT: separate (T, H, D) tensors (SLOT 0, STRIDE H D), or the (T, 3, H, D) packed
# projection (SLOT H D, STRIDE 3 H D), whose q and k the kernels rotate themselves (ROPE, tables COS and SIN).
@triton.jit
def _band_fwd(
    Q,
    K,
    V,
    COS,
    SIN,
    OUT,
    LSE,
    LO,
    HI,
    T,
    H: tl.constexpr,
    D: tl.constexpr,
    HALF: tl.constexpr,
    QK_SCALE: tl.constexpr,
    SM_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SLOT: tl.constexpr,
    STRIDE: tl.constexpr,
    ROPE: tl.constexpr,
):
    h, m0 = _head_and_start(H, BLOCK_M)
    K += SLOT
    V += 2 * SLOT
    offs_m, in_m, lo, hi, first, last = _span(m0, BLOCK_M, LO, HI, T, HALF, BLOCK_M, BLOCK_N)
    q = _load_rows(Q, COS, SIN, offs_m, in_m, STRIDE, D, h, BLOCK_M, ROPE)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile adds exp2(-inf) = 0
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < T
        kT = _load_cols(K, COS, SIN, offs_n, in_n, STRIDE, D, h, BLOCK_N, ROPE)
        v = _rows(V, offs_n, in_n, STRIDE, D, h)
        s = tl.dot(q, kT) * QK_SCALE
        s = tl.where(_allowed(offs_m, offs_n, lo, hi, HALF), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)  # rows past T only
    _store_rows(OUT, offs_m, in_m, H * D, D, h, acc / l_safe[:, None])
    tl.store(LSE + offs_m * H + h, m_i + tl.math.log2(l_safe), mask=in_m)


@triton.jit
def _band_delta(OUT, DO, DELTA, T, H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    """delta = rowsum(dO * O), (T, H) float32: the softmax backward's correction term."""
    h = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < T
    o = _rows(OUT, offs, in_range, H * D, D, h).to(tl.float32)
    do = _rows(DO, offs, in_range, H * D, D, h).to(tl.float32)
    tl.store(DELTA + offs * H + h, tl.sum(o * do, axis=1), mask=in_range)


@triton.jit
def _band_bwd(
    Q,
    K,
    V,
    COS,
    SIN,
    DO,
    LSE,
    DELTA,
    LO,
    HI,
    DQ,
    DK,
    DV,
    T,
    H: tl.constexpr,
    D: tl.constexpr,
    HALF: tl.constexpr,
    QK_SCALE: tl.constexpr,
    SM_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    SLOT: tl.constexpr,
    STRIDE: tl.constexpr,
    ROPE: tl.constexpr,
):
    """One key tile: dV = sum P^T dO and dK = scale * sum dS^T Q over the query tiles of its band (transposed
    tiles: rows are keys). With ATOMIC_DQ (the one-pass backward) also each query tile's share of dQ,
    scale * dS K, added to the float32 (T, H, D) DQ with atomics (a query tile gets shares from the few key
    tiles of its band): scores and dP are computed once, not once per kernel. Without, DQ is not touched
    (`_band_bwd_dq` computes dQ) and q is loaded transposed, the layout the split path's tiles were tuned for.
    DK and DV are laid out as K and V."""
    h, n0 = _head_and_start(H, BLOCK_N)
    K += SLOT
    V += 2 * SLOT
    DK += SLOT
    DV += 2 * SLOT
    offs_n, in_n, lo, hi, first, last = _span(n0, BLOCK_N, LO, HI, T, HALF, BLOCK_N, BLOCK_M)
    k = _load_rows(K, COS, SIN, offs_n, in_n, STRIDE, D, h, BLOCK_N, ROPE)
    v = _rows(V, offs_n, in_n, STRIDE, D, h)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    d = tl.arange(0, D)
    for m0 in range(first, last, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < T
        if ATOMIC_DQ:
            q = _load_rows(Q, COS, SIN, offs_m, in_m, STRIDE, D, h, BLOCK_M, ROPE)
            qT = tl.trans(q)
        else:
            qT = _load_cols(Q, COS, SIN, offs_m, in_m, STRIDE, D, h, BLOCK_M, ROPE)
            q = tl.trans(qT)
        do = _rows(DO, offs_m, in_m, H * D, D, h)
        lse = tl.load(LSE + offs_m * H + h, mask=in_m, other=0.0)
        delta = tl.load(DELTA + offs_m * H + h, mask=in_m, other=0.0)
        sT = tl.dot(k, qT) * QK_SCALE
        pT = tl.where(_allowed(offs_n, offs_m, lo, hi, HALF), tl.math.exp2(sT - lse[None, :]), 0.0)
        dv += tl.dot(pT.to(do.dtype), do)
        dsT = (pT * (tl.dot(v, tl.trans(do)) - delta[None, :])).to(qT.dtype)
        dk += tl.dot(dsT, q)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(dsT), k) * SM_SCALE
            row = offs_m.to(tl.int64) * (H * D) + h * D
            tl.atomic_add(DQ + row[:, None] + d[None, :], dq, mask=in_m[:, None], sem="relaxed")
    _store_grad(DK, COS, SIN, offs_n, in_n, STRIDE, D, h, dk * SM_SCALE, BLOCK_N, ROPE)
    _store_rows(DV, offs_n, in_n, STRIDE, D, h, dv)


@triton.jit
def _band_bwd_dq(
    Q,
    K,
    V,
    COS,
    SIN,
    DO,
    LSE,
    DELTA,
    LO,
    HI,
    DQ,
    T,
    H: tl.constexpr,
    D: tl.constexpr,
    HALF: tl.constexpr,
    QK_SCALE: tl.constexpr,
    SM_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SLOT: tl.constexpr,
    STRIDE: tl.constexpr,
    ROPE: tl.constexpr,
):
    """One query tile: dQ = scale * sum dS K over the key tiles of its band, laid out as Q."""
    h, m0 = _head_and_start(H, BLOCK_M)
    K += SLOT
    V += 2 * SLOT
    offs_m, in_m, lo, hi, first, last = _span(m0, BLOCK_M, LO, HI, T, HALF, BLOCK_M, BLOCK_N)
    q = _load_rows(Q, COS, SIN, offs_m, in_m, STRIDE, D, h, BLOCK_M, ROPE)
    do = _rows(DO, offs_m, in_m, H * D, D, h)
    lse = tl.load(LSE + offs_m * H + h, mask=in_m, other=0.0)
    delta = tl.load(DELTA + offs_m * H + h, mask=in_m, other=0.0)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < T
        k = _load_rows(K, COS, SIN, offs_n, in_n, STRIDE, D, h, BLOCK_N, ROPE)
        vT = _cols(V, offs_n, in_n, STRIDE, D, h)
        s = tl.dot(q, tl.trans(k)) * QK_SCALE
        p = tl.where(_allowed(offs_m, offs_n, lo, hi, HALF), tl.math.exp2(s - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, vT) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    _store_grad(DQ, COS, SIN, offs_m, in_m, STRIDE, D, h, dq * SM_SCALE, BLOCK_M, ROPE)


@triton.jit
def _band_dq_unrotate(
    DQ32, COS, SIN, DQKV, T, H: tl.constexpr, D: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr
):
    """The one-pass backward's last step with ROPE: the float32 (T, H, D) dQ of rotated q, stored through the
    inverse rotation as the q slot of the packed projection's gradient (in place of a dtype conversion). One
    program per BLOCK tokens, all heads: each token's table row is read from memory once, not once a head."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < T
    for h in range(H):
        dq = _rows(DQ32, offs, in_range, H * D, D, h)
        _store_unrotated(DQKV, COS, SIN, offs, in_range, STRIDE, D, h, dq, BLOCK)


def _scales(D: int) -> tuple[float, float]:
    """(QK_SCALE, SM_SCALE): the softmax scale 1/sqrt(D) in the exp2 domain, and itself, passed as constexprs
    (compile-time constants of the kernels, one compilation per head dim)."""
    return LOG2E / math.sqrt(D), 1.0 / math.sqrt(D)


def _layout(x: torch.Tensor) -> dict:
    """The kernels' constexprs for q, k, v given as separate (T, H, D) tensors or as one (T, 3, H, D) projection
    (whose q and k the kernels rotate)."""
    H, D = x.shape[-2:]
    if x.dim() == 4:
        return dict(SLOT=H * D, STRIDE=3 * H * D, ROPE=True)
    return dict(SLOT=0, STRIDE=H * D, ROPE=False)


def _forward(q, k, v, cos, sin, lo, hi, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: q, k, v separate (cos, sin unused) or all three the packed projection."""
    T, H, D = q.shape[0], *q.shape[-2:]
    o, lse = q.new_empty((T, H, D)), q.new_empty((T, H), dtype=torch.float32)
    layout = _layout(q)
    tiles = FWD_ROPE if layout["ROPE"] else FWD
    grid = (triton.cdiv(T, tiles["BLOCK_M"]) * H,)
    _band_fwd[grid](q, k, v, cos, sin, o, lse, lo, hi, T, H, D, half, *_scales(D), **layout, **tiles)
    return o, lse


def _backward(do, q, k, v, cos, sin, o, lse, lo, hi, half: int, dq, dk, dv) -> None:
    """Launch the backward into dq, dk, dv, laid out as q, k, v (for the packed projection, all three its
    gradient)."""
    T, H, D = q.shape[0], *q.shape[-2:]
    delta = lse.new_empty((T, H))
    _band_delta[(triton.cdiv(T, 64), H)](o, do, delta, T, H, D, BLOCK=64)
    args = (T, H, D, half, *_scales(D))
    layout = _layout(q)
    rope = layout["ROPE"]
    if not torch.are_deterministic_algorithms_enabled():
        tiles = BWD_ROPE if rope else BWD
        dq32 = torch.zeros((T, H, D), dtype=torch.float32, device=q.device)
        grid = (triton.cdiv(T, tiles["BLOCK_N"]) * H,)
        _band_bwd[grid](q, k, v, cos, sin, do, lse, delta, lo, hi, dq32, dk, dv, *args, ATOMIC_DQ=True, **layout,
                        **tiles)  # fmt: skip
        if rope:
            _band_dq_unrotate[(triton.cdiv(T, 32),)](dq32, cos, sin, dq, T, H, D, layout["STRIDE"], BLOCK=32)
        else:
            dq.copy_(dq32)
        return
    tiles = DKDV_ROPE if rope else DKDV
    grid = (triton.cdiv(T, tiles["BLOCK_N"]) * H,)
    _band_bwd[grid](q, k, v, cos, sin, do, lse, delta, lo, hi, dq, dk, dv, *args, ATOMIC_DQ=False, **layout,
                    **tiles)  # fmt: skip
    tiles = DQ_ROPE if rope else DQ
    grid = (triton.cdiv(T, tiles["BLOCK_M"]) * H,)
    _band_bwd_dq[grid](q, k, v, cos, sin, do, lse, delta, lo, hi, dq, *args, **layout, **tiles)


def _fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, lo, lo, lo, hi, half)  # lo stands for the unused tables


def _fwd_fake(q, k, v, lo, hi, half):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def _bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    half: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _bwd_fake(do, q, k, v, o, lse, lo, hi, half)
    _backward(do, q, k, v, lo, lo, o, lse, lo, hi, half, dq, dk, dv)
    return dq, dk, dv


def _bwd_fake(do, q, k, v, o, lse, lo, hi, half):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _save(inputs, outputs):
    q, k, v, lo, hi, half = inputs
    o, lse = outputs
    return (q, k, v, o, lse, lo, hi), (half,)


_fwd, _bwd = autograd_op("band_attention", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,))


def _rope_fwd(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(qkv, qkv, qkv, cos, sin, lo, hi, half)


def _rope_fwd_fake(qkv, cos, sin, lo, hi, half):
    T, _, H, D = qkv.shape
    return qkv.new_empty((T, H, D)), qkv.new_empty((T, H), dtype=torch.float32)


def _rope_bwd(
    do: torch.Tensor,
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    half: int,
) -> torch.Tensor:
    dqkv = torch.empty_like(qkv)
    _backward(do, qkv, qkv, qkv, cos, sin, o, lse, lo, hi, half, dqkv, dqkv, dqkv)
    return dqkv


def _rope_bwd_fake(do, qkv, cos, sin, o, lse, lo, hi, half):
    return torch.empty_like(qkv)


def _rope_save(inputs, outputs):
    qkv, cos, sin, lo, hi, half = inputs
    o, lse = outputs
    return (qkv, cos, sin, o, lse, lo, hi), (half,)


_rope_fwd, _rope_bwd = autograd_op(
    "band_attention_rope", _rope_fwd, _rope_fwd_fake, _rope_bwd, _rope_bwd_fake, save=_rope_save,
    differentiable=(0,),
)  # fmt: skip


def fits(q: torch.Tensor) -> bool:
    """The tensors the kernels take: half precision, a power-of-two head dim >= 16 (tl.dot's tiles)."""
    D = q.shape[-1]
    return q.dtype in (torch.float16, torch.bfloat16) and D >= 16 and D & (D - 1) == 0


def document_bounds(cu_seqlens: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) of each token's document, two (T,) int32 tensors."""
    cu = cu_seqlens.to(torch.int32)
    idx = torch.arange(num_tokens, device=cu.device, dtype=torch.int32)
    doc = torch.searchsorted(cu, idx, right=True) - 1
    return cu[doc].contiguous(), cu[doc + 1].contiguous()


def band_attention(q, k, v, cu_seqlens, window: int) -> torch.Tensor:
    """Attention of each token to the tokens of its document within window // 2 on each side."""
    lo, hi = document_bounds(cu_seqlens, q.shape[0])
    out, _lse = _fwd(q.contiguous(), k.contiguous(), v.contiguous(), lo, hi, window // 2)
    return out


def fits_rope(qkv: torch.Tensor, cos: torch.Tensor) -> bool:
    """The tensors `band_attention_rope` takes: a (T, 3, H, D) projection the band kernel takes, and fp32 (T, D)
    tables."""
    return (
        qkv.dim() == 4
        and qkv.shape[1] == 3
        and fits(qkv)
        and cos.dtype == torch.float32
        and cos.shape == (qkv.shape[0], qkv.shape[-1])
    )


def band_attention_rope(qkv, cos, sin, cu_seqlens, window: int) -> torch.Tensor:
    """`band_attention` of the rotated q and k of a packed (T, 3, H, D) projection, rotated inside the kernels
    (`rotary.apply_rotary`'s rotation with the (T, D) fp32 tables cos, sin); returns (T, H, D). Its gradient is
    the projection's: no separate rotary kernel runs either way."""
    lo, hi = document_bounds(cu_seqlens, qkv.shape[0])
    out, _lse = _rope_fwd(qkv.contiguous(), cos.contiguous(), sin.contiguous(), lo, hi, window // 2)
    return out
