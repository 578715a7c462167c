"""Fine-tuned FlexBERT task models: their checkpoint, their starting points, and their Hugging Face export.

A task checkpoint is laid out as a Composer one (`state.model` with `model.`-prefixed keys), plus
`state.flex_bert_config`, `state.flex_bert_task` (task, labels, pooling, dropout: the label map lives with
the weights) and `state.tokenizer` (the tokenizer's files). Export writes `ModernBertForSequenceClassification`
or `ModernBertForTokenClassification` with `id2label`/`label2id`, `classifier_pooling`, `classifier_dropout`
and `problem_type`; the keys are the MLM mapping of `hf_state.py` plus `classifier.*`, unchanged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from flex_bert.checkpoint_io import safe_torch_load
from flex_bert.hf_checkpoint import (
    DTYPES,
    checkpoint_config,
    model_state,
    read_hf_weights,
    stored_value,
    tokenizer_dir_to_state,
    tokenizer_state_to_dir,
)
from flex_bert.hf_config import flexbert_config_to_hf, hf_config_to_flexbert, write_hf_config
from flex_bert.hf_state import (
    check_state_matches_config,
    flexbert_state_to_hf,
    hf_state_to_flexbert,
    strip_prefixes,
)
from flex_bert.model import FlexBertConfig
from flex_bert.model.classification import TaskConfig, build_task_model

TASK_KEY = "flex_bert_task"
HF_ARCHITECTURES = {
    "single_label": "ModernBertForSequenceClassification",
    "multi_label": "ModernBertForSequenceClassification",
    "token": "ModernBertForTokenClassification",
}
_PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification"}


# ------------------------------------------------------------------------------------------- configs
def task_config_to_hf(cfg: FlexBertConfig, task: TaskConfig):
    """FlexBertConfig + TaskConfig -> ModernBertConfig for the matching HF task class."""
    hf_cfg = flexbert_config_to_hf(cfg)
    hf_cfg.architectures = [HF_ARCHITECTURES[task.task]]
    hf_cfg.id2label = dict(enumerate(task.labels))
    hf_cfg.label2id = {name: i for i, name in enumerate(task.labels)}
    hf_cfg.classifier_pooling = task.pooling
    hf_cfg.classifier_dropout = task.dropout
    hf_cfg.problem_type = _PROBLEM_TYPES.get(task.task)
    return hf_cfg


def task_state_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Task model state dict (with or without Composer's `model.`) -> HF keys (`classifier.*` unchanged)."""
    sd = strip_prefixes(sd)
    head = {k: v for k, v in sd.items() if k.startswith("classifier.")}
    return {**flexbert_state_to_hf({k: v for k, v in sd.items() if k not in head}), **head}


# ------------------------------------------------------------------------------------ starting points
def load_start(path: str | Path, trust: bool = False) -> tuple[FlexBertConfig, dict, str | None]:
    """A starting point -> (FlexBertConfig, FlexBertForMaskedLM state dict, tokenizer folder or None).

    `path` is a Hugging Face ModernBertForMaskedLM folder or a checkpoint of this recipe (pre-training's
    `latest-rank0.pt`, or one written by `scripts/convert_from_hf.py`)."""
    path = Path(path)
    if path.is_dir():
        return _load_hf_start(path)
    if not path.is_file():
        raise ValueError(f"starting point {path} does not exist (give an HF folder or a .pt checkpoint)")
    ckpt = safe_torch_load(path, trust=trust)
    if stored_value(ckpt, TASK_KEY) is not None:
        raise ValueError(f"{path} is already fine-tuned; start from a pre-trained checkpoint")
    cfg, state = checkpoint_config(ckpt, None), strip_prefixes(model_state(ckpt, path))
    check_state_matches_config(state, cfg)
    return cfg, state, _tokenizer_to_dir(ckpt)


def _load_hf_start(hf_dir: Path) -> tuple[FlexBertConfig, dict, str | None]:
    from transformers import AutoTokenizer, ModernBertConfig

    if not (hf_dir / "config.json").exists():
        raise ValueError(f"{hf_dir}: no config.json (not a Hugging Face model folder)")
    hf_cfg = ModernBertConfig.from_pretrained(hf_dir)
    if hf_cfg.architectures and hf_cfg.architectures != ["ModernBertForMaskedLM"]:
        raise ValueError(f"{hf_dir} holds {hf_cfg.architectures}; start from a ModernBertForMaskedLM folder")
    has_tokenizer = (hf_dir / "tokenizer_config.json").exists()
    mask_id = AutoTokenizer.from_pretrained(hf_dir).mask_token_id if has_tokenizer else None
    cfg = hf_config_to_flexbert(hf_cfg, mask_token_id=mask_id)
    return cfg, hf_state_to_flexbert(read_hf_weights(hf_dir)), str(hf_dir) if has_tokenizer else None


def _tokenizer_to_dir(ckpt: Mapping) -> str | None:
    """The checkpoint's tokenizer files written to a temporary folder (lives as long as the process)."""
    hf_entry = ckpt.get("state", {}).get("integrations", {}).get("huggingface", {})
    files = hf_entry.get("tokenizer") or stored_value(ckpt, "tokenizer")
    if not files:
        return None
    out = tempfile.mkdtemp(prefix="flexbert-tokenizer-")
    tokenizer_state_to_dir(files, out)
    return out


# --------------------------------------------------------------------------------- task checkpoints
def save_task_checkpoint(path: str | Path, model, tokenizer_dir: str | Path, extra: Mapping | None = None):
    """Write a task model (`model.config`, `model.task`, weights) with its tokenizer, atomically."""
    state = {
        "model": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
        "flex_bert_config": model.config.to_dict(),
        TASK_KEY: model.task.to_dict(),
        "tokenizer": tokenizer_dir_to_state(tokenizer_dir),
        **dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"state": state}, tmp)
    os.replace(tmp, path)
    return path


def is_task_checkpoint(path: str | Path, trust: bool = False) -> bool:
    return stored_value(safe_torch_load(path, trust=trust), TASK_KEY) is not None


def load_task_checkpoint(path: str | Path, trust: bool = False):
    """-> (task model in fp32, eval mode, tokenizer folder or None)."""
    ckpt = safe_torch_load(path, trust=trust)
    task = stored_value(ckpt, TASK_KEY)
    if task is None:
        raise ValueError(f"{path} holds no {TASK_KEY}: not a fine-tuned model (scripts/finetune.py)")
    model = build_task_model(
        FlexBertConfig.from_dict(stored_value(ckpt, "flex_bert_config")), TaskConfig(**task)
    )
    model.load_state_dict({k: v.float() for k, v in strip_prefixes(ckpt["state"]["model"]).items()})
    return model.eval(), _tokenizer_to_dir(ckpt)


# -------------------------------------------------------------------------------------------- export
def export_task_to_hf(
    ckpt_path: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    tokenizer_dir: str | None = None,
    trust: bool = False,
) -> Path:
    """Task checkpoint -> HF folder loadable with AutoModelFor{Sequence,Token}Classification."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {sorted(DTYPES)}")
    model, stored_tokenizer = load_task_checkpoint(ckpt_path, trust=trust)
    tokenizer_dir = tokenizer_dir or stored_tokenizer
    if tokenizer_dir is None:
        raise ValueError("the checkpoint holds no tokenizer: pass --tokenizer DIR_or_hub_name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    hf_sd = task_state_to_hf(model.state_dict())
    tensors = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in hf_sd.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    write_hf_config(task_config_to_hf(model.config, model.task), model.config, out_dir)
    return out_dir
