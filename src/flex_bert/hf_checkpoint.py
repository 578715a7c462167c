"""Checkpoint and tokenizer I/O between this project's Composer checkpoints and Hugging Face directories:
`export_to_hf`, `import_from_hf`, `load_flexbert_checkpoint`, and the tokenizer files stored in checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flex_bert.checkpoint_io import TRUST_FLAG, safe_torch_load
from flex_bert.hf_config import flexbert_config_to_hf, hf_config_to_flexbert, load_config_arg, write_hf_config
from flex_bert.hf_state import (
    check_state_matches_config,
    flexbert_state_to_hf,
    hf_state_to_flexbert,
    strip_prefixes,
)
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

HF_CLASS = "transformers.models.modernbert.modeling_modernbert.ModernBertForMaskedLM"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------- checkpoints
def load_composer_model_state(
    path: str | Path, trust: bool = False, trust_hint: str = TRUST_FLAG
) -> dict[str, torch.Tensor]:
    """`state.model` of a Composer checkpoint, keys without the leading `model.`."""
    return strip_prefixes(model_state(safe_torch_load(path, trust, trust_hint), path))


def model_state(ckpt: Any, path) -> dict:
    try:
        return ckpt["state"]["model"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a Composer checkpoint (no state.model)") from None


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


def stored_value(ckpt: Any, key: str) -> Any:
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


def stored_tokenizer(ckpt: Any) -> Any:
    """The checkpoint's tokenizer files: Composer's HF integration entry, else RunInfo's; None if neither."""
    entry: Any = ckpt
    for key in ("state", "integrations", "huggingface", "tokenizer"):
        entry = entry.get(key) if isinstance(entry, Mapping) else None
    return entry or stored_value(ckpt, "tokenizer")


def _save_tokenizer(tokenizer: str | None, ckpt: Mapping, out_dir: Path) -> None:
    """From `--tokenizer` (dir or hub name), else the checkpoint's HF integration entry or RunInfo."""
    if tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out_dir)
        return
    files = stored_tokenizer(ckpt)
    if not files:
        raise ValueError("the checkpoint holds no tokenizer: pass --tokenizer DIR_or_hub_name")
    tokenizer_state_to_dir(files, out_dir)


# ------------------------------------------------------------------------------------- export/import
def checkpoint_config(ckpt: Mapping, config: str | Path | None) -> FlexBertConfig:
    """`--config` if given, else the FlexBertConfig this project stores in its checkpoints."""
    if config is not None:
        return load_config_arg(config)
    stored = stored_value(ckpt, "flex_bert_config")
    if stored is None:
        raise ValueError(
            "the checkpoint holds no flex_bert_config (upstream checkpoint?): pass --config base|large|"
            "PATH.yaml"
        )
    return FlexBertConfig.from_dict(stored)


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

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {sorted(DTYPES)}")
    ckpt = safe_torch_load(ckpt_path, trust=trust)
    flex_sd = strip_prefixes(model_state(ckpt, ckpt_path))
    cfg = checkpoint_config(ckpt, config)
    hf_cfg = flexbert_config_to_hf(cfg)
    check_state_matches_config(flex_sd, cfg)
    hf_sd = flexbert_state_to_hf(flex_sd)
    if tokenizer_dir is None:
        _tokenizer_files(stored_tokenizer(ckpt) or {})  # refused before any output exists
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tokenizer(tokenizer_dir, ckpt, out_dir)
    make_tokenizer_portable(out_dir)
    write_model_card(out_dir, ckpt, cfg.to_dict(), ckpt_path, base_model)
    tensors = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in hf_sd.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    write_hf_config(hf_cfg, cfg, out_dir)
    return out_dir


def read_hf_weights(hf_dir: Path, trust: bool = False) -> dict[str, torch.Tensor]:
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
    sd = hf_state_to_flexbert(read_hf_weights(hf_dir, trust))
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
    cfg = checkpoint_config(ckpt, config)
    sd = strip_prefixes(model_state(ckpt, ckpt_path))
    check_state_matches_config(sd, cfg)
    model = FlexBertForMaskedLM(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.tie_weights()
    files = stored_tokenizer(ckpt) if with_tokenizer else None
    if not files:
        return model, None
    tok_dir = tempfile.mkdtemp(prefix="flexbert-tokenizer-")
    tokenizer_state_to_dir(files, tok_dir)
    return model, tok_dir
