"""Weighted mixtures of converted dataset folders, read with mosaicml-streaming `Stream`s.

A mixture is a list of folders with weights; changing it in the YAML changes what training reads, without
moving folders or re-tokenizing:

    streams:
      - {local: clinical, proportion: 0.7}   # relative weights (normalized by streaming)
      - {local: finance,  proportion: 0.3}
    # or absolute: {local: clinical, repeat: 2.0} (each sample twice per epoch), {local: finance, repeat: 0.5}

Either every stream has a proportion, or every stream has a repeat, or none has a weight (each folder once).
Folders must be complete and agree (one tokenizer, one max_seq_len): see merge.check_datasets.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from flex_bert.data.merge import check_datasets


@dataclass(frozen=True)
class StreamSpec:
    local: str  # a converted dataset folder (relative paths: relative to build_streams' root)
    proportion: float | None = None
    repeat: float | None = None
    name: str | None = None  # a label for logs (YAML: the key of the stream)


def _as_spec(item: StreamSpec | Mapping) -> StreamSpec:
    if isinstance(item, StreamSpec):
        return item
    if not isinstance(item, Mapping):
        raise ValueError(f"a stream is a mapping with `local` and a weight, got {item!r}")
    allowed = [f.name for f in fields(StreamSpec)]
    for key in item:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown stream key {key!r}{hint}; allowed: {allowed}")
    if "local" not in item:
        raise ValueError(f"stream {dict(item)} has no `local` folder")
    return StreamSpec(**dict(item))


def validate_specs(specs: Sequence[StreamSpec | Mapping], root: str | Path | None = None) -> list[StreamSpec]:
    """Parse and check the weights; `local` paths that are relative are taken relative to `root`."""
    parsed = [_as_spec(s) for s in specs]
    if not parsed:
        raise ValueError("the mixture has no streams")
    resolved = []
    for s in parsed:
        local = Path(s.local) if root is None or Path(s.local).is_absolute() else Path(root) / s.local
        if s.proportion is not None and s.repeat is not None:
            raise ValueError(f"stream {s.local}: give a proportion or a repeat, not both")
        for key in ("proportion", "repeat"):
            w = getattr(s, key)
            if w is not None and (
                isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0
            ):
                raise ValueError(f"stream {s.local}: {key} must be a positive number, got {w!r}")
        resolved.append(StreamSpec(str(local), s.proportion, s.repeat, s.name))
    kinds = {
        ("proportion" if s.proportion is not None else "repeat" if s.repeat is not None else None)
        for s in resolved
    }
    if len(kinds) > 1:
        raise ValueError(
            "either every stream has a proportion, or every stream has a repeat (or none has a "
            f"weight); got {[(s.local, s.proportion, s.repeat) for s in resolved]}"
        )
    locals_ = [Path(s.local).resolve() for s in resolved]
    if len(set(locals_)) < len(locals_):
        raise ValueError("a folder appears twice in the mixture; give it one weight")
    return resolved


def build_streams(
    specs: Sequence[StreamSpec | Mapping],
    *,
    root: str | Path | None = None,
    max_seq_len: int | None = None,
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
) -> list:
    """`streaming.Stream` objects (local only, remote=None) for a mixture, after validation: weights,
    folders exist and are complete, one tokenizer and max_seq_len (and these, if given), well-formed
    indexes, token ids below `vocab_size` (if given).

    Use: `StreamingDataset(streams=build_streams(cfg.streams, root=cfg.data_root, ...), remote=None,
    batch_size=..., epoch_size=...)`."""
    from streaming import Stream

    resolved = validate_specs(specs, root)
    check_datasets(
        [s.local for s in resolved],
        max_seq_len=max_seq_len,
        tokenizer_fingerprint=tokenizer_fingerprint,
        vocab_size=vocab_size,
    )
    return [Stream(local=s.local, remote=None, proportion=s.proportion, repeat=s.repeat) for s in resolved]
