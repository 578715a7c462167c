"""A tiny word-level tokenizer for tests (no network): special tokens first, then a few words."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
WORDS = [
    "the",
    "patient",
    "was",
    "given",
    "a",
    "dose",
    "of",
    "aspirin",
    "and",
    "felt",
    "better",
    "after",
    "two",
    "days",
    "in",
    "hospital",
]


def build_tiny_tokenizer(vocab_size: int = 128):
    """PreTrainedTokenizerFast with [CLS] x [SEP] post-processing; vocab padded with filler tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(WORDS))
    fillers = [f"tok{i}" for i in range(vocab_size - len(SPECIALS) - len(words))]
    vocab = {t: i for i, t in enumerate(SPECIALS + words + fillers)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )


SPECIAL_IDS = {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "mask_token_id": 4}


def save_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 128) -> Path:
    build_tiny_tokenizer(vocab_size).save_pretrained(str(out_dir))
    return Path(out_dir)
