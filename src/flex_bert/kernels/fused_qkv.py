"""The attention's QKV projection with rotary embedding in its epilogue: one Triton matrix product (CUDA).

`qkv_rotary(x_TC, weight, bias, cos_TD, sin_TD, heads) -> (q, k, v)`: `x @ weight.T (+ bias)` viewed as
(T, 3, H, D), q and k rotated (rotate-half, as `rotary.apply_rotary`), each a contiguous (T, H, D) tensor in x's
dtype. It replaces the projection's matrix product and the rotary kernel's forward (`fused_rotary`), which read
and wrote the whole projection once more.

Each tile is BLOCK_M tokens x HEADS heads, computed as two accumulators: the heads' first halves (d < D/2) and
their second halves, so the rotation pairs elements at the same place of the two, in registers. x and the
weight are read by TMA boxes; the weight's rows are reordered for that on each call (`_tile_rows`, a copy of
the weight where a tile holds more than one head). The products accumulate in fp32 and are rotated in fp32
before the one rounding to x's dtype (the unfused path rounds the projection, then the rotation). The tables
hold equal halves (`rotary.rotary_cos_sin`): only their first D/2 columns are read, once per token and tile, for
all the tile's heads.

FP8 forward (`fp8_qkv`; `x_fp8`, x's row-quantized copy that the joint before wrote): the weight is quantized
per row (`fp8_rows`) before its rows are reordered, the tiles multiply e4m3 boxes (twice as deep, the same bytes)
into the same accumulators (on Hopper without promotion to fp32 along K, Triton's default: the fast accumulation
of the other forward FP8 products, `fp8.mm_rows`), and the epilogue scales them per token and per weight row
before rotating.

Backward: `fused_rotary`'s kernel (inverse rotation of dq, dk, with dv, into the projection's gradient), then
cuBLAS for the gradients of x, weight and bias, in x's dtype (with or without the FP8 forward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import fp8_rows, fused_rotary
from .op import autograd_op


@triton.jit
def _tile(t, T, num_n, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile t -> (token tile, head tile), grouped: GROUP_M token tiles run through all head tiles together (their
    rows of x stay in L2)."""
    num_m = tl.cdiv(T, BLOCK_M)
    per_group = GROUP_M * num_n
    first_m = (t // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (t % per_group) % group_m, (t % per_group) // group_m


@triton.jit(do_not_specialize=["T", "PROGRAMS"])  # no recompilation as the token count changes
def _qkv_rotary_fwd(
    x_desc,
    w_desc,
    X_SCALE,
    W_SCALE,
    BIAS,
    COS,
    SIN,
    Q,
    K,
    V,
    T,
    C: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HEADS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PROGRAMS,
    SPECIALISE: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,
):
    """x_desc: (T, C) in (BLOCK_M, BLOCK_K) boxes; w_desc: the weight with its rows in tile order (`_tile_rows`),
    (3 H D, C) in (BLOCK_N, BLOCK_K) boxes. PROGRAMS: each program runs tiles pid, pid + PROGRAMS, ...
    SPECIALISE: Triton's warp specialisation of that loop (loads, products and epilogue in separate warps).
    FP8: x and the weight are row-quantized FP8 (`fp8.quantize_rows`), their fp32 row scales in X_SCALE (T) and
    W_SCALE (3 H D, in tile order), applied to the fp32 products before the rotation."""
    HALF: tl.constexpr = D // 2
    BLOCK_N: tl.constexpr = HEADS * HALF
    num_n: tl.constexpr = 3 * H // HEADS
    tiles = tl.cdiv(T, BLOCK_M) * num_n
    r = tl.arange(0, BLOCK_M)
    hh = tl.arange(0, HEADS)
    dd = tl.arange(0, HALF)
    for t in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=SPECIALISE, warp_specialize=SPECIALISE):
        pid_m, pid_n = _tile(t, T, num_n, BLOCK_M, GROUP_M)
        m0 = pid_m * BLOCK_M
        acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, C, BLOCK_K):
            a = x_desc.load([m0, k])
            acc1 = tl.dot(a, w_desc.load([pid_n * 2 * BLOCK_N, k]).T, acc1, input_precision=PRECISION)
            acc2 = tl.dot(
                a, w_desc.load([pid_n * 2 * BLOCK_N + BLOCK_N, k]).T, acc2, input_precision=PRECISION
            )
        if FP8:
            xs = tl.load(X_SCALE + m0 + r, mask=r < T - m0, other=0.0)[:, None]
            n1 = pid_n * 2 * BLOCK_N + tl.arange(0, BLOCK_N)
            acc1 = acc1 * xs * tl.load(W_SCALE + n1)[None, :]
            acc2 = acc2 * xs * tl.load(W_SCALE + n1 + BLOCK_N)[None, :]
        # The epilogue sees the tile as (tokens, heads, HALF): a table row is loaded once and broadcast over the
        # tile's heads (fewer registers than a table entry per element).
        acc1 = tl.reshape(acc1, (BLOCK_M, HEADS, HALF))
        acc2 = tl.reshape(acc2, (BLOCK_M, HEADS, HALF))
        row1 = (pid_n * HEADS + hh)[None, :, None] * D + dd[None, None, :]  # weight rows of the first halves
        if HAS_BIAS:
            acc1 += tl.load(BIAS + row1).to(tl.float32)
            acc2 += tl.load(BIAS + row1 + HALF).to(tl.float32)
        # 64-bit offset of the tile's first token, 32-bit offsets inside the tile (fewer registers)
        m64 = m0.to(tl.int64)
        part = (pid_n * HEADS) // H  # 0 q, 1 k, 2 v: H % HEADS == 0, so a tile lies in one part
        if part < 2:
            cs = r[:, None] * D + dd[None, :]
            m_cs = (r < T - m0)[:, None]
            c = tl.load(COS + m64 * D + cs, mask=m_cs, other=0.0)[:, None, :]
            s = tl.load(SIN + m64 * D + cs, mask=m_cs, other=0.0)[:, None, :]
            out1 = acc1 * c - acc2 * s
            out2 = acc2 * c + acc1 * s
        else:
            out1 = acc1
            out2 = acc2
        if part == 0:
            base = Q
        elif part == 1:
            base = K
        else:
            base = V
        h0 = pid_n * HEADS - part * H
        out = (
            base
            + m64 * (H * D)
            + (r[:, None, None] * (H * D) + ((h0 + hh) * D)[None, :, None] + dd[None, None, :])
        )
        m_tok = (r < T - m0)[:, None, None]
        tl.store(out, out1.to(Q.dtype.element_ty), mask=m_tok)
        tl.store(out + HALF, out2.to(Q.dtype.element_ty), mask=m_tok)


# (BLOCK_M, HEADS, BLOCK_K, GROUP_M, warps, stages, programs): programs 0 one tile each, 1 one per SM (persistent),
# 2 one per SM, warp-specialised. HEADS drops to a divisor of H where it must. FP8 operands: BLOCK_K doubled where
# C allows (`_config`), the same bytes a box.
CONFIG = (128, 4, 64, 8, 8, 4, 0)


MIN_CAPABILITY = 9  # TMA boxes and the tile were chosen and measured on Hopper (docs/PERFORMANCE.md)
MAX_TILE_WIDTH = 128  # columns of each accumulator: wider tiles need more shared memory than an H100 has


def _config(C: int, fp8: bool) -> tuple:
    """The tile configuration for inputs of C columns: `CONFIG`, with BLOCK_K doubled for FP8 where C allows."""
    block_k = CONFIG[2]
    return CONFIG[:2] + (2 * block_k,) + CONFIG[3:] if fp8 and C % (2 * block_k) == 0 else CONFIG


def _heads_per_tile(H: int, D: int, wanted: int) -> int:
    """The most heads up to `wanted`, a power of two (a tile's width) that divides H (a tile in one part), in a
    tile at most MAX_TILE_WIDTH wide (1 if even one head is wider; `fits` refuses that)."""
    return max(
        h for h in (1, 2, 4, 8, 16) if h <= wanted and H % h == 0 and (h == 1 or h * D // 2 <= MAX_TILE_WIDTH)
    )


def _tile_rows(weight: torch.Tensor, H: int, tile_heads: int) -> torch.Tensor:
    """The weight's rows (or its rows' scales, (3 H D, 1)) in the order the kernel's tiles read them: per tile of
    `tile_heads` heads, their first halves (head-major), then their second halves, so that each is one box."""
    C = weight.shape[1]
    D = weight.shape[0] // (3 * H)
    return weight.view(3 * H // tile_heads, tile_heads, 2, D // 2, C).transpose(1, 2).reshape(3 * H * D, C)


def launch(x, weight, bias, cos, sin, heads: int, config=None, x_fp8=None):
    """The forward kernel with a tile configuration (`CONFIG`'s fields; default `_config`'s): (q, k, v). `x_fp8`:
    (x8, scales), `fp8.quantize_rows` of x: the product in FP8, the weight quantized per row here (`fp8_rows`)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    T, C = x.shape
    D = weight.shape[0] // (3 * heads)
    q, k, v = _fwd_fake(x, weight, bias, cos, sin, heads)
    if T == 0:  # a TMA descriptor takes no empty tensor
        return q, k, v
    block_m, want_heads, block_k, group_m, warps, stages, persistent = config or _config(C, x_fp8 is not None)
    tile_heads = _heads_per_tile(heads, D, want_heads)
    tiles = triton.cdiv(T, block_m) * (3 * heads // tile_heads)
    programs = min(tiles, _num_sms(x.device)) if persistent else tiles
    if x_fp8 is None:
        a, w, a_scale, w_scale = x, weight, None, None
    else:
        (a, a_scale), (w, w_scale) = x_fp8, fp8_rows.quantize_rows(weight, x_fp8[0].dtype)
        w_scale = _tile_rows(w_scale, heads, tile_heads)
    x_desc = TensorDescriptor.from_tensor(_aligned(a), [block_m, block_k])
    w_desc = TensorDescriptor.from_tensor(
        _aligned(_tile_rows(w, heads, tile_heads)), [tile_heads * D // 2, block_k]
    )
    _qkv_rotary_fwd[(programs,)](
        x_desc, w_desc, a_scale, w_scale, bias if bias is not None else weight, cos, sin, q, k, v, T, C, heads, D,
        HAS_BIAS=bias is not None, HEADS=tile_heads, BLOCK_M=block_m, BLOCK_K=block_k, GROUP_M=group_m,
        PROGRAMS=programs, SPECIALISE=persistent == 2, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        FP8=x_fp8 is not None, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return q, k, v


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it where its start is not at the 16-byte boundary a TMA box needs."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    x8: torch.Tensor | None,
    x_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch(x, weight, bias, cos, sin, heads, x_fp8=None if x8 is None else (x8, x_scale))


def _fwd_fake(x, weight, bias, cos, sin, heads, x8=None, x_scale=None):
    shape = (x.shape[0], heads, weight.shape[0] // (3 * heads))
    return tuple(x.new_empty(shape) for _ in range(3))


def _bwd(
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return projection_gradients(fused_rotary.rotary_qkv_backward(dq, dk, dv, cos, sin), x, weight, has_bias)


def projection_gradients(
    dqkv: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of the projection `x @ weight.T (+ bias)` from its output's gradient, any shape of
    (T, 3 H D) elements (cuBLAS); dbias empty without a bias."""
    dqkv = dqkv.reshape(x.shape[0], weight.shape[0])
    d_bias = dqkv.sum(0, dtype=torch.float32).to(weight.dtype) if has_bias else dqkv.new_empty(0)
    return dqkv @ weight, dqkv.t() @ x, d_bias


def _bwd_fake(dq, dk, dv, x, weight, cos, sin, has_bias):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0] if has_bias else 0)


_fwd, _bwd = autograd_op(
    "qkv_rotary",
    _fwd,
    _fwd_fake,
    _bwd,
    _bwd_fake,
    save=lambda inputs, outputs: ((inputs[0], inputs[1], inputs[3], inputs[4]), (inputs[2] is not None,)),
)


def fits(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, heads: int) -> bool:
    """What the kernel takes: half-precision x and weight of one dtype, the weight a (3 H D, C) projection
    with a power-of-two head dim, tiles 16 (a GPU matrix product's least) to MAX_TILE_WIDTH wide, C a multiple
    of BLOCK_K, and fp32 tables. The GPU: `MIN_CAPABILITY` (policy.py reads it)."""
    D = weight.shape[0] // (3 * heads)
    return (
        x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.shape == (3 * heads * D, x.shape[-1])
        and D >= 2
        and D & (D - 1) == 0
        and 16 <= _heads_per_tile(heads, D, CONFIG[1]) * D // 2 <= MAX_TILE_WIDTH
        and x.shape[-1] % CONFIG[2] == 0
        and cos.dtype == torch.float32
    )


def qkv_rotary(x_TC, weight, bias, cos_TD, sin_TD, heads: int, x_fp8=None):
    """(q, k, v): the projection `x @ weight.T (+ bias)` split into heads, q and k rotated. `x_fp8`: x
    row-quantized (`fp8.quantize_rows`): the forward's product in FP8 (the gradients stay in x's dtype)."""
    bias = None if bias is None else bias.contiguous()
    x8, x_scale = (None, None) if x_fp8 is None else x_fp8
    args = (x_TC.contiguous(), weight.contiguous(), bias, cos_TD.contiguous(), sin_TD.contiguous(), heads)
    return _fwd(*args, x8, x_scale)
