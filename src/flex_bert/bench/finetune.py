"""Packed FlexBERT fine-tuning against Hugging Face's Trainer and a plain loop: data, models, timed runs, the
equal-results check and the table (`scripts/bench_finetune.py`; the method is in its docstring)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

from flex_bert.bench.timing import Env, compiled_graphs
from flex_bert.data.labelled import collate
from flex_bert.hf_tasks import task_config_to_hf, task_state_to_hf
from flex_bert.model import FlexBertConfig
from flex_bert.model.classification import TaskConfig, build_task_model
from flex_bert.train.finetune import task_graphs
from flex_bert.train.finetune_config import FinetuneConfig

NUM_LABELS, SIGNAL_IDS, SIGNAL_FRACTION, LABEL_NOISE = 4, 16, 0.04, 0.2
LOSS_TOLERANCE = 0.05  # relative difference of the mean training and held-out losses still called equal
MIN_LEN, MAX_LEN, MEDIAN_LEN, SIGMA = 50, 400, 150, 0.6
TINY = dict(
    vocab_size=512, num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
    sliding_window=32, pad_token_id=3, cls_token_id=1, sep_token_id=2, mask_token_id=4,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ data
def make_examples(n: int, cfg: FlexBertConfig, seed: int, max_len: int) -> list[dict]:
    """n examples {"input_ids": [...], "labels": int}, labels balanced and shuffled."""
    rng = np.random.default_rng(seed)
    low, high = 5, min(cfg.vocab_size, 50_000)  # above the special ids, below ModernBERT's added tokens
    signal = rng.choice(np.arange(low, high), size=(NUM_LABELS, SIGNAL_IDS), replace=False)
    lengths = np.clip(np.rint(rng.lognormal(math.log(MEDIAN_LEN), SIGMA, n)), MIN_LEN, MAX_LEN).astype(int)
    lengths = np.minimum(lengths, max_len)
    labels = rng.permutation(np.arange(n) % NUM_LABELS)
    flip = rng.random(n) < LABEL_NOISE
    noisy = np.where(flip, (labels + rng.integers(1, NUM_LABELS, n)) % NUM_LABELS, labels)
    out = []
    for length, label, given in zip(lengths, labels, noisy, strict=True):
        body = rng.integers(low, high, length - 2)
        pick = rng.random(length - 2) < SIGNAL_FRACTION
        body[pick] = rng.choice(signal[label], int(pick.sum()))
        ids = [cfg.cls_token_id, *body.tolist(), cfg.sep_token_id]
        out.append({"input_ids": ids, "labels": int(given)})
    return out


def packed(batch: list[dict]) -> dict:
    return collate([x["input_ids"] for x in batch], [x["labels"] for x in batch], "single_label")


def padder(pad_id: int):
    def pad(batch: list[dict]) -> dict:
        width = -(-max(len(x["input_ids"]) for x in batch) // 8) * 8
        ids = torch.full((len(batch), width), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(batch), width), dtype=torch.int64)
        for i, x in enumerate(batch):
            ids[i, : len(x["input_ids"])] = torch.tensor(x["input_ids"])
            mask[i, : len(x["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([x["labels"] for x in batch]),
        }

    return pad


def batches(examples: list[dict], size: int) -> list[list[dict]]:
    return [examples[i : i + size] for i in range(0, len(examples), size)]


# ---------------------------------------------------------------------------------------------- models
def rows_never_empty() -> None:
    """Make transformers' sdpa masks give a query row with every key masked all keys (see the docstring)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def mask(*args, **kwargs):
        m = sdpa_mask(*args, **kwargs)
        return m if m is None or m.dtype != torch.bool else m | ~m.any(dim=-1, keepdim=True)

    ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = mask  # this process's instance, which the models look up


def build_models(cfg: FlexBertConfig, device: torch.device):
    """FlexBERT's task model and HF's, with equal weights (HF's loaded strictly from FlexBERT's)."""
    import transformers

    rows_never_empty()
    task = TaskConfig("single_label", [f"c{i}" for i in range(NUM_LABELS)], pooling="cls")
    torch.manual_seed(0)
    flex = build_task_model(cfg, task)
    hf = transformers.ModernBertForSequenceClassification._from_config(
        task_config_to_hf(cfg, task), attn_implementation="sdpa"
    )
    hf.load_state_dict(task_state_to_hf(flex.state_dict()), strict=True)
    return flex.to(device).train(), hf.to(device).train()


def optimizer_and_schedule(model, args, device: torch.device):
    """Trainer's defaults as set below: AdamW (fused on a GPU), no weight decay, linear decay, 10% warmup."""
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, fused=device.type == "cuda")
    total = args.warmup + args.steps
    return opt, get_linear_schedule_with_warmup(opt, math.ceil(0.1 * total), total)


# ------------------------------------------------------------------------------------------------ timing
class Clock:
    """Wall time and graphs compiled from "start" to "end", synchronising the GPU at each (none between)."""

    def __init__(self, device: torch.device):
        self.env, self.marks, self.graphs = Env(device), {}, {}

    def mark(self, name: str) -> None:
        self.env.sync()
        self.marks[name], self.graphs[name] = time.perf_counter(), compiled_graphs()

    def seconds(self) -> float:
        return self.marks["end"] - self.marks["start"]

    def new_graphs(self) -> int:
        """Graphs compiled while timed (a recompilation there is timed too); -1 where dynamo cannot tell."""
        a, b = self.graphs["start"], self.graphs["end"]
        return -1 if min(a, b) < 0 else b - a


def result(kind: str, args, clock: Clock, timed: list[list[dict]], losses: list[float], eval_loss: float):
    tokens, seconds = sum(len(x["input_ids"]) for b in timed for x in b), clock.seconds()
    return {
        "kind": kind,
        "examples_per_s": args.steps * args.batch_size / seconds,
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "step_ms": 1000 * seconds / args.steps,
        "tokens_per_step": tokens / args.steps,
        "graphs_compiled_while_timed": clock.new_graphs(),
        "train_loss": float(np.mean(losses)),
        "eval_loss": eval_loss,
    }


# -------------------------------------------------------------------------------------------------- runs
def loader(data: list[list[dict]], collate_fn, device: torch.device):
    """The batches in order, collated and pinned as the Trainer's DataLoader does (so copies overlap)."""
    from torch.utils.data import DataLoader

    return DataLoader(data, batch_size=None, collate_fn=collate_fn, pin_memory=device.type == "cuda")


def run_flex(model, data: list[list[dict]], args, device, bf16: bool, graphs: bool = False):
    """The FlexBERT step loop; with `graphs`, the encoder's passes replayed as CUDA graphs as `finetune.py`'s
    `cuda_graphs` does on one GPU (its max_seq_len and graph_bucket_tokens defaults)."""
    if graphs:
        graphed = task_graphs(
            model, args.batch_size, FinetuneConfig.max_seq_len, FinetuneConfig.graph_bucket_tokens
        )
        for batch in data:  # every bucket captured before the clock starts (a run captures each once)
            b = packed(batch)
            with Env(device).autocast():
                graphed.prepare(b["input_ids"].to(device), b["cu_seqlens"].to(device))
        print(graphed.summary(), flush=True)

    def loss(b: dict) -> torch.Tensor:
        return model(
            b["input_ids"], cu_seqlens=b["cu_seqlens"], max_seqlen=b["max_seqlen"], labels=b["labels"]
        ).loss

    return step_loop(model, loss, loader(data, packed, device), args, device)


def run_hf_loop(model, data: list[list[dict]], args, device, bf16: bool) -> tuple[Clock, list[float]]:
    batches = loader(data, padder(model.config.pad_token_id), device)
    return step_loop(model, lambda b: model(**b).loss, batches, args, device)


def step_loop(model, loss_of, batches, args, device) -> tuple[Clock, list[float]]:
    """Forward (`loss_of(batch)` under autocast), backward, optimizer and schedule step per batch; the clock
    runs from the end of step --warmup."""
    opt, sched = optimizer_and_schedule(model, args, device)
    clock, losses = Clock(device), []
    for i, batch in enumerate(batches):
        if i == args.warmup:
            clock.mark("start")
        b = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with Env(device).autocast():
            loss = loss_of(b)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    clock.mark("end")
    return clock, [float(x) for x in losses]


def run_trainer(model, data: list[list[dict]], args, device, bf16: bool, out_dir: str):
    """transformers.Trainer over the examples in order; the time from the end of step --warmup to the end."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    clock = Clock(device)

    class Marks(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                clock.mark("start" if state.global_step == args.warmup else "end")

    class InOrder(Trainer):  # the given order, so both sides see the same batches
        def _get_train_sampler(self, *a, **kw):
            return SequentialSampler(self.train_dataset)

    targs = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        weight_decay=0.0,
        max_grad_norm=0.0,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(0.1 * (args.warmup + args.steps)),
        optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
        bf16=bf16,
        torch_compile=args.hf_compile,
        use_cpu=device.type == "cpu",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_nan_inf_filter=False,  # a NaN loss is reported, not replaced by the mean so far
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=device.type == "cuda",
        seed=0,
    )
    examples = [x for b in data for x in b]
    trainer = InOrder(
        model=model,
        args=targs,
        train_dataset=examples,
        data_collator=padder(model.config.pad_token_id),
        callbacks=[Marks()],
    )
    out = trainer.train()
    return clock, [out.training_loss]


@torch.no_grad()
def eval_loss(model, examples: list[dict], device, is_flex: bool) -> float:
    """Mean cross-entropy over the held-out examples (batches of 32)."""
    model.eval()
    total, pad = 0.0, padder(model.config.pad_token_id) if not is_flex else None
    for batch in batches(examples, 32):
        b = packed(batch) if is_flex else pad(batch)
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        with Env(device).autocast():
            if is_flex:
                logits = model(b["input_ids"], cu_seqlens=b["cu_seqlens"], max_seqlen=b["max_seqlen"]).logits
            else:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total += float(torch.nn.functional.cross_entropy(logits.float(), b["labels"], reduction="sum"))
    model.train()
    return total / len(examples)


# -------------------------------------------------------------------------------------------------- main
def summaries(results: list[dict]) -> dict:
    """Each FlexBERT run against each HF run, keyed "<FlexBERT run> / <HF run>"."""
    flex = [r for r in results if r["kind"].startswith("FlexBERT")]
    hf = [r for r in results if not r["kind"].startswith("FlexBERT")]
    return {f"{a['kind']} / {b['kind']}": compare(a, b) for a in flex for b in hf}


def compare(flex: dict, other: dict) -> dict:
    """The speed ratio of two runs, or None with the reasons where their losses are not finite and equal or
    either compiled graphs while timed (its figure is not its steady state)."""
    out, losses, reasons = {}, [], []
    for key in ("train_loss", "eval_loss"):
        a, b = flex[key], other[key]
        diff = abs(a - b) / abs(b) if math.isfinite(a) and math.isfinite(b) and b != 0 else math.inf
        out[f"{key}_rel_diff"] = diff
        if diff > LOSS_TOLERANCE:
            losses.append(f"{key.replace('_', ' ')} {a:.4g} against {b:.4g}")
    if losses:
        reasons.append(f"losses differ by more than {LOSS_TOLERANCE:.0%} ({'; '.join(losses)})")
    for run in (flex, other):
        if run.get("graphs_compiled_while_timed", 0) > 0:  # -1: dynamo cannot tell
            reasons.append(
                f"{run['kind']} compiled {run['graphs_compiled_while_timed']} graph(s) while timed "
                "(more --warmup steps)"
            )
    out["speedup"] = None if reasons else flex["examples_per_s"] / other["examples_per_s"]
    if reasons:
        out["refused"] = "; ".join(reasons)
    return out


def print_table(header: dict, results: list[dict], summary: dict) -> None:
    print(json.dumps(header))
    print(
        "| run | examples/s | tokens/s | ms/step | graphs compiled while timed | mean train loss "
        "| held-out loss |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['kind']} | {r['examples_per_s']:,.1f} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} "
            f"| {r['graphs_compiled_while_timed']} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} |"
        )
    for kind, s in summary.items():
        if s["speedup"] is None:
            print(f"{kind}: no speed ratio: {s['refused']}")
            continue
        print(
            f"{kind}: {s['speedup']:.2f}x examples/s; losses differ by "
            f"{100 * s['train_loss_rel_diff']:.2f}% (train) and {100 * s['eval_loss_rel_diff']:.2f}% (held-out)"
        )
