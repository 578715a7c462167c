"""A local layer's attention from its input, as one op: the QKV projection with rotary in its epilogue
(`fused_qkv`) and the sliding-window kernel (`band_attention`) (CUDA).

`qkv_band_attention(x_TC, weight, bias, cos_TD, sin_TD, cu_seqlens, heads, window) -> out_THD` computes
`band_attention(*fused_qkv.qkv_rotary(x, weight, bias, cos, sin, heads), cu_seqlens, window)` with the same
forward kernels. Why one op: the backward. As two ops, the band backward writes dq, dk and dv, and
`fused_rotary`'s backward reads them again to write the projection's (T, 3, H, D) gradient with the inverse
rotation. As one, the band backward's kernels write that gradient directly, rotating dq and dk in the registers
they store from (`band_attention.gradients` with `rotary`). Then cuBLAS computes the gradients of x, weight and
bias (`fused_qkv.projection_gradients`). Saved for the backward: what the two ops save.
"""

from __future__ import annotations

import torch

from . import band_attention, fused_qkv
from .op import autograd_op

MIN_CAPABILITY = fused_qkv.MIN_CAPABILITY


def _fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    heads: int,
    half: int,
    x8: torch.Tensor | None,
    x_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, q, k, v, lse): the attention, and the rotated projection and log-sum-exp the backward needs.
    (x8, x_scale): x row-quantized, for the projection in FP8 (`fused_qkv.launch`), or None."""
    q, k, v = fused_qkv.launch(x, weight, bias, cos, sin, heads, x_fp8=None if x8 is None else (x8, x_scale))
    out, lse = band_attention.forward(q, k, v, lo, hi, half)
    return out, q, k, v, lse


def _fwd_fake(x, weight, bias, cos, sin, lo, hi, heads, half, x8, x_scale):
    shape = (x.shape[0], heads, weight.shape[0] // (3 * heads))
    return (*(x.new_empty(shape) for _ in range(4)), x.new_empty(shape[:2], dtype=torch.float32))


def _bwd(
    do: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    half: int,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dqkv = band_attention.gradients(do, q, k, v, out, lse, lo, hi, half, rotary=(cos, sin))
    return fused_qkv.projection_gradients(dqkv, x, weight, has_bias)


def _bwd_fake(do, x, weight, cos, sin, q, k, v, out, lse, lo, hi, half, has_bias):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0] if has_bias else 0)


def _save(inputs, outputs):
    x, weight, bias, cos, sin, lo, hi, heads, half, _x8, _x_scale = inputs
    out, q, k, v, lse = outputs
    return (x, weight, cos, sin, q, k, v, out, lse, lo, hi), (half, bias is not None)


_fwd, _bwd = autograd_op(
    "qkv_band_attention", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,)
)


def fits(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, heads: int) -> bool:
    """What both kernels take (`fused_qkv.fits`, and `band_attention.fits` for the q it would make)."""
    q = torch.empty((0, heads, weight.shape[0] // (3 * heads)), dtype=x.dtype, device="meta")
    return fused_qkv.fits(x, weight, cos, heads) and band_attention.fits(q)


def qkv_band_attention(
    x_TC, weight, bias, cos_TD, sin_TD, cu_seqlens, heads: int, window: int, x_fp8=None
) -> torch.Tensor:
    """The band attention (total window `window`) of the projection's q, k, v, q and k rotated: (T, H, D).
    `x_fp8`: x row-quantized (`fp8.quantize_rows`): the projection's forward in FP8 (`fused_qkv.qkv_rotary`)."""
    lo, hi = band_attention.document_bounds(cu_seqlens, x_TC.shape[0])
    bias = None if bias is None else bias.contiguous()
    x, weight, cos, sin = (t.contiguous() for t in (x_TC, weight, cos_TD, sin_TD))
    x8, x_scale = (None, None) if x_fp8 is None else x_fp8
    return _fwd(x, weight, bias, cos, sin, lo, hi, heads, window // 2, x8, x_scale)[0]
