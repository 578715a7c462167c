"""Padded (B, S) batches <-> packed tokens (T,) with `cu_seqlens` document boundaries.

Only the padded path uses these (evaluation, inference); training feeds packed rows directly.
The kept tokens of each row form one document with positions 0..len-1 (for right padding, the usual case,
these are the positions Hugging Face uses too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """(n,) lengths -> (n+1,) int32 cumulative boundaries starting at 0."""
    return F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))


def packed_bounds(input_ids_T, cu_seqlens, max_seqlen, attention_mask) -> tuple[torch.Tensor, int]:
    """A packed call's (cu_seqlens, max_seqlen) with the models' defaults: no `cu_seqlens` is one document;
    no `max_seqlen` is the longest document's length (one host sync; training passes it)."""
    if attention_mask is not None:
        raise ValueError("packed input (1-D input_ids) takes cu_seqlens, not attention_mask")
    if cu_seqlens is None:
        n = input_ids_T.shape[0]
        return cu_seqlens_from_lengths(torch.tensor([n], device=input_ids_T.device)), n
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return cu_seqlens, max_seqlen


def unpad(input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor):
    """Keep tokens where `attention_mask` is 1.

    Returns `(input_ids_T, indices_T, cu_seqlens, max_seqlen)`: `indices_T` are the kept positions in the
    flattened (B*S) batch, `max_seqlen` a Python int (this path syncs with the device once; training does not).
    """
    mask = attention_mask_BS.bool()
    lengths = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = cu_seqlens_from_lengths(lengths)
    max_seqlen = int(lengths.max()) if lengths.numel() else 0
    return input_ids_BS.flatten()[indices], indices, cu_seqlens, max_seqlen


def repad(x_T: torch.Tensor, indices_T: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Scatter packed rows back to (B, S, ...); padded positions are zero."""
    out = x_T.new_zeros(batch * seqlen, *x_T.shape[1:])
    out[indices_T] = x_T
    return out.view(batch, seqlen, *x_T.shape[1:])
