"""``init_from_checkpoint``: start a larger model from a smaller one's checkpoint by weight tiling (upstream's
way from ModernBERT-base to ModernBERT-large; the tiling itself is ``flex_bert.model.tiling``).

The smaller model is described by ``checkpoint_cfg``, a YAML file whose ``model`` section describes it (as
upstream) or that section itself (as forks write it, ``checkpoint_cfg: ${base_model}``); its weights are
``<checkpoint_load_path>/<checkpoint_run_name>/latest-rank0.pt``. Like upstream, this runs when the model is
built, before ``load_path`` or autoresume restore anything over it.
"""

from __future__ import annotations

import os
import warnings

from omegaconf import OmegaConf

from flex_bert.model import FlexBertConfig
from flex_bert.train.upstream_model import NEUTRAL_IDS, from_upstream


def checkpoint_file(spec) -> str:
    return os.path.join(spec.checkpoint_load_path, spec.checkpoint_run_name, "latest-rank0.pt")


def small_config(spec) -> FlexBertConfig:
    """The smaller model's config, from ``checkpoint_cfg`` (a path or a model section)."""
    source = spec.checkpoint_cfg
    if isinstance(source, str):
        if not os.path.isfile(source):
            raise ValueError(f"init_from_checkpoint.checkpoint_cfg: no such YAML file {source!r}")
        source = OmegaConf.load(source).get("model")
    section = OmegaConf.to_container(source, resolve=True) if OmegaConf.is_config(source) else source
    if not isinstance(section, dict) or not isinstance(section.get("model_config"), dict):
        raise ValueError(
            "init_from_checkpoint.checkpoint_cfg must be a YAML file with a `model` section, or a model section "
            "(with `model_config`), describing the smaller model"
        )
    with warnings.catch_warnings():  # its ignored keys were the smaller run's business
        warnings.simplefilter("ignore")
        return from_upstream({**NEUTRAL_IDS, **section["model_config"]})


def check(spec, large: FlexBertConfig) -> None:
    """Refuse at load what tiling cannot do: another vocabulary, or a smaller width."""
    small = small_config(spec)
    if small.vocab_size != large.vocab_size:
        raise ValueError(
            f"init_from_checkpoint: the smaller model's vocab_size ({small.vocab_size}) differs from this "
            f"model's ({large.vocab_size}); tiling keeps the vocabulary"
        )
    for key in ("hidden_size", "intermediate_size"):
        if getattr(small, key) > getattr(large, key):
            raise ValueError(
                f"init_from_checkpoint: the smaller model's {key} ({getattr(small, key)}) exceeds this model's "
                f"({getattr(large, key)}); tiling only grows a model"
            )
    if not os.path.isfile(checkpoint_file(spec)):
        raise ValueError(f"init_from_checkpoint: no checkpoint at {checkpoint_file(spec)}")


def init_from_checkpoint(model, spec, trust: bool) -> str:
    """Tile ``model`` (a FlexBertForMaskedLM) from the smaller checkpoint; returns the line that says so."""
    from flex_bert.hf_checkpoint import load_composer_model_state
    from flex_bert.model.tiling import tile_state_dict

    path = checkpoint_file(spec)
    small = load_composer_model_state(path, trust=trust)
    model.load_state_dict(tile_state_dict(small, model.state_dict(), spec.mode), strict=True)
    config = small_config(spec)
    line = (
        f"init_from_checkpoint: {spec.mode} from {path} ({config.num_hidden_layers} layers, hidden "
        f"{config.hidden_size} -> {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size})"
    )
    print(line, flush=True)
    return line
