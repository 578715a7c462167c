"""MLM masking, done in the data loader (numpy, vectorised over a whole packed row).

Each maskable position is selected with probability ``p``; of those, 80% become ``[MASK]``, 10% a random token
and 10% stay unchanged (BERT's rule, as ModernBERT trains). Labels hold the original id at selected positions
and -100 elsewhere. Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ...) are never selected.

With ``whole_word=True`` (the TAPT option of the DAPT procedure) words, not tokens, are selected: a word is a
token that starts a word (byte-level BPE: its text begins with the space marker ``Ġ`` or follows a special
token) plus the continuation tokens after it; every token of a selected word is masked with ``[MASK]``, as
Hugging Face's whole-word collator does (no random or kept tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MaskingSpec:
    """What the masker needs from the tokenizer, read once (never hard-coded ids)."""

    mask_token_id: int
    vocab_size: int  # random replacements are drawn from [0, vocab_size)
    special_ids: tuple[int, ...]
    word_start: np.ndarray | None = None  # bool per token id: begins a word (for whole-word masking)

    @classmethod
    def from_tokenizer(cls, tokenizer, whole_word: bool = False) -> MaskingSpec:
        if tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no mask token; MLM needs one")
        word_start = None
        if whole_word:
            tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            word_start = np.array([t is None or t.startswith(("Ġ", "▁", " ")) for t in tokens], dtype=bool)
        return cls(
            mask_token_id=int(tokenizer.mask_token_id),
            vocab_size=len(tokenizer),
            special_ids=tuple(sorted(int(i) for i in tokenizer.all_special_ids)),
            word_start=word_start,
        )


def mask_tokens(
    ids: np.ndarray, p: float, spec: MaskingSpec, rng: np.random.Generator, whole_word: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(masked_ids, labels)`` for a 1-D id array. ``ids`` is not modified."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {p}")
    ids = np.asarray(ids)
    special = np.isin(ids, spec.special_ids)
    if whole_word:
        selected = _select_whole_words(ids, special, p, spec, rng)
    else:
        selected = (rng.random(ids.shape[0]) < p) & ~special
    labels = np.full(ids.shape[0], IGNORE_INDEX, dtype=np.int64)
    labels[selected] = ids[selected]
    out = ids.astype(np.int64, copy=True)
    if whole_word:
        out[selected] = spec.mask_token_id
        return out, labels
    action = rng.random(ids.shape[0])
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    out[to_mask] = spec.mask_token_id
    out[to_random] = rng.integers(0, spec.vocab_size, int(to_random.sum()))
    return out, labels


def _select_whole_words(ids, special, p, spec: MaskingSpec, rng) -> np.ndarray:
    if spec.word_start is None:
        raise ValueError("whole-word masking needs MaskingSpec.from_tokenizer(..., whole_word=True)")
    starts = spec.word_start[np.clip(ids, 0, len(spec.word_start) - 1)] | special
    starts[1:] |= special[:-1]  # the token after [CLS]/[SEP] starts a word even without a space marker
    starts[0] = True
    word_id = np.cumsum(starts) - 1
    chosen = rng.random(int(word_id[-1]) + 1 if len(ids) else 0) < p
    return chosen[word_id] & ~special
