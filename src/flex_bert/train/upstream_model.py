"""Upstream's ``model_config`` YAML block -> this recipe's FlexBertConfig.

ModernBERT's, the BioClinical authors' and community forks' YAMLs carry keys that upstream's FlexBertConfig
(and the Hugging Face BertConfig it extends) accepts. This adapter accepts them all: a key that changes nothing
here is dropped with one warning (``IGNORED_UPSTREAM_KEYS``), a fork's name for a key here is mapped
(``RENAMED_KEYS``), a key naming the one computation here is accepted at that value (``PINNED``, which
FlexBertConfig.from_dict checks, so that checkpoints' stored configs load the same way), and a value this
implementation does not reproduce is refused by FlexBertConfig itself.
``ModelConfigNode`` is the typed ``model.model_config`` node of the training config: every key either side
knows, unset unless the YAML sets it, so a misspelled key fails at load with a close match.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from flex_bert.model import FlexBertConfig
from flex_bert.model.config import PINNED
from flex_bert.train.checks import suggest

# Special-token ids that fit any vocabulary: a model config checked before its tokenizer is loaded.
NEUTRAL_IDS = dict(pad_token_id=0, cls_token_id=0, sep_token_id=0, mask_token_id=0)

# Keys upstream's FlexBertConfig (and the Hugging Face BertConfig it extends) knows that upstream's FlexBERT MLM
# model never reads or that cannot change its computation: flash-attn switches (we choose kernels with
# `attention_backend`), compile switches, the classification head (a fine-tuning task file sets it:
# model/classification.py), BERT's token-type and position-embedding settings (ModernBERT has neither),
# `hidden_dropout_prob`, `layer_norm_eps` and `initializer_range` (FlexBERT uses its own dropouts,
# `norm_kwargs.eps` and `init_std`), `head_pred_dropout` (stored, never applied), `num_initial_layers` (only with
# `initial_*_layer`), `bos/eos` ids (no effect on MLM) and `sparse_prediction` (MosaicBERT's name for
# `masked_prediction`: same loss).
IGNORED_UPSTREAM_KEYS = frozenset(
    {
        "use_fa2",
        "use_fa",
        "deterministic_fa2",
        "fa2_local_attn",
        "use_sdpa_attn_mask",
        "rope_microbatch_size",
        "partial_compile",
        "full_model_compile",
        "pad_logits",
        "head_class_act",
        "head_class_bias",
        "head_class_dropout",
        "head_class_norm",
        "pooling_type",
        "encoder_layer",
        "head_pred_dropout",
        "num_initial_layers",
        "hidden_dropout_prob",
        "layer_norm_eps",
        "initializer_range",
        "type_vocab_size",
        "position_embedding_type",
        "use_cache",
        "classifier_dropout",
        "bos_token_id",
        "eos_token_id",
        "sparse_prediction",
    }
)

# Community forks' names for keys of this config (the Hebrew ModernBERT fork's local rotary base): the key here
# takes the value, unless the YAML also sets the key here to something other than "unset".
RENAMED_KEYS = {"rotary_emb_base_local": "local_attn_rotary_emb_base"}

# Upstream's defaults where this config's differ (upstream's FlexBertConfig, or the `bert-base-uncased`
# BertConfig it starts from). A YAML written for upstream that leaves one of these out gets another model here.
UPSTREAM_DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
    "attention_layer": "base",
    "attn_out_dropout_prob": 0.0,
    "embedding_layer": "absolute_pos",
    "final_norm": False,
    "mlp_layer": "mlp",
    "normalization": "rmsnorm",
    "norm_kwargs": {},
    "head_pred_act": "silu",
    "init_method": "default",
    "skip_first_prenorm": False,
    "rotary_emb_base": 10000.0,
    "sliding_window": -1,
    "global_attn_every_n_layers": -1,
}


_OWN = [*(f.name for f in dataclasses.fields(FlexBertConfig)), *PINNED]
KNOWN_KEYS = [*_OWN, *sorted(IGNORED_UPSTREAM_KEYS), *sorted(RENAMED_KEYS)]

ModelConfigNode = dataclasses.make_dataclass(
    "ModelConfigNode", [(key, Any, dataclasses.field(default=MISSING)) for key in KNOWN_KEYS]
)


def set_keys(node) -> dict[str, Any]:
    """The keys a YAML set on a ``ModelConfigNode`` (or a plain mapping), resolved."""
    if not OmegaConf.is_config(node):
        return dict(node)
    return {
        k: OmegaConf.to_container(node[k], resolve=True) if OmegaConf.is_config(node[k]) else node[k]
        for k in node
        if not OmegaConf.is_missing(node, k)
    }


def settle_node(cfg: DictConfig) -> None:
    """After the merge: ``model.model_config`` becomes the plain mapping of the keys the YAML set (what is
    saved and printed), so that unset keys are neither missing values nor defaults written twice."""
    with open_dict(cfg):
        cfg.model.model_config = set_keys(cfg.model.model_config)


def sort_keys(d: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """A YAML block's keyword arguments for FlexBertConfig, its ignored keys and its renamed keys that took
    effect; an unknown key is an error with a close match."""
    kwargs, ignored = {}, []
    for key, value in dict(d).items():
        if key in IGNORED_UPSTREAM_KEYS:
            ignored.append(key)
        elif key in _OWN:
            kwargs[key] = value
        elif key not in RENAMED_KEYS:
            hint = suggest(key, KNOWN_KEYS)
            raise ValueError(f"unknown model_config key {key!r}{hint if 'did you mean' in hint else ''}")
    renamed = [k for k, target in RENAMED_KEYS.items() if k in d and kwargs.get(target) in (None, -1)]
    kwargs.update({RENAMED_KEYS[k]: d[k] for k in renamed})
    return kwargs, ignored, renamed


def from_upstream(d: dict[str, Any]) -> FlexBertConfig:
    """FlexBertConfig from an upstream ``model_config`` block: ignored keys warn once, renamed keys map."""
    kwargs, ignored, _ = sort_keys(d)
    if ignored:
        warnings.warn(
            f"model_config keys {', '.join(ignored)} have no effect in this implementation; ignored",
            stacklevel=2,
        )
    return FlexBertConfig.from_dict(kwargs)
