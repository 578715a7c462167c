"""Results of the training benchmark: throughput and MFU of a timed run, the printed line, the ratio to each
Hugging Face baseline, the markdown table and the JSON file.

MFU = training FLOPs / (peak FLOP/s x seconds), FLOPs from `flex_bert.model.flops.training_flops_per_token`
(the formula in `MFU_FORMULA`); HF rows use the same formula and the same documents, so MFU compares useful
work. Tokens/s always count real (non-padding) tokens only.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import torch

from flex_bert.model import FlexBertConfig
from flex_bert.model.flops import training_flops_per_token

from .corpora import Bench
from .timing import Env, Timing, log

MFU_FORMULA = (
    "MFU = FLOPs / (989e12 x s); FLOPs per real token = 6 x (Wqkv+Wo+Wi+mlp.Wo of all layers) "
    "+ 6 x (head.dense + decoder VxH) x masked_fraction; + per document of length L per layer "
    "3 x 4 x L x k x H, k = L (global) or min(L, 129) (local)"
)


def summarize(
    kind: str, bench: Bench, cfg: FlexBertConfig, timing: Timing, stats: list[dict], env: Env
) -> dict:
    """Throughput, MFU and efficiency of a timed run; ``stats`` = per-batch counts (num_tokens, slots,
    num_labelled, doc_lengths)."""
    real = sum(s["num_tokens"] for s in stats)
    slots = sum(s["slots"] for s in stats)
    flops = sum(
        training_flops_per_token(cfg, s["doc_lengths"], s["num_labelled"] / s["num_tokens"]) * s["num_tokens"]
        for s in stats
    )
    return {
        "config": bench.name,
        "kind": kind,
        "steps": len(stats),
        "tokens_per_s": real / timing.seconds,
        "step_ms": 1e3 * timing.seconds / len(stats),
        "median_step_ms": timing.median_step_ms,
        "mfu": flops / (env.peak_flops * timing.seconds),
        "flops_per_token": flops / real,
        "peak_gib": env.peak_gib(),
        "real_tokens_per_step": real / len(stats),
        "token_efficiency": real / slots,
        "loader_stall": timing.waited / timing.seconds,
        "warmup_s": timing.warmup_seconds,
        "loss": timing.losses[-1],
        "losses": timing.losses,
        "graphs_compiled_while_timed": timing.new_graphs,
        "graphs_compiled_in_warmup": timing.warmup_graphs,
        "warmup_steps": timing.warmup_steps,
    }


def gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_result(r: dict) -> None:
    if "error" in r:
        log(f"[{r['config']}] {r['kind']}: {r['error']}")
        return
    eff = "packing" if r["kind"] == "FlexBERT" else "non-padding"
    finite = "" if math.isfinite(r["loss"]) else " (NON-FINITE)"
    log(
        f"[{r['config']}] {r['kind']}: {r['tokens_per_s']:,.0f} real tok/s | step {r['step_ms']:.1f} ms | "
        f"MFU {100 * r['mfu']:.1f}% | peak {gib(r['peak_gib'])} GiB | {eff} {100 * r['token_efficiency']:.1f}% "
        f"| loader stall {100 * r['loader_stall']:.1f}% | {r['real_tokens_per_step']:,.0f} real tok/step | "
        f"loss {r['loss']:.3f}{finite} | median step {r['median_step_ms']:.1f} ms | warmup {r['warmup_steps']} "
        f"steps {r['warmup_s']:.0f} s | graphs compiled in warmup {r['graphs_compiled_in_warmup']}, while timed "
        f"{r['graphs_compiled_while_timed']}"
    )


def add_ratios(results: list[dict]) -> None:
    """FlexBERT tokens/s over each HF baseline's, on the FlexBERT result."""
    flex = next((r for r in results if r["kind"] == "FlexBERT" and "error" not in r), None)
    if flex is None:
        return
    for r in results:
        for tag in ("full", "padded"):
            if r["kind"].startswith(f"HF {tag}") and "error" not in r:
                flex[f"vs_hf_{tag}"] = flex["tokens_per_s"] / r["tokens_per_s"]
                log(f"[{flex['config']}] FlexBERT / HF {tag}: {flex[f'vs_hf_{tag}']:.2f}x")


def markdown_table(results: list[dict], header: dict) -> str:
    def pct(x):
        return f"{100 * x:.1f}%" if x is not None else "-"

    def ratio(x):
        return f"{x:.2f}x" if x is not None else "-"

    lines = [
        "| date | GPU | torch | config | run | real tokens/s | MFU | peak GiB | vs HF full | vs HF padded "
        "| loader stall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = f"| {header['date']} | {header['gpu']} | {header['torch']} | {r['config']} | {r['kind']} "
        if "error" in r:
            lines.append(head + f"| {r['error'][:60]} | - | - | - | - | - |")
            continue
        stall = pct(r["loader_stall"]) if r["kind"] == "FlexBERT" else "-"
        lines.append(
            head + f"| {r['tokens_per_s']:,.0f} | {pct(r['mfu'])} | {gib(r['peak_gib'])} "
            f"| {ratio(r.get('vs_hf_full'))} | {ratio(r.get('vs_hf_padded'))} | {stall} |"
        )
    return "\n".join(lines)


def environment(env: Env) -> dict:
    gpu = torch.cuda.get_device_name(env.device) if env.cuda else "CPU"
    return {
        "date": datetime.date.today().isoformat(),
        "gpu": gpu,
        "torch": torch.__version__,
        "device": str(env.device),
        "peak_flops": env.peak_flops,
    }


def write_json(path: str, header: dict, args, results: list[dict], table: str | None = None) -> None:
    out = {"environment": header, "args": vars(args), "mfu_formula": MFU_FORMULA, "results": results}
    if table:
        out["markdown"] = table
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str))
