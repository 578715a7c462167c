"""Golden losses of the tiny config: a refactor must reproduce them; a change to the computation updates them
(`UPDATE_GOLDEN=1 pytest tests/test_golden.py`) with the reason in the commit message."""

import json
import os
from pathlib import Path

import pytest

from flex_bert.train.run import train
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml  # noqa: F401

GOLDEN = Path(__file__).parent / "data" / "golden_tiny_losses.json"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_tiny_run_reproduces_the_golden_losses(tiny_mds, tmp_path):  # noqa: F811
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "golden",
        max_duration="10ba",
        save_interval="10ba",
        eval_interval="10ba",
        **{"train_loader.num_workers": 0},
    )
    train([str(y)], [])
    recs = read_metrics(tmp_path / "golden", kind=None)
    got = {
        "train_loss": [r["loss"] for r in recs if r["kind"] == "train"],
        "lr": [r["lr"] for r in recs if r["kind"] == "train"],
        "eval_loss": [r["metrics/eval/LanguageCrossEntropy"] for r in recs if r["kind"] == "eval"],
    }
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got["lr"] == pytest.approx(expected["lr"], rel=1e-12)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], abs=1e-5)
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-5)
