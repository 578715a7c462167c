"""Labelled examples for fine-tuning, from CSV, JSONL or Parquet (a file, folder or glob per split).

Sequence tasks read a text column and a label column: one label per row (`single_label`), or a set of labels
(`multi_label`: a JSON/Parquet list, or in a CSV one string joined by `label_separator`). Token tasks read a
column of words and a column of tags, one tag per word (lists, or in a CSV whitespace-separated strings).

Nothing is dropped silently: every row read is an example or a counted skip by reason (SKIP_REASONS), with
the first few problems quoted (file, row, line). A label outside the label map (which is made once, from the
training split, or given) is an `unknown_label` skip. The readers are `sources.py`'s, with their conventions.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flex_bert.data.masking import IGNORE_INDEX
from flex_bert.data.sources import (
    FORMATS,
    DataError,
    _choose_column,
    _csv_header,
    _parquet_file,
    csv_records,
    jsonl_records,
    resolve_dataset_files,
)

SKIP_REASONS = ("malformed", "missing_text", "missing_label", "bad_label", "unknown_label", "length_mismatch")
MAX_PROBLEM_EXAMPLES = 10


@dataclass(frozen=True)
class Columns:
    task: str  # single_label | multi_label | token (model.classification.TASKS)
    text_column: str = "text"  # token tasks: the words
    label_column: str = "label"  # token tasks: the tags
    label_separator: str = "|"  # multi-label labels given as one string (CSV)


@dataclass
class Example:
    text: str | list[str]  # token tasks: the words
    label: str | list[str]  # multi_label: sorted distinct labels; token: one tag per word


@dataclass
class ReadReport:
    split: str
    rows_read: int = 0
    examples: int = 0
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEM_EXAMPLES, "where: message"

    def skip(self, reason: str, where: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.problems) < MAX_PROBLEM_EXAMPLES:
            self.problems.append(f"{where}: {message}")

    def as_dict(self) -> dict:
        return {**self.__dict__, "skipped": dict(self.skipped)}

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped.items())) or "none"
        first = f" (first: {self.problems[0]})" if self.problems else ""
        return (
            f"{self.split}: {self.rows_read:,} rows -> {self.examples:,} examples; skipped: {skipped}{first}"
        )


# ------------------------------------------------------------------------------------------ reading
def _records(path: Path, columns: Columns) -> Iterator[tuple[int, int | None, dict | None, tuple | None]]:
    """(row number, line, {text, label} values, problem) of every data row of one file."""
    wanted = (columns.text_column, columns.label_column)
    options = ("text_column", "label_column")  # the task file keys
    kind = FORMATS[path.suffix.lower()]
    if kind == "csv":
        header = _csv_header(path)
        idx = [_choose_column(path, header, c, o) for c, o in zip(wanted, options, strict=True)]
        for number, line, fields, problem in csv_records(path, len(header)):
            values = None if problem else {"text": fields[idx[0]], "label": fields[idx[1]]}
            yield number, line, values, problem
    elif kind == "jsonl":
        for number, line, obj, problem in jsonl_records(path):
            absent = [c for c in wanted if obj is not None and c not in obj]
            if absent:
                problem = ("malformed", f"has no {absent[0]!r} key (keys: {sorted(obj)})")
            values = None if problem else {"text": obj[wanted[0]], "label": obj[wanted[1]]}
            yield number, line, values, problem
    elif kind == "parquet":
        pf = _parquet_file(path)
        names = pf.schema_arrow.names
        cols = [names[_choose_column(path, names, c, o)] for c, o in zip(wanted, options, strict=True)]
        number = 0
        for batch in pf.iter_batches(batch_size=1024, columns=cols):
            for text, label in zip(*(batch.column(c).to_pylist() for c in cols), strict=True):
                number += 1
                yield number, None, {"text": text, "label": label}, None
    else:
        raise DataError(f"{path}: labelled data must be CSV, JSONL or Parquet")


def _label(value) -> str | None:
    """A label value as text: a string or an integer (not a bool or a fraction); None if unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return value.strip() if isinstance(value, str) else None


def _words(value, what: str) -> list[str]:
    """A list of strings, or a whitespace-separated string (CSV); raises ValueError with the reason."""
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
        raise ValueError(f"{what} must be a list of strings, got {type(value).__name__}")
    return list(value)


def parse(values: dict, columns: Columns) -> tuple[Example | None, tuple[str, str] | None]:
    """One row's values -> (Example, None) or (None, (reason, message))."""
    text, label = values["text"], values["label"]
    if columns.task == "token":
        try:
            words, tags = _words(text, columns.text_column), _words(label, columns.label_column)
        except ValueError as e:
            return None, ("malformed", str(e))
        if not words:
            return None, ("missing_text", f"no words in {columns.text_column!r}")
        if len(words) != len(tags):
            return None, ("length_mismatch", f"{len(words)} words but {len(tags)} tags")
        if not all(w.strip() for w in words) or not all(t.strip() for t in tags):
            return None, ("malformed", "an empty word or tag")
        return Example(words, [t.strip() for t in tags]), None
    if text is None or (isinstance(text, str) and not text.strip()):
        return None, ("missing_text", f"empty {columns.text_column!r}")
    if not isinstance(text, str):
        return None, ("malformed", f"{columns.text_column!r} is a {type(text).__name__}, not text")
    if columns.task == "multi_label":
        if label is None or label == "":
            return None, ("missing_label", f"empty {columns.label_column!r}")
        parts = label.split(columns.label_separator) if isinstance(label, str) else label
        if not isinstance(parts, (list, tuple)):
            return None, ("bad_label", f"{label!r} is not a list of labels")
        names = [_label(p) for p in parts]
        if any(n is None for n in names):
            return None, ("bad_label", f"{label!r}: labels must be strings or integers")
        return Example(text, sorted({n for n in names if n})), None
    name = _label(label)
    if name is None and label is not None:
        return None, (
            "bad_label",
            f"{label!r} ({type(label).__name__}) is not a label: use a string or an integer",
        )
    if not name:
        return None, ("missing_label", f"empty {columns.label_column!r}")
    return Example(text, name), None


def _label_names(example: Example, task: str) -> list[str]:
    return [example.label] if task == "single_label" else list(example.label)


def read_split(
    dataset: str, columns: Columns, split: str, labels: list[str] | None = None
) -> tuple[list[Example], ReadReport]:
    """Every row of `dataset`: an example, or a counted skip. With `labels`, an example naming another label
    is an `unknown_label` skip."""
    known = None if labels is None else set(labels)
    report, examples = ReadReport(split), []
    for path in resolve_dataset_files(dataset):
        try:
            records = list(_records(path, columns))
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        for number, line, values, problem in records:
            report.rows_read += 1
            where = f"{path}, row {number}" + (f" (line {line})" if line else "")
            example = None
            if problem is None:
                example, problem = parse(values, columns)
            if problem is None and known is not None:
                unknown = sorted(set(_label_names(example, columns.task)) - known)
                if unknown:
                    problem = ("unknown_label", f"label {unknown[0]!r} is not among {sorted(known)}")
            if problem:
                report.skip(problem[0], where, problem[1])
            else:
                examples.append(example)
    report.examples = len(examples)
    if not examples:
        raise DataError(f"{dataset}: no usable {split} examples ({report.summary()})")
    return examples, report


def label_map(examples: list[Example], task: str) -> list[str]:
    """The labels of the training examples, sorted: id -> name. Made once; stored with the model."""
    return sorted({name for e in examples for name in _label_names(e, task)})


# ------------------------------------------------------------------------------------ held-out split
def stratified_split(
    examples: list[Example], fraction: float, seed: int, task: str
) -> tuple[list[Example], list[Example]]:
    """(kept, held_out): `round(fraction * n)` examples held out, each stratum (single label; label set for
    multi-label; token tasks are one stratum) contributing its share, rounded by largest remainder."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {fraction}")
    strata: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        key = "" if task == "token" else "|".join(_label_names(e, task))
        strata.setdefault(key, []).append(i)
    total = round(fraction * len(examples))
    if not 0 < total < len(examples):
        raise ValueError(
            f"eval_fraction {fraction} of {len(examples)} examples leaves an empty split; give an eval file"
        )
    quotas = {k: fraction * len(v) for k, v in strata.items()}
    take = {k: math.floor(q) for k, q in quotas.items()}
    by_remainder = sorted(strata, key=lambda k: (-(quotas[k] - take[k]), k))
    for k in by_remainder[: total - sum(take.values())]:
        take[k] += 1
    rng, held = random.Random(seed), set()
    for k in sorted(strata):
        idx = list(strata[k])
        rng.shuffle(idx)
        held.update(idx[: take[k]])
    kept = [e for i, e in enumerate(examples) if i not in held]
    return kept, [e for i, e in enumerate(examples) if i in held]


# ----------------------------------------------------------------------------------------- tokenizing
@dataclass
class Encoded:
    input_ids: list[list[int]]  # [CLS] ... [SEP], at most max_seq_len
    targets: list  # single_label: int; multi_label: L floats (multi-hot); token: a label id or -100 per id
    truncated: int = 0  # examples cut to max_seq_len
    dropped_words: int = 0  # token tasks: tagged words without a token (cut off), so never scored


def encode(examples: list[Example], tokenizer, labels: list[str], task: str, max_seq_len: int) -> Encoded:
    """Tokenize as the converter does (no special tokens, then [CLS] ... [SEP] around at most
    max_seq_len - 2 ids). Token tasks label each word's first piece; continuation pieces, [CLS] and [SEP]
    get -100. Words are encoded one by one, each after a space except the first ("a b" -> "a", " b")."""
    ids = {name: i for i, name in enumerate(labels)}
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ValueError("the tokenizer needs [CLS] and [SEP] tokens (cls_token, sep_token)")
    room, out = max_seq_len - 2, Encoded([], [])
    if task != "token":
        for e, piece in zip(
            examples, tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]
        ):
            out.truncated += len(piece) > room
            out.input_ids.append([cls, *piece[:room], sep])
            if task == "single_label":
                out.targets.append(ids[e.label])
            else:
                out.targets.append([float(name in e.label) for name in labels])
        return out
    words = [w if j == 0 else " " + w for e in examples for j, w in enumerate(e.text)]
    pieces = iter(tokenizer(words, add_special_tokens=False)["input_ids"])
    for e in examples:
        row, tags = [cls], [IGNORE_INDEX]
        for tag in e.label:
            piece = next(pieces)
            out.dropped_words += not piece  # a word the tokenizer maps to nothing
            if piece:
                row += piece
                tags += [ids[tag]] + [IGNORE_INDEX] * (len(piece) - 1)
        out.truncated += len(row) - 1 > room
        out.dropped_words += sum(t != IGNORE_INDEX for t in tags[1 + room :])
        out.input_ids.append(row[: 1 + room] + [sep])
        out.targets.append(tags[: 1 + room] + [IGNORE_INDEX])
    return out


def collate(input_ids: list[list[int]], targets: list, task: str) -> dict:
    """Examples laid out flat with `cu_seqlens`, no padding (as pre-training's rows):
    input_ids (T,) int64; cu_seqlens (n+1,) int32; max_seqlen int; labels: (n,) int64 (single_label),
    (n, L) float32 (multi_label) or (T,) int64 (token)."""
    import torch

    lengths = np.array([len(x) for x in input_ids], dtype=np.int64)
    cu = np.zeros(len(input_ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    if task == "token":
        labels = torch.tensor([t for row in targets for t in row], dtype=torch.int64)
    else:
        labels = torch.tensor(targets, dtype=torch.float32 if task == "multi_label" else torch.int64)
    return {
        "input_ids": torch.tensor([t for row in input_ids for t in row], dtype=torch.int64),
        "cu_seqlens": torch.from_numpy(cu),
        "max_seqlen": int(lengths.max()),
        "labels": labels,
    }
