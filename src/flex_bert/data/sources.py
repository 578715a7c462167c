"""Read documents, one row at a time, from CSV, JSONL, Parquet and plain-text files.

A dataset is one file, a directory (every supported file below it, sorted by path) or a glob (sorted).
Every reader streams: no file is loaded whole, except a plain-text file, which is one document.

Readers never drop a row silently. Each data row becomes a `Row` carrying either its text or a `problem`
(reason, message): the converter then fails or counts it, as the user asked (`--on_error`). Text is decoded
with `surrogateescape`, so invalid UTF-8 in the text column surfaces as lone surrogates and is reported for
that row only (by the tokenizing side, see tokenize.check_text); invalid bytes in other columns are harmless.

CSV specifics: quoted fields may hold commas, quotes and newlines; a UTF-8 BOM and CRLF line ends are fine;
`strict` parsing turns a stray quote into an error instead of silently gluing rows together, and a bad
row costs that row only: parsing resumes on the line after the row's first line (_LineTape).
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text"}
DEFAULT_TEXT_COLUMNS = ("text", "notes")


class DataError(ValueError):
    """A problem with the input data that the user must fix; the message names the file (and row)."""


@dataclass(frozen=True)
class Row:
    file: str
    number: int  # 1-based data row within the file (CSV header excluded)
    text: str | None  # None when `problem` is set
    problem: tuple[str, str] | None = None  # (reason, message), reason in convert.SKIP_REASONS
    line: int | None = None  # first line of the row (CSV, JSONL)

    def where(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.file}, row {self.number}{line}"


def _raise_csv_field_limit() -> None:
    """Allow huge fields (a 50 MB clinical note is a document, not an error)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def resolve_dataset_files(dataset: str) -> list[Path]:
    """The files of a dataset (file, directory or glob), sorted; DataError when there are none."""
    if any(ch in dataset for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(dataset, recursive=True)) if Path(p).is_file()]
    elif Path(dataset).is_dir():
        files = sorted(
            p
            for p in Path(dataset).rglob("*")
            if p.is_file() and p.suffix.lower() in FORMATS and not p.name.startswith(".")
        )
    elif Path(dataset).is_file():
        files = [Path(dataset)]
    else:
        raise DataError(f"dataset {dataset!r} does not exist")
    if not files:
        raise DataError(f"dataset {dataset!r} has no input files (supported: {', '.join(FORMATS)})")
    unsupported = [str(p) for p in files if p.suffix.lower() not in FORMATS]
    if unsupported:
        raise DataError(f"unsupported file type: {unsupported[0]} (supported: {', '.join(FORMATS)})")
    return files


def _choose_column(
    path: Path, columns: list[str], requested: str | None, option: str = "--text_column"
) -> int:
    """Index of the text column: `requested`, else the first of DEFAULT_TEXT_COLUMNS present. `option` is
    what the user sets to choose another."""
    names = [c.strip() for c in columns]
    wanted = [requested] if requested else list(DEFAULT_TEXT_COLUMNS)
    for name in wanted:
        hits = [i for i, c in enumerate(names) if c == name]
        if len(hits) > 1:
            raise DataError(
                f"{path}: the header has {len(hits)} columns named {name!r}; rename the duplicates"
            )
        if hits:
            return hits[0]
    what = f"column {requested!r}" if requested else f"a text column ({' or '.join(DEFAULT_TEXT_COLUMNS)})"
    raise DataError(f"{path}: no {what}; columns found: {names} (choose one with {option})")


def _open_text(path: Path):
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_header(path: Path) -> list[str]:
    with _open_text(path) as f:
        try:
            header = next(csv.reader(f, strict=True))
        except StopIteration:
            raise DataError(f"{path}: the file is empty (no header row)") from None
        except csv.Error as e:
            raise DataError(f"{path}: the header row is not valid CSV ({e})") from None
    if not any(h.strip() for h in header):
        raise DataError(f"{path}: the first line is blank, expected a header row")
    return header


class _LineTape:
    """The lines of a CSV file, keeping those of the row being parsed, so that after a malformed row the
    parser can resume on the line after the row's first line (a stray quote then costs one row, not every
    row up to the next quote). Past `cap` characters the kept lines are dropped and resuming re-reads the
    file from the top instead."""

    def __init__(self, f, cap: int = 64 << 20):
        self.f, self.cap, self.line = f, cap, 0
        self.replay: list[str] = []  # lines to hand out again, in reverse order
        self.row_done()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.replay.pop() if self.replay else next(self.f)
        self.line += 1
        if not self.overflow:
            self.kept.append(line)
            self.kept_chars += len(line)
            if self.kept_chars > self.cap:
                self.kept, self.overflow = [], True
        return line

    def row_done(self) -> None:
        self.kept, self.kept_chars, self.overflow = [], 0, False

    def resume_after(self, start: int) -> None:
        """Continue with line start + 1 (start = the first line of the malformed row)."""
        if self.overflow:
            self.f.seek(0)
            self.replay = []
            for _ in range(start):
                next(self.f, None)
        else:
            self.replay.extend(reversed(self.kept[1:]))
        self.line = start
        self.row_done()


def csv_records(path: Path, n_cols: int) -> Iterator[tuple[int, int, list[str] | None, tuple | None]]:
    """(row number, first line, fields, problem) of each data row after the header; fields is None when
    problem (reason, message) is set. A malformed row costs that row only (_LineTape)."""
    _raise_csv_field_limit()
    number = 0
    with _open_text(path) as f:
        tape = _LineTape(f)
        next(csv.reader(tape, strict=True))  # the header
        while True:
            tape.row_done()
            start, reader = tape.line + 1, csv.reader(tape, strict=True)
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                unterminated = "unexpected end of data" in str(e)
                msg = "unterminated quoted field" if unterminated else f"not valid CSV: {e}"
                yield number, start, None, ("malformed", msg)
                tape.resume_after(start)
                continue
            if not fields:  # a blank line is not a row
                continue
            number += 1
            if len(fields) != n_cols:
                yield number, start, None, ("malformed", f"has {len(fields)} fields, the header has {n_cols}")
            else:
                yield number, start, fields, None


def _read_csv(path: Path, requested: str | None) -> Iterator[Row]:
    _raise_csv_field_limit()
    header = _csv_header(path)
    col, name = _choose_column(path, header, requested), str(path)
    for number, line, fields, problem in csv_records(path, len(header)):
        yield Row(name, number, None if problem else fields[col], problem, line)


def jsonl_records(path: Path) -> Iterator[tuple[int, int, dict | None, tuple | None]]:
    """(row number, line, object, problem) of each non-blank line; object is None when problem is set."""
    number = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="surrogateescape")
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            number += 1
            try:
                obj = json.loads(line)
            except ValueError as e:
                yield number, line_no, None, ("malformed", f"not valid JSON: {e}")
                continue
            if not isinstance(obj, dict):
                yield number, line_no, None, ("malformed", "not a JSON object")
                continue
            yield number, line_no, obj, None


def _read_jsonl(path: Path, requested: str | None) -> Iterator[Row]:
    name, key = str(path), None
    for number, line_no, obj, problem in jsonl_records(path):
        if problem:
            yield Row(name, number, None, problem, line_no)
            continue
        if key is None:
            key = list(obj)[_choose_column(path, list(obj), requested)]
        text = obj.get(key, KeyError)
        if text is KeyError:
            yield Row(name, number, None, ("malformed", f"has no {key!r} key"), line_no)
        elif text is not None and not isinstance(text, str):
            yield Row(
                name,
                number,
                None,
                ("malformed", f"{key!r} is a {type(text).__name__}, not text"),
                line_no,
            )
        else:
            yield Row(name, number, text or "", None, line_no)


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({e})") from None


def _read_parquet(path: Path, requested: str | None) -> Iterator[Row]:
    import pyarrow as pa

    pf = _parquet_file(path)
    names = pf.schema_arrow.names
    col = names[_choose_column(path, names, requested)]
    kind = pf.schema_arrow.field(col).type
    if not (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        raise DataError(f"{path}: column {col!r} has type {kind}, expected text")
    name, number = str(path), 0
    for batch in pf.iter_batches(batch_size=1024, columns=[col]):
        for value in batch.column(0).to_pylist():
            number += 1
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="surrogateescape")
            yield Row(name, number, value or "", None)


def _read_text_file(path: Path, requested: str | None) -> Iterator[Row]:
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    yield Row(str(path), 1, text, None)


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text_file}


def _first_jsonl_keys(path: Path) -> list[str] | None:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff"))
                except ValueError:
                    return None  # reported as a malformed row when read
                return list(obj) if isinstance(obj, dict) else None
    return None


def check_files(files: list[Path], text_column: str | None) -> list[str | None]:
    """Fail fast, before any work: every file is readable and has the text column. Returns the column
    used in each file (None for plain text, or a JSONL file whose first line is not an object)."""
    used: list[str | None] = []
    for path in files:
        kind = FORMATS[path.suffix.lower()]
        try:
            columns = {
                "csv": _csv_header,
                "parquet": lambda p: _parquet_file(p).schema_arrow.names,
                "jsonl": _first_jsonl_keys,
                "text": lambda p: open(p, "rb").close(),
            }[kind](path)
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        used.append(columns[_choose_column(path, columns, text_column)].strip() if columns else None)
    return used


def iter_rows(files: list[Path], text_column: str | None = None) -> Iterator[Row]:
    """Every data row of every file, in order."""
    for path in files:
        try:
            yield from _READERS[FORMATS[path.suffix.lower()]](path, text_column)
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def iter_dataset_texts(dataset: str, text_column: str | None = None) -> Iterator[str]:
    """Just the readable, non-empty texts of a dataset (for tokenizer training and quick looks)."""
    for row in iter_rows(resolve_dataset_files(dataset), text_column):
        if row.text and row.text.strip():
            yield row.text
