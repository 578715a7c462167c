"""Throughput of the training data path on one CPU process: best-fit packing + MLM masking.

What is timed is exactly what a DataLoader worker runs (`PackedMLMDataset`): `BestFitPacker.pack` over a
stream of documents, then `PackedMLMDataset.collate` (`mask_tokens` on every row, labels, tensors).

Documents: log-normal lengths (median 600, sigma 1), clipped to 50..8192, random ids 5..50000 as uint16,
`[CLS]` first and `[SEP]` last, all in memory. For a 1024-token context, documents longer than 1024 are cut
into `[CLS] piece [SEP]` samples of at most 1024 tokens, as the converter does (`tokenize.chunk_ids`).

Layouts (one packed row per device batch, as the training YAMLs use):
  12x8192   rows of 12 x 8192 = 98,304 tokens, documents up to 8192 tokens
  96x1024   rows of 96 x 1024 = 98,304 tokens, documents up to 1024 tokens

Prints, per layout, real (non-padding) tokens/s for packing alone, masking alone (collate on packed rows) and
both together (iterating `PackedMLMDataset`), plus packing efficiency (real tokens / row slots). Target:
>= 5M tokens/s together, per process.

Usage: python scripts/bench_packing.py [--tokens 50000000] [--json OUT.json] [--layouts 12x8192,96x1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from flex_bert.bench.corpora import packed_dataset, synthetic_documents

LAYOUTS = {"12x8192": (12, 8192), "96x1024": (96, 1024)}


def bench_layout(docs: list[np.ndarray], micro: int, max_seq_len: int) -> dict:
    row_len = micro * max_seq_len
    ds = packed_dataset(docs, row_len, max_seq_len)

    t0 = time.perf_counter()
    rows = list(ds.packer.pack(iter(docs)))
    t_pack = time.perf_counter() - t0
    real = sum(r.num_real_tokens for r in rows)

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for r in rows:
        ds.collate([r], [rng])
    t_mask = time.perf_counter() - t0
    del rows

    t0 = time.perf_counter()
    n_batches = real_both = 0
    for batch in ds:
        n_batches += 1
        real_both += batch["num_tokens"]
    t_both = time.perf_counter() - t0
    return {
        "layout": f"{micro}x{max_seq_len}",
        "row_len": row_len,
        "documents": len(docs),
        "rows": n_batches,
        "real_tokens": real,
        "packing_efficiency": real / max(1, n_batches * row_len),
        "pack_tokens_per_s": real / t_pack,
        "mask_tokens_per_s": real / t_mask,
        "both_tokens_per_s": real_both / t_both,
        "buffer": f"{ds.packer.buffer_docs} docs"
        if ds.packer.buffer_docs
        else f"{ds.packer.buffer_rows} rows of tokens",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=50_000_000, help="document tokens per layout")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {list(LAYOUTS)}")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)

    results = []
    for name in args.layouts.split(","):
        micro, max_seq_len = LAYOUTS[name]
        t0 = time.perf_counter()
        docs = synthetic_documents(args.tokens, max_seq_len)
        print(
            f"[{name}] {len(docs):,} documents, {sum(map(len, docs)):,} tokens generated in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        res = bench_layout(docs, micro, max_seq_len)
        results.append(res)
        print(
            f"[{name}] rows of {res['row_len']:,} tokens, {res['rows']} rows, buffer {res['buffer']}: "
            f"pack {res['pack_tokens_per_s'] / 1e6:.2f}M tok/s | mask {res['mask_tokens_per_s'] / 1e6:.2f}M "
            f"tok/s | pack+mask {res['both_tokens_per_s'] / 1e6:.2f}M tok/s | packing efficiency "
            f"{100 * res['packing_efficiency']:.2f}%",
            flush=True,
        )
    slowest = min(r["both_tokens_per_s"] for r in results)
    verdict = "OK" if slowest >= 5e6 else "BELOW TARGET"
    print(f"slowest pack+mask: {slowest / 1e6:.2f}M real tokens/s per process (target >= 5M): {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "target_tokens_per_s": 5e6}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
