"""flex_bert.bench, the benchmark machinery, on the CPU: each piece checked against facts computed here."""

import itertools
import math

import numpy as np
import pytest
import torch

from flex_bert.bench import hf_baseline, report, timing
from flex_bert.bench.corpora import TINY, TINY_IDS, Bench, make_loader, packed_dataset, synthetic_documents
from flex_bert.data.masking import IGNORE_INDEX


def test_synthetic_documents_are_framed_in_range_and_cut_to_the_context():
    docs = synthetic_documents(20_000, 64, seed=1, vocab_low=5, vocab_high=99, cls_id=1, sep_id=2, median=60)
    assert sum(map(len, docs)) >= 20_000 * 0.9
    assert all(len(d) <= 64 and d.dtype == np.uint16 for d in docs)
    assert all(d[0] == 1 and d[-1] == 2 for d in docs)
    inner = np.concatenate([d[1:-1] for d in docs])
    assert inner.min() >= 5 and inner.max() <= 99
    assert sum(len(d) == 64 for d in docs) > 1, "documents longer than the context are cut into full pieces"
    again = synthetic_documents(20_000, 64, seed=1, vocab_low=5, vocab_high=99, cls_id=1, sep_id=2, median=60)
    assert all(np.array_equal(a, b) for a, b in zip(docs, again)), "a seed gives the same corpus"


def test_phrase_documents_are_made_of_few_fixed_phrases():
    """The learnable corpus: in range and framed as the random one, but its text is a sequence of at most
    `phrases` distinct 8-token phrases: few distinct 8-grams (the random one of the same size: nearly all)."""
    kw = dict(seed=1, vocab_low=5, vocab_high=30_000, cls_id=1, sep_id=2, median=60, max_doc_len=10_000)
    docs = synthetic_documents(50_000, 100_000, phrases=16, **kw)
    assert all(d[0] == 1 and d[-1] == 2 for d in docs)
    text = np.concatenate([d[1:-1] for d in docs])  # documents cut the phrase stream at any token
    grams = {tuple(text[i : i + 8]) for i in range(0, len(text) - 8)}
    assert text.min() >= 5 and text.max() <= 30_000
    # a window is a suffix of one phrase and a prefix of the next, or crosses one of the documents' seams
    assert len(grams) <= 16 * 16 * 8 + 7 * len(docs)
    random_grams = {tuple(t[i : i + 8]) for t in [np.concatenate([d[1:-1] for d in synthetic_documents(
        50_000, 100_000, **kw)])] for i in range(0, len(t) - 8)}  # fmt: skip
    assert len(random_grams) > 5 * len(grams)


def _documents(batch: dict) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each document of a packed batch, cut by its document lengths."""
    out = []
    for r, lengths in enumerate(batch["doc_lengths"]):
        ends = np.cumsum([0, *lengths])
        for a, b in zip(ends, ends[1:]):
            out.append((batch["input_ids"][r, a:b].tolist(), batch["labels"][r, a:b].tolist()))
    return out


def test_padded_batch_holds_exactly_the_packed_documents():
    docs = synthetic_documents(
        6_000, 128, vocab_low=5, vocab_high=500, cls_id=1, sep_id=2, max_doc_len=100, median=40
    )
    batch = next(iter(packed_dataset(docs, TINY.row_len, TINY.max_seq_len, TINY_IDS, burn_in=3)))
    expected = _documents(batch)
    assert len(expected) >= 6
    padded = hf_baseline.padded_batch(batch, 3, TINY_IDS.pad, np.random.default_rng(0), pin=False)
    got = []
    for mb in padded["micro"]:
        assert mb["input_ids"].shape[1] % 8 == 0 and len(mb["input_ids"]) in (3, 4)
        for ids, lab, mask in zip(mb["input_ids"], mb["labels"], mb["attention_mask"]):
            n = int(mask.sum())
            assert mask[:n].all() and (ids[n:] == TINY_IDS.pad).all() and (lab[n:] == IGNORE_INDEX).all()
            got.append((ids[:n].tolist(), lab[:n].tolist()))
        assert mb["num_labelled"] == int((mb["labels"] != IGNORE_INDEX).sum())
    assert sorted(got) == sorted(expected)
    assert padded["num_tokens"] == sum(batch["doc_lengths"][0]) == batch["num_tokens"]
    assert padded["num_labelled"] == sum(batch["num_labelled"])


def test_full_batch_is_full_rows_with_about_30_percent_labelled():
    bench = Bench("t", "tiny", 256, 1, 256, 8)
    env = timing.Env(torch.device("cpu"))
    batch = hf_baseline.full_batch(bench, TINY_IDS, env)
    (mb,) = batch["micro"]
    assert mb["input_ids"].shape == (8, 256) and mb["attention_mask"].all()
    labelled = mb["labels"] != IGNORE_INDEX
    assert torch.equal(mb["labels"][labelled], mb["input_ids"][labelled])
    assert abs(labelled.float().mean().item() - 0.3) < 0.03
    assert batch["doc_lengths"] == [256] * 8 and batch["num_tokens"] == batch["slots"] == 2048


def test_loader_yields_packed_rows_of_the_bench_shape():
    batches = list(itertools.islice(make_loader(TINY, TINY_IDS, 3, workers=0, pin=False), 3))
    assert len(batches) == 3
    for b in batches:
        assert b["input_ids"].shape == (1, TINY.row_len)
        assert sum(b["doc_lengths"][0]) == b["num_tokens"] <= TINY.row_len


def test_run_timed_warms_up_while_compiling_then_times_the_given_steps(monkeypatch):
    graphs = iter(range(100))
    compiles = {"left": 2}  # the first two steps compile a graph

    def counter():
        return compiles["graphs"]

    compiles["graphs"] = next(graphs)
    monkeypatch.setattr(timing, "compiled_graphs", counter)

    def step(batch):
        if compiles["left"]:
            compiles["left"] -= 1
            compiles["graphs"] = next(graphs)
        return torch.tensor(float(batch))

    result = timing.run_timed(timing.Env(torch.device("cpu")), iter(range(10)), step, warmup=1, steps=4)
    assert result.warmup_steps == 3, "warm-up runs on (up to 3x) while the last step compiled"
    assert result.warmup_graphs == 2 and result.new_graphs == 0
    assert result.batches == [3, 4, 5, 6] and result.losses == [3.0, 4.0, 5.0, 6.0]
    assert result.seconds > 0 and 0 <= result.waited <= result.seconds


def test_warm_up_stops_at_three_times_its_steps_when_every_step_compiles(monkeypatch):
    n = iter(range(100))
    monkeypatch.setattr(timing, "compiled_graphs", lambda: next(n))
    assert timing.warm_up(iter(range(100)), lambda b: None, 2) == 6


def test_guarded_turns_a_failure_into_a_result():
    def boom():
        raise RuntimeError("no")

    assert timing.guarded("c", "k", boom) == {"config": "c", "kind": "k", "error": "RuntimeError: no"}
    assert timing.guarded("c", "k", lambda: {"ok": 1}) == {"ok": 1}


def test_summary_ratios_and_table():
    t = timing.Timing([], seconds=2.0, waited=0.5, warmup_seconds=1.0, losses=[1.5], new_graphs=0,
                      warmup_graphs=1, warmup_steps=1, median_step_ms=1000.0)  # fmt: skip
    stats = [{"num_tokens": 300, "slots": 400, "num_labelled": 90, "doc_lengths": [100, 200]}] * 2
    cfg = __import__("flex_bert.bench.train", fromlist=["flex_config"]).flex_config("tiny", None)
    flex = report.summarize("FlexBERT", TINY, cfg, t, stats, timing.Env(torch.device("cpu")))
    assert flex["tokens_per_s"] == 300.0 and flex["token_efficiency"] == 0.75 and flex["loader_stall"] == 0.25
    assert flex["step_ms"] == 1000.0 and flex["peak_gib"] is None
    hf_full = {**flex, "kind": "HF full 128x4", "tokens_per_s": 100.0}
    hf_padded = {"config": TINY.name, "kind": "HF padded", "error": "OOM"}
    results = [flex, hf_full, hf_padded]
    report.add_ratios(results)
    assert flex["vs_hf_full"] == 3.0 and "vs_hf_padded" not in flex
    table = report.markdown_table(results, {"date": "d", "gpu": "g", "torch": "t"})
    lines = table.splitlines()
    assert len(lines) == 5 and "| tiny@128 | FlexBERT | 300 | " in lines[2] and "| 3.00x | - |" in lines[2]
    assert "| OOM |" in lines[4]
    assert math.isfinite(flex["mfu"]) and flex["mfu"] > 0


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_flex_config_sizes(size):
    from flex_bert.bench.train import flex_config

    cfg = flex_config(size, "sdpa", fused=False)
    assert cfg.attention_backend == "sdpa" and cfg.fused_kernels is False
    assert cfg.hidden_size == {"tiny": 64, "base": 768, "large": 1024}[size]


def test_useful_pairs_counts_the_allowed_query_key_pairs():
    from flex_bert.bench.attention import useful_pairs

    lengths = [1, 5, 9, 20]
    for window in (None, 2, 4, 8):
        half = None if window is None else window // 2
        brute = sum(
            1 for L in lengths for i in range(L) for j in range(L) if half is None or abs(i - j) <= half
        )
        assert useful_pairs(lengths, window) == brute


def test_packed_lengths_fill_the_row_exactly():
    from flex_bert.bench.corpora import packed_lengths

    lengths = packed_lengths(50_000, seed=3, hi=1024)
    assert sum(lengths) == 50_000 and max(lengths) <= 1024 and min(lengths[:-1]) >= 50


def test_distributed_compare_and_verdict():
    from flex_bert.bench.distributed import LOSS_RTOL, compare, passed

    ref = [{"batch": b, "tokens": 100 * b, "loss": 10.0 - b} for b in (1, 2, 3)]
    same = compare(ref, [dict(r) for r in ref])
    assert same["max_rel_diff"] == 0 and passed(same)
    drift = [dict(r) for r in ref]
    drift[2]["loss"] = ref[2]["loss"] * (1 + 2 * LOSS_RTOL)
    assert not passed(compare(ref, drift))
    other_tokens = [dict(r, tokens=r["tokens"] + 1) for r in ref]
    assert not passed(compare(ref, other_tokens))
