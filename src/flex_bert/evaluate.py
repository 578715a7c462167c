"""Masked-LM evaluation of a FlexBERT checkpoint or a Hugging Face model on the same masked batches.

Both kinds of model see identical inputs: whole documents from an MDS split, each masked with its own seed
(``MaskedDocuments``), in the same order. FlexBERT runs them packed (flat, with ``cu_seqlens``); the Hugging
Face model runs them padded with an attention mask. Loss is the mean cross-entropy over all masked
positions of the split (not a mean of batch means), so the two agree to float precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flex_bert.data.eval_batches import MaskedDocuments, collate_flat
from flex_bert.data.masking import IGNORE_INDEX, MaskingSpec


@dataclass
class MlmScore:
    loss: float
    accuracy: float
    perplexity: float
    masked_tokens: int
    documents: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def masked_documents(
    data: str,
    split: str | None,
    tokenizer,
    mlm_probability: float,
    seed: int,
    max_seq_len: int,
    vocab_size: int | None = None,
):
    """The masked documents of `data/split`, opened as training opens a split (merge.open_split: the
    tokenizer, max_seq_len, token ids below `vocab_size`, well-formed and current indexes, not empty)."""
    import os

    from flex_bert.data.merge import open_split
    from flex_bert.data.tokenize import tokenizer_fingerprint

    docs = open_split(
        os.path.join(data, split or ""),
        max_seq_len=max_seq_len,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab_size,
        role="evaluation",
        shuffle=False,
        batch_size=1,
    )
    return MaskedDocuments(
        docs,
        max_seq_len=max_seq_len,
        masking=MaskingSpec.from_tokenizer(tokenizer),
        mlm_probability=mlm_probability,
        seed=seed,
    )


def _batches(dataset: MaskedDocuments, batch_size: int, max_batches: int | None):
    n = len(dataset)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield collate_flat([dataset[i] for i in range(start, min(n, start + batch_size))])


@torch.no_grad()
def evaluate(
    model,
    kind: str,
    dataset: MaskedDocuments,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: str = "cpu",
) -> MlmScore:
    """``kind`` is ``"flexbert"`` (a FlexBertForMaskedLM) or ``"hf"`` (a transformers masked-LM model)."""
    model.eval().to(device)
    total_loss, correct, count, docs = 0.0, 0, 0, 0
    for batch in _batches(dataset, batch_size, max_batches):
        labels = batch["labels"][0].to(device)
        logits = (
            _flexbert_logits(model, batch, device) if kind == "flexbert" else _hf_logits(model, batch, device)
        )
        picked = labels != IGNORE_INDEX
        if logits.shape[0] != picked.sum():
            logits = logits[picked]
        target = labels[picked]
        logits = logits.double()
        total_loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += int(target.numel())
        docs += len(batch["doc_lengths"][0])
    if count == 0:
        raise ValueError("no masked tokens were evaluated (empty split?)")
    loss = total_loss / count
    return MlmScore(
        loss=loss, accuracy=correct / count, perplexity=math.exp(loss), masked_tokens=count, documents=docs
    )


def _flexbert_logits(model, batch: dict, device: str) -> torch.Tensor:
    out = model(
        batch["input_ids"][0].to(device),
        cu_seqlens=batch["cu_seqlens"][0].to(device),
        max_seqlen=batch["max_seqlen"][0],
    )
    return out.logits


def _hf_logits(model, batch: dict, device: str) -> torch.Tensor:
    """Re-pad the flat documents into (B, S) with an attention mask, return logits at real positions in order."""
    ids = batch["input_ids"][0]
    lengths = batch["doc_lengths"][0]
    width = max(lengths)
    padded = torch.zeros(len(lengths), width, dtype=ids.dtype)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, piece in enumerate(torch.split(ids, lengths)):
        padded[i, : len(piece)] = piece
        mask[i, : len(piece)] = 1
    logits = model(input_ids=padded.to(device), attention_mask=mask.to(device)).logits
    return logits[mask.to(device).bool()]


def load_model_for_eval(checkpoint=None, hf_model=None, config=None, tokenizer=None, trust=False):
    """-> (model, kind, tokenizer). The tokenizer defaults to the one stored with the model."""
    from flex_bert.data.tokenize import open_tokenizer

    if hf_model:
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(hf_model, attn_implementation="sdpa")
        return model.float(), "hf", open_tokenizer(tokenizer or hf_model)
    from flex_bert.hf_checkpoint import load_flexbert_checkpoint

    model, stored_tokenizer_dir = load_flexbert_checkpoint(
        checkpoint, config=config, trust=trust, with_tokenizer=tokenizer is None
    )
    if tokenizer is None and stored_tokenizer_dir is None:
        raise ValueError(f"{checkpoint} holds no tokenizer: pass --tokenizer")
    return model, "flexbert", open_tokenizer(tokenizer or stored_tokenizer_dir)
