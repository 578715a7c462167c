"""kill -9 mid-run, then the same command with autoresume: the batches after the checkpoint have the same
losses and learning rates as an uninterrupted run, and the data is not re-read to get there."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flex_bert.train.run import train
from tests._train_fixtures import tiny_mds, tiny_yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _train_records(folder: Path) -> dict[int, dict]:
    """The last record per batch (a resumed run rewrites the batches after its checkpoint)."""
    out = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the line a kill -9 cut short
            continue
        if rec["kind"] == "train":
            out[rec["batch"]] = rec
    return out


def _config(tiny_mds, tmp_path, name):  # noqa: F811
    return tiny_yaml(
        tiny_mds,
        tmp_path,
        name,
        max_duration="60ba",
        save_interval="5ba",
        eval_interval="60ba",
        autoresume=True,
        **{"train_loader.num_workers": 2, "optimizer.lr": 3e-3},
    )


def test_kill_9_then_autoresume_equals_an_uninterrupted_run(tiny_mds, tmp_path):  # noqa: F811
    train([str(_config(tiny_mds, tmp_path, "whole"))], [])
    whole = _train_records(tmp_path / "whole")
    assert sorted(whole) == list(range(1, 61))  # 60 batches cross an epoch boundary of the tiny corpus

    y = _config(tiny_mds, tmp_path, "killed")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), str(y)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and max(_train_records(tmp_path / "killed") or [0]) >= 23:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = max(_train_records(tmp_path / "killed"))
    assert before < 60

    trainer = train([str(y)], [])  # the same command again
    assert trainer.flexbert_resuming
    resumed = _train_records(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 61))
    start = 5 * (before // 5)  # the last checkpoint before the kill
    for b in range(start + 1, 61):
        assert resumed[b]["loss"] == pytest.approx(whole[b]["loss"], abs=1e-6), b
        assert resumed[b]["lr"] == pytest.approx(whole[b]["lr"], rel=1e-9), b
        assert resumed[b]["tokens"] == whole[b]["tokens"], b
