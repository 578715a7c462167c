"""MLM masking statistics against the 80/10/10 rule, specials never masked, whole words kept whole."""

import numpy as np
import pytest

from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens

SPEC = MaskingSpec(mask_token_id=4, vocab_size=1000, special_ids=(0, 1, 2, 3, 4))


def _doc(n, rng):
    ids = rng.integers(5, 1000, n)
    ids[0], ids[-1] = 1, 2  # [CLS] ... [SEP]
    return ids


@pytest.mark.parametrize("p", [0.15, 0.3])
def test_selection_and_80_10_10(p):
    rng = np.random.default_rng(0)
    ids = _doc(400_000, rng)
    out, labels = mask_tokens(ids, p, SPEC, np.random.default_rng(1))
    sel = labels != IGNORE_INDEX
    n = len(ids) - 2
    # binomial: 5 sigma bounds
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(sel.sum() - n * p) < 5 * sigma
    assert np.array_equal(labels[sel], ids[sel]), "labels must hold the original ids"
    assert np.array_equal(out[~sel], ids[~sel]), "unselected tokens must be untouched"
    k = sel.sum()
    masked = (out[sel] == 4).sum()
    kept = (out[sel] == ids[sel]).sum()
    other = k - masked - kept
    # random replacements can hit the original id or [MASK] (1/1000 each): allow for it
    for got, share in ((masked, 0.8), (kept, 0.1), (other, 0.1)):
        assert abs(got / k - share) < 0.01, (got / k, share)


def test_special_tokens_never_selected():
    ids = np.array([1] + [7] * 50 + [2] + [3] * 20)  # doc then padding
    for seed in range(50):
        _, labels = mask_tokens(ids, 0.9, SPEC, np.random.default_rng(seed))
        assert (labels[ids < 5] == IGNORE_INDEX).all()


def test_deterministic_for_a_seed():
    ids = _doc(1000, np.random.default_rng(0))
    a = mask_tokens(ids, 0.3, SPEC, np.random.default_rng(5))
    b = mask_tokens(ids, 0.3, SPEC, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_whole_word_masks_every_piece_of_a_word():
    # ids 10..19 start a word, 20..29 continue one
    word_start = np.zeros(1000, dtype=bool)
    word_start[10:20] = True
    spec = MaskingSpec(mask_token_id=4, vocab_size=1000, special_ids=(0, 1, 2, 3, 4), word_start=word_start)
    rng = np.random.default_rng(0)
    words = [
        [int(rng.integers(10, 20))] + list(rng.integers(20, 30, rng.integers(0, 4))) for _ in range(20000)
    ]
    ids = np.array([1] + [t for w in words for t in w] + [2])
    out, labels = mask_tokens(ids, 0.3, spec, np.random.default_rng(1), whole_word=True)
    pos = 1
    n_sel = 0
    for w in words:
        span = labels[pos : pos + len(w)] != IGNORE_INDEX
        assert span.all() or not span.any(), "a word is masked whole or not at all"
        if span.all():
            n_sel += 1
            assert (out[pos : pos + len(w)] == 4).all()
        pos += len(w)
    assert abs(n_sel / len(words) - 0.3) < 0.02


def test_bad_probability_is_an_error():
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(np.arange(5, 10), 1.5, SPEC, np.random.default_rng(0))
