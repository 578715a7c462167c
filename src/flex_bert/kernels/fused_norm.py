"""Residual add + dropout + LayerNorm in one Triton kernel each way: the joints of the pre-norm stream.

    x_new = x + dropout_p(branch)                        stored in x's dtype (the fp32 residual under autocast)
    out   = (x_new - mean) * rstd * weight (+ bias)      stored in `out_dtype` (the dtype the next matmul reads)

Every layer has two such joints (the attention output joining the stream before `mlp_norm`; the MLP output
joining it before the next layer's `attn_norm`, or `final_norm`). Unfused they are several memory-bound passes
over the stream; here one kernel reads x and branch and writes x_new and out, and one backward kernel reads
d_out, d_x_new and x_new and writes d_x and d_branch (measurements: docs/PERFORMANCE.md). The dropout mask is
never stored: both kernels draw it from Philox with the same seed and offsets, four uniforms per call (`_keep`).

It computes what the PyTorch composition `x + F.dropout(branch)` then `F.layer_norm` computes, including the
roundings of the composition under autocast: the scaled dropout output is rounded to branch's dtype before the
add (as F.dropout does), x_new is rounded to x's dtype before it is normalised, the gradient reaching branch is
rounded to branch's dtype before the dropout scale (as autograd casts it for the add). Only the dropout mask
differs (another random stream); the LayerNorm sums are fp32 in another order.

`fits(x, norm)` says which tensors the kernels take; `policy.py` decides where they run (CUDA with Triton).
Tests also run them on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before import).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .fp8_rows import row_scale
from .op import autocast_dtype, autograd_op

_MAX_HIDDEN = 8192  # one row lives in registers: beyond this the kernels would spill
_BWD_PROGRAMS_PER_SM = 4


@triton.jit
def _keep(seed, rows, p, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Dropout's keep mask (BLOCK_R, BLOCK_C) of the tile of `rows`: uniform(0, 1) > p per element. One Philox
    call per 4 elements (`rand4x`: four uniforms per call): the call at (row, j) serves columns 4j..4j+3
    (interleaved by join + reshape): one call per element (`tl.rand`) would dominate these otherwise
    memory-bound kernels (docs/PERFORMANCE.md). Forward and backward call this with the same seed, rows and tile width."""
    quarter = tl.arange(0, BLOCK_C // 4)
    offs = rows[:, None].to(tl.int64) * (BLOCK_C // 4) + quarter[None, :]
    u0, u1, u2, u3 = tl.rand4x(seed, offs)
    u = tl.reshape(tl.join(tl.join(u0, u1), tl.join(u2, u3)), (BLOCK_R, BLOCK_C))
    return u > p


@triton.jit
def _add_norm_fwd(
    X, BR, XNEW, OUT, W, B, MEAN, RSTD, SEED, OUT8, OUT_SCALE,
    T, C, eps, p, scale,
    HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    FP8_OUT: tl.constexpr, FP8_MAX: tl.constexpr,
):  # fmt: skip
    """FP8_OUT: also out row-quantized as `fp8.quantize_rows` computes it, to OUT8 (whose format's largest
    value is FP8_MAX), with the row scales to OUT_SCALE (`fp8_rows.row_scale`)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rmask, cmask = rows < T, cols < C
    m = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    br = tl.load(BR + offs, mask=m, other=0.0)
    if DROPOUT:
        keep = _keep(tl.load(SEED), rows, p, BLOCK_R, BLOCK_C)
        br = tl.where(keep, br.to(tl.float32) * scale, 0.0).to(BR.dtype.element_ty)
    x_new = (x + br.to(tl.float32)).to(XNEW.dtype.element_ty)
    tl.store(XNEW + offs, x_new, mask=m)
    x = x_new.to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    out = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        out += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    out = out.to(OUT.dtype.element_ty)
    tl.store(OUT + offs, out, mask=m)
    if FP8_OUT:
        out = out.to(tl.float32)
        s = row_scale(tl.max(tl.where(m, tl.abs(out), 0.0), axis=1), FP8_MAX)
        tl.store(OUT_SCALE + rows, s, mask=rmask)
        tl.store(OUT8 + offs, tl.math.div_rn(out, s[:, None]).to(OUT8.dtype.element_ty), mask=m)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _add_norm_bwd(
    DOUT, DXNEW, XNEW, W, MEAN, RSTD, SEED, DX, DBR, DW, DB,
    T, C, p, scale, rows_per_program,
    HAS_DXNEW: tl.constexpr, DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr, BR_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Each program takes `rows_per_program` consecutive rows and writes its partial weight (and bias)
    gradients to row `program_id` of DW (DB); the caller sums them."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    first = pid * rows_per_program
    end = tl.minimum(first + rows_per_program, T)
    for start in range(first, end, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        rmask = rows < end
        m = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        x = tl.load(XNEW + offs, mask=m, other=0.0).to(tl.float32)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        dout = tl.load(DOUT + offs, mask=m, other=0.0).to(tl.float32)
        wdout = dout * w[None, :]
        c1 = tl.sum(xhat * wdout, axis=1) / C
        c2 = tl.sum(wdout, axis=1) / C
        dx = (wdout - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DXNEW:
            dx += tl.load(DXNEW + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)
        dbr = dx.to(BR_DTYPE)
        if DROPOUT:
            keep = _keep(tl.load(SEED), rows, p, BLOCK_R, BLOCK_C)
            dbr = tl.where(keep, dbr.to(tl.float32) * scale, 0.0).to(BR_DTYPE)
        tl.store(DBR + offs, dbr, mask=m)
        dw += tl.sum(dout * xhat, axis=0)
        if HAS_BIAS:
            db += tl.sum(dout, axis=0)
    tl.store(DW + pid * C + cols, dw, mask=cmask)
    if HAS_BIAS:
        tl.store(DB + pid * C + cols, db, mask=cmask)


def _blocks(C: int) -> tuple[int, int, int]:
    """(rows per tile, padded hidden, warps): about 2048 elements a tile, 4 warps (16 elements a thread), the
    fastest of `scripts/bench_fused.py --sweep` (docs/PERFORMANCE.md)."""
    block_c = triton.next_power_of_2(C)
    return max(1, 2048 // block_c), block_c, 4 if block_c <= 2048 else 8


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _bwd_programs(device: torch.device) -> int:
    return _BWD_PROGRAMS_PER_SM * (_num_sms(device.index or 0) if device.type == "cuda" else 4)


_TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _launch_fwd(x, branch, weight, bias, seed, p, eps, x_new, out, mean, rstd, out8=None, out_scale=None):
    T, C = x.shape
    block_r, block_c, warps = _blocks(C)
    _add_norm_fwd[(triton.cdiv(T, block_r),)](
        x, branch, x_new, out, weight, bias, mean, rstd, seed, out8, out_scale,
        T, C, eps, p, 1.0 / (1.0 - p),
        HAS_BIAS=bias is not None, DROPOUT=seed is not None, BLOCK_R=block_r, BLOCK_C=block_c,
        FP8_OUT=out8 is not None, FP8_MAX=0.0 if out8 is None else torch.finfo(out8.dtype).max,
        num_warps=warps,
    )  # fmt: skip


def forward(
    x: torch.Tensor,
    branch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    seed: torch.Tensor | None,
    p: float,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x_new, out, mean, rstd = _fwd_fake(x, branch, weight, bias, seed, p, eps, out_dtype)
    _launch_fwd(x, branch, weight, bias, seed, p, eps, x_new, out, mean, rstd)
    return x_new, out, mean, rstd


def _fwd_fake(x, branch, weight, bias, seed, p, eps, out_dtype):
    T = x.shape[0]
    stats = [x.new_empty((T,), dtype=torch.float32) for _ in range(2)]
    return torch.empty_like(x), x.new_empty(x.shape, dtype=out_dtype), *stats


def backward(
    d_x_new: torch.Tensor | None,
    d_out: torch.Tensor,
    x_new: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    seed: torch.Tensor | None,
    p: float,
    branch_dtype: torch.dtype,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    T, C = x_new.shape
    programs = _bwd_programs(x_new.device)
    d_x = torch.empty_like(x_new)
    d_branch = torch.empty((T, C), dtype=branch_dtype, device=x_new.device)
    d_w = torch.empty((programs, C), dtype=torch.float32, device=x_new.device)
    d_b = torch.empty((programs if has_bias else 1, C), dtype=torch.float32, device=x_new.device)
    block_r, block_c, warps = _blocks(C)
    _add_norm_bwd[(programs,)](
        d_out, d_x_new, x_new, weight, mean, rstd, seed, d_x, d_branch, d_w, d_b,
        T, C, p, 1.0 / (1.0 - p), triton.cdiv(T, programs),
        HAS_DXNEW=d_x_new is not None, DROPOUT=seed is not None, HAS_BIAS=has_bias,
        BR_DTYPE=_TRITON_DTYPES[branch_dtype], BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return d_x, d_branch, d_w.sum(0).to(weight.dtype), d_b.sum(0)


def _bwd_fake(d_x_new, d_out, x_new, weight, mean, rstd, seed, p, branch_dtype, has_bias):
    C = x_new.shape[1]
    d_b = weight.new_empty((C,), dtype=torch.float32)
    return (
        torch.empty_like(x_new),
        x_new.new_empty(x_new.shape, dtype=branch_dtype),
        torch.empty_like(weight),
        d_b,
    )


def _save(inputs, outputs):
    x, branch, weight, bias, seed, p, _eps, _out_dtype = inputs
    x_new, _out, mean, rstd = outputs
    return (x_new, weight, mean, rstd, seed), (p, branch.dtype, bias is not None)


_fwd, _bwd = autograd_op(
    "add_dropout_layer_norm", forward, _fwd_fake, backward, _bwd_fake, save=_save, differentiable=(0, 1)
)


def forward_fp8(
    x: torch.Tensor,
    branch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    seed: torch.Tensor | None,
    p: float,
    eps: float,
    out_dtype: torch.dtype,
    fp8_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`forward`'s outputs, and out row-quantized to `fp8_dtype` with its (T, 1) fp32 scales."""
    x_new, out, mean, rstd, out8, out_scale = _fwd_fp8_fake(
        x, branch, weight, bias, seed, p, eps, out_dtype, fp8_dtype
    )
    _launch_fwd(x, branch, weight, bias, seed, p, eps, x_new, out, mean, rstd, out8, out_scale)
    return x_new, out, mean, rstd, out8, out_scale


def _fwd_fp8_fake(x, branch, weight, bias, seed, p, eps, out_dtype, fp8_dtype):
    x_new, out, mean, rstd = _fwd_fake(x, branch, weight, bias, seed, p, eps, out_dtype)
    return x_new, out, mean, rstd, torch.empty_like(out, dtype=fp8_dtype), mean.new_empty((x.shape[0], 1))


def _save_fp8(inputs, outputs):
    return _save(inputs[:-1], outputs[:4])


_fwd_fp8, _ = autograd_op(
    "add_dropout_layer_norm_fp8",
    forward_fp8,
    _fwd_fp8_fake,
    backward,
    _bwd_fake,
    save=_save_fp8,
    differentiable=(0, 1),
)


def fits(x: torch.Tensor, norm: torch.nn.Module) -> bool:
    """The tensors the kernels take: (tokens, hidden) with a row that fits in registers, a LayerNorm."""
    return isinstance(norm, torch.nn.LayerNorm) and x.dim() == 2 and x.shape[-1] <= _MAX_HIDDEN


def add_dropout_layer_norm(
    x: torch.Tensor,
    branch: torch.Tensor,
    norm: torch.nn.LayerNorm,
    p: float,
    out_dtype: torch.dtype | None = None,
    fp8_dtype: torch.dtype | None = None,
) -> tuple:
    """(x + dropout_p(branch), norm(that)) for (tokens, hidden) tensors; `p` is the dropout probability in
    effect (0 in eval). `out_dtype` defaults to the CUDA autocast dtype when autocast is on, else x's dtype.
    With `fp8_dtype`, a third element: norm(that) row-quantized, (values, (T, 1) fp32 scales), as
    `fp8.quantize_rows` computes them (no gradient flows through it)."""
    if out_dtype is None:
        out_dtype = autocast_dtype(x)
    seed = torch.randint(0, 2**31 - 1, (1,), device=x.device, dtype=torch.int64) if p > 0 else None
    args = (x.contiguous(), branch.contiguous(), norm.weight, norm.bias, seed, float(p), norm.eps, out_dtype)
    if fp8_dtype is None:
        return _fwd(*args)[:2]
    x_new, out, _, _, out8, out_scale = _fwd_fp8(*args, fp8_dtype)
    return x_new, out, (out8, out_scale)
