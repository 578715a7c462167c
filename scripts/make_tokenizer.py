"""Train a tokenizer shaped like ModernBERT's on your own text, offline (no hub).

    python scripts/make_tokenizer.py --texts notes.csv more_notes.jsonl --vocab-size 32768 --out tokenizers/mine

Byte-level BPE with ModernBERT's special tokens ([UNK] [CLS] [SEP] [PAD] [MASK]) and `[CLS] ... [SEP]`
post-processing; point `tokenizer_name` and the converter's `--tokenizer` at the folder it writes. Continued
pre-training from a ModernBERT checkpoint needs ModernBERT's own tokenizer (its embeddings index that
vocabulary): download its folder with `hf download answerdotai/ModernBERT-base --include "tokenizer*"
"special_tokens_map.json" --local-dir tokenizers/modernbert-base`. A new tokenizer is for training from scratch
and for tests.
"""

import argparse
from pathlib import Path

from flex_bert.data.sources import FORMATS
from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", nargs="+", required=True, help=f"text files ({', '.join(sorted(FORMATS))})")
    p.add_argument("--vocab-size", type=int, default=32768, help="default: %(default)s")
    p.add_argument("--out", required=True, help="folder to write the tokenizer to")
    args = p.parse_args()
    files = [Path(t) for t in args.texts]
    missing = [str(f) for f in files if not f.is_file() or f.suffix.lower() not in FORMATS]
    if missing:
        p.error(f"not a readable text file of a known format: {', '.join(missing)}")
    if args.vocab_size < 64:
        p.error("--vocab-size must be at least 64")
    tok = train_bpe_tokenizer(files, args.out, vocab_size=args.vocab_size)
    print(f"wrote {args.out}: {len(tok)} tokens")


if __name__ == "__main__":
    main()
