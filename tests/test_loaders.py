"""The packed training stream: one global batch whatever the number of ranks (split into disjoint rows), the
same batches with any number of loader workers, and an exact continuation from a saved packing state."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flex_bert.data.loaders import PackedMLMDataset, PackingState
from flex_bert.data.masking import MaskingSpec

SPEC = MaskingSpec(mask_token_id=4, vocab_size=500, special_ids=(0, 1, 2, 3, 4))


def _docs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": np.concatenate([[1], rng.integers(5, 500, rng.integers(3, 120)), [2]])}
        for _ in range(n)
    ]


def _dataset(docs, **kw):
    kw = {"rows_per_batch": 2, **kw}
    return PackedMLMDataset(
        docs,
        row_len=256,
        max_seq_len=128,
        pad_id=3,
        masking=SPEC,
        mlm_probability=0.3,
        seed=5,
        shuffle=True,
        shuffle_seed=9,
        buffer_docs=16,
        **kw,
    )


def _batches(ds, workers):
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return [(b["input_ids"], b["labels"], b["packing_state"], b["doc_lengths"]) for b in loader]


def _rank_batches(docs, rank, world, monkeypatch, **kw):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    return _batches(_dataset(docs, rows_per_batch=4, **kw), 2)


def test_the_global_batch_is_the_same_on_any_number_of_ranks(monkeypatch):
    """Rank r of W trains on rows [r*4/W, (r+1)*4/W) of each global batch: together, the 1-rank batches."""
    docs = _docs(600)
    ref = _rank_batches(docs, 0, 1, monkeypatch)
    assert len(ref) > 10
    for world in (2, 4):
        per_rank = [_rank_batches(docs, r, world, monkeypatch) for r in range(world)]
        assert all(len(b) == len(ref) for b in per_rank), "every rank takes the same number of steps"
        for k, (ids, labels, state, lengths) in enumerate(ref):
            assert torch.equal(torch.cat([b[k][0] for b in per_rank]), ids)
            assert torch.equal(torch.cat([b[k][1] for b in per_rank]), labels)
            assert all(b[k][2] == state for b in per_rank), "one packing state for all ranks"
            assert sum(len(b[k][3]) for b in per_rank) == len(lengths) == 4, "disjoint rows"
    # (each document is in exactly one row of the 1-rank epoch: test_every_document_once_per_epoch...)


@pytest.mark.filterwarnings("ignore:the epoch's last batch")
def test_a_short_last_batch_is_split_evenly_over_the_ranks(monkeypatch):
    """drop_last: false. Every rank takes n // world rows of the short last batch (the same number of
    micro-batches on every rank, or FSDP would hang); the rest is dropped with a warning."""
    docs = _docs(301)
    ref = _rank_batches(docs, 0, 1, monkeypatch, drop_last=False)
    n = ref[-1][0].shape[0]
    assert n == 3, "this corpus ends with a short batch of 3 rows"
    per_rank = [_rank_batches(docs, r, 2, monkeypatch, drop_last=False) for r in range(2)]
    assert [len(b) for b in per_rank] == [len(ref)] * 2
    assert [b[-1][0].shape[0] for b in per_rank] == [1, 1]
    assert torch.equal(torch.cat([per_rank[0][-1][0], per_rank[1][-1][0]]), ref[-1][0][:2])
    # 4 ranks, 3 rows: nobody can take one; the batch is dropped on every rank alike
    per_rank = [_rank_batches(docs, r, 4, monkeypatch, drop_last=False) for r in range(4)]
    assert [len(b) for b in per_rank] == [len(ref) - 1] * 4


def test_dropping_rows_of_the_short_last_batch_is_reported(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match=r"last batch has 3 packed rows for 2 ranks: 1 row\(s\)"):
        list(_dataset(_docs(301), rows_per_batch=4, drop_last=False))


def test_the_epoch_order_is_a_permutation_renewed_every_epoch():
    ds = _dataset(_docs())
    order = ds.epoch_order(3)
    assert sorted(order.tolist()) == list(range(300)) and order.dtype == np.int32
    assert not np.array_equal(order, ds.epoch_order(4)), "a new order every epoch"


@pytest.mark.parametrize("workers", [1, 3])
def test_same_batches_whatever_the_number_of_workers(workers):
    docs = _docs()
    ref = _batches(_dataset(docs), 0)
    got = _batches(_dataset(docs), workers)
    assert len(got) == len(ref) > 10
    for (a_ids, a_lab, a_state, _), (b_ids, b_lab, b_state, _) in zip(ref, got):
        assert torch.equal(a_ids, b_ids) and torch.equal(a_lab, b_lab) and a_state == b_state


def test_every_document_once_per_epoch_and_exact_continuation():
    docs = _docs()
    ds = _dataset(docs, drop_last=False)
    ref = _batches(ds, 0)
    lengths = sorted(n for *_, rows in ref for row in rows for n in row)
    assert lengths == sorted(len(d["input_ids"]) for d in docs), "every document once in an epoch"
    # continue from the state after batch 4, as a resumed run would: the rest is identical
    resumed = _dataset(docs, drop_last=False)
    resumed.load_state_dict({"packing_state": vars(ref[4][2])})
    rest = _batches(resumed, 2)
    assert len(rest) == len(ref) - 5
    for (a_ids, a_lab, *_), (b_ids, b_lab, *_) in zip(ref[5:], rest):
        assert torch.equal(a_ids, b_ids) and torch.equal(a_lab, b_lab)


def test_a_foreign_data_state_is_ignored_with_a_warning():
    ds = _dataset(_docs())
    with pytest.warns(UserWarning, match="not in this project's format"):
        ds.load_state_dict({"epoch": 3, "sample_in_epoch": 1234})
    assert ds.resume is None and ds.epoch == 0


def test_evaluation_covers_every_document_on_every_world_size():
    """A StreamingDataset's len() is one rank's share; evaluation must index all documents (its .size)."""
    from flex_bert.data.eval_batches import MaskedDocuments

    class RankShare(list):  # what StreamingDataset looks like on 2 ranks: len() = half, size = all
        size = 100

        def __len__(self):
            return 50

    docs = RankShare({"input_ids": np.array([1, 7, 2])} for _ in range(100))
    ds = MaskedDocuments(docs, max_seq_len=8, masking=SPEC, mlm_probability=0.3, seed=0)
    assert len(ds) == 100
    samplers = [
        torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False) for r in (0, 1)
    ]
    assert sorted(i for s in samplers for i in s) == list(range(100))


def test_a_checkpoint_of_the_per_rank_format_still_resumes():
    """Before one stream was shared by all ranks, the state was one PackingState per rank. From one rank it
    is the same stream (exact); from several, the epoch goes on where every rank had got to (a warning)."""
    docs = _docs()
    ref = _batches(_dataset(docs), 0)
    resumed = _dataset(docs)
    resumed.load_state_dict({"world": 1, "states": [vars(ref[4][2])]})
    rest = _batches(resumed, 0)
    assert len(rest) == len(ref) - 5 and all(torch.equal(a[0], b[0]) for a, b in zip(ref[5:], rest))
    old = {"world": 2, "states": [vars(PackingState(0, 40, [1, 2, 3], 7)), vars(PackingState(0, 38, [5], 7))]}
    ds = _dataset(docs)
    with pytest.warns(UserWarning, match="continues after document 74 "):
        ds.load_state_dict(old)
    assert ds.resume == PackingState(0, 74, [], 7)


def test_host_counts_of_labels_and_tokens_match_the_tensors():
    """num_labelled / num_tokens (host ints, so FLOPs and statistics need no device sync) agree with the
    tensors, for packed training batches, their micro-batches, and flat evaluation batches."""
    from flex_bert.data.eval_batches import MaskedDocuments, collate_flat
    from flex_bert.train.builders import split_rows

    for batch in DataLoader(_dataset(_docs(), rows_per_batch=4), batch_size=None):
        labelled = (batch["labels"] != -100).sum(dim=1).tolist()
        assert batch["num_labelled"] == labelled and sum(labelled) > 0
        assert batch["num_tokens"] == sum(map(sum, batch["doc_lengths"]))
        for micro in split_rows(batch, 3):
            assert micro["num_labelled"] == (micro["labels"] != -100).sum(dim=1).tolist()
    ds = MaskedDocuments(_docs(20), max_seq_len=128, masking=SPEC, mlm_probability=0.3, seed=0)
    flat = collate_flat([ds[i] for i in range(20)])
    assert flat["num_labelled"] == [int((flat["labels"] != -100).sum())]


def _saved_after(ds, batches: int = 3) -> dict:
    """The dataset's state_dict after ``batches`` consumed batches, as a checkpoint holds it."""
    for batch in _batches(ds, 0)[:batches]:
        ds.note_consumed(batch[2])
    return ds.state_dict()


@pytest.mark.parametrize(
    "other, changed",
    [
        (dict(docs=_docs(200, seed=1)), "documents 300 -> 200"),
        (dict(rows_per_batch=4), "global_batch_rows 2 -> 4"),
        (dict(shuffle_seed=10), "shuffle_seed 9 -> 10"),
    ],
)
def test_resuming_on_other_data_or_batch_shape_is_an_error_naming_the_change(other, changed, capsys):
    saved = _saved_after(_dataset(_docs()))
    ds = _dataset(other.pop("docs", _docs()))
    for key, value in other.items():  # the same run settings but this one
        setattr(ds, key, value)
    with pytest.raises(
        ValueError, match=rf"the data changed since the checkpoint \({changed}\).*restart_data_if"
    ):
        ds.load_state_dict(saved)
    ds.saved_position = "restart_if_changed"
    ds.load_state_dict(saved)
    assert ds.resume is None and changed in capsys.readouterr().out
    assert _batches(ds, 0)[0][2].batch == 1, "the stream started again"


def test_the_same_data_resumes_and_an_old_position_is_warned_and_bounds_checked():
    saved = _saved_after(_dataset(_docs()))
    ds = _dataset(_docs())
    ds.load_state_dict(saved)
    assert ds.resume == PackingState(**saved["packing_state"])
    old = {"packing_state": saved["packing_state"]}  # a checkpoint older than fingerprints
    with pytest.warns(UserWarning, match="carries no description of its data"):
        _dataset(_docs()).load_state_dict(old)
    beyond = {"packing_state": {**saved["packing_state"], "position": 250, "buffer": [260, 12]}}
    with pytest.raises(ValueError, match="beyond the 100 documents"), pytest.warns(UserWarning):
        _dataset(_docs(100)).load_state_dict(beyond)


GOOD = {"epoch": 0, "position": 10, "buffer": [1, 2], "batch": 3}


@pytest.mark.parametrize(
    "state",
    [
        {"packing_state": "x"},
        {"packing_state": []},
        {"packing_state": {**GOOD, "epoch": "0"}},
        {"packing_state": {**GOOD, "position": -1}},
        {"packing_state": {**GOOD, "batch": True}},
        {"packing_state": {**GOOD, "buffer": "12"}},
        {"packing_state": {**GOOD, "buffer": [1.5]}},
        {"packing_state": {k: v for k, v in GOOD.items() if k != "batch"}},
        {"packing_state": {**GOOD, "extra": 1}},
        {"packing_state": GOOD, "data": "x"},
        {"states": "x", "world": 1},
        {"states": [GOOD], "world": 2},
        {"states": [{"epoch": 0}], "world": 1},
    ],
)
def test_a_malformed_data_position_is_one_line(state):
    with pytest.raises(ValueError) as err:
        _dataset(_docs()).load_state_dict(state)
    assert "\n" not in str(err.value) and "checkpoint's data" in str(err.value)
