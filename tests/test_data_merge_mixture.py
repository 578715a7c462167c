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
from _data_fixtures import (  # noqa: E402
    MALFORMED_INDEXES,
    read_mds,
    read_streaming,
    run_convert,
    write_edited,
)

from flex_bert.data.merge import check_compatible, merge_datasets, read_conversion_stats  # noqa: E402
from flex_bert.data.mixture import build_streams  # noqa: E402
from flex_bert.data.sources import DataError  # noqa: E402
from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer  # noqa: E402
from flex_bert.data.tokenize import tokenizer_fingerprint  # noqa: E402

pytest_plugins = ["_data_fixtures"]  # session fixtures: demo_corpus, tiny_tokenizer_dir, tiny_tokenizer
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(demo_corpus, tiny_tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("converted") / "train"
    for name in ("clinical", "finance"):
        run_convert(demo_corpus[name], root, tiny_tokenizer_dir)
    return root


@pytest.fixture
def two_datasets(converted, tmp_path):
    """clinical and finance converted (not merged), a private copy for each test."""
    import shutil

    return Path(shutil.copytree(converted, tmp_path / "train", symlinks=True))


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


def _merge_cli(root):
    return subprocess.run(
        [sys.executable, str(REPO / "data" / "merge_index.py"), str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def test_remerging_after_moving_a_folder_replaces_the_index(two_datasets, tmp_path):
    merge_datasets(two_datasets)
    again = _merge_cli(two_datasets)  # the seed guide's merge_index(root, True) refuses this
    assert again.returncode == 0, again.stderr
    other = tmp_path / "other"
    other.mkdir()
    for path in ("finance", "finance.conversion.json"):
        (two_datasets / path).rename(other / path)
    assert merge_datasets(two_datasets)["datasets"] == ["clinical"]
    assert [s.tolist() for s in read_streaming(two_datasets)] == [
        s.tolist() for s in read_mds(two_datasets / "clinical")
    ]
    merge_datasets(other)
    assert len(read_streaming(other)) == len(read_mds(other / "finance"))
    assert sorted(p.name for p in two_datasets.iterdir()) == [
        ".locks",
        "clinical",
        "clinical.conversion.json",
        "index.json",
    ]


def test_a_failed_remerge_keeps_the_old_index(two_datasets, monkeypatch):
    import streaming.base.util

    merge_datasets(two_datasets)
    before = (two_datasets / "index.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(streaming.base.util, "merge_index", broken)
    with pytest.raises(OSError, match="No space left"):
        merge_datasets(two_datasets)
    assert (two_datasets / "index.json").read_bytes() == before
    monkeypatch.undo()
    real_dump = json.dump

    def full_disk(obj, f, **kwargs):
        if "index.json" in getattr(f, "name", ""):
            f.write('{"version": 2, "sha')
            raise OSError(28, "No space left on device")
        return real_dump(obj, f, **kwargs)

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
        merge_datasets(two_datasets)
    assert (two_datasets / "index.json").read_bytes() == before
    assert sorted(p.name for p in two_datasets.iterdir()) == [
        ".locks",
        "clinical",
        "clinical.conversion.json",
        "finance",
        "finance.conversion.json",
        "index.json",
    ]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_merge_refuses_shards_outside_their_folder(two_datasets, tmp_path, how):
    outside = tmp_path / "outside.mds"
    shard = two_datasets / "clinical" / "shard.00000.mds"
    outside.write_bytes(shard.read_bytes())
    index = two_datasets / "clinical" / "index.json"
    obj = json.loads(index.read_text())
    if how == "symlink":
        shard.unlink()
        os.symlink(outside, shard)
    else:
        obj["shards"][0]["raw_data"]["basename"] = "../../outside.mds" if how == "dotdot" else str(outside)
        index.write_text(json.dumps(obj))
    with pytest.raises(DataError) as e:
        merge_datasets(two_datasets)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{index}: shard 0 (raw_data ")
    assert f"is outside of its dataset folder {two_datasets / 'clinical'}" in text
    assert not (two_datasets / "index.json").exists()


@pytest.mark.parametrize("case", MALFORMED_INDEXES, ids=[c[0] for c in MALFORMED_INDEXES])
def test_merge_refuses_a_malformed_index_in_one_line(two_datasets, case):
    _, edit, message = case
    index = two_datasets / "finance" / "index.json"
    write_edited(index, edit)
    with pytest.raises(DataError, match=message) as e:
        merge_datasets(two_datasets)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(index))
    assert not (two_datasets / "index.json").exists()


def test_merge_cli_error_is_one_line(two_datasets):
    (two_datasets / "finance" / "index.json").write_text('{"version": 2, "shards": [{"samples": -1}]}')
    r = _merge_cli(two_datasets)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {two_datasets / 'finance' / 'index.json'}: shard 0 has no 'column_encodings'"
    ]


def test_merge_refuses_different_tokenizers(two_datasets, demo_corpus, tmp_path):
    other = tmp_path / "other_tok"
    train_bpe_tokenizer([demo_corpus["finance"]], other, vocab_size=700)
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


def test_merge_cli_prints_its_summary_and_nothing_of_streamings_internals(two_datasets):
    for _ in range(2):  # a merge, then a re-merge
        r = _merge_cli(two_datasets)
        assert r.returncode == 0, r.stderr
        assert "temporary folder" not in r.stderr + r.stdout
        assert r.stderr.strip() == ""
