"""Sequence packing for training: best fit of whole documents into fixed-size rows.

A device batch holds ``rows`` rows of ``row_len = device_train_microbatch_size * max_seq_len`` tokens (one row
per micro-batch, as ModernBERT trains). Each row is filled from a buffer of documents by best fit: the longest
buffered document that still fits, until none fits; the rest of the row is padding, which forms one extra
segment in ``cu_seqlens`` (so attention never mixes it with real tokens). Documents never span rows and are
never cut: the converter already split long documents into pieces of at most ``max_seq_len`` tokens.

The buffer is explicit state (``add``, ``next_row``, ``buffered_keys``) so that a run can save it and resume
exactly: re-adding the saved keys in their saved order rebuilds the same buffer.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class PackedRow:
    ids: np.ndarray  # (row_len,) token ids, padding at the end
    cu_seqlens: np.ndarray  # (n_segments + 1,) int32; the padding tail, if any, is the last segment
    num_real_tokens: int
    num_docs: int


class BestFitPacker:
    """Packs documents (1-D id arrays) into rows of exactly ``row_len`` tokens, by best fit from a buffer.

    ``buffer_docs`` documents are held to choose from; more gives fuller rows (ModernBERT's packer holds a
    few rows' worth).
    """

    def __init__(self, row_len: int, pad_id: int, buffer_docs: int = 256, drop_last: bool = True):
        if row_len <= 0:
            raise ValueError(f"row_len must be positive, got {row_len}")
        self.row_len = row_len
        self.pad_id = pad_id
        self.buffer_docs = buffer_docs
        self.drop_last = drop_last
        self._lengths: list[int] = []  # ascending; _docs[i] and _keys[i] match _lengths[i]
        self._docs: list[np.ndarray] = []
        self._keys: list[int] = []

    def empty_copy(self) -> BestFitPacker:
        return BestFitPacker(self.row_len, self.pad_id, self.buffer_docs, self.drop_last)

    @property
    def full(self) -> bool:
        return len(self._lengths) >= self.buffer_docs

    @property
    def buffered_tokens(self) -> int:
        return sum(self._lengths)

    @property
    def buffered_keys(self) -> list[int]:
        """The buffer's documents in its internal order; adding them back in this order restores it."""
        return list(self._keys)

    def add(self, doc: np.ndarray, key: int = -1) -> None:
        n = len(doc)
        if n == 0:
            return
        if n > self.row_len:
            raise ValueError(f"a document of {n} tokens does not fit a packed row of {self.row_len}")
        i = bisect.bisect_right(self._lengths, n)
        self._lengths.insert(i, n)
        self._docs.insert(i, doc)
        self._keys.insert(i, key)

    def has_row(self, exhausted: bool) -> bool:
        """Whether to emit a row now: always while more documents come; at the end, unless the remainder
        cannot fill a row and ``drop_last`` (the same rule as drop_last for unpacked batches)."""
        if not self._lengths:
            return False
        return not (exhausted and self.drop_last and self.buffered_tokens < self.row_len)

    def next_row(self) -> PackedRow:
        picked: list[np.ndarray] = []
        space = self.row_len
        while self._lengths and self._lengths[0] <= space:
            i = bisect.bisect_right(self._lengths, space) - 1  # longest that fits
            space -= self._lengths.pop(i)
            self._keys.pop(i)
            picked.append(self._docs.pop(i))
        ids = np.full(self.row_len, self.pad_id, dtype=np.int64)
        seg = np.zeros(len(picked) + 2, dtype=np.int32)
        pos = 0
        for k, doc in enumerate(picked):
            ids[pos : pos + len(doc)] = doc
            pos += len(doc)
            seg[k + 1] = pos
        seg[-1] = self.row_len
        cu = seg if pos < self.row_len else seg[:-1]
        return PackedRow(ids=ids, cu_seqlens=cu, num_real_tokens=pos, num_docs=len(picked))

    def pack(self, docs: Iterable[np.ndarray]) -> Iterator[PackedRow]:
        """All rows of a stream of documents, starting from this packer's buffer."""
        source = iter(docs)
        exhausted = False
        while True:
            while not exhausted and not self.full:
                doc = next(source, None)
                if doc is None:
                    exhausted = True
                else:
                    self.add(doc)
            if not self.has_row(exhausted):
                return
            yield self.next_row()
