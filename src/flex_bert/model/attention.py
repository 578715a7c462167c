"""Self-attention over packed (unpadded) tokens, with pluggable kernels.

A backend is a function `fn(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, window) -> out_THD`:
  T tokens of all documents concatenated, H heads, D head dim; `cu_seqlens` (n+1,) int32 document boundaries
  (first 0, last T); `max_seqlen` a Python int; `window` the *total* local window (128 = 64 tokens on each side
  plus the token itself) or None for global attention. Tokens attend only inside their own document.

Backends (pick with `FlexBertConfig.attention_backend`):
  sdpa       exact reference on any device: documents padded to (n, max_seqlen), boolean mask, SDPA.
  varlen     torch.nn.attention.varlen.varlen_attn (PyTorch's flash kernel; CUDA, fp16/bf16).
  flash_attn flash_attn.flash_attn_varlen_func (FlashAttention-2), if the package is installed.
  fa4        FlashAttention-4's kernels (`fa4_attention.py`, the optional flash-attn-4 package; Hopper and
             Blackwell): FlashAttention-3's design on an H100/H200, on both layer types. Head dims that are
             multiples of 32 only (at 16, 4.0.0b40's Hopper backward returned a wrong dQ).
  flex       torch.nn.attention.flex_attention with a block-sparse BlockMask built from `cu_seqlens` (below).
  band       local layers: FlexBERT's sliding-window Triton kernel (`band_attention.py`; 64-token tiles:
             1.80 ms against varlen's 2.95 for a local layer's forward + backward at 98k tokens on an H200);
             global layers: varlen (its FlashAttention-2 kernel beat the band kernel with an unbounded window,
             8.9 against 11.7 ms). CUDA, fp16/bf16.
  auto       on CUDA with fp16/bf16 inputs: fa4 on global layers where it runs (flash-attn-4 installed, compute
             capability 9.x/10.x, head dim a multiple of 32), else varlen; band on local layers. sdpa otherwise.
             Each choice is the fastest measured for its layer type (docs/PERFORMANCE.md).

"flex": the packed row is one (1, H, T, D) sequence cut into blocks of `FLEX_BLOCK_SIZE` (128) tokens (T is
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
window, none per number of documents); inside a compiled layer (`compile_layers`) the raw `flex_attention` is
traced into the layer's graph; on CPU without compile it is flex's unfused eager path (materialises T x T
scores), and torch refuses flex's backward on CPU: CPU is for tests only. With w = 128 no block is full (a 128-block spans 127 > 64
positions), so a local layer computes 3 x 128 x 128 scores per 128 queries for about 129 x 128 useful ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import fa4_attention as fa4_attention_module
from .config import ATTENTION_BACKENDS, FlexBertConfig
from .fa4_attention import fa4_attention
from .rotary import apply_rotary, positions_from_cu_seqlens

try:  # Triton ships with torch on Linux; elsewhere the PyTorch composition runs
    from . import band_attention, fused_rotary
except ImportError:  # pragma: no cover
    band_attention = fused_rotary = None

AttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, "int | None"], torch.Tensor
]
_HALF = (torch.float16, torch.bfloat16)


def _flash_window(window: int | None) -> tuple[int, int]:
    """Total window -> flash-attn's (left, right); (64, 64) for 128. (-1, -1) means global."""
    return (-1, -1) if window is None else (window // 2, window // 2)


def sdpa_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """Exact reference: scatter tokens into (n_docs, max_seqlen) slots, mask, SDPA, gather back.

    Mask: key in the same document AND (global OR |i - j| <= window // 2). Padding query slots attend to
    themselves only (their output is discarded), so no row is fully masked (no NaN, no stray gradient).
    """
    T, H, D = q.shape
    n_docs = cu_seqlens.shape[0] - 1
    pos = positions_from_cu_seqlens(cu_seqlens, T).long()
    doc = (
        torch.searchsorted(cu_seqlens, torch.arange(T, device=q.device, dtype=cu_seqlens.dtype), right=True)
        - 1
    )
    slot = doc.long() * max_seqlen + pos  # (T,) flat index into (n_docs * max_seqlen)

    def to_slots(x):  # (T, H, D) -> (n_docs, H, S, D)
        padded = x.new_zeros(n_docs * max_seqlen, H, D).index_copy(0, slot, x)
        return padded.view(n_docs, max_seqlen, H, D).transpose(1, 2)

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ar = torch.arange(max_seqlen, device=q.device)
    valid = ar[None, :] < lengths[:, None]  # (n, S)
    allowed = valid[:, :, None] & valid[:, None, :]  # (n, S_query, S_key): both are real tokens
    if window is not None:
        near = (ar[:, None] - ar[None, :]).abs() <= window // 2
        allowed = allowed & near[None]
    eye = torch.eye(max_seqlen, dtype=torch.bool, device=q.device)
    allowed = allowed | (~valid[:, :, None] & eye[None])
    out = F.scaled_dot_product_attention(to_slots(q), to_slots(k), to_slots(v), attn_mask=allowed[:, None])
    return out.transpose(1, 2).reshape(n_docs * max_seqlen, H, D)[slot]


def _require_cuda_half(backend: str, q: torch.Tensor) -> None:
    if not q.is_cuda or q.dtype not in _HALF:
        raise ValueError(
            f"attention_backend '{backend}' needs CUDA fp16/bf16 inputs, got {q.device} {q.dtype}; "
            "use 'sdpa' (or 'auto') on CPU / in fp32"
        )


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """PyTorch's varlen flash kernel (torch >= 2.10). CUDA only, fp16/bf16 only."""
    from torch.nn.attention.varlen import varlen_attn

    _require_cuda_half("varlen", q)
    return varlen_attn(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, window_size=_flash_window(window)
    )


def flash_attn_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """Dao-AILab flash-attn 2 (optional dependency)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as e:
        raise ValueError("attention_backend 'flash_attn' needs the flash-attn package; use 'varlen'") from e
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        dropout_p=0.0,
        window_size=_flash_window(window),
    )


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


def band_backend(q, k, v, cu_seqlens, max_seqlen, window):
    """The Triton band kernel on local layers, varlen on global ones. CUDA only, fp16/bf16 only."""
    if window is None:
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, window)
    if band_attention is None or not band_attention.supported(q):
        raise ValueError(
            f"attention_backend 'band' needs CUDA fp16/bf16 inputs with a power-of-two head dim >= 16 (and "
            f"Triton), got {q.device} {q.dtype}, head dim {q.shape[-1]}; use 'auto' on CPU / in fp32"
        )
    return band_attention.band_attention(q, k, v, cu_seqlens, window)


# FA4 4.0.0b40's Hopper backward: at head dim 16 its dQ was wrong (2026-12-07, H100: 66% of the elements off,
# tests/test_fa4_attention.py), right at 64. Its main kernel pads the head dim to a multiple of 16
# (flash_bwd_sm90.py) while the dQ accumulator and its pre/postprocess pad to 32 (interface.py), which agree
# only for multiples of 32: the backend refuses the others.
FA4_HEAD_DIM_MULTIPLE = 32


def fa4_backend(q, k, v, cu_seqlens, max_seqlen, window):
    """flash-attn-4's kernels on both layer types. CUDA only, fp16/bf16 only (and Hopper or Blackwell), head
    dims that are multiples of 32."""
    _require_cuda_half("fa4", q)
    if q.shape[-1] % FA4_HEAD_DIM_MULTIPLE:
        raise ValueError(
            f"attention_backend 'fa4' needs a head dim that is a multiple of {FA4_HEAD_DIM_MULTIPLE} "
            f"(flash-attn-4 4.0.0b40's Hopper backward gets dQ wrong otherwise), got {q.shape[-1]}; use 'auto'"
        )
    return fa4_attention(q, k, v, cu_seqlens, max_seqlen, window)


# Layer types on which `auto` runs FA4 where it can (flash-attn-4 installed, Hopper or data-centre Blackwell,
# a head dim FA4's backend accepts): global layers, where it beats varlen; on local layers (window 128) the band
# kernel is faster (docs/PERFORMANCE.md, "FlashAttention-4's kernels").
AUTO_FA4_LAYERS: frozenset[str] = frozenset({"global"})


@functools.cache
def _fa4_usable_on(device_index: int) -> bool:
    """flash-attn-4 imports and this GPU is one FA4's backend accepts (compute capability 9.x or 10.x)."""
    if torch.cuda.get_device_capability(device_index)[0] not in (9, 10):
        return False
    try:
        fa4_attention_module._interface()
    except ValueError:
        return False
    return True


@torch.compiler.assume_constant_result  # inside compiled layers: evaluated once while tracing, a constant
def _fa4_usable(device_index: int) -> bool:
    return _fa4_usable_on(device_index)


def auto_kernel(q: torch.Tensor, window: int | None) -> AttentionFn:
    """`auto`'s choice for one call, on CUDA in half precision: FA4 on the layer types of `AUTO_FA4_LAYERS` where
    it runs, else the band kernel on local layers and varlen on global ones (varlen on local layers too if the
    band kernel is unavailable); the exact SDPA reference elsewhere."""
    if not (q.is_cuda and q.dtype in _HALF):
        return sdpa_attention
    layer = "global" if window is None else "local"
    fa4_shape = q.shape[-1] % FA4_HEAD_DIM_MULTIPLE == 0
    if layer in AUTO_FA4_LAYERS and fa4_shape and _fa4_usable(q.device.index or 0):
        return fa4_backend
    if window is not None and band_attention is not None and band_attention.supported(q):
        return band_backend
    return varlen_attention


def auto_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """The fastest kernels where they run (`auto_kernel`); the exact SDPA reference elsewhere."""
    return auto_kernel(q, window)(q, k, v, cu_seqlens, max_seqlen, window)


BACKENDS: dict[str, AttentionFn] = {
    "auto": auto_attention,
    "varlen": varlen_attention,
    "flash_attn": flash_attn_attention,
    "fa4": fa4_backend,
    "flex": flex_attention_backend,
    "band": band_backend,
    "sdpa": sdpa_attention,
}
assert tuple(BACKENDS) == ATTENTION_BACKENDS


def get_backend(name: str) -> AttentionFn:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


class Attention(nn.Module):
    """Fused-QKV self-attention with rotary embedding, on packed tokens.

    `Wqkv` and `Wo` keep upstream's names (a compatibility promise: checkpoints and the HF model use them).
    `Wqkv` rows are Q, then K, then V, heads contiguous inside each.
    """

    def __init__(self, config: FlexBertConfig, layer_id: int):
        super().__init__()
        H = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.is_local = config.is_local_layer(layer_id)
        self.window = config.sliding_window if self.is_local else None
        self.Wqkv = nn.Linear(H, 3 * H, bias=config.attn_qkv_bias)
        self.Wo = nn.Linear(H, H, bias=config.attn_out_bias)  # its dropout is the layer's (add_norm)
        self.backend_name = config.attention_backend
        self.backend = get_backend(config.attention_backend)
        self.fused = config.fused_kernels

    def forward(self, x_TC, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens, max_seqlen: int):
        T = x_TC.shape[0]
        qkv = self.Wqkv(x_TC).view(T, 3, self.num_heads, self.head_dim)
        cos, sin = rope
        if self.fused and fused_rotary is not None and fused_rotary.supported(qkv, cos):
            q, k, v = fused_rotary.rotary_qkv(qkv, cos, sin)  # one Triton kernel each way
        else:
            q, k, v = qkv.unbind(dim=1)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out_THD = self.backend(q, k, v, cu_seqlens, max_seqlen, self.window)
        return self.Wo(out_THD.reshape(T, -1))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={self.window}, backend={self.backend_name}"
