"""Training throughput of FlexBERT (full steps through the real data path) against Hugging Face ModernBERT.

FlexBERT step = one device batch from the real loader: `PackedMLMDataset` (best-fit packing + 30% MLM masking)
over in-memory documents, wrapped in `torch.utils.data.DataLoader(batch_size=None, num_workers=2,
pin_memory=True)`; `model_inputs` (as the Composer model uses it) -> `FlexBertForMaskedLM` forward under bf16
autocast (fp32 master weights) -> backward -> StableAdamW (`build_optimizer`, `decoupled_stableadamw`) step.
Documents: random ids 5..50000 (uint16), `[CLS]` first and `[SEP]` last, log-normal lengths (median 600,
sigma 1, clipped to 50..8192); at a 1024 context, longer documents are cut into <= 1024-token pieces as the
converter does. Each loader worker reads its own slice of the documents and skips its first 32 rows (see
`BenchPackedDataset`: cold-start rows of a best-fit packer hold only the longest documents).

Configurations (one packed row of micro x max_seq_len tokens per step):
  base@1024   FlexBERT-base,  rows of 96 x 1024 = 98,304 tokens   HF full: 1024 x 32
  base@8192   FlexBERT-base,  rows of 12 x 8192 = 98,304 tokens   HF full: 8192 x 4
  large@8192  FlexBERT-large, rows of  7 x 8192 = 57,344 tokens   HF full: 8192 x 2

Hugging Face baselines, same shape (`transformers.ModernBertForMaskedLM`, sdpa attention, torch.compile,
sparse_prediction, fused torch.optim.AdamW, bf16 autocast), as /work/shared/device/hf_baseline.py:
  HF full     full-length rows of random ids, no padding, 30% labelled (the best case for HF).
  HF padded   the SAME masked documents as FlexBERT's timed batches (same real tokens and labels per step),
              in random order, in micro-batches of about the HF-full batch size (B or B + 1 documents: B is
              the largest batch that fits at full length), each padded to its longest document (rounded up
              to 8) with an attention_mask; gradients accumulate over the micro-batches, one optimizer step
              per FlexBERT batch. This is what a Hugging Face user gets on real data: HF sdpa cannot pack by
              cu_seqlens. Building the padded micro-batches is not timed.
Both HF runs share one model compiled with dynamic batch and width (one compilation per model size, about
1.5-2 min each; a static compile of the full rows measured about 2% faster on an H100).
Tokens/s always counts real (non-padding) tokens only.

MFU = training FLOPs / (989e12 FLOP/s x seconds), FLOPs from `flex_bert.model.flops.training_flops_per_token`:
  per real token  6 x (Wqkv + attn.Wo + mlp.Wi + mlp.Wo weights of all layers)
                + 6 x (head.dense + decoder (V x H) weights) x masked_fraction
  per document of length L, per layer  3 x 4 x L x k x H attention FLOPs (QK^T and PV, forward + backward),
                k = L on global layers, k = min(L, 129) on local layers (window 128 + the token itself).
Embeddings, norms, activations, softmax and the loss are not counted. HF rows use the same formula and the
same documents, so MFU compares useful work.

Also printed: step time (mean, and median from CUDA events), peak memory (torch.cuda.max_memory_allocated over
the timed steps), packing efficiency (real tokens / row slots), data-loader stall (time spent in
next(iterator) / timed wall time), the last step's loss, and graphs compiled during the timed steps (should be
0: warm-up runs until a step compiles nothing, up to 3x --warmup; --log-recompiles says why).

Usage (GPU, everything, < 8 min on one H100):  python scripts/bench_train.py --json $OUT/bench.json
      subset / options: --configs base@1024,large@8192 --steps 20 --warmup 5 --no-compile --backend varlen
                        --profile DIR (Chrome trace + kernel time by category of 3 FlexBERT steps) --no-hf
CPU smoke test:       python scripts/bench_train.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_packing import synthetic_documents  # noqa: E402

from flex_bert.data.loaders import PackedMLMDataset  # noqa: E402
from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec  # noqa: E402
from flex_bert.model import BACKENDS, FlexBertConfig, FlexBertForMaskedLM  # noqa: E402
from flex_bert.model.flops import training_flops_per_token  # noqa: E402
from flex_bert.train.compilation import compile_layers  # noqa: E402
from flex_bert.train.composer_model import model_inputs  # noqa: E402
from flex_bert.train.optim import build_optimizer  # noqa: E402
from flex_bert.train.profiling import kernel_summary  # noqa: E402

PEAK_FLOPS = 989e12  # H100/H200 dense bf16, datasheet
MLM_PROBABILITY = 0.3
PROFILE_STEPS = 3
BURN_IN_BATCHES = 32  # per loader worker: see BenchPackedDataset
OPTIMIZER = SimpleNamespace(
    name="decoupled_stableadamw",
    lr=3e-4,
    betas=[0.9, 0.98],
    eps=1e-6,
    weight_decay=1e-5,
    filter_bias_norm_wd=True,
)
MFU_FORMULA = (
    "MFU = FLOPs / (989e12 x s); FLOPs per real token = 6 x (Wqkv+Wo+Wi+mlp.Wo of all layers) "
    "+ 6 x (head.dense + decoder VxH) x masked_fraction; + per document of length L per layer "
    "3 x 4 x L x k x H, k = L (global) or min(L, 129) (local)"
)


@dataclass(frozen=True)
class Bench:
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


def flex_config(size: str, backend: str | None, fused: bool = True) -> FlexBertConfig:
    over = {"attention_backend": backend} if backend else {}
    over["fused_kernels"] = fused
    if size == "tiny":
        return FlexBertConfig(
            vocab_size=512,
            num_hidden_layers=3,
            hidden_size=64,
            intermediate_size=96,
            num_attention_heads=4,
            sliding_window=32,
            pad_token_id=3,
            cls_token_id=1,
            sep_token_id=2,
            mask_token_id=4,
            **over,
        )
    return FlexBertConfig.large(**over) if size == "large" else FlexBertConfig.base(**over)


# ------------------------------------------------------------------------------------------ device helpers
@dataclass
class Env:
    device: torch.device
    peak_flops: float = PEAK_FLOPS
    started: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def event(self):
        """A CUDA event recorded now (None on the CPU)."""
        if not self.cuda:
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def log(msg: str) -> None:
    print(msg, flush=True)


def compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # private API: diagnostics only
        return -1


def free_memory(env: Env) -> None:
    """Collect the last model and its cached GPU memory.

    Compiled graphs stay: FlexBERT's layers and the HF model are compiled with dynamic shapes, so a later
    configuration of the same model size reuses them (whole-model compilation of HF takes about a minute).
    Should they keep GPU memory alive, they are dropped.
    """
    gc.collect()
    if not env.cuda:
        return
    torch.cuda.empty_cache()
    if torch.cuda.memory_allocated(env.device) > 2**28:
        log("  compiled graphs hold GPU memory: torch._dynamo.reset()")
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
    log(
        f"  GPU memory still allocated after cleanup: {torch.cuda.memory_allocated(env.device) / 2**30:.2f} GiB"
    )


@dataclass
class Timing:
    batches: list  # the batches of the timed steps, in order
    seconds: float
    waited: float  # seconds spent in next(batches)
    warmup_seconds: float
    loss: float
    new_graphs: int  # graphs compiled during the timed steps (0 unless recompiling)
    warmup_graphs: int
    warmup_steps: int
    median_step_ms: float


def warm_up(batches: Iterator, step: Callable, warmup: int) -> int:
    """At least ``warmup`` steps, more (up to 3x) while the last step still compiled a graph. Returns steps."""
    done, compiled_last = 0, False
    while done < warmup or (done < 3 * warmup and compiled_last):
        before = compiled_graphs()
        step(next(batches))
        done += 1
        compiled_last = compiled_graphs() != before
    return done


def run_timed(env: Env, batches: Iterator, step: Callable, warmup: int, steps: int) -> Timing:
    """Warm-up steps (compilation happens here), then ``steps`` timed ones: one sync at each end, plus CUDA
    events between steps for the median step time (robust to a stray recompilation)."""
    graphs, t0 = compiled_graphs(), time.perf_counter()
    warmup_steps = warm_up(batches, step, warmup)
    env.sync()
    warmup_seconds, warmup_graphs = time.perf_counter() - t0, compiled_graphs() - graphs
    env.reset_peak()
    graphs = compiled_graphs()
    events = [env.event()]
    seen, waited, loss = [], 0.0, None
    t0 = time.perf_counter()
    for _ in range(steps):
        t_wait = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t_wait
        loss = step(batch)
        seen.append(batch)
        events.append(env.event())
    env.sync()
    seconds = time.perf_counter() - t0
    step_ms = [a.elapsed_time(b) for a, b in zip(events, events[1:])] if env.cuda else []
    median_ms = float(np.median(step_ms)) if step_ms else 1e3 * seconds / steps
    new_graphs = compiled_graphs() - graphs
    return Timing(
        seen, seconds, waited, warmup_seconds, float(loss), new_graphs, warmup_graphs, warmup_steps, median_ms
    )


def summarize(kind: str, bench: Bench, cfg: FlexBertConfig, timing: Timing, stats: list[dict], env) -> dict:
    """Throughput, MFU and efficiency of a timed run; ``stats`` = per-batch counts (see ``*_stats``)."""
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
        "loss": timing.loss,
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
    log(
        f"[{r['config']}] {r['kind']}: {r['tokens_per_s']:,.0f} real tok/s | step {r['step_ms']:.1f} ms | "
        f"MFU {100 * r['mfu']:.1f}% | peak {gib(r['peak_gib'])} GiB | {eff} {100 * r['token_efficiency']:.1f}% "
        f"| loader stall {100 * r['loader_stall']:.1f}% | {r['real_tokens_per_step']:,.0f} real tok/step | "
        f"loss {r['loss']:.3f}{'' if math.isfinite(r['loss']) else ' (NON-FINITE)'} | median step {r['median_step_ms']:.1f} ms | warmup {r['warmup_steps']} steps "
        f"{r['warmup_s']:.0f} s | graphs compiled in warmup {r['graphs_compiled_in_warmup']}, while timed "
        f"{r['graphs_compiled_while_timed']}"
    )


# ------------------------------------------------------------------------------------------------ FlexBERT
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


def make_loader(bench: Bench, ids: Ids, n_batches: int, workers: int, pin: bool, seed: int = 0) -> DataLoader:
    """The real loader over enough in-memory documents for ``n_batches`` batches after burn-in."""
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
    )
    dataset = BenchPackedDataset(
        [{"input_ids": d} for d in docs],
        burn_in=burn_in,
        rows_per_batch=1,
        row_len=bench.row_len,
        max_seq_len=bench.max_seq_len,
        pad_id=ids.pad,
        masking=ids.spec,
        mlm_probability=MLM_PROBABILITY,
        seed=seed,
    )
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin)


def flex_step(model, opt, env: Env, batch: dict) -> torch.Tensor:
    inputs = {  # as FlexBertComposer.forward; flattened on the host, then copied
        k: v.to(env.device, non_blocking=True) if torch.is_tensor(v) else v
        for k, v in model_inputs(batch).items()
    }
    with env.autocast():
        loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def flex_stats(batch: dict) -> dict:
    return {
        "num_tokens": int(batch["num_tokens"]),
        "slots": batch["input_ids"].numel(),
        "num_labelled": sum(batch["num_labelled"]),
        "doc_lengths": [n for row in batch["doc_lengths"] for n in row],
    }


def compile_flexbert(model: FlexBertForMaskedLM, tune: bool = False) -> str:
    if isinstance(model, FlexBertForMaskedLM):
        compile_layers(model, tune=tune)
        return f"compile_layers(tune={tune})"
    model.compile()
    return "torch.compile(model)"


def run_flexbert(bench: Bench, args, env: Env, ids: Ids) -> tuple[dict, list[dict]]:
    cfg = flex_config(bench.size, args.backend, args.fused)
    n_batches = 3 * args.warmup + args.steps + (PROFILE_STEPS if args.profile else 0) + 2
    loader = make_loader(bench, ids, n_batches, args.workers, pin=env.cuda)
    torch.manual_seed(0)
    with torch.device(env.device):
        model = FlexBertForMaskedLM(cfg)
    opt = build_optimizer(model, OPTIMIZER)
    how = compile_flexbert(model, args.compile_tuning) if args.compile else "no compile"
    log(
        f"[{bench.name}] FlexBERT-{bench.size}: {model.num_parameters():,} parameters, backend "
        f"{cfg.attention_backend}, fused_kernels {cfg.fused_kernels}, {how}, rows of {bench.micro} x {bench.max_seq_len} = {bench.row_len:,} "
        f"tokens, {args.workers} loader workers; warmup {args.warmup} + {args.steps} timed steps"
    )
    step = lambda batch: flex_step(model, opt, env, batch)  # noqa: E731
    batches = iter(loader)
    try:
        timing = run_timed(env, batches, step, args.warmup, args.steps)
        result = summarize("FlexBERT", bench, cfg, timing, [flex_stats(b) for b in timing.batches], env)
        result.update(
            backend=cfg.attention_backend, fused=cfg.fused_kernels, compile=how, params=model.num_parameters()
        )
        print_result(result)
        if args.profile:
            try:
                profile_steps(env, batches, step, Path(args.profile), bench.name)
            except Exception:  # the timed result stands without the trace
                traceback.print_exc()
                log(f"[{bench.name}] profiling failed (see above); timing results are unaffected")
    finally:
        del batches  # shuts the loader workers down
    return result, timing.batches


def profile_steps(env: Env, batches: Iterator, step: Callable, out_dir: Path, name: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.cuda else [])
    host_batches = [next(batches) for _ in range(PROFILE_STEPS)]  # the loader is measured elsewhere
    env.sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for batch in host_batches:
            step(batch)
        env.sync()
        wall = time.perf_counter() - t0
    path = out_dir / f"trace_flexbert_{name.replace('@', '_')}.json"
    prof.export_chrome_trace(str(path))
    log(f"[{name}] profiler: Chrome trace of {PROFILE_STEPS} steps -> {path}")
    if env.cuda:
        summary = kernel_summary(prof, PROFILE_STEPS, wall)
        (out_dir / f"kernels_{name.replace('@', '_')}.json").write_text(json.dumps(summary, indent=2))
        log(f"[{name}] kernels per step: " + json.dumps(summary, indent=1))
    else:
        log(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


# ------------------------------------------------------------------------------------------ Hugging Face
def build_hf(cfg: FlexBertConfig, env: Env):
    """ModernBertForMaskedLM of FlexBERT's shape, sdpa, sparse prediction, torch.compile, fused AdamW."""
    from transformers import ModernBertForMaskedLM

    from flex_bert.hf import flexbert_config_to_hf

    hf_cfg = flexbert_config_to_hf(cfg)
    hf_cfg.sparse_prediction = True
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(hf_cfg).to(env.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=env.cuda)
    return model, opt


def hf_step(fwd, opt, env: Env, batch: dict) -> torch.Tensor:
    """One optimizer step over the batch's micro-batches (loss weighted by labelled tokens).

    Batch size and width are marked dynamic (full rows too), so torch.compile builds one graph per model
    shape, used by both baselines and by later configurations of that shape, instead of recompiling as the
    padded shapes arrive (each compilation of the whole model takes about a minute).
    """
    for mb in batch["micro"]:
        tensors = {
            k: mb[k].to(env.device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")
        }
        for t in tensors.values():
            torch._dynamo.maybe_mark_dynamic(t, 0)
            torch._dynamo.maybe_mark_dynamic(t, 1)
        with env.autocast():
            loss = fwd(**tensors).loss
        (loss * (mb["num_labelled"] / batch["num_labelled"])).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def full_batch(bench: Bench, ids: Ids, env: Env) -> dict:
    """hf_baseline.py's batch: random ids, no padding, ~30% labelled."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(ids.low, ids.high + 1, (bench.hf_batch, bench.hf_seq), generator=gen)
    picked = torch.rand(x.shape, generator=gen) < MLM_PROBABILITY
    labels = torch.where(picked, x, torch.full_like(x, IGNORE_INDEX))
    n_labelled = int(picked.sum())
    micro = {
        "input_ids": x,
        "attention_mask": torch.ones_like(x),
        "labels": labels,
        "num_labelled": n_labelled,
    }
    micro = {k: v.to(env.device) if torch.is_tensor(v) else v for k, v in micro.items()}
    return {
        "micro": [micro],
        "num_tokens": x.numel(),
        "slots": x.numel(),
        "num_labelled": n_labelled,
        "doc_lengths": [bench.hf_seq] * bench.hf_batch,
    }


def padded_batch(batch: dict, docs_per_micro: int, pad_id: int, rng: np.random.Generator, pin: bool) -> dict:
    """A FlexBERT batch's documents (masked ids + labels), shuffled, in padded micro-batches.

    ``len(docs) // docs_per_micro`` micro-batches of ``docs_per_micro`` or ``docs_per_micro + 1`` documents:
    never a micro-batch of one (torch.compile would specialise a graph for batch size 1).
    """
    docs = []
    for r, cu in enumerate(batch["cu_seqlens"]):
        bounds = cu[: len(batch["doc_lengths"][r]) + 1].tolist()
        docs += [(batch["input_ids"][r, a:b], batch["labels"][r, a:b]) for a, b in zip(bounds, bounds[1:])]
    micro = []
    for picked in np.array_split(rng.permutation(len(docs)), max(1, len(docs) // docs_per_micro)):
        group = [docs[j] for j in picked]
        width = 8 * math.ceil(max(len(d) for d, _ in group) / 8)
        x = torch.full((len(group), width), pad_id, dtype=torch.int64)
        labels = torch.full_like(x, IGNORE_INDEX)
        mask = torch.zeros_like(x)
        for k, (d, lab) in enumerate(group):
            x[k, : len(d)], labels[k, : len(d)], mask[k, : len(d)] = d, lab, 1
        mb = {"input_ids": x, "attention_mask": mask, "labels": labels}
        mb = {k: v.pin_memory() if pin else v for k, v in mb.items()}
        micro.append({**mb, "num_labelled": int((labels != IGNORE_INDEX).sum())})
    return {
        "micro": micro,
        "num_tokens": sum(len(d) for d, _ in docs),
        "slots": sum(m["input_ids"].numel() for m in micro),
        "num_labelled": sum(m["num_labelled"] for m in micro),
        "doc_lengths": [len(d) for d, _ in docs],
    }


def hf_stats(batch: dict) -> dict:
    return {k: batch[k] for k in ("num_tokens", "slots", "num_labelled", "doc_lengths")}


def run_hf(bench: Bench, args, env: Env, ids: Ids, flex_batches: list[dict]) -> list[dict]:
    cfg = flex_config(bench.size, None)
    model, opt = build_hf(cfg, env)
    fwd = torch.compile(model) if args.compile else model
    step = lambda batch: hf_step(fwd, opt, env, batch)  # noqa: E731
    n = 3 * args.hf_warmup + args.hf_steps  # warm-up may run up to 3x its steps (see warm_up)
    if len(flex_batches) < n:  # FlexBERT failed or ran few steps: the same loader, in this process
        loader = make_loader(bench, ids, n, workers=0, pin=False)
        flex_batches = flex_batches + [b for b, _ in zip(loader, range(n - len(flex_batches)))]
    rng = np.random.default_rng(0)
    padded = [padded_batch(b, bench.hf_batch, ids.pad, rng, env.cuda) for b in flex_batches[:n]]
    micro = np.mean([len(b["micro"]) for b in padded])
    runs = [
        (f"HF full {bench.hf_seq}x{bench.hf_batch}", lambda: itertools.repeat(full_batch(bench, ids, env))),
        (f"HF padded ({micro:.1f} micro-batches/step)", lambda: iter(padded)),
    ]
    results = []
    for kind, batches in runs:
        if env.elapsed() > args.time_budget:
            results.append({"config": bench.name, "kind": kind, "error": "skipped (time budget)"})
            print_result(results[-1])
            continue
        log(
            f"[{bench.name}] {kind}: warmup {args.hf_warmup} + {args.hf_steps} timed steps "
            f"({'torch.compile' if args.compile else 'eager'})"
        )

        def run(kind=kind, batches=batches):
            timing = run_timed(env, batches(), step, args.hf_warmup, args.hf_steps)
            return summarize(kind, bench, cfg, timing, [hf_stats(b) for b in timing.batches], env)

        results.append(guarded(bench.name, kind, run))
        print_result(results[-1])
        opt.zero_grad(set_to_none=True)  # after a failure mid-step, gradients may be left over
        gc.collect()
    return results


def guarded(config: str, kind: str, fn: Callable) -> dict:
    """Run one measurement; an OOM or any other failure becomes a result with "error" (the run goes on)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        return {"config": config, "kind": kind, "error": "OOM"}
    except Exception as e:  # a benchmark must finish unattended: report and continue
        traceback.print_exc()
        return {"config": config, "kind": kind, "error": f"{type(e).__name__}: {e}"[:300]}


# ------------------------------------------------------------------------------------------------ driver
def run_config(bench: Bench, args, env: Env, ids: Ids) -> list[dict]:
    log(f"\n=== {bench.name} (elapsed {env.elapsed():.0f} s) ===")
    kept: dict = {"batches": []}  # FlexBERT's timed batches: the HF-padded baseline runs the same documents

    def flex():
        result, kept["batches"] = run_flexbert(bench, args, env, ids)
        return result

    results = [guarded(bench.name, "FlexBERT", flex)]
    if "error" in results[-1]:
        print_result(results[-1])
    free_memory(env)
    if args.hf:
        if env.elapsed() > args.time_budget:
            log(f"[{bench.name}] HF baselines skipped: past the time budget ({args.time_budget:.0f} s)")
        else:
            hf = guarded(bench.name, "HF", lambda: run_hf(bench, args, env, ids, kept["batches"]))
            results += hf if isinstance(hf, list) else [hf]
    kept.clear()
    free_memory(env)
    add_ratios(results)
    return results


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
        help="FlexBERT: fused_kernels (Triton residual + dropout + LayerNorm; default on)",
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


def configure_compiler(log_recompiles: bool) -> None:
    """Compile each shape class once, in warm-up.

    - room for the graphs of three configurations (FlexBERT layers: local/global x base/large, dynamic);
    - Inductor's mix-order reduction fusion (LayerNorm backward) guards on ``batch x width >= 5 Mi / hidden``
      to skip fusing small inputs; a padded HF micro-batch on either side of it would recompile the whole
      model (about 100 s). Non-strict mode drops that size check (and the guard); at the sizes timed here
      (FlexBERT's 57k-98k-token rows, HF's full rows) the check passes anyway.
    """
    import torch._inductor.config as inductor_config

    torch._dynamo.config.cache_size_limit = max(32, torch._dynamo.config.cache_size_limit)
    triton_cfg = inductor_config.triton
    if hasattr(triton_cfg, "mix_order_reduction_non_strict_mode"):
        triton_cfg.mix_order_reduction_non_strict_mode = True
    if log_recompiles:
        torch._logging.set_logs(recompiles=True)


def environment(env: Env) -> dict:
    gpu = torch.cuda.get_device_name(env.device) if env.cuda else "CPU"
    return {
        "date": datetime.date.today().isoformat(),
        "gpu": gpu,
        "torch": torch.__version__,
        "device": str(env.device),
        "peak_flops": env.peak_flops,
    }


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


def write_json(path: str, header: dict, args, results: list[dict], table: str | None = None) -> None:
    out = {"environment": header, "args": vars(args), "mfu_formula": MFU_FORMULA, "results": results}
    if table:
        out["markdown"] = table
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
