"""A tiny tokenized corpus (train + eval splits, merged) and a tiny-model YAML for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DEMO_YAML = Path(__file__).resolve().parents[1] / "yamls" / "demo" / "pretrain.yml"


@pytest.fixture(scope="session")
def tiny_mds(tmp_path_factory) -> dict[str, Path]:
    from flex_bert.data.demo_corpus import tokenize_demo_corpus, write_demo_corpus
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("train_data")
    files = write_demo_corpus(root / "corpus", seed=0, docs_per_domain=80, eval_docs=12)
    tok = root / "tokenizer"
    train_bpe_tokenizer([files["clinical"], files["finance"]], tok, vocab_size=512)
    tokenize_demo_corpus(files, tok, root / "mds", 128, num_workers=1)
    return {"root": root, "data": root / "mds", "tokenizer": tok}


def tiny_yaml(tiny_mds, tmp_path: Path, name: str = "run", **changes) -> Path:
    """The demo's step-0 YAML shrunk for tests (vocab 512, 2 rows of 2 x 128 tokens per step)."""
    cfg = yaml.safe_load(DEMO_YAML.read_text())
    cfg.update(
        data_local=str(tiny_mds["data"]),
        tokenizer_name=str(tiny_mds["tokenizer"]),
        max_seq_len=128,
        run_name=name,
        save_folder=str(tmp_path / "{run_name}"),
        global_train_batch_size=4,
        device_train_microbatch_size=2,
        max_duration="12ba",
        eval_interval="12ba",
        save_interval="6ba",
        console_log_interval="100ba",
        device_eval_batch_size=8,
    )
    cfg["model"]["model_config"].update(vocab_size=512, num_hidden_layers=3, sliding_window=16)
    cfg["callbacks"] = {"lr_monitor": {}, "packing_efficiency": {"log_interval": 1}}
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    out = tmp_path / f"{name}.yml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def read_metrics(folder: Path, kind: str | None = "train") -> list[dict]:
    """The records of ``folder/metrics.jsonl`` of one kind ("train", "eval"), or all with ``kind=None``."""
    import json

    recs = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if kind is None or r["kind"] == kind]


def free_port() -> int:
    """A free TCP port on the loopback address (a fixed port can collide with another job)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_code_running_checkpoint(path: Path, target: Path) -> None:
    """A checkpoint whose unpickling would create ``target``: loading it must never run code."""
    import torch

    class _Payload:
        def __reduce__(self):
            return (open, (str(target), "w"))

    torch.save({"state": {"model": {}, "x": _Payload()}}, path)
