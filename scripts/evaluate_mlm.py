"""Masked-LM loss, accuracy and perplexity of a checkpoint or a Hugging Face model on an MDS split.

    python scripts/evaluate_mlm.py --checkpoint checkpoints/run/latest-rank0.pt --data tokenized_datasets
    python scripts/evaluate_mlm.py --hf_model checkpoints/run/hf --data tokenized_datasets --json

Both kinds see the same masked documents (same --seed), so base, +DAPT and +DAPT+TAPT compare fairly.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", help="a Composer checkpoint of this project (or upstream's, with --config)"
    )
    src.add_argument("--hf_model", help="a Hugging Face model folder (ModernBertForMaskedLM)")
    p.add_argument("--data", required=True, help="MDS root (holding the split folder) or a dataset folder")
    p.add_argument("--split", default="eval", help="split folder under --data; '' for --data itself")
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_batches", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=16, help="documents per batch")
    p.add_argument("--max_seq_len", type=int, default=8192)
    p.add_argument("--config", help="model config for checkpoints that hold none: base, large or a YAML")
    p.add_argument(
        "--tokenizer", help="tokenizer folder or hub name (default: the one stored with the model)"
    )
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow full unpickling (trusted files only)"
    )
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from flex_bert.evaluate import evaluate, load_model_for_eval, masked_documents

    try:
        model, kind, tokenizer = load_model_for_eval(
            checkpoint=args.checkpoint,
            hf_model=args.hf_model,
            config=args.config,
            tokenizer=args.tokenizer,
            trust=args.trust_checkpoint,
        )
        data = masked_documents(
            args.data,
            args.split or None,
            tokenizer,
            args.mlm_probability,
            args.seed,
            args.max_seq_len,
            vocab_size=model.config.vocab_size,
        )
        score = evaluate(model, kind, data, args.batch_size, args.max_batches, args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"model": args.checkpoint or args.hf_model, **score.as_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['model']}: loss {score.loss:.4f}  accuracy {score.accuracy:.4f}  "
            f"perplexity {score.perplexity:.3f}  ({score.masked_tokens} masked tokens, {score.documents} documents)"
        )
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
