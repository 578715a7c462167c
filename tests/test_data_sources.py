"""Bad and unusual inputs: each is a clear error naming file and row, or a counted skip; never a traceback
from deep inside, never an uncounted loss (rows_read == documents + skipped)."""

import json

import numpy as np
import pytest

from flex_bert.data.sources import DataError

pytest.register_assert_rewrite("_data_fixtures")  # it is also a plugin (below)
from _data_fixtures import read_mds, run_convert  # noqa: E402

pytest_plugins = ["_data_fixtures"]  # session fixtures: demo_corpus, tiny_tokenizer_dir, tiny_tokenizer


@pytest.fixture
def convert(tmp_path, tiny_tokenizer_dir):
    """Write `content` to a file and convert it; returns (stats, samples)."""

    def run(content: bytes | str, suffix=".csv", **kw):
        src = tmp_path / f"input{suffix}"
        src.write_bytes(content.encode() if isinstance(content, str) else content)
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        stats = run_convert(src, out, tiny_tokenizer_dir, **kw)["train"]
        assert stats["rows_read"] == stats["documents"] + sum(stats["skipped"].values())
        return stats, read_mds(out / "input")

    return run


def _skips(stats):
    return {k: v for k, v in stats["skipped"].items() if v}


def test_unbalanced_quote_costs_one_row_or_fails_naming_it(convert):
    content = 'id,text\n1,"fine, with a comma"\n2,"never closed\n3,next row\n4,"x"y\n5,last\n6,"open\n7,end\n'
    with pytest.raises(DataError, match=r"input\.csv, row 2 \(line 3\): not valid CSV"):
        convert(content)
    stats, samples = convert(content, on_error="skip")
    assert _skips(stats) == {"malformed": 3} and stats["documents"] == 4  # rows 1, 3, 5, 7 recovered
    assert [(p["where"].split(", ", 1)[1], p["message"]) for p in stats["problems"]] == [
        ("row 2 (line 3)", "not valid CSV: ',' expected after '\"'"),
        ("row 4 (line 5)", "not valid CSV: ',' expected after '\"'"),
        ("row 6 (line 7)", "unterminated quoted field"),
    ]


def test_nul_bytes_are_bad_encoding(convert):
    content = 'text\nhello there\n"bad\x00row"\nafter\n'
    with pytest.raises(DataError, match=r"row 2 \(line 3\): contains NUL bytes"):
        convert(content)
    stats, _ = convert(content, on_error="skip")
    assert _skips(stats) == {"bad_encoding": 1} and stats["documents"] == 2


def test_invalid_utf8_in_the_text_is_reported_elsewhere_harmless(convert):
    content = b"id,text\n\xff\xfe,fine text\n2,broken \xc3\x28 text\n3,more\n"
    with pytest.raises(DataError, match=r"row 2 \(line 3\): invalid UTF-8"):
        convert(content)
    stats, _ = convert(content, on_error="skip")
    assert _skips(stats) == {"bad_encoding": 1} and stats["documents"] == 2


def test_50_mb_field_is_one_chunked_document(convert, tiny_tokenizer):
    unit = " hyperlipidemia"
    (unit_id,) = tiny_tokenizer(unit, add_special_tokens=False)["input_ids"]  # one token per 15 characters
    n = 50_000_000 // len(unit) + 1
    stats, samples = convert(f'text\nshort note\n"start{unit * n}"\n', max_seq_len=8192)
    assert stats["documents"] == 2 and stats["chunked_documents"] == 1
    head = tiny_tokenizer("start", add_special_tokens=False)["input_ids"]
    body = np.concatenate([s[1:-1] for s in samples[1:]])
    assert (
        len(body) == len(head) + n
        and (body[len(head) :] == unit_id).all()
        and body[: len(head)].tolist() == head
    )
    assert all(len(s) == 8192 for s in samples[1:-1]) and stats["samples"] == len(samples)
    assert stats["tokens"] == sum(len(s) for s in samples)


def test_empty_file_and_header_only(convert, tmp_path, tiny_tokenizer_dir):
    with pytest.raises(DataError, match=r"input\.csv: the file is empty \(no header row\)"):
        convert("")
    with pytest.raises(DataError, match="no documents"):
        convert("text\n")
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.csv").write_text("text\n")
    (folder / "b.csv").write_text("text\none document\n")
    stats = run_convert(folder, tmp_path / "out_dir", tiny_tokenizer_dir)["train"]
    assert stats["documents"] == 1 and stats["files"] == 2 and stats["name"] == "dir"


def test_duplicate_header_names_are_an_error(convert):
    with pytest.raises(DataError, match="2 columns named 'text'; rename the duplicates"):
        convert("text,text\na,b\n")
    stats, _ = convert("text,other,other\na,b,c\n")  # duplicates elsewhere do not matter
    assert stats["documents"] == 1


def test_bom_crlf_and_quoted_newlines(convert, tiny_tokenizer):
    content = '\ufeffid,notes\r\n1,"first line\r\nsecond line, with comma"\r\n\r\n2,plain\r\n'
    stats, samples = convert(content.encode("utf-8"))
    assert stats["documents"] == 2 and stats["text_column"] == "notes"
    expected = tiny_tokenizer("first line\r\nsecond line, with comma", add_special_tokens=False)["input_ids"]
    assert samples[0][1:-1].tolist() == expected


def test_field_count_mismatch_empty_and_short_rows(convert):
    stats, _ = convert("id,text\n1,ok document here\n2\n3,   \n4,tiny\n", on_error="skip", min_chars=6)
    assert _skips(stats) == {"malformed": 1, "empty": 1, "too_short": 1} and stats["documents"] == 1
    with pytest.raises(DataError, match=r"row 2 \(line 3\): has 1 fields, the header has 2"):
        convert("id,text\n1,ok\n2\n")


def test_jsonl_broken_line(convert):
    content = '{"text": "first"}\n{"text": "second"\n\n{"text": null}\n{"text": 5}\n{"text": "last"}\n'
    with pytest.raises(DataError, match=r"input\.jsonl, row 2 \(line 2\): not valid JSON"):
        convert(content, suffix=".jsonl")
    stats, _ = convert(content, suffix=".jsonl", on_error="skip")
    assert _skips(stats) == {"malformed": 2, "empty": 1} and stats["documents"] == 2


def test_missing_column_names_the_file_and_lists_columns(convert):
    with pytest.raises(DataError, match=r"input\.csv: no column 'body'; columns found: \['id', 'text'\]"):
        convert("id,text\n1,a\n", text_column="body")
    with pytest.raises(DataError, match=r"input\.jsonl: no a text column \(text or notes\); columns found"):
        convert(json.dumps({"content": "x"}) + "\n", suffix=".jsonl")


def test_parquet_by_batches_and_text_folder_in_sorted_order(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"parquet document {i}" for i in range(2500)] + [None, ""]
    pq.write_table(
        pa.table({"notes": texts, "n": list(range(len(texts)))}), tmp_path / "d.parquet", row_group_size=1000
    )
    stats = run_convert(tmp_path / "d.parquet", tmp_path / "pq", tiny_tokenizer_dir)["train"]
    assert stats["documents"] == 2500 and stats["skipped"]["empty"] == 2
    first = read_mds(tmp_path / "pq" / "d")[0][1:-1].tolist()
    assert first == tiny_tokenizer("parquet document 0", add_special_tokens=False)["input_ids"]

    folder = tmp_path / "txt"
    folder.mkdir()
    for name, text in [("b.txt", "second file"), ("a.txt", "first file"), ("c.txt", "")]:
        (folder / name).write_text(text)
    stats = run_convert(folder, tmp_path / "txt_out", tiny_tokenizer_dir)["train"]
    assert stats["documents"] == 2 and stats["skipped"]["empty"] == 1
    got = [tiny_tokenizer.decode(s[1:-1]) for s in read_mds(tmp_path / "txt_out" / "txt")]
    assert got == ["first file", "second file"]
    stats = run_convert(str(folder / "*.txt"), tmp_path / "glob_out", tiny_tokenizer_dir, name="g")["train"]
    assert stats["documents"] == 2


def test_missing_dataset_is_an_error(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(DataError, match="does not exist"):
        run_convert(tmp_path / "nope.csv", tmp_path / "out", tiny_tokenizer_dir)
    with pytest.raises(DataError, match="no input files"):
        run_convert(str(tmp_path / "*.csv"), tmp_path / "out", tiny_tokenizer_dir, name="x")
