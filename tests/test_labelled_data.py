"""Labelled data for fine-tuning: every row an example or a counted skip, the label map, the stratified
held-out split, and token-label alignment (checked against the tokenizer's own offsets)."""

import json
import random

import pytest

from flex_bert.data.labelled import (
    Columns,
    Example,
    encode,
    label_map,
    read_split,
    stratified_split,
)
from flex_bert.data.sources import DataError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_single_label_counts_every_bad_row(tmp_path):
    csv_file = write(
        tmp_path / "train.csv",
        'id,text,label\n1,good one,pos\n2,,neg\n3,no label,\n4,"unterminated,neg\n5,fine,neg\n6,too,many,fields\n'
        "7,  ,pos\n8,last,neg\n",
    )
    examples, report = read_split(csv_file, Columns("single_label"), "train")
    assert [(e.text, e.label) for e in examples] == [("good one", "pos"), ("fine", "neg"), ("last", "neg")]
    assert report.rows_read == 8 and report.examples == 3
    assert dict(report.skipped) == {"missing_text": 2, "missing_label": 1, "malformed": 2}
    assert report.rows_read == report.examples + sum(report.skipped.values())
    assert report.problems[0].endswith("row 2 (line 3): empty 'text'")
    assert (
        "train: 8 rows -> 3 examples; skipped: malformed 2, missing_label 1, missing_text 2"
        in report.summary()
    )


def test_jsonl_multi_label_values_and_unknown_labels_in_eval(tmp_path):
    rows = [
        {"text": "a", "label": ["x", "y", "x"]},
        {"text": "b", "label": "y|z"},
        {"text": "c", "label": []},  # no labels: a legitimate multi-label example
        {"text": "d", "label": [1, 2.0]},
        {"text": "e", "label": [True]},
        {"text": "f", "label": {"x": 1}},
        {"text": "g"},
        {"text": 5, "label": ["x"]},
        {"text": "h", "label": None},
    ]
    path = write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    examples, report = read_split(path, Columns("multi_label"), "train")
    assert [e.label for e in examples] == [["x", "y"], ["y", "z"], [], ["1", "2"]]
    assert dict(report.skipped) == {"bad_label": 2, "malformed": 3, "missing_label": 1}
    assert label_map(examples, "multi_label") == ["1", "2", "x", "y", "z"]
    eval_examples, eval_report = read_split(path, Columns("multi_label"), "eval", labels=["x", "y"])
    assert [e.text for e in eval_examples] == ["a", "c"]
    assert eval_report.skipped["unknown_label"] == 2  # "z", then "1"
    assert eval_report.problems[0].endswith("row 2 (line 2): label 'z' is not among ['x', 'y']")


def test_parquet_token_task_lists_and_length_mismatch(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "words": [["John", "lives", "here"], ["a", "b"], [], ["x", " "]],
            "tags": [["B-PER", "O", "O"], ["O"], [], ["O", "O"]],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    columns = Columns("token", text_column="words", label_column="tags")
    examples, report = read_split(str(tmp_path / "t.parquet"), columns, "train")
    assert [e.label for e in examples] == [["B-PER", "O", "O"]]
    assert dict(report.skipped) == {"length_mismatch": 1, "missing_text": 1, "malformed": 1}


def test_label_fuzz_every_row_is_an_example_or_a_counted_skip(tmp_path):
    rng = random.Random(0)
    pool = [
        "pos",
        "neg",
        0,
        1,
        1.0,
        1.5,
        True,
        None,
        "",
        " ",
        [],
        ["pos"],
        {"a": 1},
        float("nan"),
        10**30,
        "é",
    ]
    lines = []
    for _ in range(300):
        row = {"text": rng.choice(["t", "", None, 3, ["w"], "text"]), "label": rng.choice(pool)}
        if rng.random() < 0.1:
            row.pop(rng.choice(["text", "label"]))
        lines.append(json.dumps(row) if rng.random() < 0.95 else "{broken")
    path = write(tmp_path / "fuzz.jsonl", "\n".join(lines))
    for task in ("single_label", "multi_label"):
        examples, report = read_split(path, Columns(task), "train", labels=None)
        assert report.rows_read == 300 == len(examples) + sum(report.skipped.values())
        assert all(isinstance(e.text, str) and e.text.strip() for e in examples)
        assert len(report.problems) == 10 and all("\n" not in p for p in report.problems)


@pytest.mark.parametrize(
    "content, columns, match",
    [
        ("id,text\n1,a\n", Columns("single_label"), r"no column 'label'; columns found: \['id', 'text'\]"),
        ("text,label\n,x\n", Columns("single_label"), r"no usable train examples \(train: 1 rows -> 0"),
        ('text,label\na," "\n', Columns("single_label"), r"skipped: missing_label 1 \(first: .*, row 1"),
    ],
)
def test_unusable_data_is_one_line_error(tmp_path, content, columns, match):
    with pytest.raises(DataError, match=match) as e:
        read_split(write(tmp_path / "x.csv", content), columns, "train")
    assert "\n" not in str(e.value)


def test_stratified_split_holds_out_each_labels_share():
    examples = [Example(f"t{i}", lab) for i, lab in enumerate(["a"] * 61 + ["b"] * 29 + ["c"] * 10)]
    kept, held = stratified_split(examples, 0.2, seed=3, task="single_label")
    count = lambda xs, lab: sum(e.label == lab for e in xs)  # noqa: E731
    # quotas 12.2, 5.8, 2.0 -> floor 12, 5, 2 (19), one more to the largest remainder (b): 12, 6, 2
    assert (count(held, "a"), count(held, "b"), count(held, "c")) == (12, 6, 2)
    assert sorted(e.text for e in kept + held) == sorted(e.text for e in examples)
    again, held_again = stratified_split(examples, 0.2, seed=3, task="single_label")
    assert [e.text for e in held_again] == [e.text for e in held]
    assert [e.text for e in stratified_split(examples, 0.2, seed=4, task="single_label")[1]] != [
        e.text for e in held
    ]
    with pytest.raises(ValueError, match="leaves an empty split"):
        stratified_split(examples[:3], 0.1, seed=0, task="single_label")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from flex_bert.data.demo_corpus import write_demo_corpus
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("bpe")
    files = write_demo_corpus(root / "corpus", seed=0, docs_per_domain=20, eval_docs=2)
    return train_bpe_tokenizer([files["clinical"], files["finance"]], root / "tok", vocab_size=400)


def test_token_labels_on_first_pieces_match_the_tokenizers_word_offsets(bpe):
    words = ["Started", "metoprolol", "25", "mg", "twice", "daily", "for", "hyperlipidemia."]
    tags = ["O", "B-DRUG", "B-DOSE", "I-DOSE", "O", "O", "O", "B-DX"]
    labels = ["B-DOSE", "B-DRUG", "B-DX", "I-DOSE", "O"]
    enc = encode([Example(words, tags)], bpe, labels, "token", max_seq_len=64)
    ids, targets = enc.input_ids[0], enc.targets[0]
    whole = bpe(" ".join(words), return_offsets_mapping=True)
    assert ids == whole["input_ids"]  # word-by-word encoding = encoding the sentence
    spans, pos = [], 0
    for j, w in enumerate(words):  # each word's characters, with the space before it (the "Ġ" of a piece)
        spans.append((pos - (j > 0), pos + len(w)))
        pos += len(w) + 1
    word_of = [next((j for j, (s, e) in enumerate(spans) if s <= a < e and b > a), None)
               for a, b in whole["offset_mapping"]]  # fmt: skip
    first_piece = [word_of.index(j) for j in range(len(words))]
    assert len(ids) - 2 > len(words)  # some words span several pieces
    assert [i for i, t in enumerate(targets) if t != -100] == first_piece
    assert [labels[targets[i]] for i in first_piece] == tags


def test_truncation_is_counted_and_keeps_cls_sep(bpe):
    seq = encode([Example("word " * 50, "a"), Example("short", "b")], bpe, ["a", "b"], "single_label", 10)
    assert seq.truncated == 1 and len(seq.input_ids[0]) == 10 and seq.targets == [0, 1]
    assert seq.input_ids[0][0] == bpe.cls_token_id and seq.input_ids[0][-1] == bpe.sep_token_id
    tok = encode([Example(["w"] * 20, ["O"] * 20)], bpe, ["O"], "token", 10)
    assert tok.truncated == 1 and tok.dropped_words == 12 and len(tok.targets[0]) == 10
    multi = encode([Example("x", ["b"])], bpe, ["a", "b", "c"], "multi_label", 10)
    assert multi.targets == [[0.0, 1.0, 0.0]]
