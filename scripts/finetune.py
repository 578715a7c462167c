"""Fine-tune a FlexBERT or ModernBERT starting point on a labelled task (sequence or token classification).

    python scripts/finetune.py yamls/finetune/TASK.yml start=CKPT_OR_HF_DIR save_folder=OUT [key=value ...]
        [--text_column COLUMN] [--label_column COLUMN]

The task file names the data (train_file, optional eval_file / test_file, text_column, label_column), the task
(single_label, multi_label, token) and the optimisation; see src/flex_bert/train/finetune_config.py for every
key. `--text_column` (alias `--words_column`) and `--label_column` (alias `--tags_column`) set those keys, as
`key=value` does. OUT/best.pt is the best evaluation's model (export it with scripts/convert_to_hf.py);
OUT/result.json, written last, holds its scores on the test split (or the eval split), its predictions and the
data reports.
"""

from __future__ import annotations

import argparse
import json
import sys

from flex_bert.train.finetune import finetune
from flex_bert.train.finetune_config import add_key_flags, key_flag_overrides, load_finetune_config


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="+", metavar="TASK.yml | key=value", help="task files, then overrides")
    add_key_flags(p)
    args = p.parse_intermixed_args(argv)
    yamls = [a for a in args.args if a.endswith((".yml", ".yaml")) and "=" not in a]
    overrides = [a for a in args.args if "=" in a] + key_flag_overrides(args)
    unknown = [a for a in args.args if a not in yamls and "=" not in a]
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
