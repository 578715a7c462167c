"""Training and evaluation batches from tokenized MDS documents.

Training: documents from a ``StreamingDataset`` (one merged split or a weighted mixture of folders) are packed
by best fit into rows and masked, in DataLoader workers. One yielded batch is one device batch:

    input_ids   (R, C) int64   R rows of C = device_train_microbatch_size * max_seq_len tokens
    labels      (R, C) int64   -100 where nothing is predicted (unmasked tokens, padding)
    cu_seqlens  list of R int32 tensors, document boundaries within each row (then padding, in short segments)
    max_seqlen  list of R ints
    num_tokens  int            real (non-padding) tokens in the batch
    num_labelled list of R ints: tokens with a label in each row (FLOPs and statistics without a device sync)
    doc_lengths list of R lists of ints: the real documents of each row (for FLOPs and statistics)

Evaluation batches: `flex_bert.data.eval_batches`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flex_bert.data.batch_warmup import BatchSizeWarmup
from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens
from flex_bert.data.packing import BestFitPacker, PackedRow


@dataclass
class PackingState:
    """Where the packed stream stands: enough to continue it exactly, without re-reading any data."""

    epoch: int
    position: int  # next index into the epoch's document order
    buffer: list[int]  # dataset indices of the documents in the packer's buffer, in its internal order
    batch: int  # global batches of the epoch emitted so far
    tokens: int = 0  # real tokens in all global batches emitted so far, every epoch (batch-size warmup)


class PackedMLMDataset(IterableDataset):
    """Device batches of packed, masked rows (see module docstring). Use with ``DataLoader(batch_size=None)``.

    One stream for all ranks: the documents of an epoch, in an order that is a function of (shuffle_seed,
    epoch), are packed into global batches of ``rows_per_batch`` rows; rank r of W takes rows
    [r * R, (r + 1) * R), R = rows_per_batch / W (disjoint across ranks). Row j of global batch k is masked
    with a generator seeded by (seed, epoch, k, j). So the global batch, and with it the training run, is the
    same on any number of GPUs and loader workers: every worker follows the whole packing stream (it reads
    every document of the cluster's stream, which bounds the number of GPUs one stream can feed:
    docs/benchmarks/distributed_h200x2_2026-11-22.md) and builds every workers-th batch from where
    the stream starts, in the round-robin order in which the DataLoader collects them. Each batch carries the
    ``PackingState`` after it, the same on every rank; the trainer reports the last one it consumed
    (``note_consumed``), and ``state_dict``/``load_state_dict`` (composer's dataset-resumption hooks) save and
    restore it, so a resumed run, on any number of GPUs, continues with exactly the next global batch.

    ``documents`` needs ``len()`` and ``[i]["input_ids"]``; a ``StreamingDataset`` also gives the weighted
    epoch of a mixture (``resample_streams``: streaming's own proportion/repeat sampling). ``docs_per_row``
    turns packing off (each row holds that many documents); ``warmup`` (upstream's batch-size warmup) sets the
    rows of each global batch, world x its rows per device, from the real tokens of the batches before it.
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
        docs_per_row: int | None = None,
        warmup: BatchSizeWarmup | None = None,
    ):
        self.documents = documents
        self.warmup = warmup
        self.rows_per_batch = rows_per_batch  # of the global batch, all ranks together
        self.max_seq_len = max_seq_len
        self.masking = masking
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.drop_last = drop_last
        # buffer_docs None: a few rows' worth of tokens to choose from, however long the documents are
        self.packer = BestFitPacker(
            row_len, pad_id, buffer_docs=buffer_docs, drop_last=drop_last, docs_per_row=docs_per_row
        )
        self.epoch = 0
        self.resume: PackingState | None = None
        self.consumed: PackingState | None = None  # main process: the state after the last consumed batch
        # what load_state_dict does with a checkpoint's position: a key of SAVED_POSITION
        self.saved_position = "check"
        self._fingerprint: dict | None = None

    # ---- epoch order --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices of the epoch's documents, in packing order (int32 where they fit: compact)."""
        if hasattr(self.documents, "resample_streams"):  # streaming's weighted epoch (mixtures)
            ids = np.asarray(self.documents.resample_streams(epoch)[1], dtype=np.int64)
        else:
            ids = np.arange(len(self.documents), dtype=np.int64)
        if self.shuffle:
            ids = np.random.default_rng([self.shuffle_seed, epoch]).permutation(ids)
        return ids.astype(np.int32) if len(ids) < 2**31 else ids

    def rank_rows(self, rank: int, world: int, rows: int | None = None) -> slice:
        """The rows of a global batch (of ``rows_per_batch`` rows by default) that this rank trains on."""
        rows = self.rows_per_batch if rows is None else rows
        if rows % world:
            raise ValueError(f"a global batch of {rows} packed rows does not split over {world} ranks")
        share = rows // world
        return slice(rank * share, (rank + 1) * share)

    def batch_rows(self, tokens: int, world: int) -> int:
        """Rows of the next global batch after ``tokens`` real tokens: all of them, or the warmup's share."""
        if self.warmup is None:
            return self.rows_per_batch
        return world * self.warmup.rows(tokens // world)

    def _read(self, index: int) -> np.ndarray:
        ids = self.documents[int(index)]["input_ids"]
        if len(ids) > self.max_seq_len:
            raise ValueError(
                f"an MDS sample has {len(ids)} tokens, more than max_seq_len={self.max_seq_len}: the data was "
                "converted with a longer --max_seq_len than this config; re-convert it or raise max_seq_len"
            )
        return ids

    # ---- iteration ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_world()
        order = self.epoch_order(self.epoch)
        before = self.consumed or self.resume  # a new epoch carries the token count on
        fresh = PackingState(self.epoch, 0, [], 0, before.tokens if before else 0)
        state = self.resume if self.resume is not None and self.resume.epoch == self.epoch else fresh
        packer = self.packer.empty_copy()
        for key in state.buffer:
            packer.add(self._read(key), key)
        position, batch, rows, tokens = state.position, state.batch, [], state.tokens
        while True:
            target = self.batch_rows(tokens, world)
            mine = self.rank_rows(rank, world, target)
            while not packer.full and position < len(order):
                packer.add(self._read(order[position]), int(order[position]))
                position += 1
            exhausted = position >= len(order)
            if packer.has_row(exhausted):
                rows.append(packer.next_row())
            last = exhausted and not packer.has_row(exhausted)
            if last and rows and not self.drop_last and len(rows) < target:
                mine = self._short_batch_rows(len(rows), rank, world, worker, batch - state.batch, workers)
                if mine is None:
                    break
            if len(rows) == target or (last and rows and not self.drop_last):
                tokens += sum(r.num_real_tokens for r in rows)
                if (batch - state.batch) % workers == worker:
                    after = PackingState(state.epoch, position, packer.buffered_keys, batch + 1, tokens)
                    rngs = [self._rng(state.epoch, batch, j) for j in range(mine.start, mine.stop)]
                    yield self.collate(rows[mine], rngs, after)
                batch, rows = batch + 1, []
            if last:
                break

    @staticmethod
    def _short_batch_rows(n: int, rank: int, world: int, worker: int, k: int, workers: int) -> slice | None:
        """The last, short batch of an epoch (drop_last: false): every rank takes n // world rows, so all
        ranks run the same number of micro-batches (FSDP and synchronised DDP would hang otherwise); the
        n % world rows left over are dropped, with a warning (they are not lost silently)."""
        share = n // world
        if n % world and rank == 0 and k % workers == worker:
            warnings.warn(
                f"the epoch's last batch has {n} packed rows for {world} ranks: {n % world} row(s) "
                f"({n % world} x micro-batch) dropped so that every rank takes {share}",
                stacklevel=3,
            )
        return slice(rank * share, (rank + 1) * share) if share else None

    def _rng(self, epoch: int, batch: int, row: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, batch, row])

    # ---- resumption (composer calls these on the main process's dataset) ---------------------------
    def note_consumed(self, state: PackingState) -> None:
        self.consumed = state

    def data_fingerprint(self) -> dict:
        """What a saved position refers to: the documents and how they are packed into global batches."""
        if self._fingerprint is None:
            self._fingerprint = {
                **_documents_fingerprint(self.documents),
                "global_batch_rows": self.rows_per_batch,
                "row_tokens": self.packer.row_len,
                "max_seq_len": self.max_seq_len,
                "shuffle": self.shuffle,
                "shuffle_seed": self.shuffle_seed,
            }
        return self._fingerprint

    def state_dict(self, num_samples: int = 0, from_beginning: bool = True) -> dict:
        """The stream's position after the last consumed batch (the same on every rank), and what it is a
        position in (`data_fingerprint`)."""
        position = asdict(self.consumed or PackingState(self.epoch, 0, [], 0))
        return {"packing_state": position, "data": self.data_fingerprint()}

    def load_state_dict(self, state: dict | None) -> None:
        """Resume at a saved position, as ``saved_position`` says (see SAVED_POSITION)."""
        if self.saved_position == "ignore":
            return
        if isinstance(state, dict) and "states" in state and "world" in state:
            state = {"packing_state": _from_per_rank_states(state)}
        if not isinstance(state, dict) or "packing_state" not in state:
            if state:
                warnings.warn(
                    "the checkpoint's data position is not in this project's format (an upstream "
                    "checkpoint?): the data starts at the beginning",
                    stacklevel=2,
                )
            return
        saved = _packing_state(state["packing_state"])
        changes = self._data_changes(state.get("data"), saved)
        if changes and self.saved_position == "restart_if_changed":
            print(
                f"the data changed since the checkpoint ({changes}): restart_data_if_changed is set, so the "
                f"data stream starts again at the beginning of epoch {saved.epoch}",
                flush=True,
            )
            self.resume, self.epoch = None, saved.epoch
            return
        if changes:
            raise ValueError(
                f"the data changed since the checkpoint ({changes}): resume with the data and batch shape "
                "it was saved with, or set restart_data_if_changed: true to start the data stream again "
                "(weights, optimizer and time continue)"
            )
        self.resume = saved
        self.epoch = saved.epoch

    def _data_changes(self, saved: Any, position: PackingState) -> str:
        """What differs between the checkpoint's data and this one ('' if nothing)."""
        if saved is None:  # a checkpoint older than fingerprints: only the bounds can be checked
            warnings.warn(
                "the checkpoint's data position carries no description of its data (an older checkpoint): "
                "resuming at it without checking that the data is the same",
                stacklevel=3,
            )
            n = _num_documents(self.documents)
            if any(not 0 <= key < n for key in position.buffer) or position.position > len(
                self.epoch_order(position.epoch)
            ):
                return f"its position lies beyond the {n} documents of this data"
            return ""
        if not isinstance(saved, dict):
            raise ValueError(f"the checkpoint's data description is a {type(saved).__name__}, not a mapping")
        now = self.data_fingerprint()
        return ", ".join(
            f"{key} {saved.get(key, '(not saved)')} -> {value}"
            for key, value in now.items()
            if saved.get(key, "(not saved)") != value
        )

    def collate(
        self, rows: list[PackedRow], rngs: list[np.random.Generator], after: PackingState | None = None
    ) -> dict:
        ids, labels = zip(
            *(
                mask_tokens(r.ids, self.mlm_probability, self.masking, rng, self.whole_word_mask)
                for r, rng in zip(rows, rngs, strict=True)
            )
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
            "num_labelled": [int(np.count_nonzero(lab != IGNORE_INDEX)) for lab in labels],
            "doc_lengths": [np.diff(r.cu_seqlens)[: r.num_docs].tolist() for r in rows],
            "packing_state": after,
        }


# PackedMLMDataset.saved_position: what load_state_dict does with a checkpoint's data position.
SAVED_POSITION = {
    "check": "resume at it; a change of the data or of the batch shape since the checkpoint is an error",
    "restart_if_changed": "resume at it; after a change, start the data stream again (one printed line)",
    "ignore": "start the data from the beginning (a new phase: reset_time)",
}


def _num_documents(documents) -> int:
    """All documents (a StreamingDataset's len() is one rank's share of an epoch)."""
    return int(getattr(documents, "num_samples", None) or len(documents))


def _documents_fingerprint(documents) -> dict:
    """The documents' count; for a StreamingDataset also a hash of its shards (names relative to each stream,
    sample counts, sizes: the data's identity wherever its folder lies) and each stream's samples per epoch."""
    out: dict = {"documents": _num_documents(documents)}
    shards = getattr(documents, "shards", None)
    if shards is not None:
        digest = hashlib.sha256()
        for stream_id, shard in zip(documents.stream_per_shard, shards, strict=True):
            raw = shard.raw_data
            digest.update(f"{stream_id}\t{raw.basename}\t{shard.samples}\t{raw.bytes}\n".encode())
        out["shards"] = digest.hexdigest()[:16]
        out["samples_per_epoch"] = [int(stream.choose) for stream in documents.streams]
    return out


def _packing_state(saved: Any) -> PackingState:
    """A checkpoint's position, checked: a malformed one is one ValueError line, never a traceback later."""
    every = [f.name for f in dataclasses.fields(PackingState)]
    required = [f.name for f in dataclasses.fields(PackingState) if f.default is dataclasses.MISSING]
    if not isinstance(saved, dict) or not set(required) <= set(saved) <= set(every):
        what = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(
            f"the checkpoint's data position is malformed: expected keys {required} (and optionally "
            f"{sorted(set(every) - set(required))}), got {what}"
        )
    ints = [v for k, v in saved.items() if k != "buffer"]
    buffer = saved["buffer"]
    if not isinstance(buffer, list) or not all(_is_count(v) for v in [*ints, *buffer]):
        raise ValueError(
            f"the checkpoint's data position is malformed: {saved!r:.200} (expected non-negative integers and "
            "a list of them)"
        )
    return PackingState(
        **{k: [int(v) for v in buffer] if k == "buffer" else int(v) for k, v in saved.items()}
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _from_per_rank_states(old: dict) -> dict:
    """A checkpoint of the earlier format (one packing stream per rank, rank r reading every world-th
    document) -> the shared stream's state. Exact from one rank (its order was the whole order); from W ranks,
    the epoch continues after the documents every rank had trained on (the ranks' buffers are re-read)."""
    if not isinstance(old["states"], list) or not old["states"] or old["world"] != len(old["states"]):
        raise ValueError(
            "the checkpoint's data positions (one per rank) are malformed: states and world disagree"
        )
    states = [_packing_state(s) for s in old["states"]]
    if old["world"] == 1:
        return asdict(states[0])
    done = min(s.position - len(s.buffer) for s in states)
    warnings.warn(
        f"the checkpoint holds {old['world']} per-rank data positions (an earlier format): the epoch "
        f"continues after document {old['world'] * done} of its order (documents after that which some "
        "rank had already trained on are seen again)",
        stacklevel=3,
    )
    return asdict(PackingState(states[0].epoch, old["world"] * done, [], max(s.batch for s in states)))


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
