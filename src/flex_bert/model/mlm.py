"""FlexBertModel (encoder), the MLM head, FlexBertForMaskedLM and its initialisation.

Parameter names are upstream's (without the `model.` the Composer wrapper adds): `bert.embeddings.*`,
`bert.encoder.layers.{i}.*`, `bert.final_norm.*`, `head.dense/norm.*`, `decoder.weight` (tied to the token
embedding) and `decoder.bias`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from flex_bert.kernels import add_norm, cross_entropy
from flex_bert.kernels.rotary import positions_from_cu_seqlens, rotary_cos_sin

from .config import FlexBertConfig
from .layers import Embeddings, EncoderLayer, layer_norm
from .padding import packed_bounds, repad, unpad

IGNORE_INDEX = -100


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None  # mean cross-entropy over labelled tokens (fp32), None without labels
    logits: torch.Tensor  # (n_labelled, V) with masked prediction and labels; else input shape + (V,);
    # detached where a loss is computed (they serve metrics; the loss is what trains)
    num_labelled: torch.Tensor | None  # int64 scalar tensor: tokens with label != -100


class Encoder(nn.Module):
    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))


def call_layer(layer: nn.Module, *args):
    return layer(*args)


class FlexBertModel(nn.Module):
    """Embeddings -> pre-norm layers (global/local attention) -> final norm, on packed tokens.

    Every layer runs through `self.call_layer(layer, *args)`: the training code replaces it to add activation
    checkpointing (train/compilation.py); the model itself never checkpoints or compiles.
    """

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.final_norm = layer_norm(config)
        self.call_layer = call_layer

    def forward(self, input_ids_T: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        cfg = self.config
        x_TC = self.embeddings(input_ids_T)
        positions_T = positions_from_cu_seqlens(cu_seqlens, input_ids_T.shape[0])
        rope_global = rotary_cos_sin(positions_T, cfg.head_dim, cfg.rotary_emb_base)
        rope_local = rotary_cos_sin(positions_T, cfg.head_dim, cfg.local_rope_theta)
        mlp_out_TC = None  # each layer's MLP output joins the stream in the next layer (EncoderLayer)
        for layer in self.encoder.layers:
            args = (x_TC, mlp_out_TC, rope_local if layer.is_local else rope_global, cu_seqlens, max_seqlen)
            x_TC, mlp_out_TC = self.call_layer(layer, *args)
        return add_norm(x_TC, mlp_out_TC, self.final_norm, None, self.training, cfg.fused_kernels)[1]


class PredictionHead(nn.Module):
    """dense (H -> H) -> GELU -> LayerNorm."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.head_pred_bias)
        self.act = nn.GELU(approximate="none")
        self.norm = layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class FlexBertForMaskedLM(nn.Module):
    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.config = config
        self.bert = FlexBertModel(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Decoder weight = token embedding. Call again after `to_empty()` (it unties parameters)."""
        self.decoder.weight = self.bert.embeddings.tok_embeddings.weight

    def reset_parameters(self) -> None:
        init_weights(self, self.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_labelled: int | None = None,
    ) -> MaskedLMOutput:
        """Packed: `input_ids (T,)`, `cu_seqlens (n+1,)` int32, `max_seqlen` int. Padded: `(B, S)` + mask.

        `num_labelled`, the count of labels != -100 if the caller knows it (the loader counts them), spares
        masked prediction a host sync: without it, picking the labelled tokens waits for the GPU to finish the
        encoder (the size of the selection), then the GPU waits for the host to launch the head.
        """
        if input_ids.dim() == 2:
            return self._forward_padded(input_ids, attention_mask, labels)
        cu_seqlens, max_seqlen = packed_bounds(input_ids, cu_seqlens, max_seqlen, attention_mask)
        hidden_TC = self.bert(input_ids, cu_seqlens, max_seqlen)
        return self._predict_from_hidden(hidden_TC, labels, num_labelled)

    def _forward_padded(self, input_ids_BS, attention_mask_BS, labels_BS) -> MaskedLMOutput:
        B, S = input_ids_BS.shape
        if attention_mask_BS is None:
            attention_mask_BS = torch.ones_like(input_ids_BS)
        ids_T, indices, cu_seqlens, max_seqlen = unpad(input_ids_BS, attention_mask_BS)
        labels_T = None if labels_BS is None else labels_BS.flatten()[indices]
        out = self._predict_from_hidden(self.bert(ids_T, cu_seqlens, max_seqlen), labels_T)
        if labels_T is None or not self.config.masked_prediction:
            out.logits = repad(out.logits, indices, B, S)
        return out

    def _predict_from_hidden(self, hidden_TC, labels_T, num_labelled: int | None = None) -> MaskedLMOutput:
        predict = self.predict  # an instance attribute where train/compilation.py compiled it
        if labels_T is None:
            return MaskedLMOutput(None, predict(hidden_TC)[0], None)
        labelled_T = labels_T != IGNORE_INDEX
        count = labelled_T.sum()
        if self.config.masked_prediction:  # gather before the head: ~30% of tokens
            if num_labelled is None:
                index_N = labelled_T.nonzero().squeeze(1)  # waits for the GPU (the size of the result)
            else:  # no sync; a wrong count fails on the device (asynchronously) instead of mis-selecting
                torch._assert_async(count == num_labelled, "num_labelled differs from the count of labels")
                index_N = labelled_T.nonzero_static(size=num_labelled).squeeze(1)
            hidden_TC, labels_T = hidden_TC.index_select(0, index_N), labels_T.index_select(0, index_N)
        logits, loss = predict(hidden_TC, labels_T)
        return MaskedLMOutput(loss, logits, count)

    def predict(self, hidden_NC: torch.Tensor, labels_N: torch.Tensor | None = None):
        """Head + decoder, and (with labels) mean cross-entropy in fp32 over labels != -100 (`kernels`)."""
        logits = self.decoder(self.head(hidden_NC))
        if labels_N is None:
            return logits, None
        # detached: with a loss the logits serve metrics, and a differentiable output of the compiled function
        # would make autograd feed it a zero (N, V) gradient and add that to the loss's
        return logits.detach(), cross_entropy(logits, labels_N, IGNORE_INDEX, self.config.fused_kernels)

    def num_parameters(self) -> int:
        """Unique parameters (the tied decoder weight counted once)."""
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------- init
def init_weights(model: FlexBertForMaskedLM, config: FlexBertConfig) -> None:
    """`full_megatron` (upstream): truncated normal at +-cutoff*sigma; sigma = init_std for the embedding,
    Wqkv, Wi and head.dense; init_std / sqrt(2 * layers) for attn.Wo and mlp.Wo. `default`: normal(init_std)
    everywhere (Hugging Face BERT). Norms are ones (bias zeros); every linear bias is zero, the decoder bias
    included (upstream leaves it at nn.Linear's default; it has no effect on continued pre-training).
    """
    std = config.init_std
    out_std = std / math.sqrt(2.0 * config.num_hidden_layers)

    def init(weight: torch.Tensor, sigma: float) -> None:
        if weight.is_meta:
            return
        if config.init_method == "full_megatron":
            cut = config.init_cutoff_factor * sigma
            nn.init.trunc_normal_(weight, mean=0.0, std=sigma, a=-cut, b=cut)
        else:
            nn.init.normal_(weight, mean=0.0, std=std)

    emb = model.bert.embeddings.tok_embeddings
    init(emb.weight, std)
    if config.init_method == "default" and not emb.weight.is_meta:
        with torch.no_grad():
            emb.weight[config.pad_token_id].zero_()
    for layer in model.bert.encoder.layers:
        init(layer.attn.Wqkv.weight, std)
        init(layer.attn.Wo.weight, out_std)
        init(layer.mlp.Wi.weight, std)
        init(layer.mlp.Wo.weight, out_std)
    init(model.head.dense.weight, std)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
        elif isinstance(module, nn.Linear) and module.bias is not None and not module.bias.is_meta:
            nn.init.zeros_(module.bias)
