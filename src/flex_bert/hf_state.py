"""FlexBERT state dicts <-> Hugging Face `ModernBertForMaskedLM` state dicts: key renames and shape checks.

Key mapping (FlexBERT keys as in `FlexBertForMaskedLM.state_dict()`; Composer adds a leading `model.`):
  bert.encoder.layers.N.*  <->  model.layers.N.*
  bert.*                   <->  model.*
  head.*                   <->  head.*
  decoder.bias             <->  decoder.bias
  decoder.weight           (tied to the token embedding: dropped going to HF, re-tied coming back)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

_TIED = "decoder.weight"


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop Composer's leading `model.` and torch.compile's `_orig_mod.` segments."""
    return {key.replace("_orig_mod.", "").removeprefix("model."): value for key, value in sd.items()}


_FLEX_TO_HF = [
    (r"^bert\.encoder\.layers\.", "model.layers."),
    (r"^bert\.", "model."),
    (r"^head\.", "head."),
    (r"^decoder\.bias$", "decoder.bias"),
]
_HF_TO_FLEX = [
    (r"^model\.layers\.", "bert.encoder.layers."),
    (r"^model\.", "bert."),
    (r"^head\.", "head."),
    (r"^decoder\.bias$", "decoder.bias"),
]


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    raise ValueError(f"unexpected state dict key {key!r}")


def flexbert_state_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FlexBERT state dict (with or without Composer's `model.`) -> HF keys; the tied decoder.weight dropped."""
    return {_rename(k, _FLEX_TO_HF): v for k, v in strip_prefixes(sd).items() if k != _TIED}


def hf_state_to_flexbert(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ModernBertForMaskedLM state dict -> FlexBERT keys (no `model.`); decoder.weight = the embedding."""
    out = {_rename(k, _HF_TO_FLEX): v for k, v in sd.items() if k != _TIED}
    out[_TIED] = out["bert.embeddings.tok_embeddings.weight"]
    return out


def check_state_matches_config(
    sd: Mapping[str, torch.Tensor], cfg: FlexBertConfig, hint: str = "wrong --config?"
) -> None:
    """FlexBERT keys and shapes must be exactly those of FlexBertForMaskedLM(cfg) (built on the meta device)."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in FlexBertForMaskedLM(cfg).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    wrong = [k for k in expected.keys() & sd.keys() if tuple(sd[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {sorted(wrong)[:5]} ({hint})"
        )
