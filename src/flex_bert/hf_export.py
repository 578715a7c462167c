"""What the Hugging Face export writes beside the weights: a tokenizer every transformers release loads, with
pre-training's `[CLS] ... [SEP]` framing, and a model card (README.md) that says how the model was trained."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# transformers 5 saves fast tokenizers as "TokenizersBackend", a name 4.x does not know; both load this one.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Arguments of the from_pretrained call that read the tokenizer, which transformers 5 saves with it.
_LOAD_TIME_KEYS = ("is_local", "local_files_only")
# ModernBERT's released shapes, for the card's base_model: (hidden_size, num_hidden_layers) -> hub name.
_MODERNBERT = {(768, 22): "answerdotai/ModernBERT-base", (1024, 28): "answerdotai/ModernBERT-large"}


def cls_sep_template(cls: str, cls_id: int, sep: str, sep_id: int) -> dict:
    """`tokenizers`' TemplateProcessing that frames inputs as the converter frames pre-training samples."""
    from tokenizers import processors

    template = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )
    return json.loads(template.__getstate__())


def make_tokenizer_portable(out_dir: str | Path) -> list[str]:
    """Rewrite the tokenizer files in ``out_dir`` so that transformers 4.x and 5.x load them and they frame
    inputs ``[CLS] ... [SEP]`` as pre-training did. Logs and returns one line per change made."""
    from transformers import AutoTokenizer

    from flex_bert.data.tokenize import frames_cls_sep

    out_dir = Path(out_dir)
    changes = []
    config_path = out_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") != PORTABLE_TOKENIZER_CLASS:
            changes.append(
                f"tokenizer_class {config.get('tokenizer_class')!r} -> {PORTABLE_TOKENIZER_CLASS!r}"
            )
            config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        for key in _LOAD_TIME_KEYS:
            config.pop(key, None)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    if tok.cls_token_id is None or tok.sep_token_id is None or frames_cls_sep(tok):
        return changes
    tokenizer_path = out_dir / "tokenizer.json"
    data = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    data["post_processor"] = cls_sep_template(
        tok.cls_token, tok.cls_token_id, tok.sep_token, tok.sep_token_id
    )
    tokenizer_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    changes.append(
        f"post-processor set to {tok.cls_token} $A {tok.sep_token}: the tokenizer did not add them, but "
        "pre-training samples were framed with them"
    )
    log.warning("export: %s", changes[-1])
    return changes


def write_model_card(
    out_dir: str | Path, ckpt: Mapping, model_config: Mapping, ckpt_path: str | Path, base_model: str | None
) -> Path:
    """README.md: base model, data (from the conversion stats, where readable), tokens trained, the last eval
    loss in the run's metrics.jsonl, and the run's resolved YAML."""
    import yaml

    state = ckpt.get("state", {}) if isinstance(ckpt, Mapping) else {}
    run = _run_config(state) or {}
    base = base_model or _MODERNBERT.get(
        (model_config.get("hidden_size"), model_config.get("num_hidden_layers"))
    )
    stamp = (state.get("timestamp") or {}).get("Timestamp") or {}
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: fill-mask",
        "tags:",
        "- modernbert",
        "- fill-mask",
    ]
    if base:
        lines.append(f"base_model: {base}")
    lines += ["---", "", f"# {run.get('run_name') or Path(out_dir).name}", ""]
    lines.append(
        "A ModernBERT masked language model, trained by continued pre-training with the FlexBERT recipe"
        + (f" from `{base}`." if base else ".")
    )
    lines += ["", "## Training", ""]
    facts = {
        "started from": run.get("load_path"),
        "tokens trained in this phase": _count(stamp.get("token")),
        "optimizer steps": _count(stamp.get("batch")),
        "max_seq_len": run.get("max_seq_len"),
        "masking rate": run.get("mlm_probability"),
        "final eval loss (masked-LM cross-entropy)": _last_eval_loss(
            Path(ckpt_path).parent, stamp.get("batch")
        ),
    }
    lines += [f"- {k}: {v}" for k, v in facts.items() if v is not None]
    lines += ["", "## Data", "", *_data_lines(run), "", "## Recipe (the run's resolved YAML)", "", "```yaml"]
    lines += [
        yaml.safe_dump(run, sort_keys=False).rstrip() if run else "# not stored in the checkpoint",
        "```",
        "",
    ]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _run_config(state: Mapping) -> dict | None:
    for callback_state in (state.get("callbacks") or {}).values():
        if isinstance(callback_state, Mapping) and isinstance(callback_state.get("run_config"), Mapping):
            return dict(callback_state["run_config"])
    return None


def _count(value: Any) -> str | None:
    return f"{value:,}" if isinstance(value, int) else None


def _last_eval_loss(folder: Path, batch: Any) -> str | None:
    """The last eval record at or before the checkpoint's batch in the run's metrics.jsonl."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return None
    loss = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("kind") == "eval" and (not isinstance(batch, int) or r.get("batch", 0) <= batch):
            loss = r.get("metrics/eval/LanguageCrossEntropy", loss)
    return f"{loss:.4f}" if isinstance(loss, float) else None


def _data_lines(run: Mapping) -> list[str]:
    """One line per training dataset folder, from its conversion stats, where the folders are readable here."""
    from flex_bert.data.merge import dataset_folders, read_conversion_stats

    dataset = (run.get("train_loader") or {}).get("dataset") or {}
    if dataset.get("streams"):
        folders = {name: s.get("local") for name, s in dataset["streams"].items()}
        weights = {name: s.get("proportion") for name, s in dataset["streams"].items()}
    else:
        try:
            found = dataset_folders(Path(dataset.get("local") or "") / (dataset.get("split") or ""))
        except (ValueError, OSError):
            found = []
        folders, weights = {f.name: f for f in found}, {}
    lines = []
    for name, folder in folders.items():
        try:
            stats = read_conversion_stats(folder)
        except (ValueError, OSError, TypeError):
            lines.append(f"- {name}: conversion stats not readable where this export ran")
            continue
        weight = f", proportion {weights[name]}" if weights.get(name) is not None else ""
        lines.append(
            f"- {name}: {stats['documents']:,} documents, {stats['tokens']:,} tokens "
            f"({stats['chunked_documents']:,} documents split into pieces of at most {stats['max_seq_len']}){weight}"
        )
    return lines or ["- not recorded (the training data folders were not readable where this export ran)"]
