"""Writing one converted dataset folder safely, and the scratch spill of take_from="end" conversions.

Output safety: one conversion per output name at a time (a lock, `<out_dir>/.locks/<name>/`). Each folder
is written as a hidden sibling `.<name>.tmp-<pid>`, renamed to `<name>` when complete, and only then is
`<name>.conversion.json` written beside it (atomically, last). A folder without that file, or a file
without `"complete": true`, is not a finished dataset (merge.read_conversion_stats). With --overwrite the old
dataset and its stats stay aside until every output is in place; any failure puts them back. The stats
live beside the folder, not inside, because streaming's merge_index(root, True) reads every .json inside
the sub-folders of root as a shard index.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flex_bert.data.merge import write_json_atomic
from flex_bert.data.sources import DataError
from flex_bert.data.streaming_logs import quiet_streaming


class DatasetOutput:
    """One dataset folder being written: a temporary sibling, an MDSWriter and its counters."""

    def __init__(self, parent: Path, name: str, role: str, overwrite: bool):
        self.parent, self.name, self.role, self.overwrite = parent, name, role, overwrite
        self.final = parent / name
        self.tmp = parent / f".{name}.tmp-{os.getpid()}"
        self.stats_path = parent / f"{name}.conversion.json"
        self.writer = None
        self.renamed: list[tuple[Path, Path | None]] = []  # swap_in's steps: (src, dst); dst None: created
        self.aside: list[Path] = []  # the old dataset and stats, hidden until discard_old
        self.documents = self.chunked_documents = self.samples = self.tokens = 0
        self.max_token_id = -1  # recorded so that training can refuse ids beyond the model's vocab_size

    def refuse_existing(self) -> None:
        """Checked before any work, and again just before the rename (another run may have finished)."""
        if self.overwrite:
            return
        for path in (self.final, self.stats_path):
            if path.exists():
                raise DataError(
                    f"{path} already exists; pass --overwrite to replace it (it is left untouched)"
                )

    def open(self, dtype: str, compression: str | None) -> None:
        self.parent.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.parent.glob(f".{self.name}.tmp-*"))
        if stale:
            print(
                f"warning: {stale[0]} is left over from an interrupted conversion; delete it", file=sys.stderr
            )
        with quiet_streaming():
            self.writer = encoded_mds_writer()(
                out=str(self.tmp),
                columns={"input_ids": f"ndarray:{dtype}"},
                compression=compression,
                size_limit=1 << 26,
                keep_local=True,
            )

    def add(self, samples: list[np.ndarray], encoded: list[bytes] | None = None) -> None:
        if encoded and len(encoded) != len(samples):
            raise RuntimeError(f"{len(encoded)} encoded samples for {len(samples)}: a processor bug")
        for i, sample in enumerate(samples):
            self.writer.write(encoded[i] if encoded else {"input_ids": sample})
            self.tokens += len(sample)
            self.max_token_id = max(self.max_token_id, int(sample.max()))
        self.documents += 1
        self.chunked_documents += len(samples) > 1
        self.samples += len(samples)

    def swap_in(self, stats: dict) -> None:
        """Move the finished folder into place and write conversion.json beside it (last, atomically). An
        existing dataset and its stats are kept aside, hidden, until `discard_old`; `restore` undoes this."""
        self.refuse_existing()
        for path in (self.stats_path, self.final):  # stats first: an old folder stops looking complete
            if path.exists():
                self._rename(path, self.parent / f".{path.name}.old-{os.getpid()}")
                self.aside.append(self.renamed[-1][1])
        self._rename(self.tmp, self.final)
        write_json_atomic(self.stats_path, stats)
        self.renamed.append((self.stats_path, None))

    def _rename(self, src: Path, dst: Path) -> None:
        src.rename(dst)
        self.renamed.append((src, dst))

    def restore(self) -> None:
        """Undo swap_in as far as it got: the new stats go, the new folder returns to its temporary name
        (abort removes it), the old dataset and its stats return."""
        while self.renamed:
            src, dst = self.renamed.pop()
            if dst is None:
                src.unlink(missing_ok=True)
            else:
                dst.rename(src)
        self.aside = []

    def discard_old(self) -> None:
        for path in self.aside:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.aside, self.renamed = [], []

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.cancel_future_jobs()
        shutil.rmtree(self.tmp, ignore_errors=True)


def encoded_mds_writer():
    from streaming import MDSWriter

    class EncodedMDSWriter(MDSWriter):
        """MDSWriter that also takes samples the workers already encoded with ``encode_sample``."""

        def encode_sample(self, sample):
            return sample if isinstance(sample, bytes) else super().encode_sample(sample)

    return EncodedMDSWriter


class Spill:
    """For take_from="end": all samples go to a scratch file first, since the documents to keep (the last
    ones whose tokens fit the budget) are known only at the end. Tokenizing happens once."""

    def __init__(self, parent: Path):
        parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".spill-", dir=parent))
        self.file = open(self.dir / "ids.bin", "wb")  # noqa: SIM115  (closed by replay() / close())
        self.docs: list[tuple[str, np.ndarray]] = []  # (role, sample lengths)
        self.dtype = None

    def add(self, role: str, samples: list[np.ndarray]) -> None:
        self.dtype = samples[0].dtype
        for s in samples:
            s.tofile(self.file)
        self.docs.append((role, np.array([len(s) for s in samples], dtype=np.int64)))

    def replay(self, max_tokens: int) -> tuple[int, Iterator[tuple[str, list[np.ndarray]]]]:
        """(number of leading documents over the budget, iterator over the kept documents' samples)."""
        self.file.close()
        totals = [int(lens.sum()) for _, lens in self.docs]
        keep_from, used = len(totals), 0
        while keep_from > 0 and used + totals[keep_from - 1] <= max_tokens:
            keep_from -= 1
            used += totals[keep_from]

        def kept():
            ids = np.memmap(self.dir / "ids.bin", dtype=self.dtype, mode="r") if self.docs else None
            offset = sum(totals[:keep_from])
            for role, lens in self.docs[keep_from:]:
                samples = []
                for n in lens:
                    samples.append(np.array(ids[offset : offset + n]))
                    offset += int(n)
                yield role, samples

        return keep_from, kept()

    def close(self) -> None:
        self.file.close()
        shutil.rmtree(self.dir, ignore_errors=True)
