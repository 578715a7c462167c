"""The converter: nothing lost or duplicated, counts agree with a re-read, chunking, budget, held-out split,
same output with 1 and 2 workers, safe output folders."""

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flex_bert.data.convert import SKIP_REASONS, in_eval_split
from flex_bert.data.sources import DataError, iter_dataset_texts
from flex_bert.data.tokenize import DocumentProcessor

pytest.register_assert_rewrite("_data_fixtures")  # it is also a plugin (below)
from _data_fixtures import FailingProcessor, read_mds, read_streaming, run_convert  # noqa: E402

pytest_plugins = ["_data_fixtures"]  # session fixtures: demo_corpus, tiny_tokenizer_dir, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _strip(sample, tok):
    assert sample[0] == tok.cls_token_id and sample[-1] == tok.sep_token_id
    return sample[1:-1].tolist()


def _regroup(samples, texts, tok, max_seq_len):
    """Split the sample list back into documents, using each document's own token count."""
    docs, i = [], 0
    for text in texts:
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        k = -(-n // (max_seq_len - 2))
        docs.append(samples[i : i + k])
        i += k
    assert i == len(samples), "samples left over: something was duplicated"
    return docs


def test_every_document_is_recovered_exactly(demo_corpus, tiny_tokenizer, tiny_tokenizer_dir, tmp_path):
    stats = run_convert(demo_corpus["clinical"], tmp_path, tiny_tokenizer_dir, max_seq_len=128)["train"]
    texts = list(iter_dataset_texts(str(demo_corpus["clinical"])))
    samples = read_mds(tmp_path / "clinical")
    docs = _regroup(samples, texts, tiny_tokenizer, 128)
    for text, pieces in zip(texts, docs):
        ids = [t for s in pieces for t in _strip(s, tiny_tokenizer)]
        assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # what fine-tuning sees
        assert tiny_tokenizer.decode(ids) == tiny_tokenizer.decode(
            tiny_tokenizer(text)["input_ids"], skip_special_tokens=True
        )
        assert all(len(s) <= 128 for s in pieces)
        assert all(len(s) == 128 for s in pieces[:-1])  # only the last piece of a document is short
    assert stats["documents"] == len(texts) == stats["rows_read"]
    assert stats["chunked_documents"] == sum(len(p) > 1 for p in docs) > 0
    assert stats["samples"] == len(samples)
    assert stats["tokens"] == sum(len(s) for s in samples)
    assert samples[0].dtype == np.uint16
    assert stats["skipped"] == dict.fromkeys(SKIP_REASONS, 0)


def test_counts_agree_with_streaming_dataset_and_token_counts_file(demo_corpus, tiny_tokenizer_dir, tmp_path):
    counts = tmp_path / "token_counts.txt"
    out = tmp_path / "train"
    for name in ("clinical", "finance"):
        run_convert(demo_corpus[name], out, tiny_tokenizer_dir, out_token_counts=str(counts))
    lines = counts.read_text().splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        str(demo_corpus["clinical"]),
        str(demo_corpus["finance"]),
    ]
    for line, name in zip(lines, ("clinical", "finance")):
        stats = json.loads((out / f"{name}.conversion.json").read_text())
        samples = read_streaming(out / name)
        assert int(line.rsplit(" ", 1)[1]) == stats["tokens"] == sum(len(s) for s in samples)
        assert stats["samples"] == len(samples)
        assert stats["complete"] is True and stats["tokenizer"]["fingerprint"]
        assert not any(p.suffix == ".json" for p in (out / name).iterdir() if p.name != "index.json")


def test_stats_record_the_largest_token_id(demo_corpus, tiny_tokenizer_dir, tmp_path):
    held_out = dict(eval_fraction=0.3, eval_out_dir=str(tmp_path / "eval"))
    stats = run_convert(demo_corpus["clinical"], tmp_path / "train", tiny_tokenizer_dir, **held_out)
    for role in ("train", "eval"):
        folder = tmp_path / role / "clinical"
        assert stats[role]["max_token_id"] == max(int(s.max()) for s in read_mds(folder))


def test_one_and_two_workers_write_the_same_samples(demo_corpus, tiny_tokenizer_dir, tmp_path):
    a = run_convert(
        demo_corpus["finance"],
        tmp_path / "a",
        tiny_tokenizer_dir,
        num_workers=1,
        batch_rows=7,
        eval_fraction=0.2,
        eval_out_dir=str(tmp_path / "a_eval"),
    )
    b = run_convert(
        demo_corpus["finance"],
        tmp_path / "b",
        tiny_tokenizer_dir,
        num_workers=2,
        batch_rows=7,
        eval_fraction=0.2,
        eval_out_dir=str(tmp_path / "b_eval"),
    )
    for split, sub in (("train", ""), ("eval", "_eval")):
        sa, sb = read_mds(tmp_path / f"a{sub}" / "finance"), read_mds(tmp_path / f"b{sub}" / "finance")
        assert len(sa) == len(sb) and all(np.array_equal(x, y) for x, y in zip(sa, sb))
        keys = ("documents", "samples", "tokens", "skipped", "chunked_documents")
        assert {k: a[split][k] for k in keys} == {k: b[split][k] for k in keys}


def test_eval_split_is_whole_documents_by_hash(demo_corpus, tiny_tokenizer_dir, tmp_path):
    stats = run_convert(
        demo_corpus["clinical"], tmp_path / "train", tiny_tokenizer_dir, eval_fraction=0.25, seed=3
    )
    n = stats["train"]["rows_read"]
    expected_eval = sum(in_eval_split(i, 0.25, 3) for i in range(n))
    assert stats["eval"]["documents"] == expected_eval > 0
    assert stats["train"]["documents"] + expected_eval == n
    assert (tmp_path / "eval" / "clinical" / "index.json").is_file()  # default: <out_dir>/../eval
    assert (tmp_path / "eval" / "clinical.conversion.json").is_file()
    assert stats["eval"]["split"] == "eval" and stats["train"]["split_documents"]["eval"] == expected_eval


@pytest.mark.parametrize("take_from", ["start", "end"])
def test_token_budget_keeps_whole_documents_from_one_end(
    demo_corpus, tiny_tokenizer_dir, tiny_tokenizer, tmp_path, take_from
):
    full = run_convert(demo_corpus["finance"], tmp_path / "full", tiny_tokenizer_dir)["train"]
    budget = full["tokens"] // 3
    part = run_convert(
        demo_corpus["finance"], tmp_path / "part", tiny_tokenizer_dir, max_tokens=budget, take_from=take_from
    )["train"]
    assert part["documents"] + part["skipped"]["over_budget"] == full["documents"]
    texts = list(iter_dataset_texts(str(demo_corpus["finance"])))
    docs = _regroup(read_mds(tmp_path / "full" / "finance"), texts, tiny_tokenizer, 128)
    if take_from == "end":
        docs = docs[::-1]
    chosen, next_doc = docs[: part["documents"]], docs[part["documents"]]
    size = lambda d: sum(len(s) for s in d)  # noqa: E731
    assert part["tokens"] == sum(size(d) for d in chosen) <= budget < part["tokens"] + size(next_doc)
    if take_from == "end":
        chosen = chosen[::-1]
    got = read_mds(tmp_path / "part" / "finance")
    assert [s.tolist() for d in chosen for s in d] == [s.tolist() for s in got]


def test_existing_folder_is_refused_and_left_untouched(demo_corpus, tiny_tokenizer_dir, tmp_path):
    run_convert(demo_corpus["clinical"], tmp_path, tiny_tokenizer_dir)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        run_convert(demo_corpus["clinical"], tmp_path, tiny_tokenizer_dir, max_seq_len=64)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    stats = run_convert(demo_corpus["clinical"], tmp_path, tiny_tokenizer_dir, max_seq_len=64, overwrite=True)
    assert json.loads((tmp_path / "clinical.conversion.json").read_text())["max_seq_len"] == 64
    assert len(read_mds(tmp_path / "clinical")) == stats["train"]["samples"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "clinical", "clinical.conversion.json"]


def _snapshot(folder: Path) -> dict:
    """Every file below folder (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _disk_full_on(monkeypatch, count: int) -> None:
    """The `count`-th conversion.json write runs out of space part-way (json.dump of that file)."""
    real_dump, seen = json.dump, []

    def dump(obj, f, **kwargs):
        if "conversion.json" in getattr(f, "name", ""):
            seen.append(f.name)
            if len(seen) == count:
                f.write('{"version": 1, "na')
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(obj, f, **kwargs)

    monkeypatch.setattr(json, "dump", dump)


@pytest.mark.parametrize("count", [1, 2])
def test_a_full_disk_while_committing_restores_the_old_datasets(
    demo_corpus, tiny_tokenizer_dir, tmp_path, monkeypatch, count
):
    split = dict(eval_fraction=0.2, eval_out_dir=str(tmp_path / "eval"))
    run_convert(demo_corpus["clinical"], tmp_path / "train", tiny_tokenizer_dir, **split)
    before = _snapshot(tmp_path)
    _disk_full_on(monkeypatch, count)  # 1: the train folder's stats, 2: the eval folder's
    with pytest.raises(OSError, match="No space left"):
        run_convert(
            demo_corpus["clinical"], tmp_path / "train", tiny_tokenizer_dir, overwrite=True, seed=1, **split
        )
    assert _snapshot(tmp_path) == before  # the old datasets and stats, no new or hidden leftovers


def test_a_full_disk_while_committing_a_new_dataset_leaves_nothing(
    demo_corpus, tiny_tokenizer_dir, tmp_path, monkeypatch
):
    _disk_full_on(monkeypatch, 1)
    with pytest.raises(OSError, match="No space left"):
        run_convert(demo_corpus["clinical"], tmp_path, tiny_tokenizer_dir)
    assert _snapshot(tmp_path) == {".locks/clinical/.flexbert.lock": b""}  # the lock file, free


class _GatedProcessor(DocumentProcessor):
    """Tokenizes only once the gate opens (a conversion caught mid-way, in this process)."""

    gate = threading.Event()

    def __call__(self, texts):
        assert self.gate.wait(60)
        return super().__call__(texts)


def test_a_second_conversion_into_the_same_name_is_refused(demo_corpus, tiny_tokenizer_dir, tmp_path):
    _GatedProcessor.gate.clear()
    first: dict = {}

    def convert_clinical():
        first["stats"] = run_convert(
            demo_corpus["clinical"], tmp_path, tiny_tokenizer_dir, name="notes", processor_cls=_GatedProcessor
        )

    thread = threading.Thread(target=convert_clinical)
    thread.start()
    try:
        deadline = time.time() + 30
        while not list(tmp_path.glob(".notes.tmp-*")) and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(ValueError, match=rf"in use by another conversion \(pid {os.getpid()} ") as e:
            run_convert(demo_corpus["finance"], tmp_path, tiny_tokenizer_dir, name="notes", overwrite=True)
        assert "\n" not in str(e.value)
        run_convert(demo_corpus["finance"], tmp_path, tiny_tokenizer_dir)  # another name is free
    finally:
        _GatedProcessor.gate.set()
        thread.join()
    stats = json.loads((tmp_path / "notes.conversion.json").read_text())
    assert stats == first["stats"]["train"] and stats["dataset"] == str(demo_corpus["clinical"])
    assert len(read_mds(tmp_path / "notes")) == stats["samples"]


def test_failure_inside_a_worker_leaves_nothing_that_looks_complete(tiny_tokenizer_dir, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"document number {i}\n" for i in range(40)) + "BOOM\n")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected failure"):
        run_convert(src, out, tiny_tokenizer_dir, num_workers=2, batch_rows=4, processor_cls=FailingProcessor)
    assert [p.name for p in out.iterdir()] == [".locks"]  # no temporary or dataset folder, no stats


def test_killed_conversion_leaves_no_complete_folder(tiny_tokenizer_dir, tmp_path):
    src = tmp_path / "big.jsonl"
    line = json.dumps({"text": "The patient was seen today and reported chest pain. " * 40})
    src.write_text((line + "\n") * 5000)  # ~10 MB: seconds of work for one worker
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "data" / "convert_dataset_to_mds.py"),
        "--dataset",
        str(src),
        "--out_dir",
        str(out),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--num_workers",
        "1",
        "--max_seq_len",
        "128",
        "--batch_rows",
        "16",
        "--no_progress",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    deadline = time.time() + 60
    while not list(out.glob(".big.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # the temporary folder exists: tokenizing and writing are under way
    assert proc.poll() is None, "the conversion finished before it could be killed; make the input bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "big").exists() and not (out / "big.conversion.json").exists()
    assert list(out.glob(".big.tmp-*"))  # the leftover is hidden, and merge refuses it (see merge tests)


SLOW_CONVERTER = """
import sys, time
from flex_bert.data.convert import ConvertConfig, convert_dataset
from flex_bert.data.tokenize import DocumentProcessor

class Slow(DocumentProcessor):
    def __call__(self, texts):
        time.sleep(120)  # a worker busy on a batch
        return super().__call__(texts)

cfg = ConvertConfig(dataset=sys.argv[1], out_dir=sys.argv[2], tokenizer=sys.argv[3], max_seq_len=128,
                    num_workers=2, batch_rows=4, progress=False)
convert_dataset(cfg, processor_cls=Slow)
"""


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_killed_converter_takes_its_workers_with_it(demo_corpus, tiny_tokenizer_dir, tmp_path):
    script = tmp_path / "slow_converter.py"
    script.write_text(SLOW_CONVERTER)
    args = [str(demo_corpus["clinical"]), str(tmp_path / "out"), str(tiny_tokenizer_dir)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args], env={**os.environ, "PYTHONPATH": str(REPO / "src")}
    )
    workers = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "the workers did not start"
        time.sleep(1.0)  # they hold batches now (each sleeps 120 s in it)
        proc.kill()
        proc.wait()
        deadline = time.time() + 5
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "worker processes outlived the killed converter"
    finally:
        for w in workers:  # only the converter's own workers, by pid
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_cli_errors_are_one_line_with_exit_code_2(demo_corpus, tiny_tokenizer_dir, tmp_path):
    script = str(REPO / "data" / "convert_dataset_to_mds.py")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    base = [
        sys.executable,
        script,
        "--out_dir",
        str(tmp_path),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--no_progress",
        "--num_workers",
        "1",
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,body\n1,hello\n")
    r = subprocess.run(base + ["--dataset", str(bad)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: no a text column (text or notes); columns "
        "found: ['id', 'body'] (choose one with --text_column)"
    )
    ok = subprocess.run(
        base + ["--dataset", str(demo_corpus["eval"]), "--row_count", "10", "--max_seq_len", "256"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert "10 documents" in ok.stdout and (tmp_path / "eval" / "index.json").is_file()


def test_large_vocabularies_write_uint32(demo_corpus, tiny_tokenizer_dir, tmp_path, monkeypatch):
    import dataclasses

    import flex_bert.data.convert as convert

    real = convert.load_tokenizer
    monkeypatch.setattr(
        convert, "load_tokenizer", lambda name: dataclasses.replace(real(name), dtype="uint32")
    )
    stats = run_convert(demo_corpus["eval"], tmp_path, tiny_tokenizer_dir)["train"]
    samples = read_mds(tmp_path / "eval")
    assert samples[0].dtype == np.uint32 and stats["dtype"] == "uint32" and len(samples) == stats["samples"]


def test_compressed_shards_read_back_through_streaming(demo_corpus, tiny_tokenizer_dir, tmp_path):
    run_convert(demo_corpus["eval"], tmp_path / "plain", tiny_tokenizer_dir)
    run_convert(demo_corpus["eval"], tmp_path / "zstd", tiny_tokenizer_dir, compression="zstd")
    plain, packed = read_mds(tmp_path / "plain" / "eval"), read_streaming(tmp_path / "zstd" / "eval")
    assert [s.tolist() for s in plain] == [s.tolist() for s in packed]


def test_budget_from_the_end_with_a_held_out_split(demo_corpus, tiny_tokenizer_dir, tmp_path):
    full = run_convert(
        demo_corpus["clinical"],
        tmp_path / "full",
        tiny_tokenizer_dir,
        eval_fraction=0.2,
        eval_out_dir=str(tmp_path / "full_eval"),
    )
    part = run_convert(
        demo_corpus["clinical"],
        tmp_path / "part",
        tiny_tokenizer_dir,
        eval_fraction=0.2,
        eval_out_dir=str(tmp_path / "part_eval"),
        max_tokens=full["train"]["tokens"] // 2,
        take_from="end",
        num_workers=2,
        batch_rows=5,
    )
    train, held = part["train"], part["eval"]
    assert train["tokens"] + held["tokens"] <= full["train"]["tokens"] // 2
    assert train["documents"] + held["documents"] + train["skipped"]["over_budget"] == train["rows_read"]
    # the kept documents are the last ones, in order, in each split
    for sub, folder in (("", "part"), ("_eval", "part_eval")):
        got = read_mds(tmp_path / f"{folder}" / "clinical")
        ref = read_mds(tmp_path / f"full{sub}" / "clinical")
        assert [s.tolist() for s in got] == [s.tolist() for s in ref[len(ref) - len(got) :]]


def test_shards_are_byte_identical_to_streamings_own_writer(demo_corpus, tiny_tokenizer_dir, tmp_path):
    """The workers encode samples (MDSWriter.encode_sample) and the main process only appends bytes: the
    shards and index must be exactly what a plain MDSWriter writes for the same samples."""
    from streaming import MDSWriter

    run_convert(demo_corpus["clinical"], tmp_path / "ours", tiny_tokenizer_dir, num_workers=2, batch_rows=16)
    samples = read_mds(tmp_path / "ours" / "clinical")
    ref = tmp_path / "ref"
    with MDSWriter(out=str(ref), columns={"input_ids": "ndarray:uint16"}, size_limit=1 << 26) as w:
        for s in samples:
            w.write({"input_ids": s})
    ours = sorted(p.name for p in (tmp_path / "ours" / "clinical").iterdir())
    assert ours == sorted(p.name for p in ref.iterdir())
    for name in ours:
        assert (tmp_path / "ours" / "clinical" / name).read_bytes() == (ref / name).read_bytes(), name
