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

import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens
from flex_bert.data.packing import BestFitPacker, PackedRow


@dataclass
class PackingState:
    """Where a rank's packed stream stands: enough to continue it exactly, without re-reading any data."""

    epoch: int
    position: int  # next index into this rank's document order of the epoch
    buffer: list[int]  # dataset indices of the documents in the packer's buffer, in its internal order
    batch: int  # batches of the epoch emitted so far


class PackedMLMDataset(IterableDataset):
    """Device batches of packed, masked rows (see module docstring). Use with ``DataLoader(batch_size=None)``.

    Determinism: the document order of an epoch is a function of (shuffle_seed, epoch); rank r takes every
    world-th document (disjoint across ranks); the masks of batch k are drawn from (seed, epoch, rank, k). So
    batches do not depend on the number of loader workers: every worker follows the rank's whole packing
    stream (cheap) and builds every workers-th batch from where the stream starts, in the round-robin order in
    which the DataLoader collects them. Each batch carries the ``PackingState`` after it; the trainer reports the last one it
    consumed (``note_consumed``), and ``state_dict``/``load_state_dict`` (composer's dataset-resumption hooks)
    save and restore it, so a resumed run continues with exactly the next batch and re-reads nothing.

    ``documents`` needs ``len()`` and ``[i]["input_ids"]``; a ``StreamingDataset`` also gives the weighted
    epoch of a mixture (``resample_streams``: streaming's own proportion/repeat sampling).
    """

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
        shuffle: bool = False,
        shuffle_seed: int = 0,
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
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.drop_last = drop_last
        # A few rows' worth of documents to choose from, as ModernBERT's packer holds.
        buffer_docs = buffer_docs or max(64, 4 * rows_per_batch * max(1, row_len // max(1, max_seq_len // 4)))
        self.packer = BestFitPacker(row_len, pad_id, buffer_docs=buffer_docs, drop_last=drop_last)
        self.epoch = 0
        self.resume: dict | None = None  # {"world": W, "states": [PackingState as dict per rank]}
        self.consumed: PackingState | None = None  # main process: the state after the last consumed batch

    # ---- epoch order --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self, epoch: int, rank: int, world: int) -> np.ndarray:
        if hasattr(self.documents, "resample_streams"):  # streaming's weighted epoch (mixtures)
            ids = np.asarray(self.documents.resample_streams(epoch)[1], dtype=np.int64)
        else:
            ids = np.arange(len(self.documents), dtype=np.int64)
        if self.shuffle:
            ids = np.random.default_rng([self.shuffle_seed, epoch]).permutation(ids)
        # keep only this rank's share (a copy, so the whole epoch's order is freed), compactly
        share = ids[rank::world]
        return share.astype(np.int32) if len(ids) < 2**31 else share.copy()

    def _read(self, index: int) -> np.ndarray:
        ids = self.documents[int(index)]["input_ids"]
        if len(ids) > self.max_seq_len:
            raise ValueError(
                f"an MDS sample has {len(ids)} tokens, more than max_seq_len={self.max_seq_len}: the data was "
                "converted with a longer --max_seq_len than this config; re-convert it or raise max_seq_len"
            )
        return ids

    # ---- iteration ----------------------------------------------------------------------------------
    def _start_state(self, rank: int, world: int, order_len) -> PackingState:
        fresh = PackingState(self.epoch, 0, [], 0)
        if not self.resume or self.resume["states"][0]["epoch"] != self.epoch:
            return fresh
        states = [PackingState(**s) for s in self.resume["states"]]
        if self.resume["world"] == world:
            return states[rank]
        # Another world size partitions the documents differently: continue at the same share of the epoch.
        # documents still in a packer's buffer were read but not trained on: they count as not done
        done = float(
            np.mean([(s.position - len(s.buffer)) / max(1, order_len(s, i)) for i, s in enumerate(states)])
        )
        warnings.warn(
            f"resuming on {world} rank(s) from a checkpoint of {self.resume['world']}: the data continues at "
            f"{done:.1%} of epoch {self.epoch} (approximately; exact resumption needs the same world size)",
            stacklevel=2,
        )
        return PackingState(self.epoch, int(done * order_len(fresh, rank)), [], 0)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_world()
        order = self.epoch_order(self.epoch, rank, world)
        state = self._start_state(rank, world, lambda s, r: len(self.epoch_order(self.epoch, r, world)))
        packer = self.packer.empty_copy()
        for key in state.buffer:
            packer.add(self._read(key), key)
        position, batch, rows = state.position, state.batch, []
        while True:
            while not packer.full and position < len(order):
                packer.add(self._read(order[position]), int(order[position]))
                position += 1
            if not packer.has_row(exhausted=position >= len(order)):
                break
            rows.append(packer.next_row())
            if len(rows) == self.rows_per_batch:
                if (batch - state.batch) % workers == worker:
                    after = PackingState(state.epoch, position, packer.buffered_keys, batch + 1)
                    yield self.collate(rows, self._rng(state.epoch, rank, batch), after)
                batch, rows = batch + 1, []
        if rows and not self.drop_last and (batch - state.batch) % workers == worker:
            after = PackingState(state.epoch, position, packer.buffered_keys, batch + 1)
            yield self.collate(rows, self._rng(state.epoch, rank, batch), after)

    def _rng(self, epoch: int, rank: int, batch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, rank, batch])

    # ---- resumption (composer calls these on the main process's dataset) ---------------------------
    def note_consumed(self, state: PackingState) -> None:
        self.consumed = state

    def state_dict(self, num_samples: int = 0, from_beginning: bool = True) -> dict:
        mine = (
            asdict(self.consumed) if self.consumed is not None else asdict(PackingState(self.epoch, 0, [], 0))
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        return {"world": len(states), "states": states}

    def load_state_dict(self, state: dict | None) -> None:
        if not isinstance(state, dict) or "states" not in state:
            if state:
                warnings.warn(
                    "the checkpoint's data position is not in this project's format (an upstream "
                    "checkpoint?): the data starts at the beginning",
                    stacklevel=2,
                )
            return
        self.resume = state
        self.epoch = int(state["states"][0]["epoch"])

    def forget_position(self) -> None:
        """A new phase (``reset_time``) starts its data from the beginning, whatever the checkpoint held."""
        self.resume, self.consumed, self.epoch = None, None, 0

    def collate(
        self, rows: list[PackedRow], rng: np.random.Generator, after: PackingState | None = None
    ) -> dict:
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
            "packing_state": after,
        }


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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
    return {
        "input_ids": torch.from_numpy(np.concatenate([ids for ids, _ in items]))[None],
        "labels": torch.from_numpy(np.concatenate([lab for _, lab in items]))[None],
        "cu_seqlens": [torch.from_numpy(cu)],
        "max_seqlen": [int(lengths.max())],
        "num_tokens": int(lengths.sum()),
        "doc_lengths": [lengths.tolist()],
    }
