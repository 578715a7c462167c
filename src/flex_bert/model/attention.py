"""Self-attention over packed (unpadded) tokens, with pluggable kernels.

A backend is a function `fn(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, window) -> out_THD`:
  T tokens of all documents concatenated, H heads, D head dim; `cu_seqlens` (n+1,) int32 document boundaries
  (first 0, last T); `max_seqlen` a Python int; `window` the *total* local window (128 = 64 tokens on each side
  plus the token itself) or None for global attention. Tokens attend only inside their own document.

Backends (pick with `FlexBertConfig.attention_backend`):
  sdpa       exact reference on any device: documents padded to (n, max_seqlen), boolean mask, SDPA.
  varlen     torch.nn.attention.varlen.varlen_attn (PyTorch's flash kernel; CUDA, fp16/bf16).
  flash_attn flash_attn.flash_attn_varlen_func, if the package is installed.
  auto       varlen on CUDA with fp16/bf16 inputs, sdpa otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ATTENTION_BACKENDS, FlexBertConfig
from .rotary import apply_rotary, positions_from_cu_seqlens

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


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """PyTorch's varlen flash kernel (torch >= 2.10). CUDA only, fp16/bf16 only."""
    from torch.nn.attention.varlen import varlen_attn

    if not q.is_cuda or q.dtype not in _HALF:
        raise ValueError(
            f"attention_backend 'varlen' needs CUDA fp16/bf16 inputs, got {q.device} {q.dtype}; "
            "use 'sdpa' (or 'auto') on CPU / in fp32"
        )
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


def auto_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """varlen where it runs (CUDA, half precision), the exact SDPA reference elsewhere."""
    if q.is_cuda and q.dtype in _HALF:
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, window)
    return sdpa_attention(q, k, v, cu_seqlens, max_seqlen, window)


BACKENDS: dict[str, AttentionFn] = {
    "auto": auto_attention,
    "varlen": varlen_attention,
    "flash_attn": flash_attn_attention,
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
        self.Wo = nn.Linear(H, H, bias=config.attn_out_bias)
        self.out_drop = nn.Dropout(config.attn_out_dropout_prob)
        self.backend_name = config.attention_backend
        self.backend = get_backend(config.attention_backend)

    def forward(self, x_TC, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens, max_seqlen: int):
        T = x_TC.shape[0]
        qkv = self.Wqkv(x_TC).view(T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=1)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out_THD = self.backend(q, k, v, cu_seqlens, max_seqlen, self.window)
        return self.out_drop(self.Wo(out_THD.reshape(T, -1)))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={self.window}, backend={self.backend_name}"
