"""Tokenize documents and cut them into `[CLS] ... [SEP]` samples, in parallel worker processes.

Rules (see docs/CONTRACTS.md):
- Each document is tokenized once, without special tokens, and its id list is sliced into pieces of at most
  `max_seq_len - 2` ids; each piece is wrapped `[CLS] piece [SEP]` (ids read from the tokenizer). Pieces are
  never re-encoded from text (re-encoding is what gives BioClinical's converter its stray space token) and
  documents are never joined, so nothing is lost and every sample belongs to one document.
- No prefix space: the text is tokenized as-is, exactly what `tokenizer(text)` gives at fine-tuning time
  (ModernBERT's tokenizer has `add_prefix_space=False`). BioClinical's `add_prefix_space=True` would make the
  first word of every pre-training document a token sequence the model never sees downstream.
- A very long document (over `segment_chars` characters) is tokenized in segments cut only where the
  tokenization provably cannot change: at a single space between a non-space and an ASCII letter or digit,
  for byte-level BPE tokenizers whose pre-tokenizer splits there anyway (`_segmentable`). This bounds the
  tokenizer's memory on a 50 MB note and gives the same ids as one call (tests check it); other tokenizers
  get one call per document.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SEGMENT_BREAK = re.compile(r"(?<=\S) (?=[A-Za-z0-9])")


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    fingerprint: str
    vocab_size: int
    cls_id: int
    sep_id: int
    dtype: str  # "uint16" or "uint32"
    json: str = field(repr=False)  # the backend tokenizer, serialized (sent to worker processes)


def _canonical_fingerprint(tokenizer_json: str) -> str:
    """sha256 over what decides the ids (vocab, merges, normalizer, pre-tokenizer, added tokens, template),
    in a canonical form, so that two tokenizers that tokenize alike compare equal across library versions."""
    obj = json.loads(tokenizer_json)
    model = dict(obj.get("model") or {})
    if isinstance(model.get("merges"), list):
        model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    keep = {k: obj.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "added_tokens")}
    text = json.dumps({"model": model, **keep}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Fingerprint of a tokenizer: a hub name or local path, a transformers fast tokenizer, or a
    `tokenizers.Tokenizer`. Compare it with `read_conversion_stats(folder)["tokenizer"]["fingerprint"]`."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(str(tokenizer)).fingerprint
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return _canonical_fingerprint(backend.to_str())


def open_tokenizer(name_or_path: str):
    """The transformers tokenizer of a hub name (from the local cache) or a local folder: the one way the
    converter, training and evaluation load a tokenizer."""
    from transformers import AutoTokenizer

    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise ValueError(f"tokenizer folder {name_or_path!r} does not exist")
    try:
        return AutoTokenizer.from_pretrained(
            str(Path(name_or_path).expanduser()) if looks_local else name_or_path
        )
    except Exception as e:  # OSError, ValueError, hub errors: all mean "cannot load this tokenizer"
        raise ValueError(
            f"cannot load tokenizer {name_or_path!r}: {str(e).splitlines()[0]} (give a local folder, or "
            f"download it first with `hf download {name_or_path}`: runs never reach the hub on their own)"
        ) from None


def load_tokenizer(name_or_path: str) -> TokenizerInfo:
    """Load a fast tokenizer (hub name or local folder) and read what the converter needs from it."""
    tok = open_tokenizer(name_or_path)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {name_or_path!r} is not a fast (Rust `tokenizers`) tokenizer")
    if tok.cls_token_id is None or tok.sep_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no [CLS]/[SEP] tokens; samples are wrapped in them")
    if not frames_cls_sep(tok):
        log.warning(
            "tokenizer %r does not add %s ... %s itself: the converter wraps every sample in them, so fine-tuning "
            "inputs must be framed the same way (the Hugging Face export sets the post-processor to do so)",
            name_or_path,
            tok.cls_token,
            tok.sep_token,
        )
    vocab_size = max(len(tok), max(backend.get_vocab(with_added_tokens=True).values()) + 1)
    text = backend.to_str()
    return TokenizerInfo(
        name=name_or_path,
        fingerprint=_canonical_fingerprint(text),
        vocab_size=vocab_size,
        cls_id=tok.cls_token_id,
        sep_id=tok.sep_token_id,
        dtype=ids_dtype(vocab_size),
        json=text,
    )


def frames_cls_sep(tok) -> bool:
    """Whether the tokenizer itself wraps a text in [CLS] ... [SEP], as every pre-training sample is."""
    ids = tok("a")["input_ids"]
    return len(ids) >= 2 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def ids_dtype(vocab_size: int) -> str:
    """uint16 while every id fits (ids 0 .. vocab_size - 1 <= 65535), else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _segmentable(tokenizer_json: str) -> bool:
    """True when cutting the text at `_SEGMENT_BREAK` cannot change the ids (see the module docstring)."""
    obj = json.loads(tokenizer_json)
    pre, norm = obj.get("pre_tokenizer") or {}, obj.get("normalizer")
    pres = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not pres or any(p.get("type") != "ByteLevel" or not p.get("use_regex", True) for p in pres):
        return False
    norms = (norm or {}).get("normalizers", []) if (norm or {}).get("type") == "Sequence" else [norm]
    if any(n is not None and n.get("type") != "NFC" for n in norms):
        return False
    for tok in obj.get("added_tokens") or []:
        content = tok["content"]
        if tok.get("rstrip") or (any(c.isspace() for c in content) and not content.isspace()):
            return False
    return True


def check_text(text: str, min_chars: int) -> tuple[str, str] | None:
    """(reason, message) when a document must be skipped, else None."""
    if not text or text.isspace():
        return ("empty", "empty text")
    if "\x00" in text:
        return ("bad_encoding", f"contains NUL bytes (first at character {text.index(chr(0))})")
    if not text.isascii():
        bad = _SURROGATE.search(text)
        if bad:
            return ("bad_encoding", f"invalid UTF-8 (first bad byte at character {bad.start()})")
    if len(text) < min_chars:
        return ("too_short", f"{len(text)} characters < --min_chars {min_chars}")
    return None


def segment_text(text: str, segment_chars: int) -> list[str]:
    """Cut `text` into pieces of about `segment_chars` characters at `_SEGMENT_BREAK` positions."""
    pieces, start = [], 0
    while len(text) - start > segment_chars:
        m = _SEGMENT_BREAK.search(text, start + segment_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def chunk_ids(ids: np.ndarray, max_seq_len: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """Slice ids into pieces of at most max_seq_len - 2 and wrap each as [CLS] piece [SEP]."""
    step = max_seq_len - 2
    wrap = lambda piece: np.concatenate(([cls_id], piece, [sep_id])).astype(ids.dtype)  # noqa: E731
    return [wrap(ids[i : i + step]) for i in range(0, len(ids), step)]


@dataclass
class BatchResult:
    """The samples of a batch of documents, flat: doc i owns the next `doc_samples[i]` sample lengths."""

    ids: np.ndarray  # all samples' ids, concatenated
    sample_lens: np.ndarray  # int64, one per sample
    doc_samples: list[int]  # 0 for a skipped document
    problems: dict[int, tuple[str, str]]  # doc index in batch -> (reason, message)
    encoded: list[bytes] = field(default_factory=list)  # each sample as MDSWriter encodes it (see below)


@functools.cache
def mds_sample_encoder(dtype: str):
    """``ids -> bytes``: streaming's own ``MDSWriter.encode_sample`` for the converter's one column
    (``input_ids`` as ``ndarray:<dtype>``). The workers encode, so the main process, which must write the
    samples in input order, only appends bytes (encoding there would bound conversions with many workers)."""
    from types import SimpleNamespace

    from streaming import MDSWriter

    layout = SimpleNamespace(
        column_names=["input_ids"], column_encodings=[f"ndarray:{dtype}"], column_sizes=[None]
    )
    return lambda ids: MDSWriter.encode_sample(layout, {"input_ids": ids})


@dataclass
class DocumentProcessor:
    """Turns a batch of texts into samples; picklable (only the tokenizer JSON travels to workers)."""

    tokenizer_json: str = field(repr=False)
    max_seq_len: int
    cls_id: int
    sep_id: int
    dtype: str
    min_chars: int = 0
    segment_chars: int = 1 << 20
    _tok: object = field(default=None, repr=False, compare=False)
    _can_segment: bool = field(default=False, repr=False, compare=False)

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    def _tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self.tokenizer_json)
            self._tok.no_truncation()
            self._tok.no_padding()
            self._can_segment = _segmentable(self.tokenizer_json)
        return self._tok

    def _segments(self, text: str) -> list[str]:
        if len(text) <= self.segment_chars or not self._can_segment:
            return [text]
        return segment_text(text, self.segment_chars)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text (no special tokens), as uint32 arrays. Batched tokenizer calls of at most
        about 4 x segment_chars characters, so memory stays bounded whatever the document sizes."""
        tok = self._tokenizer()
        parts: list[list[np.ndarray]] = [[] for _ in texts]
        group: list[tuple[int, str]] = []

        def flush():
            encodings = tok.encode_batch_fast([seg for _, seg in group], add_special_tokens=False)
            for (i, _), enc in zip(group, encodings):
                parts[i].append(np.array(enc.ids, dtype=np.uint32))
            group.clear()

        size = 0
        for i, text in enumerate(texts):
            for seg in self._segments(text):
                group.append((i, seg))
                size += len(seg)
                if size >= 4 * self.segment_chars:
                    flush()
                    size = 0
        if group:
            flush()
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def __call__(self, texts: list[str]) -> BatchResult:
        problems = {i: p for i, t in enumerate(texts) if (p := check_text(t, self.min_chars))}
        good = [i for i in range(len(texts)) if i not in problems]
        doc_samples, parts = [0] * len(texts), []
        limit = np.iinfo(self.dtype).max
        for i, ids in zip(good, self.encode([texts[i] for i in good])):
            if len(ids) == 0:  # possible with tokenizers whose normalizer deletes characters
                problems[i] = ("empty", "no tokens")
                continue
            if ids.max() > limit:
                raise ValueError(
                    f"token id {ids.max()} does not fit {self.dtype}; the vocabulary size is wrong"
                )
            samples = chunk_ids(ids.astype(self.dtype), self.max_seq_len, self.cls_id, self.sep_id)
            doc_samples[i] = len(samples)
            parts.extend(samples)
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)
        lens = np.array([len(p) for p in parts], dtype=np.int64)
        encode = mds_sample_encoder(self.dtype)
        return BatchResult(flat, lens, doc_samples, problems, [encode(p) for p in parts])


class WorkerDied(RuntimeError):
    """A worker process ended abruptly; the conversion is abandoned (nothing is left that looks complete)."""


_WORKER: DocumentProcessor | None = None


def _init_worker(processor: DocumentProcessor, parent_pid: int) -> None:
    _exit_with_parent(parent_pid)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core; parallelism comes from processes
    global _WORKER
    _WORKER = processor


def _exit_with_parent(parent_pid: int) -> None:
    """A killed converter (kill -9) cannot shut its pool down: its workers must end on their own instead of
    finishing their batches as orphans. Linux kills them with the parent (PR_SET_PDEATHSIG); elsewhere, and
    if the parent died before that was set, a watch on the parent's pid ends them."""
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _work(texts: list[str]) -> BatchResult:
    assert _WORKER is not None
    return _WORKER(texts)


def ordered_map(
    processor: DocumentProcessor,
    items: Iterable[tuple[object, list[str]]],
    num_workers: int,
    window: int | None = None,
) -> Iterator[tuple[object, BatchResult]]:
    """Yield (meta, processor(texts)) in input order, tokenizing in `num_workers` processes.

    Like `Pool.imap` over batches, but with back-pressure (at most `window` batches in flight, so a
    100 GB input is never queued in memory) and a clear error when a worker dies (`Pool` would hang).
    Results do not depend on `num_workers`. num_workers <= 1 runs in this process.
    """
    if num_workers <= 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for meta, texts in items:
            yield meta, processor(texts)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    window = window or 2 * num_workers + 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # fork where there is one (Linux): workers start at once, from any script or notebook. "spawn" would
    # re-run an unguarded main script in every worker. Forking is safe here: the parent never ran the
    # tokenizer's own thread pool (TOKENIZERS_PARALLELISM=false) and the workers touch nothing else.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(
        num_workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(processor, os.getpid()),
    )
    pending: deque = deque()
    try:
        for meta, texts in items:
            pending.append((meta, pool.submit(_work, texts)))
            if len(pending) >= window:
                meta0, fut = pending.popleft()
                yield meta0, fut.result()
        while pending:
            meta0, fut = pending.popleft()
            yield meta0, fut.result()
    except BrokenProcessPool:
        raise WorkerDied(
            "a tokenizing worker process died (killed, or out of memory?); try fewer --num_workers"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
