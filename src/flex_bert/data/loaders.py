"""Training and evaluation batches from tokenized MDS documents.

Training: documents from a ``StreamingDataset`` (one merged split or a weighted mixture of folders) are packed
by best fit into rows and masked, in DataLoader workers. One yielded batch is one device batch:

    input_ids   (R, C) int64   R rows of C = device_train_microbatch_size * max_seq_len tokens
    labels      (R, C) int64   -100 where nothing is predicted (unmasked tokens, padding)
    cu_seqlens  list of R int32 tensors, document boundaries within each row (padding tail = last segment)
    max_seqlen  list of R ints
    num_tokens  int            real (non-padding) tokens in the batch
    doc_lengths list of R lists of ints: the real documents of each row (for FLOPs and statistics)

Evaluation is not packed: each batch holds whole documents, laid out flat with ``cu_seqlens`` (the model
never attends across documents, so this equals one padded sequence per document), masked with a seed per
document so every evaluation sees the same masks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens
from flex_bert.data.packing import BestFitPacker, PackedRow


def _documents(dataset, max_doc_len: int) -> Iterator[np.ndarray]:
    for sample in dataset:
        ids = sample["input_ids"]
        if len(ids) > max_doc_len:
            raise ValueError(
                f"an MDS sample has {len(ids)} tokens, more than max_seq_len={max_doc_len}: the data was "
                "converted with a longer --max_seq_len than this config; re-convert it or raise max_seq_len"
            )
        yield ids


class PackedMLMDataset(IterableDataset):
    """Device batches of packed, masked rows (see module docstring). Use with ``DataLoader(batch_size=None)``."""

    def __init__(
        self,
        documents,
        *,
        rows_per_batch: int,
        row_len: int,
        max_seq_len: int,
        pad_id: int,
        masking: MaskingSpec,
        mlm_probability: float,
        whole_word_mask: bool = False,
        seed: int = 0,
        buffer_docs: int | None = None,
        drop_last: bool = True,
    ):
        self.documents = documents
        self.rows_per_batch = rows_per_batch
        self.max_seq_len = max_seq_len
        self.masking = masking
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        self.seed = seed
        self.drop_last = drop_last
        # A few rows' worth of documents to choose from, as ModernBERT's packer holds.
        buffer_docs = buffer_docs or max(64, 4 * rows_per_batch * max(1, row_len // max(1, max_seq_len // 4)))
        self.packer = BestFitPacker(row_len, pad_id, buffer_docs=buffer_docs, drop_last=drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Different masks every epoch, the same ones for the same (seed, epoch, rank, worker)."""
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return np.random.default_rng([self.seed, self.epoch, rank, worker])

    def __iter__(self) -> Iterator[dict]:
        rng = self._rng()
        rows: list[PackedRow] = []
        for row in self.packer.pack(_documents(self.documents, self.max_seq_len)):
            rows.append(row)
            if len(rows) == self.rows_per_batch:
                yield self.collate(rows, rng)
                rows = []
        if rows and not self.drop_last:
            yield self.collate(rows, rng)

    def collate(self, rows: list[PackedRow], rng: np.random.Generator) -> dict:
        ids, labels = zip(
            *(mask_tokens(r.ids, self.mlm_probability, self.masking, rng, self.whole_word_mask) for r in rows)
        )
        labels = np.stack(labels)
        for r, lab in zip(rows, labels):
            lab[r.num_real_tokens :] = IGNORE_INDEX  # never predict padding
        cu = [torch.from_numpy(r.cu_seqlens) for r in rows]
        return {
            "input_ids": torch.from_numpy(np.stack(ids)),
            "labels": torch.from_numpy(labels),
            "cu_seqlens": cu,
            "max_seqlen": [int(np.diff(r.cu_seqlens).max()) for r in rows],
            "num_tokens": sum(r.num_real_tokens for r in rows),
            "doc_lengths": [np.diff(r.cu_seqlens)[: r.num_docs].tolist() for r in rows],
        }


class MaskedDocuments(Dataset):
    """Map-style evaluation documents, each masked with its own seed (same masks at every evaluation)."""

    def __init__(
        self, documents, *, max_seq_len: int, masking: MaskingSpec, mlm_probability: float, seed: int
    ):
        self.documents = documents
        self.max_seq_len = max_seq_len
        self.masking = masking
        self.mlm_probability = mlm_probability
        self.seed = seed

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self.documents[index]["input_ids"])
        if len(ids) > self.max_seq_len:
            raise ValueError(f"eval sample {index} has {len(ids)} tokens > max_seq_len={self.max_seq_len}")
        rng = np.random.default_rng([self.seed, index])
        return mask_tokens(ids, self.mlm_probability, self.masking, rng)


def collate_flat(items: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Whole documents laid out flat as one row with ``cu_seqlens`` (no padding, no cross-attention)."""
    lengths = np.array([len(ids) for ids, _ in items], dtype=np.int64)
    cu = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    return {
        "input_ids": torch.from_numpy(np.concatenate([ids for ids, _ in items]))[None],
        "labels": torch.from_numpy(np.concatenate([lab for _, lab in items]))[None],
        "cu_seqlens": [torch.from_numpy(cu)],
        "max_seqlen": [int(lengths.max())],
        "num_tokens": int(lengths.sum()),
        "doc_lengths": [lengths.tolist()],
    }
