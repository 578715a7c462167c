"""Hugging Face `ModernBertForMaskedLM` <-> FlexBERT: configs, state dicts, checkpoints, directories.

Key mapping (FlexBERT keys as in `FlexBertForMaskedLM.state_dict()`; Composer adds a leading `model.`):
  bert.encoder.layers.N.*  <->  model.layers.N.*
  bert.*                   <->  model.*
  head.*                   <->  head.*
  decoder.bias             <->  decoder.bias
  decoder.weight           (tied to the token embedding: dropped going to HF, re-tied coming back)

Config: global_rope_theta = rotary_emb_base; local_rope_theta = local_attn_rotary_emb_base, or rotary_emb_base
where that is unset (never -1: upstream issue 209, NaN logits); local_attention = sliding_window;
classifier_activation = head_pred_act (gelu; upstream's converter wrote silu).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flex_bert.checkpoint_io import TRUST_FLAG, safe_torch_load
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

HF_CLASS = "transformers.models.modernbert.modeling_modernbert.ModernBertForMaskedLM"
_TIED = "decoder.weight"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SPECIAL = ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id")


# ------------------------------------------------------------------------------------------- configs
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


# --------------------------------------------------------------------------------------- state dicts
def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    return {_rename(k, _FLEX_TO_HF): v for k, v in _strip_prefixes(sd).items() if k != _TIED}


def hf_state_to_flexbert(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ModernBertForMaskedLM state dict -> FlexBERT keys (no `model.`); decoder.weight = the embedding."""
    out = {_rename(k, _HF_TO_FLEX): v for k, v in sd.items() if k != _TIED}
    out[_TIED] = out["bert.embeddings.tok_embeddings.weight"]
    return out


# --------------------------------------------------------------------------------------- checkpoints
def load_composer_model_state(
    path: str | Path, trust: bool = False, trust_hint: str = TRUST_FLAG
) -> dict[str, torch.Tensor]:
    """`state.model` of a Composer checkpoint, keys without the leading `model.`."""
    return _strip_prefixes(_model_state(safe_torch_load(path, trust, trust_hint), path))


def _model_state(ckpt: Any, path) -> dict:
    try:
        return ckpt["state"]["model"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a Composer checkpoint (no state.model)") from None


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


# ----------------------------------------------------------------------------------------- tokenizer
# The text files Hugging Face tokenizers save (fast and slow, BERT/BPE vocabularies, chat templates). Only
# these are stored in and restored from checkpoints: a stored name is never a path, and never code (.py).
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
_CONTENT = {".json": (dict, list), ".txt": list, ".jinja": str}  # the stored content's type per extension


def tokenizer_dir_to_state(tokenizer_dir: str | Path) -> dict[str, dict]:
    """Tokenizer files -> Composer's `integrations.huggingface.tokenizer` entry (`TOKENIZER_FILES` only).

    Code (.py) and binary (.model) files are not stored; they are named in one printed line.
    """
    state, skipped = {}, []
    for path in sorted(Path(tokenizer_dir).iterdir()):
        if path.name in TOKENIZER_FILES:
            text = path.read_text(encoding="utf-8")
            content = json.loads(text) if path.suffix == ".json" else text
            state[path.name] = {
                "file_extension": path.suffix,
                "content": content.split("\n") if path.suffix == ".txt" else content,
            }
        elif path.suffix in (".py", ".model"):
            skipped.append(path.name)
    if skipped:
        print(
            f"note: tokenizer files not stored with the checkpoint (code and binary files never are): "
            f"{', '.join(skipped)}; pass --tokenizer when exporting or evaluating it",
            flush=True,
        )
    return state


def _tokenizer_files(state: Any) -> dict[str, str]:
    """A stored tokenizer entry, checked -> {file name: text}; anything else stored is one ValueError line."""
    where = "the checkpoint's tokenizer"
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{where} is a {type(state).__name__}, not a mapping of file names; pass --tokenizer"
        )
    files = {}
    for name, entry in state.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file_extension"), str):
            raise ValueError(f"{where}: entry {name!r} has no file_extension; pass --tokenizer")
        ext, content = entry["file_extension"], entry.get("content")
        file_name = name if isinstance(name, str) and name.endswith(ext) else f"{name}{ext}"
        if file_name not in TOKENIZER_FILES or Path(file_name).suffix != ext:
            raise ValueError(
                f"{where} holds {file_name!r}, which is not one of the tokenizer files restored "
                f"({', '.join(sorted(TOKENIZER_FILES))}); pass --tokenizer"
            )
        if not isinstance(content, _CONTENT[ext]) or (
            ext == ".txt" and not all(isinstance(line, str) for line in content)
        ):
            raise ValueError(f"{where}: {file_name} has content of the wrong type; pass --tokenizer")
        try:
            files[file_name] = (
                json.dumps(content, ensure_ascii=False, indent=2)
                if ext == ".json"
                else "\n".join(content)
                if ext == ".txt"
                else content
            )
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{where}: {file_name} is not valid JSON content ({e}); pass --tokenizer"
            ) from None
    return files


def tokenizer_state_to_dir(state: Mapping[str, dict], out_dir: str | Path) -> None:
    """Inverse of `tokenizer_dir_to_state`, also for Composer's entries (names without extension).

    Every entry is checked before anything is written: a file name outside `TOKENIZER_FILES` (a path, code,
    a binary sentencepiece model) or content of the wrong type is a ValueError and nothing is written.
    """
    for file_name, text in _tokenizer_files(state).items():
        (Path(out_dir) / file_name).write_text(text, encoding="utf-8")


def _stored(ckpt: Any, key: str) -> Any:
    """`state[key]`, else the first callback state holding `key` (the training run's RunInfo callback)."""
    state = ckpt.get("state") if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        return None
    if state.get(key) is not None:
        return state[key]
    callbacks = state.get("callbacks")
    for callback_state in callbacks.values() if isinstance(callbacks, Mapping) else []:
        if isinstance(callback_state, Mapping) and callback_state.get(key) is not None:
            return callback_state[key]
    return None


def _stored_tokenizer(ckpt: Any) -> Any:
    """The checkpoint's tokenizer files: Composer's HF integration entry, else RunInfo's; None if neither."""
    entry: Any = ckpt
    for key in ("state", "integrations", "huggingface", "tokenizer"):
        entry = entry.get(key) if isinstance(entry, Mapping) else None
    return entry or _stored(ckpt, "tokenizer")


def _save_tokenizer(tokenizer: str | None, ckpt: Mapping, out_dir: Path) -> None:
    """From `--tokenizer` (dir or hub name), else the checkpoint's HF integration entry or RunInfo."""
    if tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out_dir)
        return
    files = _stored_tokenizer(ckpt)
    if not files:
        raise ValueError("the checkpoint holds no tokenizer: pass --tokenizer DIR_or_hub_name")
    tokenizer_state_to_dir(files, out_dir)


# ------------------------------------------------------------------------------------- export/import
def _checkpoint_config(ckpt: Mapping, config: str | Path | None) -> FlexBertConfig:
    """`--config` if given, else the FlexBertConfig this project stores in its checkpoints."""
    if config is not None:
        return load_config_arg(config)
    stored = _stored(ckpt, "flex_bert_config")
    if stored is None:
        raise ValueError(
            "the checkpoint holds no flex_bert_config (upstream checkpoint?): pass --config base|large|"
            "PATH.yaml"
        )
    return FlexBertConfig.from_dict(stored)


def _write_hf_config(hf_cfg, cfg: FlexBertConfig, out_dir: Path) -> None:
    """config.json, plus the pre-5.0 keys (global/local_rope_theta) so transformers 4.48+ reads it too."""
    hf_cfg.save_pretrained(out_dir)
    path = out_dir / "config.json"
    d = json.loads(path.read_text())
    d.setdefault("global_rope_theta", float(cfg.rotary_emb_base))
    d.setdefault("local_rope_theta", cfg.local_rope_theta)
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def export_to_hf(
    ckpt_path: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    tokenizer_dir: str | None = None,
    config: str | Path | None = None,
    trust: bool = False,
    base_model: str | None = None,
) -> Path:
    """Composer/FlexBERT checkpoint -> HF directory (config.json, model.safetensors, tokenizer files that
    transformers 4.x and 5.x load, README.md model card; ``base_model`` names the card's base model)."""
    from safetensors.torch import save_file

    from flex_bert.hf_export import make_tokenizer_portable, write_model_card

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {sorted(_DTYPES)}")
    ckpt = safe_torch_load(ckpt_path, trust=trust)
    flex_sd = _strip_prefixes(_model_state(ckpt, ckpt_path))
    cfg = _checkpoint_config(ckpt, config)
    hf_cfg = flexbert_config_to_hf(cfg)
    check_state_matches_config(flex_sd, cfg)
    hf_sd = flexbert_state_to_hf(flex_sd)
    if tokenizer_dir is None:
        _tokenizer_files(_stored_tokenizer(ckpt) or {})  # refused before any output exists
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tokenizer(tokenizer_dir, ckpt, out_dir)
    make_tokenizer_portable(out_dir)
    write_model_card(out_dir, ckpt, cfg.to_dict(), ckpt_path, base_model)
    tensors = {k: v.detach().to(_DTYPES[dtype]).contiguous() for k, v in hf_sd.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_hf_config(hf_cfg, cfg, out_dir)
    return out_dir


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


def _read_hf_weights(hf_dir: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of an HF model directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    if (hf_dir / "model.safetensors").exists():
        return load_file(hf_dir / "model.safetensors")
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(hf_dir / shard).items()}
    if (hf_dir / "pytorch_model.bin").exists():
        return safe_torch_load(hf_dir / "pytorch_model.bin", trust=trust)
    raise ValueError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def import_from_hf(
    hf_dir: str | Path, out_ckpt: str | Path, mask_token_id: int | None = None, trust: bool = False
) -> Path:
    """HF ModernBertForMaskedLM directory -> Composer-format checkpoint FlexBERT training can load."""
    from transformers import AutoTokenizer, ModernBertConfig

    hf_dir = Path(hf_dir)
    hf_cfg = ModernBertConfig.from_pretrained(hf_dir)
    tokenizer_state = {}
    if (hf_dir / "tokenizer_config.json").exists():
        tokenizer_state = tokenizer_dir_to_state(hf_dir)
        if mask_token_id is None:
            mask_token_id = AutoTokenizer.from_pretrained(hf_dir).mask_token_id
    cfg = hf_config_to_flexbert(hf_cfg, mask_token_id=mask_token_id)
    sd = hf_state_to_flexbert(_read_hf_weights(hf_dir, trust))
    check_state_matches_config(sd, cfg)
    state = {
        "model": {f"model.{k}": v for k, v in sd.items()},
        "flex_bert_config": cfg.to_dict(),
        "integrations": {
            "huggingface": {
                "model": {
                    "config": {"file_extension": ".json", "content": hf_cfg.to_dict(), "class": HF_CLASS}
                },
                "tokenizer": tokenizer_state,
            }
        },
    }
    out_ckpt = Path(out_ckpt)
    out_ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state}, out_ckpt)
    return out_ckpt


def load_flexbert_checkpoint(
    ckpt_path: str | Path, config: str | Path | None = None, trust: bool = False, with_tokenizer: bool = True
) -> tuple[FlexBertForMaskedLM, str | None]:
    """A Composer checkpoint -> (FlexBertForMaskedLM in fp32, folder of its stored tokenizer or None).

    The tokenizer folder is a temporary directory that lives as long as the process; None where the
    checkpoint holds no tokenizer or ``with_tokenizer`` is false (the caller has its own).
    """
    import tempfile

    ckpt = safe_torch_load(ckpt_path, trust=trust)
    cfg = _checkpoint_config(ckpt, config)
    sd = _strip_prefixes(_model_state(ckpt, ckpt_path))
    check_state_matches_config(sd, cfg)
    model = FlexBertForMaskedLM(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.tie_weights()
    files = _stored_tokenizer(ckpt) if with_tokenizer else None
    if not files:
        return model, None
    tok_dir = tempfile.mkdtemp(prefix="flexbert-tokenizer-")
    tokenizer_state_to_dir(files, tok_dir)
    return model, tok_dir
