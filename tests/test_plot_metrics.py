"""scripts/plot_metrics.py draws a real run's metrics; flex_bert.plots reads what the run logged."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from flex_bert.plots import EVAL_LOSS, read_run
from flex_bert.train.run import train
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_metrics_of_two_runs(tiny_mds, tmp_path):  # noqa: F811
    for name, rate in (("a", 0.3), ("b", 0.15)):
        y = tiny_yaml(
            tiny_mds,
            tmp_path,
            name,
            max_duration="4ba",
            eval_interval="2ba",
            save_interval="4ba",
            mlm_probability=rate,
            **{"train_loader.dataset.mlm_probability": rate},
            callbacks={"speed_monitor": {"window_size": 1}},
        )
        train([str(y)], [])
    run = read_run(tmp_path / "b")
    assert run.mask_rate == 0.15
    assert [r["loss"] for r in run.train] == [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert [r[EVAL_LOSS] for r in run.evals] == [r[EVAL_LOSS] for r in read_metrics(tmp_path / "b", "eval")]

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "plots" / "runs.png"
    args = [
        sys.executable,
        str(ROOT / "scripts" / "plot_metrics.py"),
        f"first={tmp_path / 'a'}",
        str(tmp_path / "b"),
    ]
    r = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _png_size(out) == (1800, 540)

    bad = subprocess.run(
        [*args[:2], str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr and "Traceback" not in bad.stderr
