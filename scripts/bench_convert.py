"""Benchmark the MDS converter: tokens/s with 1 and N workers, and the BioClinical converter's approach
(one process, one document at a time, through a torch DataLoader with num_workers=0), in one run.

    python scripts/bench_convert.py                     # ~50 MB synthetic corpus, tiny ModernBERT-like tokenizer
    python scripts/bench_convert.py --tokenizer answerdotai/ModernBERT-base --mb 200 --workers 16

Target: N workers >= 0.9 x N x (1 worker). The main process reads and writes while the workers tokenize, so
on a machine with exactly N cores the main process competes with them.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import tempfile
import time
from pathlib import Path

from flex_bert.data.convert import ConvertConfig, convert_dataset
from flex_bert.data.demo_corpus import write_demo_corpus
from flex_bert.data.sources import iter_dataset_texts
from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer


def make_corpus(out: Path, megabytes: float, seed: int = 0) -> Path:
    """A CSV of at least `megabytes` MB: demo documents (both domains), written over and over."""
    parts = write_demo_corpus(out / "parts", seed=seed, docs_per_domain=1000, eval_docs=0)
    docs = [t for key in ("clinical", "finance") for t in iter_dataset_texts(str(parts[key]))]
    path = out / "corpus.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        i = 0
        while f.tell() < megabytes * 1e6:
            writer.writerow([docs[i % len(docs)]])
            i += 1
    return path


def seed_approach(dataset: Path, out: Path, tokenizer: str, max_seq_len: int) -> int:
    """BioClinical's converter, as described in its guide: a DataLoader (num_workers=0) yields one row at a
    time; each document is tokenized alone (add_prefix_space=True), cut, and written. Returns tokens."""
    import numpy as np
    import torch
    from streaming import MDSWriter
    from transformers import AutoTokenizer

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            with open(dataset, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    yield row["text"]

    tok = AutoTokenizer.from_pretrained(tokenizer, add_prefix_space=True)
    loader = torch.utils.data.DataLoader(Rows(), batch_size=None, num_workers=0)
    tokens, step = 0, max_seq_len - 2
    with MDSWriter(out=str(out), columns={"input_ids": "ndarray:uint16"}, size_limit=1 << 26) as writer:
        for text in loader:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            for i in range(0, len(ids), step):
                sample = np.array([tok.cls_token_id, *ids[i : i + step], tok.sep_token_id], dtype=np.uint16)
                writer.write({"input_ids": sample})
                tokens += len(sample)
    return tokens


def ours(dataset: Path, out: Path, tokenizer: str, max_seq_len: int, workers: int) -> int:
    cfg = ConvertConfig(
        dataset=str(dataset),
        out_dir=str(out),
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        num_workers=workers,
        progress=False,
    )
    return convert_dataset(cfg)["train"]["tokens"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="hub name or folder (default: a tiny ModernBERT-like BPE built here)")
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (at least 50 for the record)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max_seq_len", type=int, default=8192)
    p.add_argument("--skip_seed", action="store_true", help="skip the (slow) one-document-at-a-time baseline")
    p.add_argument(
        "--repeats", type=int, default=1, help="run each configuration this many times, keep the best"
    )
    a = p.parse_args()
    import streaming  # noqa: F401  (imports out of the timings: all methods need them)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.time()
        dataset = make_corpus(tmp, a.mb)
        tokenizer = a.tokenizer
        if tokenizer is None:
            tokenizer = str(tmp / "tokenizer")
            parts = tmp / "parts"
            train_bpe_tokenizer([parts / "clinical.csv", parts / "finance.csv"], tokenizer, vocab_size=1024)
        size_mb = dataset.stat().st_size / 1e6
        print(
            f"corpus: {size_mb:.1f} MB CSV ({time.time() - t:.1f} s to generate); tokenizer: {tokenizer}; "
            f"{len(os.sched_getaffinity(0))} cores"
        )
        runs = [("ours", 1), ("ours", a.workers)] + ([] if a.skip_seed else [("seed (DataLoader, 1 doc)", 1)])
        rows = []
        for i, (method, workers) in enumerate(runs):
            best = None
            for r in range(a.repeats):
                out = tmp / f"out{i}_{r}"
                cpu0, t = _cpu_seconds(), time.time()
                if method == "ours":
                    tokens = ours(dataset, out, tokenizer, a.max_seq_len, workers)
                else:
                    tokens = seed_approach(dataset, out / "corpus", tokenizer, a.max_seq_len)
                seconds, cpu = time.time() - t, _cpu_seconds() - cpu0
                if best is None or seconds < best[2]:
                    best = (method, workers, seconds, tokens, tokens / seconds, cpu)
                print(
                    f"  {method}, {workers} worker(s): {seconds:.1f} s wall, {cpu:.1f} s CPU, "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            rows.append(best)

    base = rows[0][4]
    print("\n| method | workers | seconds | tokens | tokens/s | vs ours x1 | MB/s | CPU s | tokens/CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method, workers, seconds, tokens, rate, cpu in rows:
        print(
            f"| {method} | {workers} | {seconds:.1f} | {tokens:,} | {rate:,.0f} | {rate / base:.2f}x | "
            f"{size_mb / seconds:.1f} | {cpu:.1f} | {tokens / cpu:,.0f} |"
        )
    speedup = rows[1][4] / base
    target = 0.9 * a.workers
    verdict = "meets" if speedup >= target else "misses"
    print(
        f"\n{a.workers} workers: {speedup:.2f}x one worker; target {target:.2f}x -> {verdict} it. CPU s counts "
        "this process and its workers; on a shared machine, wall-clock scaling also depends on other load."
    )


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
