"""Hugging Face ModernBERT baselines of FlexBERT's shape (`transformers.ModernBertForMaskedLM`, sdpa, sparse
prediction, fused AdamW, bf16 autocast).

  HF full     full-length rows of random ids, no padding, 30% labelled (the best case for HF).
  HF padded   the SAME masked documents as FlexBERT's timed batches (same real tokens and labels per step), in
              random order, in micro-batches of about the HF-full batch size, each padded to its longest
              document (rounded up to 8) with an attention_mask; gradients accumulate over the micro-batches,
              one optimizer step per FlexBERT batch: what a Hugging Face user gets on real data, as HF sdpa
              cannot pack by cu_seqlens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flex_bert.data.masking import IGNORE_INDEX
from flex_bert.model import FlexBertConfig

from .corpora import MLM_PROBABILITY, Bench, Ids
from .timing import Env


def build_hf(cfg: FlexBertConfig, env: Env):
    """ModernBertForMaskedLM of FlexBERT's shape, sdpa, sparse prediction, fused AdamW (compiled by the caller)."""
    from transformers import ModernBertForMaskedLM

    from flex_bert.hf_config import flexbert_config_to_hf

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
    """HF's best case: random ids, no padding, ~30% labelled."""
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
