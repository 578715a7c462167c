"""Shared pieces of the data tests: the demo corpus and tiny tokenizer (built once per session), a converter
call with test defaults, and readers of MDS output through mosaicml-streaming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flex_bert.data.convert import ConvertConfig, convert_dataset
from flex_bert.data.tokenize import DocumentProcessor


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> dict[str, Path]:
    from flex_bert.data.demo_corpus import write_demo_corpus

    return write_demo_corpus(tmp_path_factory.mktemp("demo_corpus"), seed=0, docs_per_domain=60, eval_docs=10)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(demo_corpus, tmp_path_factory) -> Path:
    from flex_bert.data.demo_corpus import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer([demo_corpus["clinical"], demo_corpus["finance"]], out, vocab_size=1024)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def run_convert(dataset, out_dir, tokenizer_dir, **overrides) -> dict:
    """convert_dataset with test defaults: tiny tokenizer, one in-process worker, no progress bar."""
    processor_cls = overrides.pop("processor_cls", DocumentProcessor)
    kwargs = dict(
        dataset=str(dataset),
        out_dir=str(out_dir),
        tokenizer=str(tokenizer_dir),
        max_seq_len=128,
        num_workers=1,
        progress=False,
    )
    kwargs.update(overrides)
    return convert_dataset(ConvertConfig(**kwargs), processor_cls=processor_cls)


def read_mds(folder) -> list[np.ndarray]:
    """Every sample's input_ids, in order, through streaming's shard readers (uncompressed shards)."""
    from streaming.base.format import reader_from_json

    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())
    samples = []
    for shard in index["shards"]:
        reader = reader_from_json(str(folder), None, shard)
        samples.extend(reader.get_item(i)["input_ids"] for i in range(shard["samples"]))
    return samples


def read_streaming(folder=None, streams=None, epoch_size=None) -> list[np.ndarray]:
    """Samples through a fresh, local-only StreamingDataset (no shuffle), as training reads them."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(
        local=None if streams else str(folder),
        remote=None,
        streams=streams,
        shuffle=False,
        batch_size=1,
        epoch_size=epoch_size,
    )
    return [sample["input_ids"] for sample in ds]


class FailingProcessor(DocumentProcessor):
    """Raises inside the worker on a document containing BOOM (a conversion killed midway)."""

    def __call__(self, texts):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("injected failure")
        return super().__call__(texts)
