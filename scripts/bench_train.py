"""Training throughput of FlexBERT (full steps through the real data path) against Hugging Face ModernBERT.

The machinery is `flex_bert.bench` (timing, synthetic corpora, the HF baselines, the report); this is its
command line. Configurations (one packed row of micro x max_seq_len tokens per step):
  base@1024   FlexBERT-base,  rows of 96 x 1024 = 98,304 tokens   HF full: 1024 x 32
  base@8192   FlexBERT-base,  rows of 12 x 8192 = 98,304 tokens   HF full: 8192 x 4
  large@8192  FlexBERT-large, rows of  7 x 8192 = 57,344 tokens   HF full: 8192 x 2
Documents: random ids, log-normal lengths (median 600, clipped to 50..8192), cut to the context as the
converter does. Baselines: HF full (full-length rows of random ids) and HF padded (FlexBERT's own masked
documents, padded per micro-batch). Tokens/s count real tokens; MFU's formula is printed first.

Also printed: step time (mean, and median from CUDA events), peak memory, packing efficiency, data-loader
stall, the last step's loss (the JSON has each timed step's, `losses`), and graphs compiled during the timed
steps (should be 0: warm-up runs until a step compiles nothing, up to 3x --warmup; --log-recompiles says why).

Usage (GPU, everything):  python scripts/bench_train.py --json $OUT/bench.json
      subset / options: --configs base@1024,large@8192 --steps 20 --warmup 5 --no-compile --backend varlen
                        --profile DIR (Chrome trace + kernel time by category of 3 FlexBERT steps) --no-hf
                        --fp8 fp8_mlp fp8_qkv (opt-in FP8 products) --corpus phrases (a learnable text)
CPU smoke test:       python scripts/bench_train.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import sys

import torch

from flex_bert.bench.corpora import CONFIGS, REAL_IDS, TINY, TINY_IDS
from flex_bert.bench.report import MFU_FORMULA, environment, markdown_table, write_json
from flex_bert.bench.timing import Env, log
from flex_bert.bench.train import configure_compiler, run_config
from flex_bert.model import BACKENDS
from flex_bert.model.config import FP8_SWITCHES


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    ap.add_argument("--steps", type=int, help="timed FlexBERT steps (default 20; tiny 2)")
    ap.add_argument("--warmup", type=int, help="untimed FlexBERT steps, at least (default 5; tiny 1)")
    ap.add_argument("--hf-steps", type=int, help="timed steps per HF baseline (default 6; tiny 1)")
    ap.add_argument(
        "--hf-warmup", type=int, help="untimed steps per HF baseline, at least (default 2; tiny 1)"
    )
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile_layers() / torch.compile (default on; off with --tiny)",
    )
    ap.add_argument(
        "--backend", choices=sorted(BACKENDS), help="attention_backend override (default: config's)"
    )
    ap.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="FlexBERT: fused_kernels (FlexBERT's Triton kernels; default on)",
    )
    ap.add_argument(
        "--corpus",
        choices=["random", "phrases"],
        default="random",
        help="documents of uniformly random ids, or of Zipf-drawn random phrases (learnable: for loss curves)",
    )
    ap.add_argument(
        "--fp8",
        nargs="+",
        choices=FP8_SWITCHES,
        default=(),
        help="FlexBERT: FP8 switches to turn on (fp8_mlp: the MLP block's products, kernels/fp8_mlp.py; fp8_qkv: "
        "the QKV projection's forward, kernels/fused_qkv.py; Hopper)",
    )
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="FlexBERT: the encoder's training passes as CUDA graphs (train/cuda_graphs.pretraining_graphs)",
    )
    ap.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True, help="run the HF baselines")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--profile", metavar="DIR", help="torch.profiler trace of 3 FlexBERT steps per config")
    ap.add_argument("--json", metavar="OUT", help="write all results as JSON (rewritten after each config)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model on a 128 context (CPU smoke test)")
    ap.add_argument("--log-recompiles", action="store_true", help="print why each graph was recompiled")
    ap.add_argument(
        "--compile-tuning",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="FlexBERT: compile_layers(tune=...), Inductor's coordinate-descent tuning (default off, as in training)",
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=400.0,
        help="seconds; past it, remaining configurations / HF baselines are skipped",
    )
    args = ap.parse_args(argv)
    tiny = args.tiny
    for key, big, small in (("steps", 20, 2), ("warmup", 5, 1), ("hf_steps", 6, 1), ("hf_warmup", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, small if tiny else big)
    args.compile = (not tiny) if args.compile is None else args.compile
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown and not tiny:
        ap.error(f"unknown --configs {sorted(unknown)}; choose from {list(CONFIGS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    env = Env(torch.device(args.device))
    header = environment(env)
    configure_compiler(args.log_recompiles)
    benches = [TINY] if args.tiny else [CONFIGS[c] for c in args.configs.split(",")]
    ids = TINY_IDS if args.tiny else REAL_IDS
    log(f"bench_train: {header}; configs {[b.name for b in benches]}; compile={args.compile}; HF={args.hf}")
    log(MFU_FORMULA)
    results: list[dict] = []
    for bench in benches:
        if env.elapsed() > args.time_budget:
            log(f"[{bench.name}] skipped: past the time budget ({args.time_budget:.0f} s)")
            results.append({"config": bench.name, "kind": "FlexBERT", "error": "skipped (time budget)"})
            continue
        results += run_config(bench, args, env, ids)
        if args.json:
            write_json(args.json, header, args, results)
    table = markdown_table(results, header)
    log(f"\nSummary (elapsed {env.elapsed():.0f} s):\n{table}")
    if args.json:
        write_json(args.json, header, args, results, table)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
