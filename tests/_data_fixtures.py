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
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_bpe_tokenizer([demo_corpus["clinical"], demo_corpus["finance"]], out, vocab_size=1024)
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


def _edit_json(change):
    """An index.json edit: parse, change the object in place, write back."""

    def apply(text: str) -> str:
        obj = json.loads(text)
        change(obj)
        return json.dumps(obj)

    return apply


def _shard0(change):
    return _edit_json(lambda obj: change(obj["shards"][0]))


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _drop(key):
    return lambda d: d.pop(key)


# (id, edit of index.json's text, a fragment of the one-line error): every malformed index.json a user (or
# a broken tool) can leave must be refused with a line naming the file, never a traceback from streaming.
MALFORMED_INDEXES = [
    ("not_json", lambda t: t[: len(t) // 2], "not valid JSON"),
    ("not_utf8", lambda t: b"\xff\xfe" + t.encode(), "not valid JSON"),
    ("not_an_object", lambda t: "[1, 2]", "must be a JSON object"),
    ("no_shards", _edit_json(_drop("shards")), "has no 'shards'"),
    ("shards_not_a_list", _edit_json(_set("shards", {"a": 1})), "'shards' must be a list"),
    ("wrong_version", _edit_json(_set("version", 3)), "'version' must be 2"),
    (
        "shard_not_an_object",
        _edit_json(lambda o: o["shards"].__setitem__(0, "shard.mds")),
        "must be an object",
    ),
    ("samples_negative", _shard0(_set("samples", -3)), "'samples' must be a non-negative integer"),
    ("samples_a_string", _shard0(_set("samples", "263")), "'samples' must be a non-negative integer"),
    ("samples_a_float", _shard0(_set("samples", 2.5)), "'samples' must be a non-negative integer"),
    ("samples_a_bool", _shard0(_set("samples", True)), "'samples' must be a non-negative integer"),
    ("samples_missing", _shard0(_drop("samples")), "has no 'samples'"),
    ("raw_data_missing", _shard0(_drop("raw_data")), "has no 'raw_data'"),
    ("raw_data_a_string", _shard0(_set("raw_data", "shard.00000.mds")), "'raw_data' must be an object"),
    ("basename_not_a_string", _shard0(lambda s: s["raw_data"].__setitem__("basename", 7)), "basename"),
    ("basename_missing", _shard0(lambda s: s["raw_data"].pop("basename")), "basename"),
    (
        "bytes_negative",
        _shard0(lambda s: s["raw_data"].__setitem__("bytes", -1)),
        "bytes' must be a non-negative",
    ),
    ("extra_file_key", _shard0(lambda s: s["raw_data"].__setitem__("owner", "x")), "unexpected key"),
    (
        "zip_basename_not_a_string",
        _shard0(_set("zip_data", {"basename": None, "bytes": 1, "hashes": {}})),
        "basename",
    ),
    ("compression_a_number", _shard0(_set("compression", 5)), "'compression' must be null or a string"),
    ("format_unknown", _shard0(_set("format", "parquet")), "'format' must be 'mds'"),
    ("no_input_ids_column", _shard0(_set("column_names", ["text"])), "input_ids"),
    ("column_encodings_missing", _shard0(_drop("column_encodings")), "has no 'column_encodings'"),
]


def write_edited(path: Path, edit) -> None:
    """Apply one of MALFORMED_INDEXES' edits to the index file at path."""
    new = edit(path.read_text(encoding="utf-8"))
    if isinstance(new, bytes):
        path.write_bytes(new)
    else:
        path.write_text(new, encoding="utf-8")
