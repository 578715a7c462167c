"""Embeddings, GLU MLP and the pre-norm encoder layer. Tensors are packed tokens: x_TC is (tokens, hidden)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .config import FlexBertConfig


def layer_norm(config: FlexBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Embeddings(nn.Module):
    """Token embedding -> LayerNorm -> dropout. No position embedding (rotary lives in attention)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.norm = layer_norm(config)
        self.drop = nn.Dropout(config.embed_dropout_prob)

    def forward(self, input_ids_T: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids_T)))


class GLU(nn.Module):
    """`Wo(drop(gelu(a) * g))` with `a, g = Wi(x).chunk(2)`; `Wi` maps hidden to 2 * intermediate."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_in_bias)
        self.act = nn.GELU(approximate="none")  # exact erf GELU, as HF's ACT2FN["gelu"]
        self.drop = nn.Dropout(config.mlp_dropout_prob)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_out_bias)

    def forward(self, x_TC: torch.Tensor) -> torch.Tensor:
        a, g = self.Wi(x_TC).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(a) * g))


class EncoderLayer(nn.Module):
    """Pre-norm block: `x + attn(attn_norm(x))`, then `x + mlp(mlp_norm(x))`.

    Layer 0's `attn_norm` is Identity when `skip_first_prenorm` (the embedding norm already normalised x), so
    it has no parameter, as upstream.
    """

    def __init__(self, config: FlexBertConfig, layer_id: int):
        super().__init__()
        skip = layer_id == 0 and config.skip_first_prenorm
        self.attn_norm = nn.Identity() if skip else layer_norm(config)
        self.attn = Attention(config, layer_id)
        self.mlp_norm = layer_norm(config)
        self.mlp = GLU(config)

    @property
    def is_local(self) -> bool:
        return self.attn.is_local

    def forward(self, x_TC, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens, max_seqlen: int):
        x_TC = x_TC + self.attn(self.attn_norm(x_TC), rope, cu_seqlens, max_seqlen)
        return x_TC + self.mlp(self.mlp_norm(x_TC))
