"""How the YAMLs people already have are read: upstream ModernBERT's, the BioClinical authors', community forks'.

- A top-level key that the config only uses by name, in an interpolation (``${checkpoint_dir}``) or in a
  path's braces (upstream's ``load_path: checkpoints/{pretrain_run_name}/latest-rank0.pt``, which composer
  cannot fill), is a variable: ``variables`` lets it into the merge and ``fill_paths`` fills the braces; an
  unknown key that nothing references is still refused, with a close match.
- ``model_settings`` is the one place where the model section's upstream keys reach ``model_config``; the
  ``model_config`` block itself is read by ``flex_bert.train.upstream_model``.
- ``check_*`` refuse at load, in one line, what cannot run (``validate`` calls them, so ``--dry_run`` too).
- ``notes`` is one line per upstream or composer key that is mapped to this recipe's knob or ignored:
  ``--dry_run`` and ``train`` print them. docs/CONFIG_COMPAT.md is the whole table.
"""

from __future__ import annotations

import dataclasses
import re
import string
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flex_bert.model import FlexBertConfig
from flex_bert.model.config import PINNED
from flex_bert.train.upstream_model import (
    NEUTRAL_IDS,
    RENAMED_KEYS,
    UPSTREAM_DEFAULTS,
    from_upstream,
    sort_keys,
)

_BRACES = re.compile(r"\{([^{}]*)\}")  # ${interpolation} and composer's {placeholder} alike
_NAME = re.compile(r"[A-Za-z_]\w*")
_UPSTREAM_MODELS = ("mosaic_bert", "hf_bert")


def variables(parts: list, schema: type) -> list[str]:
    """Top-level keys of the YAMLs and overrides that the schema lacks and that some braces name."""
    raw = OmegaConf.merge(*parts)
    name = OmegaConf.select(raw, "model.name", throw_on_missing=False)
    if name in _UPSTREAM_MODELS:
        raise ValueError(
            f"model.name {name!r} is not supported: this recipe trains FlexBERT (model.name: flex_bert)"
        )
    known = {f.name for f in dataclasses.fields(schema)}
    referenced = set()
    for text in _strings(OmegaConf.to_container(raw, resolve=False)):
        for inner in _BRACES.findall(text):
            referenced.update(_NAME.findall(inner))
    return sorted(k for k in raw if k not in known and k in referenced)


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def fill_paths(cfg: DictConfig, values: dict[str, Any]) -> list[str]:
    """Fill variables named in braces in ``load_path`` and ``save_folder``: composer fills only its own names
    ({run_name}, {rank}, ...). Returns the variables filled."""
    filled = []
    for key in ("load_path", "save_folder"):
        path = cfg[key]
        names = {f for _, f, _, _ in string.Formatter().parse(path or "") if f in values}
        for name in sorted(names):
            path = path.replace("{" + name + "}", str(values[name]))
        cfg[key] = path
        filled += [f"{key}: {{{n}}}" for n in sorted(names)]
    return filled


def model_settings(cfg: DictConfig) -> dict:
    """``model.model_config`` with the model section's upstream keys mapped onto it."""
    settings = OmegaConf.to_container(cfg.model.model_config, resolve=True)
    if cfg.model.gradient_checkpointing is not None:
        settings.setdefault("gradient_checkpointing", cfg.model.gradient_checkpointing)
    if cfg.compile_config is not None:
        settings["compile_model"] = True
    return settings


def check_model_config(cfg: DictConfig) -> FlexBertConfig:
    """The model config as far as it can be checked without the tokenizer (special ids come from it later)."""
    with warnings.catch_warnings():  # the build warns once; notes() lists the keys
        warnings.simplefilter("ignore")
        return from_upstream({**NEUTRAL_IDS, **model_settings(cfg)})


def check_batch_size_warmup(cfg: DictConfig) -> None:
    loader = cfg.train_loader
    given = [loader.batch_size_warmup_min_size is not None, loader.batch_size_warmup_tokens is not None]
    if any(given) and not all(given):
        raise ValueError(
            "train_loader: set both batch_size_warmup_min_size and batch_size_warmup_tokens, or neither"
        )
    if not all(given) or not loader.sequence_packing:
        return
    if loader.batch_size_warmup_min_size % cfg.device_train_microbatch_size:
        raise ValueError(
            f"train_loader.batch_size_warmup_min_size ({loader.batch_size_warmup_min_size}) must be a multiple of "
            f"device_train_microbatch_size ({cfg.device_train_microbatch_size}): the batch grows by packed rows"
        )
    if loader.batch_size_warmup_min_size >= cfg.global_train_batch_size:
        raise ValueError(
            f"train_loader.batch_size_warmup_min_size ({loader.batch_size_warmup_min_size}) must be below "
            f"global_train_batch_size ({cfg.global_train_batch_size}), or leave the warmup out"
        )


def check_init_from_checkpoint(cfg: DictConfig) -> None:
    if cfg.init_from_checkpoint is not None:
        from flex_bert.train import tiled_init

        tiled_init.check(cfg.init_from_checkpoint, check_model_config(cfg))


def notes(cfg: DictConfig, variable_names: list[str], filled: list[str]) -> list[str]:
    """One line per upstream or composer key of this config that is mapped or ignored."""
    out = []
    if variable_names:
        out.append(f"variables (used by name only, then dropped): {', '.join(variable_names)}")
    if filled:
        out.append(f"filled from variables (composer fills only its own names): {', '.join(filled)}")
    out += _model_notes(cfg)
    loader = cfg.train_loader
    if loader.batch_size_warmup_min_size is not None and not loader.sequence_packing:
        out.append(
            "train_loader.batch_size_warmup_*: ignored without sequence_packing (as upstream: the warmup is the "
            "packer's)"
        )
    for key in ("reset_time", "restart_override"):
        if cfg[key] and not cfg.load_path:
            out.append(f"{key}: ignored (no load_path)")
    if "gradient_clipping" in cfg.algorithms:
        out.append(
            "algorithms.gradient_clipping: applied (composer's), though StableAdamW's update clipping replaces it "
            "upstream's way: upstream warns to set clipping_threshold to 0"
        )
    return out


def _model_notes(cfg: DictConfig) -> list[str]:
    out = []
    model_config = OmegaConf.to_container(cfg.model.model_config, resolve=True)
    _, ignored, renamed = sort_keys(model_config)
    if ignored:
        out.append(
            f"model_config: ignored, no effect on this model (nor on upstream's): {', '.join(ignored)}"
        )
    for key in renamed:
        out.append(f"model_config.{key}: mapped to {RENAMED_KEYS[key]} = {model_config[key]}")
    left = {k: v for k, v in UPSTREAM_DEFAULTS.items() if k not in model_config}
    if left:
        mine = {k: v[0] for k, v in PINNED.items()} | dataclasses.asdict(FlexBertConfig(**NEUTRAL_IDS))
        out.append(
            "model_config leaves to this recipe's ModernBERT-base defaults, where upstream's differ: "
            + ", ".join(f"{k}={mine[k]!r} (upstream {v!r})" for k, v in left.items())
        )
    if cfg.model.gradient_checkpointing is not None:
        out.append("model.gradient_checkpointing: mapped to model_config.gradient_checkpointing")
    if cfg.compile_config is not None:
        out.append(
            "compile_config: mapped to model_config.compile_model: true (each layer is compiled; composer's "
            f"whole-model compile and its settings {dict(cfg.compile_config)} are not used)"
        )
    if cfg.model.recompute_metric_loss:
        out.append("model.recompute_metric_loss: ignored (no label smoothing here: the metric is the loss)")
    if cfg.model.pretrained_model_name is not None:
        out.append(
            "model.pretrained_model_name: ignored (an upstream leftover; the architecture is model_config)"
        )
    return out
