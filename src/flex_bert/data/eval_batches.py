"""Evaluation batches from tokenized MDS documents.

Evaluation is not packed: each batch holds whole documents, laid out flat with ``cu_seqlens`` (the model never
attends across documents, so this equals one padded sequence per document), masked with a seed per document so
every evaluation sees the same masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens


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
        # all documents: a StreamingDataset's len() is one rank's share; the sampler splits ranks itself
        return int(getattr(self.documents, "size", len(self.documents)))

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
    labelled = sum(int(np.count_nonzero(lab != IGNORE_INDEX)) for _, lab in items)
    return {
        "input_ids": torch.from_numpy(np.concatenate([ids for ids, _ in items]))[None],
        "labels": torch.from_numpy(np.concatenate([lab for _, lab in items]))[None],
        "cu_seqlens": [torch.from_numpy(cu)],
        "max_seqlen": [int(lengths.max())],
        "num_tokens": int(lengths.sum()),
        "num_labelled": [labelled],
        "doc_lengths": [lengths.tolist()],
    }


def split_flat(batch: dict, documents: int | float) -> list[dict]:
    """An evaluation batch (``collate_flat``) as micro-batches of ``documents`` documents each (composer's
    ``device_eval_microbatch_size``), each laid out flat again."""
    lengths, n = batch["doc_lengths"][0], int(documents)
    if n >= len(lengths):
        return [batch]
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    out, start = [], 0
    for first in range(0, len(lengths), n):
        group = lengths[first : first + n]
        stop = start + sum(group)
        cu = np.zeros(len(group) + 1, dtype=np.int32)
        np.cumsum(group, out=cu[1:])
        part = labels[start:stop]
        out.append(
            {
                "input_ids": ids[start:stop][None],
                "labels": part[None],
                "cu_seqlens": [torch.from_numpy(cu)],
                "max_seqlen": [max(group)],
                "num_tokens": int(stop - start),
                "num_labelled": [int((part != IGNORE_INDEX).sum())],
                "doc_lengths": [list(group)],
            }
        )
        start = stop
    return out
