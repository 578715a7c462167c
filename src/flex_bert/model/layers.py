"""Embeddings, GLU MLP and the pre-norm encoder layer. Tensors are packed tokens: x_TC is (tokens, hidden)."""

from __future__ import annotations

import torch
from torch import nn

from flex_bert.kernels import add_norm, add_norm_fp8, fp8_glu, gelu_gate

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
    """`Wo(drop(gelu(a) * g))` with `a, g = Wi(x).chunk(2)`; `Wi` maps hidden to 2 * intermediate. The gate is
    `kernels.gelu_gate` (a Triton kernel where `config.fused_kernels` and the policy allow). With
    `config.fp8_mlp` the block is `kernels.fp8_glu` (FP8 products; no dropout or biases there)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.fused = config.fused_kernels
        self.fp8 = config.fp8_mlp
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_in_bias)
        self.drop = nn.Dropout(config.mlp_dropout_prob)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_out_bias)

    def forward(
        self, x_TC: torch.Tensor, x_fp8: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`x_fp8` (fp8_mlp only): x row-quantized to FP8 by the joint before the block, else computed here."""
        if self.fp8:
            return fp8_glu(x_TC, self.Wi.weight, self.Wo.weight, self.fused, x_fp8)
        return self.Wo(self.drop(gelu_gate(self.Wi(x_TC), self.fused)))


class EncoderLayer(nn.Module):
    """Pre-norm block: `x + drop(attn(attn_norm(x)))`, then `x + mlp(mlp_norm(x))`, as upstream.

    The MLP output joins the stream in the *next* layer (or the final norm), so that each join and the norm
    after it are one `add_norm`: `forward(x, mlp_out_prev) -> (x, mlp_out)`, where x does not yet hold
    mlp_out. Layer 0 gets `mlp_out_prev=None`. Its `attn_norm` is Identity when `skip_first_prenorm` (the
    embedding norm already normalised x), so it has no parameter, as upstream.
    """

    def __init__(self, config: FlexBertConfig, layer_id: int):
        super().__init__()
        skip = layer_id == 0 and config.skip_first_prenorm
        self.attn_norm = nn.Identity() if skip else layer_norm(config)
        self.attn = Attention(config, layer_id)
        self.attn_out_dropout = config.attn_out_dropout_prob
        self.mlp_norm = layer_norm(config)
        self.mlp = GLU(config)
        self.fused = config.fused_kernels
        self.fp8_qkv = config.fp8_qkv

    @property
    def is_local(self) -> bool:
        return self.attn.is_local

    def forward(
        self, x_TC, mlp_out_TC, rope: tuple[torch.Tensor, torch.Tensor], cu_seqlens, max_seqlen: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_TC, h_TC, h_fp8 = _join(
            self.fp8_qkv, x_TC, mlp_out_TC, self.attn_norm, None, self.training, self.fused
        )
        attn_TC = self.attn(h_TC, rope, cu_seqlens, max_seqlen, h_fp8)
        joint = (x_TC, attn_TC, self.mlp_norm, self.attn_out_dropout, self.training, self.fused)
        x_TC, h_TC, h_fp8 = _join(self.mlp.fp8, *joint)
        return x_TC, self.mlp(h_TC, h_fp8)


def _join(fp8: bool, *joint) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """A joint (`add_norm`'s arguments): (x, norm(x), norm(x)'s FP8 copy for the FP8 product after it, written in
    the same pass (`add_norm_fp8`), or None without FP8)."""
    return add_norm_fp8(*joint) if fp8 else (*add_norm(*joint), None)
