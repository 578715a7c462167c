"""float64 references of the attention kernels (kernels/band_attention.py, fused_qkv.py, fused_qkv_band.py)."""

from __future__ import annotations

import torch


def band_attention_reference(q, k, v, lengths, half):
    """float64, one document at a time: softmax(q k^T / sqrt(D) + band mask) v."""
    outs, start = [], 0
    for L in lengths:
        sl = slice(start, start + L)
        qd, kd, vd = (x[sl].transpose(0, 1) for x in (q, k, v))  # (H, L, D)
        s = qd @ kd.transpose(1, 2) / q.shape[-1] ** 0.5
        i = torch.arange(L)
        s = s.masked_fill((i[:, None] - i[None, :]).abs() > half, float("-inf"))
        outs.append((s.softmax(-1) @ vd).transpose(0, 1))
        start += L
    return torch.cat(outs)


def qkv_rotary_reference(x, weight, bias, cos, sin, H, forward_operands=None):
    """float64: x @ weight.T + bias as (T, 3, H, D); x * cos + cat(-x2, x1) * sin on q and k.
    `forward_operands` (xq, wq): the product's value is xq @ wq.T (FP8's dequantized operands), its gradients
    those of x @ weight.T (what the FP8 path's backward computes)."""
    T = x.shape[0]
    product = x @ weight.t()
    if forward_operands is not None:
        xq, wq = forward_operands
        product = product + (xq @ wq.t() - product).detach()
    qkv = (product + (0 if bias is None else bias)).view(T, 3, H, -1)

    def rotate(z):
        z1, z2 = z.chunk(2, dim=-1)
        return z * cos[:, None] + torch.cat((-z2, z1), dim=-1) * sin[:, None]

    return rotate(qkv[:, 0]), rotate(qkv[:, 1]), qkv[:, 2]
