"""Merge the converted dataset folders under ROOT into one index: ROOT/index.json.

    python data/merge_index.py tokenized_datasets/train

Checks first that every folder under ROOT is a complete conversion (ROOT/<name>.conversion.json says
complete, ROOT/<name>/index.json is well-formed, its shards inside the folder) and that all used one
tokenizer and one max_seq_len; then merges their indexes with streaming's merge_index and replaces
ROOT/index.json atomically. Run it again after moving folders in or out of ROOT or converting one again:
training refuses a merged index that no longer matches its folders. The work is in flex_bert.data.merge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import flex_bert  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flex_bert.data.merge import merge_datasets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="folder holding the dataset folders")
    a = p.parse_args(argv)
    try:
        summary = merge_datasets(a.root)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{summary['root']}/index.json: {len(summary['datasets'])} datasets ({', '.join(summary['datasets'])}), "
        f"{summary['samples']:,} samples, {summary['tokens']:,} tokens, max_seq_len {summary['max_seq_len']}, "
        f"tokenizer {summary['tokenizer']['name']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
