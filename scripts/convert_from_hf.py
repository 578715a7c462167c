"""Hugging Face ModernBertForMaskedLM directory -> Composer-format FlexBERT checkpoint.

    python scripts/convert_from_hf.py --input-dir HF_DIR --output-checkpoint OUT.pt [--trust-checkpoint]

The checkpoint holds `state.model` (upstream's `model.`-prefixed keys), `state.flex_bert_config` and the HF
config and tokenizer under `state.integrations.huggingface`, so training can start from it (`load_path`).
"""

import argparse

from flex_bert.hf_checkpoint import import_from_hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-dir", required=True, help="HF model directory (config.json, model.safetensors)")
    p.add_argument("--output-checkpoint", required=True, help="where to write the .pt checkpoint")
    p.add_argument("--mask-token-id", type=int, default=None, help="default: the tokenizer's mask token")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle anything in pytorch_model.bin (weights_only=False; trusted files only)",
    )
    args = p.parse_args()
    try:
        out = import_from_hf(
            args.input_dir, args.output_checkpoint, args.mask_token_id, trust=args.trust_checkpoint
        )
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
