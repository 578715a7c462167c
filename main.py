"""Continued pre-training of ModernBERT: ``composer main.py CONFIG.yml [key=value ...]``.

``python main.py CONFIG.yml --dry_run`` prints the resolved config and the plan, then exits.
This file only wires components; each lives in ``flex_bert.train``.
"""

from __future__ import annotations

import sys

from flex_bert.train.run import dry_run, train

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit("usage: composer main.py CONFIG.yml [more.yml ...] [key=value ...] [--dry_run]")
    yamls = [a for a in args if a.endswith((".yml", ".yaml")) and "=" not in a]
    overrides = [a for a in args if "=" in a]
    unknown = [a for a in args if a not in yamls and a not in overrides and a != "--dry_run"]
    if unknown:
        sys.exit(f"unknown arguments: {unknown} (expected YAML files, key=value overrides, --dry_run)")
    try:
        (dry_run if "--dry_run" in args else train)(yamls, overrides)
    except ValueError as e:  # a user mistake: one clear line each, no traceback
        sys.exit("\n".join(f"error: {line}" for line in str(e).splitlines() or [type(e).__name__]))
