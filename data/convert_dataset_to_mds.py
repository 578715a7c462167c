"""Convert a CSV / JSONL / Parquet / text dataset into a tokenized MDS folder for FlexBERT pre-training.

    python data/convert_dataset_to_mds.py --dataset train/dataset1.csv --row_count 42 \
        --out_token_counts ../tokenized_datasets/train/token_counts.txt --out_dir ../tokenized_datasets/train/

writes ../tokenized_datasets/train/dataset1/{index.json,shard.*.mds} and, beside it, dataset1.conversion.json
(counts, skips, tokenizer fingerprint). Then merge the folders: python data/merge_index.py ROOT.
Each document is tokenized once and cut into [CLS] ... [SEP] samples of at most --max_seq_len tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import flex_bert  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flex_bert.data.convert import ConvertConfig, convert_dataset, summary_line
from flex_bert.data.tokenize import WorkerDied


def _count(text: str) -> int:
    """An integer, optionally with a K/M/B suffix: 500M = 500,000,000."""
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 500000000 or 500M, got {text!r}") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def parse_args(argv=None) -> ConvertConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a file, a directory or a quoted glob (sorted order)")
    p.add_argument(
        "--out_dir", required=True, help="writes OUT_DIR/<name>/ and OUT_DIR/<name>.conversion.json"
    )
    p.add_argument("--row_count", type=_count, help="number of input rows, only for the progress bar's ETA")
    p.add_argument("--out_token_counts", help="append '<dataset> <token count>' to this file")
    p.add_argument("--tokenizer", default=ConvertConfig.tokenizer, help="hub name or local folder")
    p.add_argument("--text_column", help="default: 'text', then 'notes'")
    p.add_argument(
        "--max_seq_len",
        type=int,
        default=ConvertConfig.max_seq_len,
        help="sample length, [CLS] and [SEP] included",
    )
    p.add_argument("--num_workers", type=int, help="tokenizing processes (default: all cores)")
    p.add_argument("--compression", default="none", help="MDS shard compression (default none)")
    p.add_argument("--min_chars", type=int, default=0, help="drop (and count) shorter documents")
    p.add_argument("--max_tokens", type=_count, help="keep whole documents up to this many tokens")
    p.add_argument(
        "--take_from",
        choices=["start", "end"],
        default="start",
        help="with --max_tokens: the first or the last documents of the input order",
    )
    p.add_argument("--name", help="dataset folder name (default: the file's stem)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument(
        "--on_error",
        choices=["fail", "skip"],
        default="fail",
        help="a malformed or undecodable row: stop with an error naming it, or count and skip it",
    )
    p.add_argument("--eval_fraction", type=float, default=0.0, help="hold out this fraction of documents")
    p.add_argument("--eval_out_dir", help="where the held-out folder goes (default OUT_DIR/../eval)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--batch_rows", type=int, default=256, help="rows per batch sent to a worker")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    return ConvertConfig(
        dataset=a.dataset,
        out_dir=a.out_dir,
        tokenizer=a.tokenizer,
        text_column=a.text_column,
        max_seq_len=a.max_seq_len,
        num_workers=a.num_workers,
        compression=a.compression,
        min_chars=a.min_chars,
        max_tokens=a.max_tokens,
        take_from=a.take_from,
        name=a.name,
        overwrite=a.overwrite,
        on_error=a.on_error,
        row_count=a.row_count,
        out_token_counts=a.out_token_counts,
        eval_fraction=a.eval_fraction,
        eval_out_dir=a.eval_out_dir,
        seed=a.seed,
        progress=not a.no_progress,
        batch_rows=a.batch_rows,
    )


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        stats = convert_dataset(cfg)
    except (ValueError, OSError, WorkerDied) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no dataset folder was written", file=sys.stderr)
        return 130
    for role, s in stats.items():
        parent = Path(cfg.out_dir) if role == "train" else None
        folder = parent / s["name"] if parent else f"{role} split {s['name']}"
        print(summary_line(s, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
