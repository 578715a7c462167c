"""Check that converted dataset folders are complete and agree, and merge their indexes.

A dataset folder `<root>/<name>/` is complete when `<root>/<name>.conversion.json` exists beside it with
`"complete": true` and the folder holds an `index.json` (convert.py writes them in that order, last).
Datasets agree when they were tokenized by the same tokenizer (fingerprint) with the same max_seq_len.

Training code: `check_compatible(folders, max_seq_len=cfg.max_seq_len,
tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))` before building its dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

from flex_bert.data.sources import DataError


def stats_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f"{folder.name}.conversion.json"


def read_conversion_stats(folder: str | Path) -> dict:
    """The conversion stats of a complete dataset folder; DataError saying what is wrong otherwise."""
    folder = Path(folder)
    path = stats_path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    if not path.is_file():
        raise DataError(
            f"{folder} has no {path.name} beside it: not a finished conversion "
            "(interrupted, or written by another tool); convert it again"
        )
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); convert {folder} again") from None
    if not isinstance(stats, dict) or stats.get("complete") is not True:
        raise DataError(f"{path} does not say complete: true; convert {folder} again")
    if not (folder / "index.json").is_file():
        raise DataError(f"{folder} has no index.json; convert it again")
    return stats


def check_compatible(
    folders, max_seq_len: int | None = None, tokenizer_fingerprint: str | None = None
) -> list[dict]:
    """Stats of each folder, after checking they are complete and agree with each other and with the
    training run: one tokenizer (and `tokenizer_fingerprint`, if given), one max_seq_len (and at most
    `max_seq_len`, if given: longer samples would have to be cut). Raises DataError naming the folders."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise DataError("no dataset folders given")
    stats = [read_conversion_stats(f) for f in folders]

    def describe(key) -> str:
        return "; ".join(f"{f}: {key(s)}" for f, s in zip(folders, stats))

    def tokenizer_of(s: dict) -> str:
        return f"{s['tokenizer']['name']} (fingerprint {s['tokenizer']['fingerprint'][:12]})"

    if len({s["tokenizer"]["fingerprint"] for s in stats}) > 1:
        raise DataError(f"the datasets were tokenized with different tokenizers: {describe(tokenizer_of)}")
    if len({s["max_seq_len"] for s in stats}) > 1:
        raise DataError(
            f"the datasets were converted with different --max_seq_len: "
            f"{describe(lambda s: s['max_seq_len'])}"
        )
    if tokenizer_fingerprint is not None and stats[0]["tokenizer"]["fingerprint"] != tokenizer_fingerprint:
        raise DataError(
            f"the datasets were tokenized with {tokenizer_of(stats[0])}, not with the training "
            f"tokenizer (fingerprint {tokenizer_fingerprint[:12]}); convert them with it"
        )
    if max_seq_len is not None and stats[0]["max_seq_len"] > max_seq_len:
        raise DataError(
            f"the datasets hold samples of up to {stats[0]['max_seq_len']} tokens but training "
            f"max_seq_len is {max_seq_len}; convert them with --max_seq_len {max_seq_len}"
        )
    return stats


def dataset_folders(root: str | Path) -> list[Path]:
    """The dataset folders directly under root, sorted, after checking that streaming's merge_index would
    read nothing else: it takes every .json below root's sub-folders as a shard index."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    leftovers = sorted(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir())
    if leftovers:
        raise DataError(
            f"{leftovers[0]} is left over from an interrupted (or running) conversion; "
            "wait for it to finish or delete it, then merge again"
        )
    folders = []
    for path in sorted(root.rglob("*.json")):
        if path.parent == root:
            continue
        if path.name != "index.json" or path.parent.parent != root:
            raise DataError(
                f"{path} is not a dataset index, but merge_index would read it as one; move it out of {root}"
            )
        folders.append(path.parent)
    if not folders:
        raise DataError(f"{root} has no dataset folders (sub-folders with an index.json)")
    return folders


def merge_datasets(root: str | Path) -> dict:
    """Check the dataset folders under root, then write root/index.json with streaming's
    merge_index(root, True) exactly as the BioClinical guide does. Returns a summary."""
    from streaming.base.util import merge_index

    root = Path(root)
    folders = dataset_folders(root)
    stats = check_compatible(folders)
    merge_index(str(root), True)
    merged = json.loads((root / "index.json").read_text(encoding="utf-8"))
    samples = sum(shard["samples"] for shard in merged["shards"])
    expected = sum(s["samples"] for s in stats)
    if samples != expected:
        raise DataError(f"{root}/index.json counts {samples} samples, the conversions wrote {expected}")
    return {
        "root": str(root),
        "datasets": [f.name for f in folders],
        "samples": samples,
        "tokens": sum(s["tokens"] for s in stats),
        "max_seq_len": stats[0]["max_seq_len"],
        "tokenizer": stats[0]["tokenizer"],
    }
