"""Fused-QKV self-attention with rotary embedding, on packed tokens; the kernels are the backend's
(`flex_bert.kernels.backends`)."""

from __future__ import annotations

import torch
from torch import nn

from flex_bert.kernels import qkv_attention

from .config import FlexBertConfig


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
        self.fused = config.fused_kernels

    def forward(self, x_TC, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens, max_seqlen: int, x_fp8=None):
        """`x_fp8` (`fp8_qkv`): x row-quantized to FP8 by the joint before, for the projection's FP8 forward."""
        out_THD = qkv_attention(
            x_TC, self.Wqkv, *rope, self.num_heads, self.backend_name, cu_seqlens, max_seqlen, self.window,
            self.fused, x_fp8,
        )  # fmt: skip
        return self.Wo(out_THD.reshape(x_TC.shape[0], -1))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={self.window}, backend={self.backend_name}"
