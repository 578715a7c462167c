"""Sequence packing for training: best fit of whole documents into fixed-size rows.

A device batch holds ``rows`` rows of ``row_len = device_train_microbatch_size * max_seq_len`` tokens (one row
per micro-batch, as ModernBERT trains). Each row is filled from a buffer of documents by best fit: the longest
buffered document that still fits, until none fits; the rest of the row is padding, cut into segments of at
most ``PAD_SEGMENT`` tokens at the end of ``cu_seqlens`` (attention never mixes them with real tokens, and
their cost stays linear: one padding segment of 40k tokens cost a global layer as much as a 40k-token
document, and made a half-empty 8192 row 3x slower than a full one). Documents never span rows and are
never cut: the converter already split long documents into pieces of at most ``max_seq_len`` tokens.

The buffer is explicit state (``add``, ``next_row``, ``buffered_keys``) so that a run can save it and resume
exactly: re-adding the saved keys in their saved order rebuilds the same buffer.

Without packing (``docs_per_row``: upstream's ``sequence_packing: false``), a row holds exactly that many
documents, the next ones in the epoch's order, one per ``max_seq_len`` slot: laid out one after another with
the padding at the end, which computes the same (documents never attend to each other, padding has no labels).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

PAD_SEGMENT = 128  # longest padding segment in cu_seqlens
BUFFER_ROWS = 4  # rows' worth of tokens the packer chooses from, by default


@dataclass
class PackedRow:
    ids: np.ndarray  # (row_len,) token ids, padding at the end
    cu_seqlens: np.ndarray  # (n_segments + 1,) int32; documents, then the padding in segments <= PAD_SEGMENT
    num_real_tokens: int
    num_docs: int


class BestFitPacker:
    """Packs documents (1-D id arrays) into rows of exactly ``row_len`` tokens, by best fit from a buffer.

    The buffer holds ``buffer_rows`` rows' worth of tokens to choose from (the default: rows stay full
    whatever the documents' lengths, from 5-token notes to max_seq_len pieces), or exactly ``buffer_docs``
    documents when that is given. With ``docs_per_row`` it does not pack: each row takes that many documents.
    """

    def __init__(
        self,
        row_len: int,
        pad_id: int,
        buffer_docs: int | None = None,
        drop_last: bool = True,
        buffer_rows: float = BUFFER_ROWS,
        docs_per_row: int | None = None,
    ):
        if row_len <= 0:
            raise ValueError(f"row_len must be positive, got {row_len}")
        self.row_len = row_len
        self.docs_per_row = docs_per_row
        self.pad_id = pad_id
        self.buffer_docs = buffer_docs
        self.buffer_rows = buffer_rows
        self.drop_last = drop_last
        self._tokens = 0
        self._count = 0
        # One stack of (document, key) per length, and the lengths present, ascending. Best fit takes the
        # top of the longest stack that fits: O(log distinct lengths) per document, however many are
        # buffered (a sorted list of all documents would memmove the whole buffer per insertion).
        self._stacks: dict[int, list[tuple[np.ndarray, int]]] = {}
        self._present: list[int] = []

    def empty_copy(self) -> BestFitPacker:
        return BestFitPacker(
            self.row_len, self.pad_id, self.buffer_docs, self.drop_last, self.buffer_rows, self.docs_per_row
        )

    @property
    def full(self) -> bool:
        if self.docs_per_row is not None:
            return self._count >= self.docs_per_row
        if self.buffer_docs is not None:
            return self._count >= self.buffer_docs
        return self._tokens >= self.buffer_rows * self.row_len

    @property
    def buffered_tokens(self) -> int:
        return self._tokens

    @property
    def buffered_keys(self) -> list[int]:
        """The buffer's documents in its internal order; adding them back in this order restores it."""
        return [key for n in self._present for _, key in self._stacks[n]]

    def add(self, doc: np.ndarray, key: int = -1) -> None:
        n = len(doc)
        if n == 0:
            return
        if n > self.row_len:
            raise ValueError(f"a document of {n} tokens does not fit a packed row of {self.row_len}")
        stack = self._stacks.get(n)
        if stack is None:
            stack = self._stacks[n] = []
            bisect.insort(self._present, n)
        stack.append((doc, key))
        self._tokens += n
        self._count += 1

    def has_row(self, exhausted: bool) -> bool:
        """Whether to emit a row now: always while more documents come; at the end, unless the remainder
        cannot fill a row and ``drop_last`` (the same rule as drop_last for unpacked batches)."""
        if not self._count:
            return False
        if self.docs_per_row is not None:
            return not (exhausted and self.drop_last and self._count < self.docs_per_row)
        return not (exhausted and self.drop_last and self.buffered_tokens < self.row_len)

    def next_row(self) -> PackedRow:
        picked: list[np.ndarray] = []
        space = self.row_len
        most = self.docs_per_row or self.row_len
        while self._present and self._present[0] <= space and len(picked) < most:
            i = bisect.bisect_right(self._present, space) - 1  # the longest length that fits
            n = self._present[i]
            stack = self._stacks[n]
            picked.append(stack.pop()[0])  # the last one added of that length
            if not stack:
                del self._stacks[n]
                self._present.pop(i)
            space -= n
            self._tokens -= n
            self._count -= 1
        ids = np.full(self.row_len, self.pad_id, dtype=np.int64)
        bounds = [0]
        for doc in picked:
            ids[bounds[-1] : bounds[-1] + len(doc)] = doc
            bounds.append(bounds[-1] + len(doc))
        pos = bounds[-1]
        padding = range(pos + PAD_SEGMENT, self.row_len, PAD_SEGMENT)
        cu = np.array([*bounds, *padding, self.row_len] if pos < self.row_len else bounds, dtype=np.int32)
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
