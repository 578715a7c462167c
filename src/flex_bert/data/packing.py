"""Sequence packing for training: best fit of whole documents into fixed-size rows.

A device batch holds ``rows`` rows of ``row_len = device_train_microbatch_size * max_seq_len`` tokens (one row
per micro-batch, as ModernBERT trains). Each row is filled from a buffer of documents by best fit: the longest
buffered document that still fits, until none fits; the rest of the row is padding, which forms one extra
segment in ``cu_seqlens`` (so attention never mixes it with real tokens). Documents never span rows and are
never cut: the converter already split long documents into pieces of at most ``max_seq_len`` tokens.
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
    """Packs a stream of 1-D id arrays into rows of exactly ``row_len`` tokens.

    ``buffer_docs`` documents are held to choose from; more gives fuller rows (ModernBERT's packer holds a
    few rows' worth). Iterating yields :class:`PackedRow`; the final, partial rows are yielded too unless
    ``drop_last``.
    """

    def __init__(self, row_len: int, pad_id: int, buffer_docs: int = 256, drop_last: bool = True):
        if row_len <= 0:
            raise ValueError(f"row_len must be positive, got {row_len}")
        self.row_len = row_len
        self.pad_id = pad_id
        self.buffer_docs = buffer_docs
        self.drop_last = drop_last

    def pack(self, docs: Iterable[np.ndarray]) -> Iterator[PackedRow]:
        lengths: list[int] = []  # sorted ascending; docs_by_len[i] matches lengths[i]
        docs_by_len: list[np.ndarray] = []
        source = iter(docs)
        exhausted = False
        while True:
            while not exhausted and len(lengths) < self.buffer_docs:
                doc = next(source, None)
                if doc is None:
                    exhausted = True
                    break
                n = len(doc)
                if n == 0:
                    continue
                if n > self.row_len:
                    raise ValueError(f"a document of {n} tokens does not fit a packed row of {self.row_len}")
                i = bisect.bisect_right(lengths, n)
                lengths.insert(i, n)
                docs_by_len.insert(i, doc)
            if not lengths:
                return
            if exhausted and self.drop_last and sum(lengths) < self.row_len:
                return  # the remainder cannot fill a row: same rule as drop_last for unpacked batches
            yield self._fill_row(lengths, docs_by_len)

    def _fill_row(self, lengths: list[int], docs_by_len: list[np.ndarray]) -> PackedRow:
        picked: list[np.ndarray] = []
        space = self.row_len
        while lengths and lengths[0] <= space:
            i = bisect.bisect_right(lengths, space) - 1  # longest that fits
            space -= lengths.pop(i)
            picked.append(docs_by_len.pop(i))
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
