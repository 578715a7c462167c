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
LOG2E = 1.4426950408889634


@triton.jit
def _tile_head(H: tl.constexpr):
    """(tile, head) of this program. Grids are 1-D (`_grid`), heads fastest: the H programs of a token tile run
    together and share in L2 what all heads read (the tile's document bounds, its rows of the rotary tables, the
    contiguous H * D elements of each token)."""
    pid = tl.program_id(0)
    return pid // H, pid % H


@triton.jit
def _rows(X, offs, in_range, H: tl.constexpr, D: tl.constexpr, h):
    """Rows `offs` of head h of a contiguous (T, H, D) tensor, as (len(offs), D)."""
    d = tl.arange(0, D)
    row = offs.to(tl.int64) * (H * D) + h * D
    return tl.load(X + row[:, None] + d[None, :], mask=in_range[:, None], other=0.0)


@triton.jit
def _store_rows(X, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h, value):
    """Store a (len(offs), D) tile as rows `offs` of head h of X (STRIDE elements from one token to the next),
    in X's dtype."""
    d = tl.arange(0, D)
    row = offs.to(tl.int64) * STRIDE + h * D
    tl.store(X + row[:, None] + d[None, :], value.to(X.dtype.element_ty), mask=in_range[:, None])


@triton.jit
def _store_grad(
    X, offs, in_range, STRIDE: tl.constexpr, D: tl.constexpr, h, g, COS, SIN, BLOCK: tl.constexpr,
    ROTARY: tl.constexpr,
):  # fmt: skip
    """Store a (BLOCK, D) float32 gradient tile as `_store_rows` does. ROTARY: g is the gradient of a rotated q
    or k; store that of the tensor before the rotation, (g1 cos + g2 sin, g2 cos - g1 sin) with g1, g2 its
    halves and the tables' first D/2 columns (`fused_rotary`'s backward, here in registers)."""
    if ROTARY:
        HALF: tl.constexpr = D // 2
        g1, g2 = tl.split(tl.permute(tl.reshape(g, (BLOCK, 2, HALF)), (0, 2, 1)))
        dd = tl.arange(0, HALF)
        tok = offs.to(tl.int64)
        cs = tok[:, None] * D + dd[None, :]
        c = tl.load(COS + cs, mask=in_range[:, None], other=0.0)
        s = tl.load(SIN + cs, mask=in_range[:, None], other=0.0)
        out = X + (tok * STRIDE + h * D)[:, None] + dd[None, :]
        tl.store(out, (g1 * c + g2 * s).to(X.dtype.element_ty), mask=in_range[:, None])
        tl.store(out + HALF, (g2 * c - g1 * s).to(X.dtype.element_ty), mask=in_range[:, None])
    else:
        _store_rows(X, offs, in_range, STRIDE, D, h, g)


@triton.jit
def _cols(X, offs, in_range, H: tl.constexpr, D: tl.constexpr, h):
    """The same rows transposed, (D, len(offs)), loaded directly in that layout."""
    d = tl.arange(0, D)
    row = offs.to(tl.int64) * (H * D) + h * D
    return tl.load(X + row[None, :] + d[:, None], mask=in_range[None, :], other=0.0)


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


@triton.jit
def _band_fwd(
    Q,
    K,
    V,
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
):
    tile, h = _tile_head(H)
    m0 = tile * BLOCK_M
    offs_m, in_m, lo, hi, first, last = _span(m0, BLOCK_M, LO, HI, T, HALF, BLOCK_M, BLOCK_N)
    q = _rows(Q, offs_m, in_m, H, D, h)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile adds exp2(-inf) = 0
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < T
        kT = _cols(K, offs_n, in_n, H, D, h)
        v = _rows(V, offs_n, in_n, H, D, h)
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
    tile, h = _tile_head(H)
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < T
    o = _rows(OUT, offs, in_range, H, D, h).to(tl.float32)
    do = _rows(DO, offs, in_range, H, D, h).to(tl.float32)
    tl.store(DELTA + offs * H + h, tl.sum(o * do, axis=1), mask=in_range)


@triton.jit
def _band_bwd(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    LO,
    HI,
    DQ,
    DK,
    DV,
    COS,
    SIN,
    T,
    H: tl.constexpr,
    D: tl.constexpr,
    HALF: tl.constexpr,
    QK_SCALE: tl.constexpr,
    SM_SCALE: tl.constexpr,
    GRAD_STRIDE: tl.constexpr,
    ROTARY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """One key tile: dV = sum P^T dO and dK = scale * sum dS^T Q over the query tiles of its band (transposed
    tiles: rows are keys). With ATOMIC_DQ (the one-pass backward) also each query tile's share of dQ,
    scale * dS K, added to the float32 DQ with atomics (a query tile gets shares from the few key tiles of its
    band): scores and dP are computed once, not once per kernel. Without, DQ is not touched (`_band_bwd_dq`
    computes dQ) and q is loaded transposed, the layout the split path's tiles were tuned for. dK and dV are
    stored GRAD_STRIDE elements from one token to the next (H D, or 3 H D into a projection's gradient), dK with
    the inverse rotation where ROTARY (`_store_grad`)."""
    tile, h = _tile_head(H)
    n0 = tile * BLOCK_N
    offs_n, in_n, lo, hi, first, last = _span(n0, BLOCK_N, LO, HI, T, HALF, BLOCK_N, BLOCK_M)
    k = _rows(K, offs_n, in_n, H, D, h)
    v = _rows(V, offs_n, in_n, H, D, h)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    d = tl.arange(0, D)
    for m0 in range(first, last, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < T
        if ATOMIC_DQ:
            q = _rows(Q, offs_m, in_m, H, D, h)
            qT = tl.trans(q)
        else:
            qT = _cols(Q, offs_m, in_m, H, D, h)
            q = tl.trans(qT)
        do = _rows(DO, offs_m, in_m, H, D, h)
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
    _store_grad(DK, offs_n, in_n, GRAD_STRIDE, D, h, dk * SM_SCALE, COS, SIN, BLOCK_N, ROTARY)
    _store_rows(DV, offs_n, in_n, GRAD_STRIDE, D, h, dv)


@triton.jit
def _band_bwd_dq(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    LO,
    HI,
    DQ,
    COS,
    SIN,
    T,
    H: tl.constexpr,
    D: tl.constexpr,
    HALF: tl.constexpr,
    QK_SCALE: tl.constexpr,
    SM_SCALE: tl.constexpr,
    GRAD_STRIDE: tl.constexpr,
    ROTARY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One query tile: dQ = scale * sum dS K over the key tiles of its band, stored as `_band_bwd` stores dK."""
    tile, h = _tile_head(H)
    m0 = tile * BLOCK_M
    offs_m, in_m, lo, hi, first, last = _span(m0, BLOCK_M, LO, HI, T, HALF, BLOCK_M, BLOCK_N)
    q = _rows(Q, offs_m, in_m, H, D, h)
    do = _rows(DO, offs_m, in_m, H, D, h)
    lse = tl.load(LSE + offs_m * H + h, mask=in_m, other=0.0)
    delta = tl.load(DELTA + offs_m * H + h, mask=in_m, other=0.0)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for n0 in range(first, last, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < T
        k = _rows(K, offs_n, in_n, H, D, h)
        vT = _cols(V, offs_n, in_n, H, D, h)
        s = tl.dot(q, tl.trans(k)) * QK_SCALE
        p = tl.where(_allowed(offs_m, offs_n, lo, hi, HALF), tl.math.exp2(s - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, vT) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    _store_grad(DQ, offs_m, in_m, GRAD_STRIDE, D, h, dq * SM_SCALE, COS, SIN, BLOCK_M, ROTARY)


@triton.jit
def _band_dq_rotate(
    DQ32, DQ, COS, SIN, T, H: tl.constexpr, D: tl.constexpr, GRAD_STRIDE: tl.constexpr, BLOCK: tl.constexpr
):
    """The one-pass backward's float32 dQ, inverse-rotated and stored as `_band_bwd` stores dK with ROTARY."""
    tile, h = _tile_head(H)
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < T
    dq = _rows(DQ32, offs, in_range, H, D, h)
    _store_grad(DQ, offs, in_range, GRAD_STRIDE, D, h, dq, COS, SIN, BLOCK, True)


def _grid(T: int, block: int, H: int) -> tuple[int]:
    """The launch grid of a kernel with one program per (tile of `block` tokens, head): `_tile_head`'s order."""
    return (triton.cdiv(T, block) * H,)


def _scales(D: int) -> tuple[float, float]:
    """(QK_SCALE, SM_SCALE): the softmax scale 1/sqrt(D) in the exp2 domain, and itself, passed as constexprs
    (compile-time constants of the kernels, one compilation per head dim)."""
    return LOG2E / math.sqrt(D), 1.0 / math.sqrt(D)


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): the attention and each row's log-sum-exp (base 2), what `gradients` needs besides q, k, v."""
    T, H, D = q.shape
    o, lse = _fwd_fake(q, k, v, lo, hi, half)
    _band_fwd[_grid(T, FWD["BLOCK_M"], H)](q, k, v, o, lse, lo, hi, T, H, D, half, *_scales(D), **FWD)
    return o, lse


def _fwd_fake(q, k, v, lo, hi, half):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def gradients(
    do, q, k, v, o, lse, lo, hi, half: int, rotary: tuple[torch.Tensor, torch.Tensor] | None = None
):
    """(dq, dk, dv), the gradients of q, k, v. With `rotary`, the (cos, sin) tables q and k were rotated with:
    one (T, 3, H, D) tensor instead, the gradient of the projection q, k, v were rotated from (q, k, v along
    dim 1), which the kernels write directly: no separate rotary backward reads dq, dk, dv again."""
    T, H, D = q.shape
    delta = lse.new_empty((T, H))
    _band_delta[_grid(T, 64, H)](o, do, delta, T, H, D, BLOCK=64)
    one_pass = not torch.are_deterministic_algorithms_enabled()
    if rotary is None:
        dq = None if one_pass else torch.empty_like(q)  # one pass: cast from its float32 sum
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        cos = sin = lse  # not read
    else:
        dqkv = q.new_empty((T, 3, H, D))
        dq, dk, dv = dqkv.unbind(1)
        cos, sin = rotary
    stride = dk.stride(0)
    args = (T, H, D, half, *_scales(D), stride, rotary is not None)
    if one_pass:
        dq32 = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        grid = _grid(T, BWD["BLOCK_N"], H)
        _band_bwd[grid](q, k, v, do, lse, delta, lo, hi, dq32, dk, dv, cos, sin, *args, ATOMIC_DQ=True, **BWD)
        if rotary is None:
            return dq32.to(q.dtype), dk, dv
        _band_dq_rotate[_grid(T, 64, H)](dq32, dq, cos, sin, T, H, D, stride, BLOCK=64)
    else:
        grid = _grid(T, DKDV["BLOCK_N"], H)
        _band_bwd[grid](q, k, v, do, lse, delta, lo, hi, dq, dk, dv, cos, sin, *args, ATOMIC_DQ=False, **DKDV)
        grid = _grid(T, DQ["BLOCK_M"], H)
        _band_bwd_dq[grid](q, k, v, do, lse, delta, lo, hi, dq, cos, sin, *args, **DQ)
    return (dq, dk, dv) if rotary is None else dqkv


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
    return gradients(do, q, k, v, o, lse, lo, hi, half)


def _bwd_fake(do, q, k, v, o, lse, lo, hi, half):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _save(inputs, outputs):
    q, k, v, lo, hi, half = inputs
    o, lse = outputs
    return (q, k, v, o, lse, lo, hi), (half,)


_fwd, _bwd = autograd_op(
    "band_attention", forward, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,)
)


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
