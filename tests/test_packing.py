"""Best-fit packer invariants: no token lost or duplicated, boundaries right, padding tail, fullness."""

import numpy as np
import pytest

from flex_bert.data.packing import PAD_SEGMENT, BestFitPacker


def _docs(n, rng, max_len):
    # distinct content so every document can be found again
    return [np.arange(i * 10_000, i * 10_000 + int(rng.integers(1, max_len + 1))) for i in range(n)]


@pytest.mark.parametrize("row_len,max_len", [(64, 64), (256, 100), (1024, 1024)])
def test_every_document_exactly_once_with_right_boundaries(row_len, max_len):
    rng = np.random.default_rng(0)
    docs = _docs(500, rng, max_len)
    rows = list(BestFitPacker(row_len, pad_id=-1, buffer_docs=32, drop_last=False).pack(iter(docs)))
    seen = []
    for r in rows:
        assert len(r.ids) == row_len
        assert r.cu_seqlens[0] == 0 and r.cu_seqlens[-1] == row_len
        assert np.all(np.diff(r.cu_seqlens) > 0)
        segments = [r.ids[a:b] for a, b in zip(r.cu_seqlens[:-1], r.cu_seqlens[1:])]
        real = segments[: r.num_docs]
        tail = segments[r.num_docs :]
        assert all((t == -1).all() and len(t) <= PAD_SEGMENT for t in tail), "padding: short tail segments"
        assert sum(len(t) for t in tail) == row_len - r.num_real_tokens
        assert sum(len(s) for s in real) == r.num_real_tokens
        seen += [tuple(s) for s in real]
    assert sorted(seen) == sorted(tuple(d) for d in docs)


def test_rows_are_nearly_full_with_a_buffer():
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.lognormal(np.log(600), 1.0, 5000).astype(int), 1, 8192)
    docs = [np.ones(n, dtype=np.int64) for n in lengths]
    rows = list(BestFitPacker(4 * 8192, pad_id=0, buffer_docs=256).pack(iter(docs)))
    eff = sum(r.num_real_tokens for r in rows[:-3]) / (len(rows[:-3]) * 4 * 8192)
    assert eff > 0.99, eff


def test_drop_last_drops_only_a_remainder_smaller_than_a_row():
    docs = [np.ones(10, dtype=np.int64)] * 25  # 250 tokens, rows of 100
    rows = list(BestFitPacker(100, pad_id=0, drop_last=True).pack(iter(docs)))
    assert [r.num_real_tokens for r in rows] == [100, 100]
    rows = list(BestFitPacker(100, pad_id=0, drop_last=False).pack(iter(docs)))
    assert [r.num_real_tokens for r in rows] == [100, 100, 50]


def test_a_document_longer_than_a_row_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        list(BestFitPacker(8, pad_id=0).pack(iter([np.ones(9, dtype=np.int64)])))


def test_rows_stay_full_with_short_documents_by_default():
    """The default buffer is rows' worth of tokens, not a document count: clinical notes of a few hundred
    tokens fill 98,304-token rows (a 192-document buffer, the old default here, filled about half)."""
    rng = np.random.default_rng(3)
    docs = [np.ones(int(n), dtype=np.int64) for n in rng.integers(20, 500, 40_000)]
    rows = list(BestFitPacker(12 * 8192, pad_id=0).pack(iter(docs)))
    fill = [r.num_real_tokens / (12 * 8192) for r in rows]
    assert len(rows) > 20 and min(fill) > 0.999
