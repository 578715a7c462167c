"""safe_torch_load: Composer's extra types load; anything else is refused without running it."""

import collections
import datetime
import fractions
import os
import random

import numpy as np
import pytest
import torch

from flex_bert.checkpoint_io import safe_torch_load


def composer_like_checkpoint() -> dict:
    """The non-tensor objects a Composer 0.32 checkpoint holds (RNG states, timestamps, versions)."""
    return {
        "state": {
            "model": collections.OrderedDict({"model.decoder.bias": torch.zeros(3)}),
            "timestamp": {"batch": 10, "total_wct": datetime.timedelta(seconds=5.5)},
            "metadata": {"torch_version": torch.__version__, "created": datetime.datetime(2025, 1, 2)},
            "dataset_state": {"sizes": np.arange(4, dtype=np.uint16), "dtype": np.dtype("uint32")},
            "scalars": [np.float64(1.5), np.int64(7), np.float32(2.0)],
        },
        "rng": [
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        ],
    }


def test_composer_types_load(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(composer_like_checkpoint(), path)
    loaded = safe_torch_load(path)
    assert loaded["state"]["timestamp"]["total_wct"] == datetime.timedelta(seconds=5.5)
    assert loaded["state"]["dataset_state"]["sizes"].dtype == np.uint16
    assert str(loaded["state"]["metadata"]["torch_version"]) == torch.__version__
    assert loaded["rng"][0]["numpy"][0] == "MT19937"


class _Exploit:
    """Unpickling this would run a shell command creating `self.target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state": {"model": {}}, "payload": _Exploit(target)}, path)
    with pytest.raises(ValueError) as err:
        safe_torch_load(path)
    assert not target.exists()
    message = str(err.value)
    assert "posix.system" in message or "os.system" in message or "nt.system" in message
    assert "--trust-checkpoint" in message


def test_unknown_type_refused_unless_trusted(tmp_path):
    path = tmp_path / "fraction.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="fractions.Fraction.*--trust-checkpoint"):
        safe_torch_load(path)
    assert safe_torch_load(path, trust=True)["x"] == fractions.Fraction(1, 3)
