"""The model's fused-or-plain operations: each runs a Triton kernel where `policy.kernel` says it runs, else the
PyTorch composition that computes the same thing. Tensors are packed tokens: x_TC is (tokens, hidden)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import backends, fp8, policy
from .op import autocast_dtype
from .rotary import apply_rotary


def add_norm(
    x_TC: torch.Tensor,
    branch_TC: torch.Tensor | None,
    norm: nn.Module,
    dropout: float | None,
    training: bool,
    fused: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A joint of the residual stream: `x = x + dropout(branch)` (no dropout if `dropout` is None; `branch` None
    adds nothing), then `(x, norm(x))`. Fused: `fused_norm`, the same computation with another dropout mask."""
    if branch_TC is None:
        return x_TC, norm(x_TC)
    kernel = policy.kernel("add_norm", x_TC, norm, enabled=fused)
    if kernel is not None:
        p = dropout if dropout is not None and training else 0.0
        return kernel.add_dropout_layer_norm(x_TC, branch_TC, norm, p)
    if dropout is not None:
        branch_TC = F.dropout(branch_TC, dropout, training)
    x_TC = x_TC + branch_TC
    return x_TC, norm(x_TC)


def add_norm_fp8(
    x_TC: torch.Tensor,
    branch_TC: torch.Tensor | None,
    norm: nn.Module,
    dropout: float | None,
    training: bool,
    fused: bool,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`add_norm`'s (x, norm(x)), and norm(x) in the dtype the next product runs in, row-quantized to FP8
    (`fp8.quantize_rows`): the operand of an FP8 product (`fp8_glu`, the FP8 QKV projection). Fused: `fused_norm`
    writes it in the same pass; without a branch (layer 0) nothing is added, and one pass quantizes."""
    kernel = None if branch_TC is None else policy.kernel("add_norm", x_TC, norm, enabled=fused)
    if kernel is not None:
        p = dropout if dropout is not None and training else 0.0
        return kernel.add_dropout_layer_norm(x_TC, branch_TC, norm, p, fp8_dtype=fp8.FP8)
    x_TC, h_TC = add_norm(x_TC, branch_TC, norm, dropout, training, fused)
    return x_TC, h_TC, fp8.to_fp8_rows(h_TC.to(autocast_dtype(h_TC)), fused)


def gelu_gate(h_TN: torch.Tensor, fused: bool) -> torch.Tensor:
    """`gelu(a) * g` for `a, g = h.chunk(2, dim=-1)`, exact erf GELU (HF's ACT2FN["gelu"]). Fused: `fused_glu`."""
    kernel = policy.kernel("gelu_gate", h_TN, enabled=fused)
    if kernel is not None:
        return kernel.gelu_gate(h_TN)
    a, g = h_TN.chunk(2, dim=-1)
    return F.gelu(a, approximate="none") * g


def rotary_qkv(qkv_T3HD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor, fused: bool):
    """(q, k, v) of a (T, 3, H, D) projection, q and k rotated (`rotary.apply_rotary`). Fused: `fused_rotary`."""
    kernel = policy.kernel("rotary_qkv", qkv_T3HD, cos_TD, enabled=fused)
    if kernel is not None:
        return kernel.rotary_qkv(qkv_T3HD, cos_TD, sin_TD)
    q, k, v = qkv_T3HD.unbind(dim=1)
    return apply_rotary(q, cos_TD, sin_TD), apply_rotary(k, cos_TD, sin_TD), v


def qkv_attention(
    x_TC: torch.Tensor,
    proj: nn.Linear,
    cos_TD: torch.Tensor,
    sin_TD: torch.Tensor,
    heads: int,
    backend: str,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    window: int | None,
    fused: bool,
    x_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The attention backend `backend` (`BACKENDS`) of the projection `proj(x)`'s q, k, v, split into `heads` heads
    of (T, H, D), q and k rotated: (T, H, D). Fused: the projection is `fused_qkv` (the rotation in its epilogue,
    in the dtype `proj` runs in, autocast's); on a local layer (a window) that the backend runs the band kernel on,
    `fused_qkv_band`: projection and attention as one op, whose backward writes the projection's gradient
    directly. `x_fp8` (`fp8_qkv`; no bias): x row-quantized (`add_norm_fp8`), and the projection's forward an FP8
    product (in `fused_qkv`'s kernel, else `fp8.linear`); its gradients stay in the dtype it runs in."""
    if x_fp8 is not None:
        fp8.check_device(x_TC)
    # cast only where fused_qkv (and fused_qkv_band, of the same generation) can run: elsewhere (a GPU before
    # Hopper) the plain projection casts under autocast, and a cast here would be done twice
    operands = _projection_operands(x_TC, proj) if fused and policy.usable("qkv_rotary", x_TC) else None
    if operands is not None and window is not None:
        x, weight, bias = operands
        kernel = policy.kernel("qkv_band_attention", x, weight, cos_TD, heads)
        q_like = x.new_empty((0, heads, weight.shape[0] // (3 * heads)))
        if kernel is not None and backends.runs_band(backend, q_like, window):
            return kernel.qkv_band_attention(
                x, weight, bias, cos_TD, sin_TD, cu_seqlens, heads, window, x_fp8
            )
    q, k, v = _qkv_rotary(x_TC, proj, operands, cos_TD, sin_TD, heads, fused, x_fp8)
    return backends.get_backend(backend)(q, k, v, cu_seqlens, max_seqlen, window)


def _qkv_rotary(x_TC, proj, operands, cos_TD, sin_TD, heads: int, fused: bool, x_fp8):
    """(q, k, v) for `qkv_attention`: `fused_qkv` on `operands` (`_projection_operands`, None where not fused or
    where `fused_qkv` cannot run) where it takes them, else the projection (`fp8.linear` with `x_fp8`) then
    `rotary_qkv`."""
    if operands is not None:
        x, weight, bias = operands
        kernel = policy.kernel("qkv_rotary", x, weight, cos_TD, heads)
        if kernel is not None:
            return kernel.qkv_rotary(x, weight, bias, cos_TD, sin_TD, heads, x_fp8)
    T = x_TC.shape[0]
    qkv = proj(x_TC) if x_fp8 is None else fp8.linear(x_TC, proj.weight, fused, x_fp8)
    return rotary_qkv(qkv.view(T, 3, heads, -1), cos_TD, sin_TD, fused)


def _projection_operands(x_TC: torch.Tensor, proj: nn.Linear):
    """(x, weight, bias) in the dtype the projection runs in (autocast's), as its kernels take them."""
    dtype = autocast_dtype(x_TC)
    bias = None if proj.bias is None else proj.bias.to(dtype)
    return x_TC.to(dtype), proj.weight.to(dtype), bias


def cross_entropy(logits_NV: torch.Tensor, labels_N: torch.Tensor, ignore_index: int, fused: bool):
    """Mean cross-entropy in fp32 over labels != ignore_index. Fused: `fused_cross_entropy`."""
    kernel = policy.kernel("cross_entropy", logits_NV, enabled=fused)
    if kernel is not None:
        return kernel.cross_entropy(logits_NV, labels_N, ignore_index)
    return F.cross_entropy(logits_NV.float(), labels_N, ignore_index=ignore_index)
