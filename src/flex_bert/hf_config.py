"""Hugging Face `ModernBertConfig` <-> `FlexBertConfig`, and the `--config` argument of the scripts.

global_rope_theta = rotary_emb_base; local_rope_theta = local_attn_rotary_emb_base, or rotary_emb_base where
that is unset (never -1: upstream issue 209, NaN logits); local_attention = sliding_window;
classifier_activation = head_pred_act (gelu; upstream's converter wrote silu).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

from flex_bert.model import FlexBertConfig


def flexbert_config_to_hf(cfg: FlexBertConfig, special_ids: Mapping[str, int] | None = None):
    """FlexBertConfig -> transformers.ModernBertConfig. `special_ids` overrides pad/cls/sep/bos/eos ids."""
    from transformers import ModernBertConfig

    for ok, why in (
        (cfg.skip_first_prenorm, "skip_first_prenorm must be true (HF layer 0 has no attn_norm)"),
        (cfg.attn_qkv_bias == cfg.attn_out_bias, "attn_qkv_bias and attn_out_bias must be equal"),
        (cfg.mlp_in_bias == cfg.mlp_out_bias, "mlp_in_bias and mlp_out_bias must be equal"),
    ):
        if not ok:
            raise ValueError(f"cannot export to Hugging Face ModernBERT: {why}")
    ids = {
        "pad_token_id": cfg.pad_token_id,
        "cls_token_id": cfg.cls_token_id,
        "sep_token_id": cfg.sep_token_id,
    }
    ids |= {"bos_token_id": cfg.cls_token_id, "eos_token_id": cfg.sep_token_id}
    ids |= dict(special_ids or {})
    layer_types = [
        "sliding_attention" if cfg.is_local_layer(i) else "full_attention"
        for i in range(cfg.num_hidden_layers)
    ]
    has_local = "sliding_attention" in layer_types
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": float(cfg.rotary_emb_base)},
        "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta},
    }
    return ModernBertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        hidden_activation=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.init_std,
        initializer_cutoff_factor=cfg.init_cutoff_factor,
        norm_eps=cfg.norm_eps,
        norm_bias=cfg.norm_bias,
        attention_bias=cfg.attn_qkv_bias,
        attention_dropout=cfg.attention_probs_dropout_prob,  # attn_out_dropout_prob has no HF twin
        layer_types=layer_types,
        rope_parameters=rope,
        local_attention=cfg.sliding_window if has_local else 128,
        global_attn_every_n_layers=cfg.global_attn_every_n_layers if has_local else 1,
        embedding_dropout=cfg.embed_dropout_prob,
        mlp_bias=cfg.mlp_in_bias,
        mlp_dropout=cfg.mlp_dropout_prob,
        decoder_bias=cfg.decoder_bias,
        classifier_activation=cfg.head_pred_act,
        classifier_bias=cfg.head_pred_bias,
        tie_word_embeddings=True,
        architectures=["ModernBertForMaskedLM"],
        **ids,
    )


def _global_every_n(layer_types: list[str]) -> int:
    """Recover n from HF layer_types (global iff i % n == 0); n = 1 when every layer is global."""
    is_global = [t == "full_attention" for t in layer_types]
    for n in range(1, len(layer_types) + 1):
        if all(g == (i % n == 0) for i, g in enumerate(is_global)):
            return n
    raise ValueError(f"layer_types {layer_types} is not 'global every n layers, from layer 0': not supported")


def hf_config_to_flexbert(hf_cfg, mask_token_id: int | None = None) -> FlexBertConfig:
    """transformers.ModernBertConfig -> FlexBertConfig (training keys not in HF keep FlexBERT defaults)."""
    if not getattr(hf_cfg, "tie_word_embeddings", True):
        raise ValueError(
            "tie_word_embeddings=False is not supported: FlexBERT ties the decoder to the embedding"
        )
    rope = hf_cfg.rope_parameters
    for layer_type, params in rope.items():
        if params.get("rope_type", "default") != "default":
            raise ValueError(
                f"rope_type {params['rope_type']!r} ({layer_type}) is not supported; only 'default'"
            )
    global_theta = float(rope["full_attention"]["rope_theta"])
    local_theta = rope.get("sliding_attention", {}).get("rope_theta")
    if local_theta is None or local_theta == -1:  # upstream converter bug (issue 209): means "same as global"
        local_theta = global_theta
    if hf_cfg.classifier_activation != "gelu":
        warnings.warn(
            f"config classifier_activation={hf_cfg.classifier_activation!r}; ModernBERT's MLM head was trained with "
            "gelu (upstream's converter wrote silu by mistake); FlexBERT uses gelu",
            stacklevel=2,
        )
    if hf_cfg.attention_dropout:
        warnings.warn(
            "attention_dropout on attention probabilities is not supported; using 0.0", stacklevel=2
        )
    ids = {k: getattr(hf_cfg, k) for k in ("pad_token_id", "cls_token_id", "sep_token_id")}
    if mask_token_id is not None:
        ids["mask_token_id"] = mask_token_id
    elif FlexBertConfig.mask_token_id >= hf_cfg.vocab_size:
        raise ValueError("pass mask_token_id: the default 50284 does not fit this vocabulary")
    return FlexBertConfig.from_dict(
        dict(
            vocab_size=hf_cfg.vocab_size,
            hidden_size=hf_cfg.hidden_size,
            intermediate_size=hf_cfg.intermediate_size,
            num_hidden_layers=hf_cfg.num_hidden_layers,
            num_attention_heads=hf_cfg.num_attention_heads,
            hidden_act=hf_cfg.hidden_activation,
            max_position_embeddings=hf_cfg.max_position_embeddings,
            init_std=hf_cfg.initializer_range,
            init_cutoff_factor=hf_cfg.initializer_cutoff_factor,
            norm_kwargs={"eps": float(hf_cfg.norm_eps), "bias": bool(hf_cfg.norm_bias)},
            attn_qkv_bias=hf_cfg.attention_bias,
            attn_out_bias=hf_cfg.attention_bias,
            mlp_in_bias=hf_cfg.mlp_bias,
            mlp_out_bias=hf_cfg.mlp_bias,
            embed_dropout_prob=float(hf_cfg.embedding_dropout),
            mlp_dropout_prob=float(hf_cfg.mlp_dropout),
            rotary_emb_base=global_theta,
            local_attn_rotary_emb_base=float(local_theta),
            sliding_window=hf_cfg.local_attention,
            global_attn_every_n_layers=_global_every_n(list(hf_cfg.layer_types)),
            decoder_bias=hf_cfg.decoder_bias,
            head_pred_bias=hf_cfg.classifier_bias,
            **ids,
        )
    )


def load_config_arg(config: str | Path) -> FlexBertConfig:
    """`base`, `large`, or a YAML file: its `model.model_config` (or a top-level `model_config`, or itself)."""
    if config in ("base", "large"):
        return getattr(FlexBertConfig, str(config))()
    import yaml

    with open(config) as f:
        doc = yaml.safe_load(f)
    if isinstance(doc.get("model"), dict) and "model_config" in doc["model"]:
        doc = doc["model"]["model_config"]
    elif "model_config" in doc:
        doc = doc["model_config"]
    from flex_bert.train.upstream_model import from_upstream  # upstream's YAML keys

    return from_upstream(doc)


def write_hf_config(hf_cfg, cfg: FlexBertConfig, out_dir: Path) -> None:
    """config.json, plus the pre-5.0 keys (global/local_rope_theta) so transformers 4.48+ reads it too."""
    hf_cfg.save_pretrained(out_dir)
    path = out_dir / "config.json"
    d = json.loads(path.read_text())
    d.setdefault("global_rope_theta", float(cfg.rotary_emb_base))
    d.setdefault("local_rope_theta", cfg.local_rope_theta)
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
