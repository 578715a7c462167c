"""Multi-GPU checks through the real path (`composer -n N main.py yamls/phase1.yml ...`), against 1 GPU.

Everything runs the recipe's own YAML (`yamls/phase1.yml`) with command-line overrides: no load_path (a fresh
model), the bundled demo corpus (generated, tokenized by `convert_dataset` with the tiny tokenizer) instead
of the user's data, and attn_out_dropout_prob 0 (dropout draws differ per rank, so it would hide what is
compared). Parts (``--parts``, comma separated):

  parity   a tiny and the base config (22 layers x 768, eager), N GPUs vs 1 GPU with the same global batch
           and micro-batch: per-step token counts must be identical (one packed stream, each rank trains on
           its rows of every global batch), and per-step losses equal to bf16 tolerance (the only difference
           is the order in which gradients are summed).
  resume   tiny config, autoresume with checkpoints every 4 batches: N GPUs for batches 1-4, then 1 GPU for
           5-8, then N GPUs for 9-12, against one uninterrupted N-GPU run of 12 batches (equal losses and
           token counts: the data continues exactly at another world size).
  scaling  base config compiled (`compile_model: true`), at 1024 (micro-batch 96 x 1024) and 8192 (12 x 8192):
           tokens/s of N GPUs vs 1 GPU with the same micro-batch (global batch = N x micro), from composer's
           SpeedMonitor over the last 10 of ``--steps`` batches.

Usage (device machine, N = 2):  python scripts/check_distributed.py --gpus 2 --out $OUT/dist --parts parity,resume
                                python scripts/check_distributed.py --gpus 2 --out $OUT/dist --parts scaling
CPU (gloo; tiny configs only, for a dry run of the script):  python scripts/check_distributed.py --cpu --out /tmp/d
Writes ``OUT/results.json`` and each run's ``metrics.jsonl`` and log; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from flex_bert.bench.distributed import Runner, build_data, compare, passed

ROOT = Path(__file__).resolve().parents[1]

YAML = ROOT / "yamls" / "phase1.yml"
TINY = [  # the demo's model shape
    "model.model_config.num_hidden_layers=4",
    "model.model_config.hidden_size=64",
    "model.model_config.intermediate_size=96",
    "model.model_config.num_attention_heads=4",
    "model.model_config.sliding_window=32",
    "model.model_config.compile_model=false",
]


def part_parity(r: Runner, roots: dict[int, Path], gpus: int, cpu: bool) -> dict:
    results = {}
    cases = {"tiny": (128, TINY, 4, 30)}  # name: (max_seq_len, model overrides, micro, steps)
    if not cpu:
        cases["base"] = (1024, ["model.model_config.compile_model=false"], 8, 20)
    for case, (L, model, micro, steps) in cases.items():
        data = roots[1024 if L == 1024 else min(roots)]
        over = [
            f"data_local={data}",
            f"max_seq_len={L}",
            *model,
            f"device_train_microbatch_size={micro}",
            f"global_train_batch_size={micro * 2 * gpus}",  # two micro-batches per GPU on N GPUs
            f"max_duration={steps}ba",
        ]
        one = r.run(f"parity-{case}-1gpu", 1, over)
        many = r.run(f"parity-{case}-{gpus}gpu", gpus, over)
        results[case] = compare(one, many) | {"passed": None}
        results[case]["passed"] = passed(results[case])
    return results


def part_resume(r: Runner, roots: dict[int, Path], gpus: int) -> dict:
    over = [
        f"data_local={roots[min(roots)]}",
        "max_seq_len=128",
        *TINY,
        "device_train_microbatch_size=4",
        f"global_train_batch_size={4 * 2 * gpus}",
        "scheduler.name=cosine_with_warmup",  # a schedule that moves, so the scheduler's state matters
        "scheduler.t_warmup=2ba",
        "scheduler.t_max=12ba",
        "scheduler.alpha_f=0.1",
    ]
    ref = r.run("resume-reference", gpus, [*over, "max_duration=12ba"])
    folder = r.out / "resume-legs"
    legs = []
    for n, until in ((gpus, 4), (1, 8), (gpus, 12)):
        recs = r.run(
            f"resume-leg-to-{until}",
            n,
            [*over, f"max_duration={until}ba", "save_interval=4ba", "autoresume=true"],
            save_folder=folder,
        )
        legs = recs  # metrics.jsonl is appended by every leg: the last read holds all of them
    result = compare(ref, legs) | {"legs": f"{gpus} -> 1 -> {gpus} GPUs, 4 batches each"}
    result["passed"] = passed(result)
    return result


SCALING = {1024: 96, 8192: 12}  # max_seq_len: micro-batch (slots), as bench_train.py


def part_scaling(
    r: Runner, roots: dict[int, Path], gpus: int, steps: int, lens: list[int], profile: str = ""
) -> dict:
    """1 GPU vs `gpus` GPUs, same micro-batch per GPU. With `profile`, the `torch_profile` callback traces 3
    batches per run (from batch steps - 15, before the throughput window of the last 10) and the per-rank kernel
    summaries are added to the results; `profile="trace"` also writes Chrome traces."""
    results = {}
    for L in lens:
        micro = SCALING[L]
        per = {}
        for n in sorted({1, gpus}):
            recs = r.run(
                f"scaling-{L}-{n}gpu",
                n,
                [
                    f"data_local={roots[L]}",
                    f"max_seq_len={L}",
                    f"device_train_microbatch_size={micro}",
                    f"global_train_batch_size={micro * n}",
                    f"max_duration={steps}ba",
                    "model.model_config.compile_model=true",
                    *([f"callbacks.torch_profile.start_batch={steps - 15}"] if profile else []),
                    *(["callbacks.torch_profile.trace=true"] if profile == "trace" else []),
                ],
            )
            last = recs[-1]
            per[n] = {
                "tokens_per_s": last["throughput/tokens_per_sec"],
                "batches_per_s": last["throughput/batches_per_sec"],
                "mfu": last.get("throughput/device/mfu"),
            }
            if profile:
                folder = r.out / f"scaling-{L}-{n}gpu" / "profile"
                per[n]["profile"] = [
                    json.loads(f.read_text()) for f in sorted(folder.glob("kernels_rank*.json"))
                ]
        per["speedup"] = per[gpus]["tokens_per_s"] / per[1]["tokens_per_s"]
        per["passed"] = per["speedup"] >= 0.95 * gpus
        results[f"base@{L}"] = per
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--parts", default="parity,resume")
    p.add_argument("--steps", type=int, default=40, help="batches per scaling run (throughput: the last 10)")
    p.add_argument("--scaling-lens", default="1024,8192", help="max_seq_lens of the scaling part")
    p.add_argument(
        "--profile",
        nargs="?",
        const="summary",
        default="",
        choices=["summary", "trace"],
        help="scaling: torch profiler summary of 3 batches per run (--profile trace: also Chrome traces)",
    )
    p.add_argument("--cpu", action="store_true", help="gloo processes on the CPU, tiny configs only")
    args = p.parse_args()
    parts = args.parts.split(",")
    if args.cpu and "scaling" in parts:
        p.error("scaling needs GPUs")
    if args.profile and args.steps < 25:
        p.error("--profile needs --steps >= 25 (it profiles batches steps-15 .. steps-13)")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty (runs there would autoresume from old checkpoints)")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scaling_lens = [int(x) for x in args.scaling_lens.split(",")] if "scaling" in parts else []
    lens = [128] + ([1024] if not args.cpu and "parity" in parts else []) + scaling_lens
    docs = 400 if args.cpu else (16000 if "scaling" in parts else 3000)
    tok, roots = build_data(args.out / "data", sorted(set(lens)), docs)
    print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    r = Runner(ROOT, YAML, args.out, tok, args.cpu)
    results: dict = {"gpus": args.gpus, "cpu": args.cpu}
    if not args.cpu:  # asked of nvidia-smi: a CUDA context here would hold GPU 0 memory during every run
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"]
        results["device"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
        results["torch"] = version("torch")
    if "parity" in parts:
        results["parity"] = part_parity(r, roots, args.gpus, args.cpu)
    if "resume" in parts:
        results["resume"] = part_resume(r, roots, args.gpus)
    if "scaling" in parts:
        results["scaling"] = part_scaling(r, roots, args.gpus, args.steps, scaling_lens, args.profile)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    checks = [v for k in ("parity", "scaling") for v in results.get(k, {}).values()]
    checks += [results["resume"]] if "resume" in results else []
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
