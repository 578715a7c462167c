"""Fine-tune a FlexBERT or ModernBERT starting point on a labelled task (sequence or token classification).

    python scripts/finetune.py yamls/finetune/TASK.yml start=CKPT_OR_HF_DIR save_folder=OUT [key=value ...]

The task file names the data (train_file, optional eval_file / test_file, text_column, label_column), the task
(single_label, multi_label, token) and the optimisation; see src/flex_bert/train/finetune_config.py for every
key. OUT/best.pt is the best evaluation's model (export it with scripts/convert_to_hf.py); OUT/result.json,
written last, holds its scores on the test split (or the eval split), its predictions and the data reports.
"""

from __future__ import annotations

import json
import sys

from flex_bert.train.finetune import finetune
from flex_bert.train.finetune_config import load_finetune_config

USAGE = "usage: python scripts/finetune.py TASK.yml [more.yml ...] [key=value ...]"


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__}")
        return
    if not argv or argv[0].startswith("-"):
        sys.exit(USAGE)
    yamls = [a for a in argv if a.endswith((".yml", ".yaml")) and "=" not in a]
    overrides = [a for a in argv if "=" in a]
    unknown = [a for a in argv if a not in yamls and a not in overrides]
    if unknown:
        sys.exit(f"error: unknown arguments {unknown} (expected YAML files and key=value overrides)")
    try:
        result = finetune(load_finetune_config(yamls, overrides))
    except ValueError as e:  # a user mistake (DataError included): one clear line, no traceback
        sys.exit(f"error: {e}")
    summary = {k: result["scores"][k] for k in ("accuracy", "macro_f1")}
    print(json.dumps({"reported_split": result["reported_split"], **summary, "best": result["best"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
