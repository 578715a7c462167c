"""The `flex` attention backend: torch.nn.attention.flex_attention with a block-sparse BlockMask built from
`cu_seqlens`.

The packed row is one (1, H, T, D) sequence cut into blocks of `FLEX_BLOCK_SIZE` (128) tokens (T is
padded up to a multiple with a padding document whose tokens attend to each other only; its output is dropped).
`flex_block_mask` lists, for every query block, the key blocks it must visit, from vectorised ops on
`cu_seqlens` (searchsorted, no Python loop over documents, no host sync, so it traces under torch.compile):
  local (window w): the blocks b-r..b+r, r = ceil((w//2) / block) (1 for w = 128), that share a document with b;
  global:           the contiguous blocks from the start of b's first document to the end of its last one.
Blocks inside one document (and, for local layers, entirely within the window) are "full" and skip the
mask_mod; the others are "partial" and apply `same document AND (global OR |q - k| <= w//2)`. The relation is
symmetric, so the backward's Q-block lists are the KV-block lists themselves (no dense transposition).
Cost: the mask is rebuilt on every call (a few dozen small ops on (T,) and (T/128, 3) tensors, (T/128, T/128)
for global layers; identical for all layers of one type, not cached; inside a compiled layer Inductor fuses
them). In eager mode on CUDA the kernel is the module-level `torch.compile(flex_attention)` (one graph per
window, none per number of documents); inside a compiled layer (train/compilation.py) the raw `flex_attention` is
traced into the layer's graph; on CPU without compile it is flex's unfused eager path (materialises T x T
scores), and torch refuses flex's backward on CPU: CPU is for tests only. With w = 128 no block is full (a 128-block spans 127 > 64
positions), so a local layer computes 3 x 128 x 128 scores per 128 queries for about 129 x 128 useful ones.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

FLEX_BLOCK_SIZE = 128  # flex's sparse block (its default); a power of two >= 16, e.g. 64, also works


def flex_block_mask(
    cu_seqlens: torch.Tensor,
    num_tokens: int,
    window: int | None,
    *,
    block_size: int = FLEX_BLOCK_SIZE,
    full_width: bool = False,
    symmetric: bool = True,
):
    """BlockMask for `num_tokens` packed tokens (padded up to a multiple of `block_size`; the padding tokens
    form one extra document) attending inside their document, within `window` (total) if not None.

    `full_width` pads the block lists to all key blocks (Inductor's CPU kernel asserts that width).
    `symmetric=False` lets `BlockMask.from_kv_blocks` derive the backward's Q-block lists by transposing
    (a dense (NB, NB) pass); by default they are the KV lists, valid because the mask is symmetric.
    """
    from torch.nn.attention.flex_attention import BlockMask

    B = block_size
    NB = -(-num_tokens // B)
    Tp = NB * B
    cu = cu_seqlens
    idx = torch.arange(Tp, device=cu.device, dtype=cu.dtype)
    # 1 + document of each token, (Tp,); the padding tokens (>= T) get n_docs + 1. Kept as searchsorted's
    # output (no "- 1") so that the mask_mod reads a materialised tensor (Inductor's CPU kernel needs that).
    doc = torch.searchsorted(cu, idx, right=True)
    starts = torch.cat([cu.new_zeros(1), cu])  # start of document d - 1; starts[n + 1] = T: padding
    ends = torch.cat([cu, cu.new_full((1,), Tp)])  # its end (exclusive), padding included
    first, last = doc[::B], doc[B - 1 :: B]  # (NB,) documents of each block's first and last token
    lo = (starts[first] // B).long()  # key blocks sharing a document with query block b: lo[b]..hi[b]
    hi = ((ends[last] - 1) // B).long()
    single = first == last  # the whole block lies in one document

    rows = torch.arange(NB, device=cu.device)
    if window is None:
        cols = rows[None, :].expand(NB, NB)
        all_near = torch.ones((), dtype=torch.bool, device=cu.device)
    else:
        half = window // 2
        r = -(-half // B)  # farthest key block with a key within `half` of some query of the block
        offsets = torch.arange(-r, r + 1, device=cu.device)
        cols = rows[:, None] + offsets[None, :]  # (NB, 2r + 1)
        all_near = ((offsets.abs() + 1) * B - 1 <= half)[None, :]  # every pair of the two blocks is near
    cols_c = cols.clamp(0, NB - 1)
    visit = (cols >= lo[:, None]) & (cols <= hi[:, None])
    full = visit & all_near & single[:, None] & single[cols_c] & (first[cols_c] == first[:, None])
    partial = visit & ~full

    def ordered(sel):  # (NB, K) bool -> (1, 1, NB) counts, (1, 1, NB, K) indices (selected first, ascending)
        num = sel.sum(-1, dtype=torch.int32)
        order = torch.argsort((~sel).to(torch.int32), dim=-1, stable=True)
        indices = cols_c.gather(-1, order).to(torch.int32)
        if full_width and indices.shape[-1] < NB:
            indices = F.pad(indices, (0, NB - indices.shape[-1]))  # unused entries: block 0
        return num.view(1, 1, NB).contiguous(), indices.view(1, 1, NB, -1).contiguous()

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    mask_mod = _document_mask(doc) if window is None else _sliding_document_mask(doc, window // 2)
    if not symmetric:
        return BlockMask.from_kv_blocks(
            kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=B, mask_mod=mask_mod, seq_lengths=(Tp, Tp)
        )
    return BlockMask(
        seq_lengths=(Tp, Tp),
        kv_num_blocks=kv_num,
        kv_indices=kv_idx,
        full_kv_num_blocks=full_num,
        full_kv_indices=full_idx,
        q_num_blocks=kv_num,
        q_indices=kv_idx,
        full_q_num_blocks=full_num,
        full_q_indices=full_idx,
        BLOCK_SIZE=(B, B),
        mask_mod=mask_mod,
    )


def _document_mask(doc: torch.Tensor):
    """mask_mod: same document. `doc` has one entry per (padded) token, so every index is in bounds."""

    def document_mask(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    return document_mask


def _sliding_document_mask(doc: torch.Tensor, half: int):
    """mask_mod: same document and |q - k| <= half."""

    def sliding_document_mask(b, h, q_idx, kv_idx):
        near = (q_idx - kv_idx <= half) & (kv_idx - q_idx <= half)
        return near & (doc[q_idx] == doc[kv_idx])

    return sliding_document_mask


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # automatic dynamic: eval batches vary T


def flex_attention_backend(q, k, v, cu_seqlens, max_seqlen, window, *, block_mask=None):
    """torch's flex_attention over the packed row with a block-sparse document (and window) mask.

    `block_mask` (from `flex_block_mask(cu_seqlens, T, window)`) skips building it here (benchmarks).
    """
    from torch.nn.attention.flex_attention import flex_attention

    T = q.shape[0]
    block = FLEX_BLOCK_SIZE if block_mask is None else block_mask.BLOCK_SIZE[0]
    pad = -T % block
    if block_mask is None:
        block_mask = flex_block_mask(
            cu_seqlens, T, window, block_size=block, full_width=q.device.type == "cpu"
        )

    def to_bhtd(x):  # (T, H, D) -> (1, H, Tp, D); the padding tokens are zeros
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        x = x.transpose(0, 1).unsqueeze(0)
        return x if x.is_cuda else x.contiguous()  # Inductor's CPU kernel wants a 4-D buffer

    if torch.compiler.is_compiling() or not q.is_cuda:
        fn = flex_attention  # traced into the enclosing compiled graph, or flex's eager path on CPU
    else:
        fn = _compiled_flex_attention()
    out = fn(to_bhtd(q), to_bhtd(k), to_bhtd(v), block_mask=block_mask)
    return out[0, :, :T].transpose(0, 1)
