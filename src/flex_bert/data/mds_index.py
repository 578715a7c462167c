"""Read and check an MDS `index.json` before anything opens its shards.

mosaicml-streaming trusts an index: a malformed value ends in a KeyError or TypeError deep inside it, and a
shard basename such as `../../x/shard.mds`, an absolute path or a symlink makes it read (or, decompressing,
write) files outside the dataset folder. Every index this project reads or merges goes through
`read_index` (structure) and `check_shard_paths` (each shard file stays inside its dataset folder; the
files that exist have the size the index says). Errors are one line naming the index file and the shard.
"""

from __future__ import annotations

import json
from pathlib import Path

from flex_bert.data.sources import DataError

FILE_KEYS = ("raw_data", "zip_data")  # the shard files of an MDS shard (raw, and compressed when set)
SHARD_KEYS = (  # what streaming's MDSReader.from_json needs
    "column_encodings",
    "column_names",
    "column_sizes",
    "compression",
    "format",
    "hashes",
    "raw_data",
    "samples",
    "size_limit",
    "version",
    "zip_data",
)
FILE_INFO_KEYS = {"basename", "bytes", "hashes"}  # streaming's FileInfo


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_file_info(where: str, key: str, info) -> None:
    if not isinstance(info, dict):
        raise DataError(f"{where}: '{key}' must be an object, got {info!r:.60}")
    extra = sorted(set(info) - FILE_INFO_KEYS)
    if extra:
        raise DataError(f"{where}: '{key}' has unexpected key {extra[0]!r}")
    if not isinstance(info.get("basename"), str) or not info["basename"]:
        raise DataError(
            f"{where}: '{key}.basename' must be a non-empty string, got {info.get('basename')!r:.60}"
        )
    if not _count(info.get("bytes")):
        raise DataError(
            f"{where}: '{key}.bytes' must be a non-negative integer, got {info.get('bytes')!r:.60}"
        )
    if not isinstance(info.get("hashes"), dict):
        raise DataError(f"{where}: '{key}.hashes' must be an object")


def _check_shard(path: Path, i: int, shard) -> None:
    where = f"{path}: shard {i}"
    if not isinstance(shard, dict):
        raise DataError(f"{where} must be an object, got {shard!r:.60}")
    for key in SHARD_KEYS:
        if key not in shard:
            raise DataError(f"{where} has no {key!r}")
    if shard["format"] != "mds" or shard["version"] != 2:
        raise DataError(
            f"{where}: 'format' must be 'mds' and 'version' 2, got {shard['format']!r:.30}, "
            f"{shard['version']!r:.10}"
        )
    if not _count(shard["samples"]):
        raise DataError(f"{where}: 'samples' must be a non-negative integer, got {shard['samples']!r:.60}")
    names, encodings, sizes = shard["column_names"], shard["column_encodings"], shard["column_sizes"]
    if not all(isinstance(x, list) for x in (names, encodings, sizes)) or not len(names) == len(
        encodings
    ) == len(sizes):
        raise DataError(
            f"{where}: 'column_names', 'column_encodings' and 'column_sizes' must be lists of one length"
        )
    if shard["compression"] is not None and not isinstance(shard["compression"], str):
        raise DataError(f"{where}: 'compression' must be null or a string, got {shard['compression']!r:.30}")
    if "input_ids" not in names:
        raise DataError(f"{where} has no input_ids column (columns {names!r:.80}); training reads input_ids")
    _check_file_info(where, "raw_data", shard["raw_data"])
    if shard["zip_data"] is not None:
        _check_file_info(where, "zip_data", shard["zip_data"])


def read_index(path: str | Path) -> dict:
    """The parsed index at `path`, after checking every value streaming will rely on."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise DataError(f"{path}: not valid JSON ({str(e).splitlines()[0]:.100}); write it again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: must be a JSON object with 'version' and 'shards'")
    if "shards" not in obj:
        raise DataError(f"{path}: has no 'shards'")
    if obj.get("version") != 2:
        raise DataError(f"{path}: 'version' must be 2 (MDS), got {obj.get('version')!r:.20}")
    if not isinstance(obj["shards"], list):
        raise DataError(f"{path}: 'shards' must be a list, got {type(obj['shards']).__name__}")
    for i, shard in enumerate(obj["shards"]):
        _check_shard(path, i, shard)
    return obj


def shard_files(shard: dict) -> list[tuple[str, dict]]:
    """(key, file info) of each file a (checked) shard names."""
    return [(key, shard[key]) for key in FILE_KEYS if shard.get(key) is not None]


def confined(folder: Path, path: Path) -> Path | None:
    """`path` with symlinks resolved, or None when it is not strictly inside `folder` (also resolved): `..`
    components, absolute basenames and symlinks that leave the folder all fail this."""
    try:
        base, target = folder.resolve(), path.resolve()
    except (OSError, ValueError):  # a symlink loop, a NUL byte
        return None
    return target if base in target.parents else None


def check_shard_paths(index_path: Path, index: dict, folder_of, files: bool = True) -> None:
    """Each shard file of `index` (basenames are relative to the index's folder) stays inside its dataset
    folder, `folder_of(basename)` (None: the basename names no dataset folder). With `files`, also: each
    shard has a file, of the size the index records (streaming decompresses a missing raw file from the
    zip_data one)."""
    for i, shard in enumerate(index["shards"]):
        present = False
        for key, info in shard_files(shard):
            name = info["basename"]
            folder = folder_of(name)
            target = confined(folder, index_path.parent / name) if folder is not None else None
            if target is None:
                raise DataError(
                    f"{index_path}: shard {i} ({key} {name!r}) is outside of its dataset folder "
                    f"{folder or index_path.parent}; shard paths must stay inside it (symlinks included)"
                )
            if files and target.is_file():
                present = True
                _check_file(f"{index_path}: shard {i}", target, info["bytes"], key, shard["samples"])
        if files and not present:
            raise DataError(f"{index_path}: shard {i}: {shard['raw_data']['basename']} is missing")


def _check_file(where: str, target: Path, size: int, key: str, samples: int) -> None:
    """The file has the recorded size; a raw MDS shard starts with its sample count (uint32)."""
    if target.stat().st_size != size:
        raise DataError(
            f"{where}: {target} has {target.stat().st_size} bytes, the index.json says {size}; the folder "
            "changed after it was written"
        )
    if key == "raw_data":
        with open(target, "rb") as f:
            held = int.from_bytes(f.read(4), "little")
        if held != samples:
            raise DataError(f"{where}: {target} holds {held} samples, the index.json says {samples}")


def index_samples(index: dict) -> int:
    return sum(shard["samples"] for shard in index["shards"])
