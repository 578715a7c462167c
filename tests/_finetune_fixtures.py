"""Tiny labelled tasks and starting points for the fine-tuning and ablation tests (CPU, seconds).

- `tiny_task`: the demo corpus's tokenizer (vocab 512), a domain task (clinical or finance, the first 120
  characters of each document) as CSV, and an untrained tiny FlexBERT checkpoint in this recipe's format.
- `finetune_overrides`: a small budget for that task (key=value overrides of the sequence task file).
- `mlm_checkpoint_from_task_model`: a starting point whose encoder and head come from a fine-tuned model.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SEQUENCE_YAML = str(REPO / "yamls" / "finetune" / "sequence_classification.yml")
TINY_MODEL = dict(
    vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
    sliding_window=16, compile_model=False, attention_backend="sdpa",
)  # fmt: skip


def save_start_checkpoint(path: Path, model, tokenizer_dir: Path) -> Path:
    """A FlexBertForMaskedLM in the layout of this recipe's checkpoints (state.model, config, tokenizer)."""
    from flex_bert.hf_checkpoint import tokenizer_dir_to_state

    state = {
        "model": {f"model.{k}": v for k, v in model.state_dict().items()},
        "flex_bert_config": model.config.to_dict(),
        "tokenizer": tokenizer_dir_to_state(tokenizer_dir),
    }
    torch.save({"state": state}, path)
    return path


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> dict[str, Path]:
    from flex_bert.data.demo_corpus import write_demo_corpus
    from flex_bert.data.sources import iter_dataset_texts
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer
    from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

    root = tmp_path_factory.mktemp("tiny_task")
    files = write_demo_corpus(root / "corpus", seed=0, docs_per_domain=60, eval_docs=2)
    tok = train_bpe_tokenizer([files["clinical"], files["finance"]], root / "tokenizer", vocab_size=512)
    with open(root / "domain.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for domain in ("clinical", "finance"):
            for text in iter_dataset_texts(str(files[domain])):
                writer.writerow([text[:120], domain])
    ids = {k: getattr(tok, k) for k in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")}
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig.from_dict({**TINY_MODEL, **ids}))
    start = save_start_checkpoint(root / "untrained.pt", model, root / "tokenizer")
    return {"root": root, "data": root / "domain.csv", "tokenizer": root / "tokenizer", "untrained": start}


def finetune_overrides(tiny_task, **changes) -> list[str]:
    settings = dict(
        train_file=tiny_task["data"], max_seq_len=48, batch_size=16, eval_batch_size=64, max_duration="2ep",
        eval_fraction=0.25, **{"optimizer.lr": 3e-3}, patience=None,
    )  # fmt: skip
    settings.update(changes)
    return [f"{k}={'null' if v is None else v}" for k, v in settings.items()]


def mlm_checkpoint_from_task_model(path: Path, task_model, tokenizer_dir: Path) -> Path:
    """The task model's encoder and head with a fresh decoder, saved as a starting point."""
    from flex_bert.model import FlexBertForMaskedLM

    mlm = FlexBertForMaskedLM(task_model.config)
    state = mlm.state_dict()
    state.update({k: v for k, v in task_model.state_dict().items() if not k.startswith("classifier.")})
    state["decoder.weight"] = state["bert.embeddings.tok_embeddings.weight"]  # tied
    mlm.load_state_dict(state)
    mlm.tie_weights()
    return save_start_checkpoint(path, mlm, tokenizer_dir)


@pytest.fixture(scope="session")
def trained_run(tiny_task, tmp_path_factory) -> dict:
    """The untrained checkpoint fine-tuned on the domain task (mean pooling, 2 epochs, an evaluation after
    each: the words tell the domains apart, so this learns it at once)."""
    from flex_bert.train.finetune import finetune
    from flex_bert.train.finetune_config import load_finetune_config

    folder = tmp_path_factory.mktemp("trained_run")
    overrides = finetune_overrides(
        tiny_task, start=tiny_task["untrained"], save_folder=folder, pooling="mean"
    )
    return {"folder": folder, "result": finetune(load_finetune_config([SEQUENCE_YAML], overrides))}
