"""Merging converted folders (only complete ones, only with one tokenizer and max_seq_len) and reading
weighted mixtures of them through mosaicml-streaming."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.register_assert_rewrite("_data_fixtures")  # it is also a plugin (below)
from _data_fixtures import read_mds, read_streaming, run_convert  # noqa: E402

from flex_bert.data.demo_corpus import build_tiny_tokenizer  # noqa: E402
from flex_bert.data.merge import check_compatible, merge_datasets, read_conversion_stats  # noqa: E402
from flex_bert.data.mixture import build_streams  # noqa: E402
from flex_bert.data.sources import DataError  # noqa: E402
from flex_bert.data.tokenize import tokenizer_fingerprint  # noqa: E402

pytest_plugins = ["_data_fixtures"]  # session fixtures: demo_corpus, tiny_tokenizer_dir, tiny_tokenizer
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_datasets(demo_corpus, tiny_tokenizer_dir, tmp_path):
    root = tmp_path / "train"
    for name in ("clinical", "finance"):
        run_convert(demo_corpus[name], root, tiny_tokenizer_dir)
    return root


def test_merge_two_datasets_reads_all_samples(two_datasets):
    r = subprocess.run(
        [sys.executable, str(REPO / "data" / "merge_index.py"), str(two_datasets)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert r.returncode == 0, r.stderr
    assert "2 datasets (clinical, finance)" in r.stdout
    expected = read_mds(two_datasets / "clinical") + read_mds(two_datasets / "finance")
    got = read_streaming(two_datasets)
    assert [s.tolist() for s in got] == [s.tolist() for s in expected]


def test_merge_refuses_different_tokenizers(two_datasets, demo_corpus, tmp_path):
    other = tmp_path / "other_tok"
    build_tiny_tokenizer([demo_corpus["finance"]], other, vocab_size=700)
    run_convert(demo_corpus["eval"], two_datasets, other)
    with pytest.raises(DataError, match="different tokenizers"):
        merge_datasets(two_datasets)
    assert not (two_datasets / "index.json").exists()


def test_merge_refuses_different_max_seq_len_and_incomplete_folders(
    two_datasets, demo_corpus, tiny_tokenizer_dir
):
    run_convert(demo_corpus["eval"], two_datasets, tiny_tokenizer_dir, max_seq_len=256)
    with pytest.raises(DataError, match="different --max_seq_len"):
        merge_datasets(two_datasets)
    (two_datasets / "eval.conversion.json").unlink()
    with pytest.raises(
        DataError, match="eval has no eval.conversion.json beside it: not a finished conversion"
    ):
        merge_datasets(two_datasets)
    (two_datasets / "eval" / "index.json").unlink()
    (two_datasets / ".eval.tmp-123").mkdir()
    with pytest.raises(DataError, match=r"\.eval\.tmp-123 is left over from an interrupted"):
        merge_datasets(two_datasets)
    (two_datasets / ".eval.tmp-123").rmdir()
    (two_datasets / "eval" / "notes.json").write_text("{}")
    with pytest.raises(DataError, match="notes.json is not a dataset index"):
        merge_datasets(two_datasets)
    stats = json.loads((two_datasets / "finance.conversion.json").read_text())
    (two_datasets / "finance.conversion.json").write_text(json.dumps({**stats, "complete": False}))
    with pytest.raises(DataError, match="does not say complete: true"):
        read_conversion_stats(two_datasets / "finance")


def test_check_compatible_against_the_training_run(two_datasets, tiny_tokenizer_dir):
    folders = [two_datasets / "clinical", two_datasets / "finance"]
    fp = tokenizer_fingerprint(str(tiny_tokenizer_dir))
    stats = check_compatible(folders, max_seq_len=128, tokenizer_fingerprint=fp)
    assert [s["name"] for s in stats] == ["clinical", "finance"]
    check_compatible(folders, max_seq_len=512)  # shorter samples are fine
    with pytest.raises(DataError, match="convert them with --max_seq_len 64"):
        check_compatible(folders, max_seq_len=64)
    with pytest.raises(DataError, match="not with the training tokenizer"):
        check_compatible(folders, tokenizer_fingerprint="0" * 64)


def _source_counts(samples, folders):
    owner = {tuple(s.tolist()): f.name for f in folders for s in read_mds(f)}
    return Counter(owner[tuple(s.tolist())] for s in samples)


def test_weighted_mixture_respects_proportions(two_datasets):
    specs = [{"local": "clinical", "proportion": 3, "name": "c"}, {"local": "finance", "proportion": 1}]
    streams = build_streams(specs, root=two_datasets, max_seq_len=128)
    samples = read_streaming(streams=streams, epoch_size=400)
    counts = _source_counts(samples, [two_datasets / "clinical", two_datasets / "finance"])
    assert sum(counts.values()) == 400
    assert abs(counts["clinical"] / 400 - 0.75) < 0.03


def test_repeat_mixture_and_validation(two_datasets):
    sizes = {n: read_conversion_stats(two_datasets / n)["samples"] for n in ("clinical", "finance")}
    streams = build_streams(
        [
            {"local": str(two_datasets / "clinical"), "repeat": 2},
            {"local": str(two_datasets / "finance"), "repeat": 1},
        ]
    )
    counts = _source_counts(
        read_streaming(streams=streams, epoch_size=None),
        [two_datasets / "clinical", two_datasets / "finance"],
    )
    assert counts == {"clinical": 2 * sizes["clinical"], "finance": sizes["finance"]}
    bad = [
        (
            [{"local": "clinical", "proportoin": 1}],
            "unknown stream key 'proportoin' .did you mean 'proportion'",
        ),
        ([{"local": "clinical", "proportion": 1}, {"local": "finance", "repeat": 1}], "either every stream"),
        ([{"local": "clinical", "proportion": -1}], "must be a positive number"),
        ([{"local": "clinical", "proportion": 1, "repeat": 1}], "not both"),
        ([{"local": "nowhere"}], "does not exist"),
        ([{"local": "clinical"}, {"local": "clinical"}], "appears twice"),
        ([], "no streams"),
    ]
    for specs, message in bad:
        with pytest.raises(ValueError, match=message):
            build_streams(specs, root=two_datasets)
