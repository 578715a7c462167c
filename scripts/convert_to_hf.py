"""FlexBERT / upstream ModernBERT Composer checkpoint -> Hugging Face ModernBertForMaskedLM directory.

    python scripts/convert_to_hf.py --input-checkpoint CKPT.pt --output-dir HF_DIR \
        [--dtype float32|bfloat16] [--tokenizer DIR_or_hub_name] [--config base|large|PATH.yaml] \
        [--trust-checkpoint]

The folder also holds a model card (README.md: base model, data, tokens, final eval loss, the run's YAML).
The result loads with `AutoModelForMaskedLM.from_pretrained(HF_DIR)` and `pipeline("fill-mask", HF_DIR)`.
A fine-tuned checkpoint (scripts/finetune.py) becomes ModernBertForSequenceClassification or
ModernBertForTokenClassification with its labels (`AutoModelFor...Classification`).
Upstream checkpoints carry no FlexBERT config: pass `--config` (the training YAML's model.model_config).
"""

import argparse

from flex_bert.hf_checkpoint import export_to_hf
from flex_bert.hf_tasks import export_task_to_hf, is_task_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-checkpoint", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer dir or hub name (default: from the checkpoint)"
    )
    p.add_argument("--config", default=None, help="base | large | YAML with model.model_config")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle anything (weights_only=False)")
    p.add_argument(
        "--base-model",
        default=None,
        help="the model card's base_model (default: ModernBERT-base/large by shape)",
    )
    args = p.parse_args()
    try:
        if is_task_checkpoint(args.input_checkpoint, trust=args.trust_checkpoint):
            out = export_task_to_hf(
                args.input_checkpoint, args.output_dir, args.dtype, args.tokenizer, args.trust_checkpoint
            )
            print(f"wrote {out}")
            return
        out = export_to_hf(
            args.input_checkpoint,
            args.output_dir,
            dtype=args.dtype,
            tokenizer_dir=args.tokenizer,
            config=args.config,
            trust=args.trust_checkpoint,
            base_model=args.base_model,
        )
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
