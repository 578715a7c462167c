"""`composer -n 2 main.py ...` on CPU (gloo): two processes, one global batch, one checkpoint."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests._train_fixtures import tiny_mds, tiny_yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_composer_launcher_two_processes(tiny_mds, tmp_path):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "ddp", max_duration="3ba", eval_interval="3ba", save_interval="3ba")
    composer = Path(sys.executable).with_name("composer")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [str(composer), "-n", "2", "--master_port", str(_free_port()), str(ROOT / "main.py"), str(y)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["batch"] for r in train] == [1, 2, 3]
    # 4 slots of 128 tokens per global batch, split over 2 ranks: tokens are summed across ranks
    assert 0.9 * 3 * 4 * 128 < train[-1]["tokens"] <= 3 * 4 * 128
    assert (tmp_path / "ddp" / "latest-rank0.pt").exists()
    assert any(r["kind"] == "eval" for r in recs)
