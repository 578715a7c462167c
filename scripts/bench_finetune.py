"""Fine-tuning throughput: packed FlexBERT sequence classification against the Hugging Face Trainer.

Both sides train the same model from the same random initialisation (ModernBERT-base's shape, built from its
config, no hub: FlexBERT's weights copied into `ModernBertForSequenceClassification`, same names) on the same
synthetic labelled examples, in the same order, with the same optimiser (AdamW, no weight decay, no gradient
clipping), the same linear-decay schedule with 10% warmup and bf16 autocast over fp32 weights:

  FlexBERT    the model + optimizer step loop of `scripts/finetune.py`: each batch laid out flat with
              `cu_seqlens` (data/labelled.py's collate, no padding), `FlexBertForSequenceClassification`
              forward, backward, fused AdamW step. `--flex-compile` compiles the embeddings and each layer
              as compile_layers does (scripts/finetune.py runs eager: prepare compiles MLM models only).
              `--flex-graphs` adds a second FlexBERT run whose encoder passes are CUDA graphs over batches
              padded to token buckets (fine-tuning's default on one GPU, train/cuda_graphs.py), each bucket
              captured before timing.
  HF Trainer  `transformers.Trainer` (optim adamw_torch_fused, bf16) over `ModernBertForSequenceClassification`
              (sdpa), each batch padded to its longest example (rounded up to 8) with an attention mask, in
              the given order (no shuffling). `--hf-compile` sets TrainingArguments.torch_compile.
  HF loop     (extra line) the same padded batches and model in a plain loop: the model's cost without the
              Trainer's own.

Timing: flex_bert.bench.timing's Env (bf16 autocast and synchronisation on a GPU).

Examples: [CLS] + random ids + [SEP], lengths log-normal (median 150, sigma 0.6) clipped to 50..400 tokens
(paragraphs, as in the DAPT/TAPT procedure); 4 labels, 4% of each example's tokens drawn from 16 ids of its
class (about 7 of 170 tokens), and 20% of the labels replaced by another class at random: the signal is weak,
and no model gets below the noise's entropy (0.72 nats), so both sides' losses stay comparable numbers rather
than both reaching zero. Equal batch size (examples per step); the first --warmup steps are not timed
(compilation happens there). Tokens/s counts real tokens only. A speed ratio is printed only where both sides'
mean training loss and their loss on the held-out examples are finite and within LOSS_TOLERANCE of each other
(bf16 rounding differs between the two models); otherwise the line says why, and the exit status is 1.

HF's padded batches under sdpa: in a sliding-window layer, a padding position more than half a window past the
end of its example sees only padding keys, a query row with every key masked. On a GPU, sdpa's kernels can
return NaN for such a row (the CPU's return zeros), and the NaN reaches real tokens in the next layer through
0 * NaN, so training and evaluation diverge. transformers 5 dropped the fix it used to apply to these rows;
`rows_never_empty` applies it again (each such row may see every key: real tokens' outputs do not change).

The Trainer needs `accelerate` (pip install 'accelerate>=1.1', or the project's `.[bench]` extra).

Usage (GPU):  python scripts/bench_finetune.py --batch-size 32 --steps 60 --warmup 10 --json $OUT/ft.json
              [--flex-compile] [--flex-graphs] [--hf-compile] [--no-hf-loop] [--no-trainer]
CPU smoke:    python scripts/bench_finetune.py --tiny --device cpu --steps 2 --warmup 1 --eval-examples 8
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import platform

import numpy as np
import torch

from flex_bert.bench.finetune import (
    TINY,
    batches,
    build_models,
    eval_loss,
    make_examples,
    print_table,
    result,
    run_flex,
    run_hf_loop,
    run_trainer,
    summaries,
)
from flex_bert.model import FlexBertConfig
from flex_bert.train.compilation import compile_encoder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step (both sides)")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before them (compilation)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--flex-compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--hf-compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument(
        "--flex-graphs",
        action="store_true",
        help="add a FlexBERT run with CUDA graphs (as fine-tuning on one GPU)",
    )
    p.add_argument("--trainer", action=argparse.BooleanOptionalAction, default=True, help="the HF Trainer")
    p.add_argument("--hf-loop", action=argparse.BooleanOptionalAction, default=True, help="the extra line")
    p.add_argument("--eval-examples", type=int, default=256, help="held-out examples for the loss check")
    p.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke test)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if min(args.batch_size, args.steps, args.warmup, args.eval_examples) < 1:
        p.error("--batch-size, --steps, --warmup and --eval-examples must be at least 1")
    if args.trainer and importlib.util.find_spec("accelerate") is None:
        p.error(
            "the HF Trainer needs accelerate>=1.1 (pip install 'accelerate>=1.1'); --no-trainer leaves it out"
        )
    return args


def main(argv=None) -> None:
    import tempfile

    args = parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.flex_graphs and device.type != "cuda":
        raise SystemExit("error: --flex-graphs needs a CUDA device (CUDA graphs)")
    bf16 = device.type == "cuda"  # on a CPU, fp32 (a smoke test)
    cfg = FlexBertConfig.from_dict(TINY) if args.tiny else FlexBertConfig.base()
    n_train = (args.warmup + args.steps) * args.batch_size
    examples = make_examples(n_train + args.eval_examples, cfg, seed=0, max_len=cfg.max_position_embeddings)
    train, held_out = batches(examples[:n_train], args.batch_size), examples[n_train:]
    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": "tiny" if args.tiny else "ModernBERT-base shape",
        "precision": "bf16 autocast" if bf16 else "fp32",
        **{
            k: getattr(args, k)
            for k in ("batch_size", "steps", "warmup", "lr", "flex_compile", "flex_graphs", "hf_compile")
        },
        "mean_tokens_per_example": float(np.mean([len(x["input_ids"]) for x in examples[:n_train]])),
    }
    timed = train[args.warmup :]
    results = []
    runs = [("FlexBERT packed", run_flex, True)]
    if args.flex_graphs:
        runs.append(("FlexBERT packed + CUDA graphs", functools.partial(run_flex, graphs=True), True))
    if args.trainer:
        runs.append(("HF Trainer", run_trainer, False))
    if args.hf_loop:
        runs.append(("HF loop", run_hf_loop, False))
    for kind, fn, is_flex in runs:
        flex, hf = build_models(cfg, device)
        model = flex if is_flex else hf
        del flex, hf
        if is_flex and args.flex_compile:
            compile_encoder(model.bert, dynamic=True)
        if kind == "HF loop" and args.hf_compile:
            model = torch.compile(model, dynamic=True)
        with tempfile.TemporaryDirectory() as tmp:
            extra = (tmp,) if fn is run_trainer else ()
            clock, losses = fn(model, train, args, device, bf16, *extra)
        r = result(kind, args, clock, timed, losses, eval_loss(model, held_out, device, is_flex))
        if not is_flex:
            r["attn_implementation"] = model.config._attn_implementation  # sdpa, as asked in build_models
        print(json.dumps(r), flush=True)
        results.append(r)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = summaries(results)
    print_table(header, results, summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results, "summary": summary}, f, indent=1)
    if any(s["speedup"] is None for s in summary.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
