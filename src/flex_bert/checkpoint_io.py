"""Load Composer checkpoints without running code from them.

`torch.load(weights_only=True)` refuses Composer checkpoints because they hold a few plain Python and numpy
objects besides tensors (RNG states as numpy arrays, timestamps as `timedelta`, `TorchVersion` in metadata).
`safe_torch_load` allows exactly those types and nothing else; a file that needs anything more is refused
with the type's name, and only `trust=True` falls back to full unpickling. The switch for it has one name in
every entry point: the ``trust_checkpoint: true`` config key of main.py, the ``--trust-checkpoint`` flag of the
scripts. Training's own loads (``load_path``, autoresume) go through it too (``flex_bert.train.run``).
"""

from __future__ import annotations

import collections
import datetime
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRUST_FLAG = "--trust-checkpoint"  # the scripts' switch
TRUST_KEY = "`trust_checkpoint: true` (or trust_checkpoint=true on the command line)"  # main.py's switch


def _numpy_globals() -> list:
    """numpy types found in Composer checkpoints, under their numpy 1.x and 2.x module paths."""
    from numpy._core import multiarray  # numpy >= 2; numpy.core.multiarray is a shim for it

    entries: list = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, name)
        entries += [(fn, f"numpy._core.multiarray.{name}"), (fn, f"numpy.core.multiarray.{name}")]
    # numpy >= 1.25 pickles dtypes through their classes, e.g. numpy.dtypes.UInt16DType.
    for code in "?bBhHiIlLqQefdgFDGSUV":
        cls = type(np.dtype(code))
        entries.append((cls, f"numpy.dtypes.{cls.__name__}"))
    entries.append((type(np.dtype("M8[s]")), "numpy.dtypes.DateTime64DType"))
    entries.append((type(np.dtype("m8[s]")), "numpy.dtypes.TimeDelta64DType"))
    return entries


def safe_globals() -> list:
    """The allow-list: everything a Composer (0.2x-0.32) checkpoint needs beyond tensors and containers."""
    return [
        *_numpy_globals(),
        collections.OrderedDict,
        collections.defaultdict,
        collections.deque,
        datetime.timedelta,
        datetime.datetime,
        datetime.date,
        datetime.timezone,
        torch.torch_version.TorchVersion,
        Path,
        type(Path()),
        slice,
        set,
        frozenset,
        complex,
    ]


def safe_torch_load(path: str | Path, trust: bool = False, trust_hint: str = TRUST_FLAG) -> Any:
    """`torch.load` on CPU that refuses arbitrary code; `trust=True` loads anything (weights_only=False).

    ``trust_hint`` names the switch the user would flip (a CLI flag, or the ``trust_checkpoint`` config key).
    A missing, truncated or corrupted file is a ValueError naming the file.
    """
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError wrapping it)
        message = str(e)
        if "weights_only" not in message and "Unsupported" not in message:
            raise ValueError(
                f"{path}: not a readable checkpoint (truncated or corrupted?): {message[:300]}"
            ) from e
        found = re.search(r"GLOBAL ([\w.]+)", message)
        what = found.group(1) if found else message.splitlines()[0]
        raise ValueError(
            f"{path}: refused to unpickle type {what!r}, which is not on the safe list for checkpoints. "
            f"If you trust this file, pass {trust_hint} (this loads it with weights_only=False, which can run "
            "arbitrary code)."
        ) from None
