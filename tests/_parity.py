"""What the Hugging Face parity tests share (test_model_parity.py for the MLM model, test_classification.py
for the task heads): the tiny config, the perturbation that makes a swapped norm or bias show, the batches."""

from __future__ import annotations

import torch

from flex_bert.model import FlexBertConfig


def tiny_config(vocab_size: int, **overrides) -> FlexBertConfig:
    """Global and local layers, a window shorter than the documents, different rotary bases, no dropout."""
    d = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        sliding_window=8, global_attn_every_n_layers=3, rotary_emb_base=1000.0, local_attn_rotary_emb_base=50.0,
        pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4, attention_backend="sdpa",
        attn_out_dropout_prob=0.0, init_std=0.1,
    )  # fmt: skip
    return FlexBertConfig.from_dict({**d, **overrides})


def perturb_norms_and_biases(model: torch.nn.Module) -> None:
    """Non-trivial norm weights and biases (from torch's global generator), so that a swapped or missing one
    shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def padded_batch(lengths: list[int], vocab_size: int, seed: int = 1, cls_id: int | None = None):
    """(ids, mask) of shape (len(lengths), max(lengths)); padding ids 0; [CLS] first where cls_id is given."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), S), generator=g)
    if cls_id is not None:
        ids[:, 0] = cls_id
    mask = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask
