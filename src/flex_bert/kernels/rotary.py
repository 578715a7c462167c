"""Rotary position embedding (RoPE): rotate-half layout, full head dim, computed in fp32.

Positions restart at 0 for every document of a packed row. Nothing is stored: the inverse frequencies are
recomputed each forward (D/2 numbers), so no buffer can be saved in a checkpoint, cast to bf16 by
`model.to(dtype)`, or left uninitialised on the meta device. Shapes: T tokens, H heads, D head dim.
"""

from __future__ import annotations

import torch


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Position of each token inside its document, `index - start of its document`, shape (T,).

    Vectorised (searchsorted), no `.item()`, so it traces under torch.compile. Empty documents (repeated
    entries in `cu_seqlens`) are harmless: `right=True` picks the last start <= index.
    """
    idx = torch.arange(num_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    doc = torch.searchsorted(cu_seqlens, idx, right=True) - 1
    return idx - cu_seqlens[doc]


def rotary_cos_sin(positions_T: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (T, D) cos and sin tables: angle = position * base^(-2i/D), both halves equal (rotate-half)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=positions_T.device).float() / dim
    inv_freq = 1.0 / (float(base) ** exponents)
    freqs_TD2 = positions_T.float()[:, None] * inv_freq[None, :]
    emb_TD = torch.cat((freqs_TD2, freqs_TD2), dim=-1)
    return emb_TD.cos(), emb_TD.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x_THD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate q or k in fp32 and return it in its input dtype."""
    x = x_THD.float()
    cos, sin = cos_TD[:, None, :], sin_TD[:, None, :]
    return (x * cos + _rotate_half(x) * sin).to(x_THD.dtype)
