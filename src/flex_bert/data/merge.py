"""Dataset folders: check that they are complete and agree, merge their indexes, and open a split.

A dataset folder `<root>/<name>/` is complete when `<root>/<name>.conversion.json` exists beside it with
`"complete": true` and the folder holds an `index.json` (convert.py writes them in that order, last).
Datasets agree when they were tokenized by the same tokenizer (fingerprint) with the same max_seq_len.

Every way of opening local data for training or evaluation goes through `check_split` (or `check_datasets`
for a mixture's folders): well-formed indexes whose shard paths stay inside their dataset folder, a merged
index that still describes the folders it names, the run's tokenizer, max_seq_len and vocab_size, and at
least one sample. `open_split` checks, then builds the StreamingDataset.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path, PurePosixPath

from flex_bert.data.mds_index import FILE_KEYS, check_shard_paths, index_samples, read_index
from flex_bert.data.sources import DataError

MERGE_RECORD = "flex_bert_merged_from"  # in a merged index.json: what each dataset folder was when merged
LOCKS = ".locks"  # <root>/.locks/<name>/: the converter's lock per output name (folder_lock)


def stats_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f"{folder.name}.conversion.json"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON so that a reader sees either the old file, or the whole new one (never a torn file); on
    any failure (a full disk) the temporary file is removed and the old file is untouched."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def check_token_ids(folders, stats: list[dict], vocab_size: int) -> None:
    """Every token id of the data is below the model's vocab_size (an id at or above it has no embedding:
    an IndexError on CPU, a device-side assert on GPU). Stats written before `max_token_id` was recorded
    are checked by their tokenizer's vocabulary size instead, and a warning says so."""
    for folder, s in zip(folders, stats):
        if "max_token_id" in s:
            if s["max_token_id"] >= vocab_size:
                raise DataError(
                    f"{folder} holds token ids up to {s['max_token_id']} but model_config.vocab_size is "
                    f"{vocab_size}; raise vocab_size above {s['max_token_id']} or convert with the model's "
                    "tokenizer"
                )
        elif s["vocab_size"] > vocab_size:
            raise DataError(
                f"{folder}: its conversion stats do not record max_token_id, and the tokenizer's "
                f"vocabulary ({s['vocab_size']} ids) is larger than the model's: model_config.vocab_size is "
                f"{vocab_size}; raise vocab_size or convert with the model's tokenizer"
            )
        else:
            warnings.warn(
                f"{folder}: its conversion stats do not record max_token_id; checked the tokenizer's "
                f"vocabulary size ({s['vocab_size']}) against model_config.vocab_size ({vocab_size}) instead",
                stacklevel=2,
            )


def folder_index(folder: Path, stats: dict | None = None) -> dict:
    """The checked index.json of one dataset folder (shards inside it, present, of the recorded size),
    agreeing with its conversion stats' sample count when given."""
    index_path = folder / "index.json"
    index = read_index(index_path)
    check_shard_paths(index_path, index, lambda name: folder)
    if stats is not None and index_samples(index) != stats["samples"]:
        raise DataError(
            f"{index_path} counts {index_samples(index)} samples, {stats_path(folder).name} says "
            f"{stats['samples']}: the folder changed after its conversion; convert it again"
        )
    return index


def check_datasets(
    folders,
    *,
    max_seq_len: int | None = None,
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
) -> dict[Path, dict]:
    """check_compatible, then each folder's index (folder_index) and token ids (check_token_ids). Returns
    each folder's index."""
    folders = [Path(f) for f in folders]
    stats = check_compatible(folders, max_seq_len, tokenizer_fingerprint)
    indexes = {f: folder_index(f, s) for f, s in zip(folders, stats)}
    if vocab_size is not None:
        check_token_ids(folders, stats, vocab_size)
    return indexes


def dataset_folders(root: str | Path) -> list[Path]:
    """The dataset folders directly under root, sorted, after checking that streaming's merge_index would
    read nothing else: it takes every .json below root's sub-folders as a shard index."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    leftovers = sorted(p for p in root.iterdir() if p.name.startswith(".") and p.name != LOCKS and p.is_dir())
    if leftovers:
        raise DataError(
            f"{leftovers[0]} is left over from an interrupted (or running) conversion; "
            "wait for it to finish or delete it, then merge again"
        )
    folders = []
    for path in sorted(root.rglob("*.json")):
        if path.parent == root or LOCKS in path.relative_to(root).parts:
            continue
        if path.name != "index.json" or path.parent.parent != root:
            raise DataError(
                f"{path} is not a dataset index, but merge_index would read it as one; move it out of {root}"
            )
        folders.append(path.parent)
    if not folders:
        raise DataError(f"{root} has no dataset folders (sub-folders with an index.json)")
    return folders


def _merged_folder(root: Path):
    """basename -> its dataset folder in a merged index (`<name>/<file>`), None for any other shape."""

    def folder_of(basename: str) -> Path | None:
        parts = PurePosixPath(basename).parts
        ok = len(parts) >= 2 and parts[0] not in ("/", ".", "..") and "\\" not in parts[0]
        return root / parts[0] if ok else None

    return folder_of


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(folder: Path, index: dict) -> dict:
    stats = stats_path(folder)
    return {
        "samples": index_samples(index),
        "index_sha256": _sha256(folder / "index.json"),
        "stats_sha256": _sha256(stats) if stats.is_file() else None,
    }


def _unprefixed(shard: dict, name: str) -> dict:
    """A merged index's shard as its dataset folder's own index.json holds it (streaming's merge prefixes
    each file's basename with the folder name)."""
    shard = copy.deepcopy(shard)
    for key in FILE_KEYS:
        if shard.get(key):
            shard[key]["basename"] = shard[key]["basename"][len(name) + 1 :]
    return shard


def _check_not_stale(root: Path, folders: list[Path], merged: dict, indexes: dict[Path, dict]) -> None:
    """The merged index holds exactly the shards of the folders under root, as they are now."""
    index_path = root / "index.json"
    fix = f"re-merge with `python data/merge_index.py {root}`"
    by_folder: dict[str, list[dict]] = {}
    for shard in merged["shards"]:
        by_folder.setdefault(PurePosixPath(shard["raw_data"]["basename"]).parts[0], []).append(shard)
    names = {f.name for f in folders}
    gone, added = sorted(by_folder.keys() - names), sorted(names - by_folder.keys())
    if gone:
        raise DataError(f"{index_path} is stale: it names {gone[0]}, which is not in {root} any more; {fix}")
    if added:
        raise DataError(f"{root / added[0]} is not in {index_path} (added after the merge); {fix}")
    record = merged.get(MERGE_RECORD) or {}
    for folder in folders:
        own = indexes[folder]["shards"]
        if [_unprefixed(s, folder.name) for s in by_folder[folder.name]] != own:
            raise DataError(
                f"{index_path} is stale: {folder}/index.json changed after the merge (converted again?); "
                f"{fix}"
            )
        was = record.get(folder.name)
        if was is not None and was != _record(folder, indexes[folder]):
            raise DataError(
                f"{index_path} is stale: {folder} or its {stats_path(folder).name} changed after the "
                f"merge; {fix}"
            )


def check_split(
    path: str | Path,
    *,
    max_seq_len: int | None = None,
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
    role: str = "training",
) -> int:
    """Check a local split before anything reads it; returns its number of samples.

    `path` is a merged split (dataset folders under it and their merged index.json), one dataset folder
    (its conversion.json beside it), or an MDS folder written by another tool (warned: nothing to check its
    tokenizer and token ids against). Raises DataError of one line naming what to fix."""
    path = Path(path)
    index_path = path / "index.json"
    run = dict(max_seq_len=max_seq_len, tokenizer_fingerprint=tokenizer_fingerprint, vocab_size=vocab_size)
    if stats_path(path).is_file():  # one dataset folder
        samples = index_samples(check_datasets([path], **run)[path])
    elif path.is_dir() and any(path.glob("*/index.json")):  # a merged split
        if not index_path.is_file():
            raise DataError(
                f"{path} has dataset folders but no index.json; run python data/merge_index.py {path}"
            )
        merged = read_index(index_path)
        check_shard_paths(index_path, merged, _merged_folder(path), files=False)  # files: per folder
        folders = dataset_folders(path)
        if any(stats_path(f).exists() for f in folders):
            indexes = check_datasets(folders, **run)
        else:
            _warn_unchecked(path)
            indexes = {f: folder_index(f) for f in folders}
        _check_not_stale(path, folders, merged, indexes)
        samples = index_samples(merged)
    elif index_path.is_file():  # MDS from another tool
        index = read_index(index_path)
        check_shard_paths(index_path, index, lambda name: path)
        _warn_unchecked(path)
        samples = index_samples(index)
    else:
        raise DataError(
            f"no MDS index at {index_path}: convert the data with data/convert_dataset_to_mds.py and merge "
            f"it with data/merge_index.py {path}"
        )
    if samples == 0:
        raise DataError(f"{path} holds no samples: the {role} data must not be empty")
    return samples


def _warn_unchecked(path: Path) -> None:
    warnings.warn(
        f"{path}: no conversion stats (made by another tool?); cannot check its tokenizer, sample length "
        "or token ids",
        stacklevel=3,
    )


def open_split(
    path: str | Path,
    *,
    max_seq_len: int | None,
    tokenizer_fingerprint: str | None,
    vocab_size: int | None = None,
    role: str = "training",
    remote: str | None = None,
    **dataset_kwargs,
):
    """check_split, then the split's `streaming.StreamingDataset` (`dataset_kwargs`: shuffle, batch_size, ...).
    With `remote`, `path` is the local cache and streaming checks the files as they arrive."""
    from streaming import StreamingDataset

    if remote:
        return StreamingDataset(local=str(path), remote=remote, **dataset_kwargs)
    check_split(
        path,
        max_seq_len=max_seq_len,
        tokenizer_fingerprint=tokenizer_fingerprint,
        vocab_size=vocab_size,
        role=role,
    )
    return StreamingDataset(local=str(path), remote=None, **dataset_kwargs)


def merge_datasets(root: str | Path) -> dict:
    """Check the dataset folders under root, merge their indexes with streaming's merge_index, and replace
    root/index.json atomically (a re-merge after moving folders or converting again). The merged index
    records what each folder was (MERGE_RECORD), so that check_split can tell when it is stale."""
    root = Path(root)
    folders = dataset_folders(root)
    stats = check_compatible(folders)
    indexes = {f: folder_index(f, s) for f, s in zip(folders, stats)}
    merged = _streaming_merge(folders)
    check_shard_paths(root / "index.json", merged, _merged_folder(root))
    samples, expected = index_samples(merged), sum(s["samples"] for s in stats)
    if samples != expected:
        raise DataError(f"the merged index counts {samples} samples, the conversions wrote {expected}")
    merged[MERGE_RECORD] = {f.name: _record(f, indexes[f]) for f in folders}
    write_json_atomic(root / "index.json", merged)
    return {
        "root": str(root),
        "datasets": [f.name for f in folders],
        "samples": samples,
        "tokens": sum(s["tokens"] for s in stats),
        "max_seq_len": stats[0]["max_seq_len"],
        "tokenizer": stats[0]["tokenizer"],
    }


def _streaming_merge(folders: list[Path]) -> dict:
    """streaming's merge_index over the folders' index.json files, written to a scratch folder (it refuses
    to write over an existing index.json, and writes it in place, not atomically) and read back."""
    import tempfile

    from streaming.base.util import merge_index

    from flex_bert.data.streaming_logs import quiet_streaming

    with tempfile.TemporaryDirectory(prefix="flexbert-merge-") as scratch, quiet_streaming():
        merge_index([str(f / "index.json") for f in folders], scratch, keep_local=True)
        merged_path = Path(scratch) / "index.json"
        merged = read_index(merged_path)
    return merged
