"""Row-wise FP8 quantization in Triton (CUDA): `row_scale`, the scale shared by every kernel that writes an FP8
copy of its output (`fused_norm`, `fused_glu`), and `quantize_rows`, one pass over a tensor that nothing else
writes in FP8 (the weights, Wi^T read through its strides without a transposed copy).

All of them compute what `fp8.quantize_rows` computes in PyTorch, bit for bit: s = amax / FP8_MAX per row
(at least the smallest normal fp32), x / s rounded to nearest even, both divisions IEEE
(`tl.math.div_rn`; Triton's `/` is approximate). `fits(x)` says which tensors the kernel takes; `policy.py`
decides where it runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .op import opaque_op

_FP32_TINY = tl.constexpr(1.1754943508222875e-38)  # the smallest normal fp32
_MAX_ROW = 16384  # one row lives in registers


@triton.jit
def row_scale(amax, FP8_MAX: tl.constexpr):
    """amax / FP8_MAX, rounded as PyTorch divides, at least the smallest normal fp32 (`fp8.quantize_rows`)."""
    return tl.maximum(tl.math.div_rn(amax, FP8_MAX), _FP32_TINY)


@triton.jit
def _quantize_rows(X, Y8, S, K, stride_m, stride_k, FP8_MAX: tl.constexpr, BLOCK_K: tl.constexpr):
    """One row of X (strides given) to a contiguous row of Y8, its scale to S."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    m = cols < K
    x = tl.load(X + row.to(tl.int64) * stride_m + cols * stride_k, mask=m, other=0.0).to(tl.float32)
    s = row_scale(tl.max(tl.abs(x), axis=0), FP8_MAX)
    tl.store(S + row, s)
    tl.store(Y8 + row.to(tl.int64) * K + cols, tl.math.div_rn(x, s).to(Y8.dtype.element_ty), mask=m)


def _quantize(x: torch.Tensor, fp8: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x.shape
    y8, s = _quantize_fake(x, fp8)
    block = triton.next_power_of_2(K)
    warps = max(4, min(16, block // 512))
    fp8_max = torch.finfo(fp8).max
    _quantize_rows[(M,)](x, y8, s, K, x.stride(0), x.stride(1), fp8_max, BLOCK_K=block, num_warps=warps)
    return y8, s


def _quantize_fake(x, fp8):
    M, K = x.shape
    y8 = torch.empty((M, K), dtype=fp8, device=x.device)
    return y8, torch.empty((M, 1), dtype=torch.float32, device=x.device)


_quantize_op = opaque_op("quantize_rows", _quantize, _quantize_fake)


def quantize_rows(x: torch.Tensor, fp8: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / s in `fp8`, contiguous, s of shape (rows, 1) fp32) for a 2-D x of any strides. An op opaque to
    torch.compile: it also runs outside the ops whose implementations call it (`ops.add_norm_fp8`)."""
    return _quantize_op(x, fp8)


def fits(x: torch.Tensor) -> bool:
    """2-D floating tensors whose rows fit in registers."""
    return x.dim() == 2 and x.is_floating_point() and 0 < x.shape[1] <= _MAX_ROW
