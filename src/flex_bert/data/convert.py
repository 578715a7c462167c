"""Convert a text dataset into a tokenized MDS folder: the work behind data/convert_dataset_to_mds.py.

    rows (sources.iter_rows) -> batches -> worker processes (tokenize.DocumentProcessor)
         -> in input order: skip/fail decisions, token budget, train/eval routing -> MDSWriter

Every decision about a row is taken in the main process, in input order, so the output (samples AND counts)
is the same whatever `num_workers` is. Every row read is either a document written or a counted skip:
    rows_read == sum(split_documents.values()) + sum(skipped.values())

Output safety: `flex_bert.data.mds_output`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flex_bert.data.mds_output import DatasetOutput, Spill
from flex_bert.data.merge import LOCKS
from flex_bert.data.sources import DataError, Row, check_files, iter_rows, resolve_dataset_files
from flex_bert.data.tokenize import DocumentProcessor, TokenizerInfo, load_tokenizer, ordered_map
from flex_bert.folder_lock import folder_lock
from flex_bert.model.config import CONTEXT_LENGTH

SKIP_REASONS = ("empty", "too_short", "bad_encoding", "malformed", "over_budget")
ERROR_REASONS = ("bad_encoding", "malformed")  # fatal with on_error="fail"; the others are always counted
STATS_VERSION = 1
MAX_PROBLEM_EXAMPLES = 20
ON_ERROR = ("fail", "skip")  # a malformed or undecodable row: stop naming it, or count and skip it
TAKE_FROM = ("start", "end")  # with max_tokens: the first or the last documents of the input order


@dataclass
class ConvertConfig:
    dataset: str
    out_dir: str
    tokenizer: str = "answerdotai/ModernBERT-base"
    text_column: str | None = None  # None: "text", then "notes"
    max_seq_len: int = CONTEXT_LENGTH
    num_workers: int | None = None  # None: all cores
    compression: str | None = None
    min_chars: int = 0
    max_tokens: int | None = None  # whole documents, counted in written ids ([CLS]/[SEP] included)
    take_from: str = "start"  # "end" keeps the last documents of the input order (e.g. the newest filings)
    name: str | None = None  # None: the file's stem (directory: its name; glob: its directory's name)
    overwrite: bool = False
    on_error: str = "fail"
    row_count: int | None = None  # only for the progress bar's ETA
    out_token_counts: str | None = None
    eval_fraction: float = 0.0
    eval_out_dir: str | None = None  # None: <out_dir>/../eval
    seed: int = 0
    progress: bool = True
    batch_rows: int = 256
    batch_chars: int = 4 << 20

    def validate(self) -> None:
        if self.max_seq_len < 3:
            raise ValueError(
                f"--max_seq_len must be at least 3 ([CLS] + 1 token + [SEP]), got {self.max_seq_len}"
            )
        if self.on_error not in ON_ERROR:
            raise ValueError(f"--on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.take_from not in TAKE_FROM:
            raise ValueError(f"--take_from must be 'start' or 'end', got {self.take_from!r}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"--max_tokens must be positive, got {self.max_tokens}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"--eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"--num_workers must be at least 1, got {self.num_workers}")
        if self.min_chars < 0 or self.batch_rows < 1 or self.batch_chars < 1:
            raise ValueError("--min_chars must be >= 0 (and batch sizes >= 1)")
        if self.compression not in (None, "none"):
            from streaming.base.compression import get_compressions, is_compression

            if not is_compression(self.compression):
                raise ValueError(
                    f"unknown --compression {self.compression!r}; choose none or one of "
                    f"{sorted(get_compressions())}"
                )
        if self.take_from != "start" and self.max_tokens is None:
            warnings.warn("--take_from has no effect without --max_tokens", stacklevel=2)
        if self.eval_out_dir is not None and self.eval_fraction == 0:
            warnings.warn("--eval_out_dir has no effect without --eval_fraction", stacklevel=2)
        name = self.name
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ValueError(f"--name must be a plain folder name (no '/', not hidden), got {name!r}")


def default_name(dataset: str) -> str:
    path = Path(dataset)
    if any(ch in dataset for ch in "*?["):
        parts = [p for p in path.parts if not any(ch in p for ch in "*?[")]
        return Path(*parts).resolve().name if parts else Path.cwd().name
    return path.resolve().name if path.is_dir() else path.stem


def in_eval_split(row_index: int, fraction: float, seed: int) -> bool:
    """Deterministic per-document draw: hash of (seed, row index) below `fraction`."""
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{row_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class _Tally:
    """Rows read and rows skipped (by reason), with the first few problems as examples."""

    def __init__(self, on_error: str):
        self.on_error = on_error
        self.rows_read = 0
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.problems: list[dict] = []

    def skip(self, row: Row, reason: str, message: str) -> None:
        if reason in ERROR_REASONS and self.on_error == "fail":
            raise DataError(f"{row.where()}: {message} (--on_error skip counts and skips such rows)")
        self.skipped[reason] += 1
        if reason != "over_budget" and len(self.problems) < MAX_PROBLEM_EXAMPLES:
            self.problems.append({"where": row.where(), "reason": reason, "message": message})


class _Router:
    """Sends each document, in input order, to its folder (train/eval), the spill, or over_budget."""

    def __init__(
        self, cfg: ConvertConfig, outputs: dict[str, DatasetOutput], tally: _Tally, spill: Spill | None
    ):
        self.cfg, self.outputs, self.tally, self.spill = cfg, outputs, tally, spill
        self.tokens = 0
        self.exhausted = False  # take_from="start": the budget is spent, later rows are over_budget

    def route(self, row_index: int, row: Row, samples: list[np.ndarray], encoded: list[bytes]) -> None:
        cfg = self.cfg
        if cfg.max_tokens is not None and cfg.take_from == "start":
            n = sum(len(s) for s in samples)
            if self.tokens + n > cfg.max_tokens:
                self.exhausted = True
                self.tally.skip(row, "over_budget", "")
                return
            self.tokens += n
        role = "eval" if in_eval_split(row_index, cfg.eval_fraction, cfg.seed) else "train"
        if self.spill is not None:
            self.spill.add(role, samples)
        else:
            self.outputs[role].add(samples, encoded)


def _batches(
    rows: Iterator[Row], cfg: ConvertConfig, router: _Router
) -> Iterator[tuple[list[Row], list[str]]]:
    """Rows in batches, with the texts to tokenize (none once the budget is spent)."""
    batch, texts, chars = [], [], 0
    for row in rows:
        batch.append(row)
        if row.problem is None and not router.exhausted:
            texts.append(row.text)
            chars += len(row.text)
        if len(batch) >= cfg.batch_rows or chars >= cfg.batch_chars:
            yield batch, texts
            batch, texts, chars = [], [], 0
    if batch:
        yield batch, texts


def _consume(results, tally: _Tally, router: _Router, bar) -> None:
    """Walk the rows of each tokenized batch in input order and decide the fate of each."""
    for rows, result in results:
        text_i = sample_i = pos = 0
        for row in rows:
            index = tally.rows_read
            tally.rows_read += 1
            if router.exhausted:
                tally.skip(row, "over_budget", "")
                continue
            if row.problem is not None:
                tally.skip(row, *row.problem)
                continue
            k, text_i = text_i, text_i + 1
            if k in result.problems:
                tally.skip(row, *result.problems[k])
                continue
            samples = []
            for n in result.sample_lens[sample_i : sample_i + result.doc_samples[k]]:
                samples.append(result.ids[pos : pos + n])
                pos += int(n)
            encoded = result.encoded[sample_i : sample_i + result.doc_samples[k]]
            sample_i += result.doc_samples[k]
            router.route(index, row, samples, encoded)
        bar.update(len(rows))
        bar.set_postfix_str(f"{sum(o.tokens for o in router.outputs.values()):,} tokens", refresh=False)


def _plan_outputs(cfg: ConvertConfig) -> dict[str, DatasetOutput]:
    name = cfg.name or default_name(cfg.dataset)
    outputs = {"train": DatasetOutput(Path(cfg.out_dir), name, "train", cfg.overwrite)}
    if cfg.eval_fraction > 0:
        eval_dir = Path(cfg.eval_out_dir) if cfg.eval_out_dir else Path(cfg.out_dir).resolve().parent / "eval"
        outputs["eval"] = DatasetOutput(eval_dir, name, "eval", cfg.overwrite)
        if outputs["eval"].final.resolve() == outputs["train"].final.resolve():
            raise ValueError(
                f"the eval folder would be the train folder ({outputs['eval'].final}); set --eval_out_dir"
            )
    for out in outputs.values():
        out.refuse_existing()
    return outputs


def _stats(
    cfg: ConvertConfig,
    info: TokenizerInfo,
    files: list[Path],
    columns: list[str],
    tally: _Tally,
    outputs: dict[str, DatasetOutput],
    out: DatasetOutput,
    seconds: float,
) -> dict:
    return {
        "version": STATS_VERSION,
        "name": out.name,
        "split": out.role if cfg.eval_fraction > 0 else "all",
        "dataset": cfg.dataset,
        "files": len(files),
        "text_column": columns[0] if len(columns) == 1 else columns,
        "rows_read": tally.rows_read,
        "documents": out.documents,
        "skipped": dict(tally.skipped),
        "chunked_documents": out.chunked_documents,
        "samples": out.samples,
        "tokens": out.tokens,
        "split_documents": {role: o.documents for role, o in outputs.items()},
        "tokenizer": {"name": info.name, "fingerprint": info.fingerprint},
        "vocab_size": info.vocab_size,
        "max_token_id": out.max_token_id,
        "dtype": info.dtype,
        "max_seq_len": cfg.max_seq_len,
        "min_chars": cfg.min_chars,
        "max_tokens": cfg.max_tokens,
        "take_from": cfg.take_from,
        "eval_fraction": cfg.eval_fraction,
        "seed": cfg.seed,
        "on_error": cfg.on_error,
        "compression": cfg.compression,
        "problems": tally.problems,
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
    }


def _append_token_counts(cfg: ConvertConfig, outputs: dict[str, DatasetOutput]) -> None:
    """One line per dataset, `<dataset path> <token count>`, as BioClinical's converter; the eval split's
    line goes to the file of the same name in the eval folder's parent."""
    if not cfg.out_token_counts:
        return
    target = Path(cfg.out_token_counts)
    for role, out in outputs.items():
        path = target if role == "train" else out.parent / target.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{cfg.dataset} {out.tokens}\n")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _commit(outputs: dict[str, DatasetOutput], stats: dict[str, dict]) -> None:
    """All outputs appear, with their stats, or none does and any old datasets stay as they were."""
    for out in outputs.values():
        out.writer.finish()
    done = []
    try:
        for role, out in outputs.items():
            done.append(out)
            out.swap_in(stats[role])
    except BaseException:
        for out in reversed(done):
            out.restore()
        raise
    for out in done:
        out.discard_old()


def convert_dataset(
    cfg: ConvertConfig, *, processor_cls: type[DocumentProcessor] = DocumentProcessor
) -> dict[str, dict]:
    """Convert `cfg.dataset` into `<out_dir>/<name>` (and the eval folder with --eval_fraction).

    Returns {"train": stats, "eval": stats?}: the dicts written to each `<name>.conversion.json`.
    Raises DataError / ValueError with a one-line message for anything the user must fix; on any error
    (or interrupt) the temporary folders are removed and no dataset folder appears.
    """
    start = time.time()
    cfg.validate()
    files = resolve_dataset_files(cfg.dataset)
    columns = sorted({c for c in check_files(files, cfg.text_column) if c is not None})
    outputs = _plan_outputs(cfg)
    with contextlib.ExitStack() as locks:  # one conversion per output name at a time
        for out in outputs.values():
            locks.enter_context(folder_lock(out.parent / LOCKS / out.name, what="conversion"))
        stats = _convert(cfg, files, columns, outputs, processor_cls, start)
    _append_token_counts(cfg, outputs)
    return stats


def _convert(
    cfg: ConvertConfig,
    files: list[Path],
    columns: list[str],
    outputs: dict[str, DatasetOutput],
    processor_cls: type[DocumentProcessor],
    start: float,
) -> dict[str, dict]:
    """convert_dataset's work, under the output names' locks."""
    from tqdm import tqdm

    info = load_tokenizer(cfg.tokenizer)
    processor = processor_cls(info.json, cfg.max_seq_len, info.cls_id, info.sep_id, info.dtype, cfg.min_chars)
    tally, spill = _Tally(cfg.on_error), None
    compression = None if cfg.compression in (None, "none") else cfg.compression
    try:
        for out in outputs.values():
            out.open(info.dtype, compression)
        if cfg.max_tokens is not None and cfg.take_from == "end":
            spill = Spill(outputs["train"].parent)
        router = _Router(cfg, outputs, tally, spill)
        workers = cfg.num_workers or _available_cores()
        with tqdm(total=cfg.row_count, unit=" rows", disable=not cfg.progress, mininterval=0.5) as bar:
            batches = _batches(iter_rows(files, cfg.text_column), cfg, router)
            _consume(ordered_map(processor, batches, workers), tally, router, bar)
        if spill is not None:
            over, kept = spill.replay(cfg.max_tokens)
            tally.skipped["over_budget"] += over
            for role, samples in kept:
                outputs[role].add(samples)
        for out in outputs.values():
            if out.documents == 0:
                hint = "; raise --eval_fraction" if out.role == "eval" else ""
                skipped = {k: v for k, v in tally.skipped.items() if v}
                raise DataError(
                    f"no documents for {out.final}{hint} (rows read {tally.rows_read}, skipped {skipped})"
                )
        seconds = time.time() - start
        stats = {
            role: _stats(cfg, info, files, columns, tally, outputs, out, seconds)
            for role, out in outputs.items()
        }
        _commit(outputs, stats)
    except BaseException:
        for out in outputs.values():
            out.abort()
        raise
    finally:
        if spill is not None:
            spill.close()
    return stats


def summary_line(stats: dict, folder: str | Path) -> str:
    skipped = ", ".join(f"{k} {v:,}" for k, v in stats["skipped"].items() if v) or "none"
    rate = stats["tokens"] / max(stats["seconds"], 1e-9)
    return (
        f"{folder}: {stats['documents']:,} documents ({stats['chunked_documents']:,} split) -> "
        f"{stats['samples']:,} samples, {stats['tokens']:,} tokens | {stats['rows_read']:,} rows read, "
        f"skipped: {skipped} | {stats['seconds']:.1f} s, {rate:,.0f} tokens/s"
    )
