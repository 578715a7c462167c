"""Synthetic corpora for the benchmarks: log-normal document lengths, random ids, and the real packed loader.

Documents are random ids as uint16, `[CLS]` first and `[SEP]` last, log-normal lengths (median 600, sigma 1)
clipped to 50..8192; for a shorter context, longer documents are cut into `[CLS] piece [SEP]` samples as the
converter does (`tokenize.chunk_ids`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from flex_bert.data.loaders import PackedMLMDataset
from flex_bert.data.masking import MaskingSpec
from flex_bert.data.tokenize import chunk_ids

MLM_PROBABILITY = 0.3
BURN_IN_BATCHES = 32  # per loader worker: see BenchPackedDataset


@dataclass(frozen=True)
class Bench:
    """One benchmark configuration: a packed row of ``micro x max_seq_len`` tokens; HF rows of the same size."""

    name: str
    size: str  # base | large | tiny
    max_seq_len: int
    micro: int  # max_seq_len slots per packed row
    hf_seq: int
    hf_batch: int

    @property
    def row_len(self) -> int:
        return self.micro * self.max_seq_len


CONFIGS = {
    b.name: b
    for b in (
        Bench("base@1024", "base", 1024, 96, 1024, 32),
        Bench("base@8192", "base", 8192, 12, 8192, 4),
        Bench("large@8192", "large", 8192, 7, 8192, 2),
    )
}
TINY = Bench("tiny@128", "tiny", 128, 4, 128, 4)


@dataclass(frozen=True)
class Ids:
    """Special ids and the range of random document ids."""

    cls: int
    sep: int
    pad: int
    mask: int
    low: int
    high: int
    replace_vocab: int  # masking draws random replacements from [0, replace_vocab)

    @property
    def spec(self) -> MaskingSpec:
        specials = (self.cls, self.sep, self.pad, self.mask)
        return MaskingSpec(mask_token_id=self.mask, vocab_size=self.replace_vocab, special_ids=specials)


REAL_IDS = Ids(cls=50281, sep=50282, pad=50283, mask=50284, low=5, high=50000, replace_vocab=50280)
TINY_IDS = Ids(cls=1, sep=2, pad=3, mask=4, low=5, high=500, replace_vocab=500)


def document_lengths(n: int, rng: np.random.Generator, median: int = 600, lo: int = 50, hi: int = 8192):
    """Log-normal document lengths (sigma 1), clipped to [lo, hi]."""
    return np.clip(rng.lognormal(np.log(median), 1.0, n), lo, hi).astype(np.int64)


def packed_lengths(n_tokens: int, seed: int, hi: int = 8192) -> list[int]:
    """Log-normal document lengths (median 600, sigma 1) clipped to [50, hi], the last cut to fill the row."""
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < n_tokens:
        n = int(np.clip(rng.lognormal(np.log(600), 1.0), 50, hi))
        lengths.append(min(n, n_tokens - total))
        total += lengths[-1]
    return lengths


PHRASE_LEN = 8  # tokens a phrase of the learnable synthetic text


def synthetic_documents(
    n_tokens: int,
    max_seq_len: int,
    seed: int = 0,
    *,
    vocab_low: int = REAL_IDS.low,
    vocab_high: int = REAL_IDS.high,
    cls_id: int = REAL_IDS.cls,
    sep_id: int = REAL_IDS.sep,
    max_doc_len: int = 8192,
    median: int = 600,
    phrases: int = 0,
) -> list[np.ndarray]:
    """About ``n_tokens`` tokens of `[CLS] ... [SEP]` uint16 documents, cut to ``max_seq_len``: uniformly random
    ids, or with ``phrases`` > 0 a learnable text: a sequence of that many fixed random 8-token phrases drawn
    Zipf-distributed (a masked token is predictable from its phrase), so that losses fall as training goes."""
    rng = np.random.default_rng(seed)
    lengths = document_lengths(max(1, int(n_tokens / (1.6 * median))) + 16, rng, median, hi=max_doc_len)
    lengths = lengths[: max(1, int(np.searchsorted(np.cumsum(lengths), n_tokens)) + 1)]
    if phrases:
        table = rng.integers(vocab_low, vocab_high + 1, (phrases, PHRASE_LEN), dtype=np.uint16)
        picks = (rng.zipf(1.2, int(lengths.sum()) // PHRASE_LEN + 1) - 1) % phrases
        pool = table[picks].reshape(-1)
    else:
        pool = rng.integers(vocab_low, vocab_high + 1, int(lengths.sum()), dtype=np.uint16)
    docs, pos = [], 0
    for n in lengths.tolist():
        inner = pool[pos : pos + n - 2]
        pos += n
        if n <= max_seq_len:
            doc = np.empty(n, dtype=np.uint16)
            doc[0], doc[1:-1], doc[-1] = cls_id, inner, sep_id
            docs.append(doc)
        else:
            docs.extend(chunk_ids(inner, max_seq_len, cls_id, sep_id))
    return docs


class BenchPackedDataset(PackedMLMDataset):
    """`PackedMLMDataset` whose DataLoader workers drop their first ``burn_in`` batches.

    Burn-in: best fit takes the longest buffered documents first, so the first rows after a cold start hold
    mostly long documents (at a 1024 context, nothing but 1024-token pieces); after a few buffers' worth the
    row mix is the steady state a training run sees. Skipping costs the workers a fraction of a second.
    (Workers share the packing stream and each builds every workers-th batch, as in training.)
    """

    def __init__(self, documents, *, burn_in: int, **kwargs):
        super().__init__(documents, **kwargs)
        self.burn_in = burn_in

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.burn_in, None)


def packed_dataset(
    docs, row_len: int, max_seq_len: int, ids: Ids = REAL_IDS, seed: int = 0, burn_in: int = 0
):
    """The training dataset over in-memory documents (MDS-like samples: ``{"input_ids": ndarray}``)."""
    return BenchPackedDataset(
        [{"input_ids": d} for d in docs],
        burn_in=burn_in,
        rows_per_batch=1,
        row_len=row_len,
        max_seq_len=max_seq_len,
        pad_id=ids.pad,
        masking=ids.spec,
        mlm_probability=MLM_PROBABILITY,
        seed=seed,
    )


def make_loader(
    bench: Bench, ids: Ids, n_batches: int, workers: int, pin: bool, seed: int = 0, phrases: int = 0
) -> DataLoader:
    """The real loader over enough in-memory documents for ``n_batches`` batches after burn-in (random ids, or
    ``phrases``: `synthetic_documents`' learnable text)."""
    tiny = bench.size == "tiny"
    burn_in = 2 if tiny else BURN_IN_BATCHES
    n_tokens = int((n_batches + max(1, workers) * (burn_in + 2)) * bench.row_len * 1.1)
    docs = synthetic_documents(
        n_tokens,
        bench.max_seq_len,
        seed,
        vocab_low=ids.low,
        vocab_high=ids.high,
        cls_id=ids.cls,
        sep_id=ids.sep,
        max_doc_len=2 * bench.max_seq_len if tiny else 8192,
        median=60 if tiny else 600,
        phrases=phrases,
    )
    dataset = packed_dataset(docs, bench.row_len, bench.max_seq_len, ids, seed, burn_in)
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin)
