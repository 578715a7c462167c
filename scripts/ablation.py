"""The downstream ablation: which pre-training stage helped the task? (base vs +DAPT vs +DAPT+TAPT)

    python scripts/ablation.py --task yamls/finetune/TASK.yml --out runs/ablation \
        base=answerdotai/ModernBERT-base-local-dir dapt=checkpoints/dapt/latest-rank0.pt tapt=... \
        [--seeds 3 | --seed_list 1,2,3] [--set key=value ...] [--text_column C] [--label_column C] \
        [--resamples 2000]

Each starting point (a Hugging Face ModernBertForMaskedLM folder or a checkpoint of this recipe; the first is
the reference) is fine-tuned with each seed (scripts/finetune.py's run, under OUT/cells/). OUT/ablation.md and
OUT/ablation.json hold accuracy, macro-F1 and per-class F1 as mean +- std over seeds and each model's paired
difference to the first (per seed, and a bootstrap over the examples with its 95% interval and p);
OUT/ablation.png is the bar chart. Run it again after a crash: finished cells are not re-run. `--text_column`
(alias `--words_column`) and `--label_column` (alias `--tags_column`) set those task file keys, as `--set` does.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from flex_bert.ablation import run_ablation
from flex_bert.train.finetune_config import add_key_flags, key_flag_overrides


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="NAME=PATH", help="starting points, the reference first")
    p.add_argument("--task", required=True, action="append", help="task file (YAML); repeat to merge several")
    p.add_argument("--out", required=True, help="output folder (cells, table, chart)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N (default 3)")
    p.add_argument("--seed_list", default=None, help="explicit comma-separated seeds instead of --seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="task file override")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    add_key_flags(p)
    args = p.parse_intermixed_args(argv)
    args.set += key_flag_overrides(args)
    models = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[\w.+-]+", name) or not path or name in models:
            p.error(
                f"starting points are distinct NAME=PATH pairs (NAME: letters, digits, _.+-), got {item!r}"
            )
        models[name] = path
    return args, models


def main(argv: list[str]) -> None:
    args, models = parse(argv)
    try:
        seeds = (
            [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(1, args.seeds + 1))
        )
        run_ablation(models, args.task, args.out, seeds, args.set, args.resamples)
    except ValueError as e:  # a user mistake (DataError included): one clear line, no traceback
        sys.exit(f"error: {e}")
    print(Path(args.out, "ablation.md").read_text())
    print(f"wrote {args.out}/ablation.md, ablation.json, ablation.png")


if __name__ == "__main__":
    main(sys.argv[1:])
