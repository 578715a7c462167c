"""Tiny tokenizers for tests, the offline demo and training from scratch; no network.

- `train_bpe_tokenizer(texts_or_files, out_dir)` trains a byte-level BPE shaped like ModernBERT's (its special
  tokens and post-processor) and saves it with `save_pretrained`, so `AutoTokenizer.from_pretrained(out_dir)`
  works (`scripts/make_tokenizer.py`, the demo, the data and training tests).
- `word_level_tokenizer(vocab_size)` builds, in memory and in milliseconds, a word-level tokenizer with
  fixed ids (`WORD_LEVEL_IDS`): the specials first, then a few words, then filler tokens, for tests that need
  a tokenizer of a given vocabulary size and nothing learned.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

BPE_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
WORD_LEVEL_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
WORD_LEVEL_IDS = {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "mask_token_id": 4}
WORDS = ["the", "patient", "was", "given", "a", "dose", "of", "aspirin", "and", "felt", "better", "after", "two",
         "days", "in", "hospital"]  # fmt: skip


def _training_texts(texts_or_files: Iterable[str | Path]) -> Iterator[str]:
    """Strings are texts; Path objects (or existing file names ending in a known extension) are read."""
    from flex_bert.data.sources import FORMATS, iter_dataset_texts

    for item in texts_or_files:
        if isinstance(item, Path) or (
            isinstance(item, str) and Path(item).suffix.lower() in FORMATS and Path(item).is_file()
        ):
            yield from iter_dataset_texts(str(item))
        else:
            yield item


def train_bpe_tokenizer(texts_or_files: Iterable[str | Path], out_dir: str | Path, vocab_size: int = 1024):
    """Train a byte-level BPE shaped like ModernBERT's and save it (loadable with AutoTokenizer, offline).

    Like ModernBERT's: NFC normalizer, ByteLevel pre-tokenizer without prefix space, special tokens
    [UNK] [CLS] [SEP] [PAD] [MASK] ([MASK] with lstrip), post-processor `[CLS] $A [SEP]`, ByteLevel decoder.
    Returns the loaded `PreTrainedTokenizerFast`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(t, special=True, normalized=False, lstrip=(t == "[MASK]")) for t in BPE_SPECIAL_TOKENS
    ]
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_texts(texts_or_files), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    from flex_bert.model.config import CONTEXT_LENGTH

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=CONTEXT_LENGTH,
    )
    fast.save_pretrained(str(out_dir))
    return fast


def word_level_tokenizer(vocab_size: int = 128, words: Iterable[str] = WORDS, post_processor: bool = True):
    """PreTrainedTokenizerFast of ``vocab_size`` ids: `WORD_LEVEL_SPECIALS`, ``words``, then filler tokens;
    with ``post_processor`` it frames inputs as `[CLS] x [SEP]`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(words))
    fillers = [f"tok{i}" for i in range(vocab_size - len(WORD_LEVEL_SPECIALS) - len(words))]
    vocab = {t: i for i, t in enumerate(WORD_LEVEL_SPECIALS + words + fillers)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )


def save_word_level_tokenizer(out_dir: str | Path, vocab_size: int = 128) -> Path:
    word_level_tokenizer(vocab_size).save_pretrained(str(out_dir))
    return Path(out_dir)
