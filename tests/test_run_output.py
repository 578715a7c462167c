"""A running job says what it does: progress lines (batch, loss, lr, tokens/s, ETA), where it starts from, and
metrics.jsonl keeps one record per batch across a resume."""

import os
import re

import pytest

from flex_bert.train.run import train
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LINE = re.compile(
    r"^\[batch (?P<batch>[\d,]+)/6\] \| loss (?P<loss>[\d.]+) \| lr (?P<lr>[\d.e+-]+) \| tokens (?P<tokens>[\d,]+)"
    r"(?: \| (?P<rate>[\d,]+) tokens/s \| ETA \d+:\d\d:\d\d)?$"
)


def test_progress_lines_resume_line_and_one_record_per_batch(tiny_mds, tmp_path, capsys):  # noqa: F811
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "run",
        max_duration="6ba",
        save_interval="3ba",
        eval_interval="3ba",
        autoresume=True,
        **{"callbacks.progress.every_seconds": 0},
    )
    train([str(y)], [])
    out = capsys.readouterr().out
    assert "fresh start" in out
    lines = [m for m in map(LINE.match, out.splitlines()) if m]
    records = read_metrics(tmp_path / "run")
    assert (
        [int(m["batch"].replace(",", "")) for m in lines]
        == [r["batch"] for r in records]
        == [1, 2, 3, 4, 5, 6]
    )
    for m, r in zip(lines, records):
        assert float(m["loss"]) == pytest.approx(r["loss"], abs=5e-5)
        assert int(m["tokens"].replace(",", "")) == r["tokens"]
    assert lines[0]["rate"] is None and all(m["rate"] for m in lines[1:]), "tokens/s from the second line on"

    # an attempt killed after batch 6 that had checkpointed only batch 3: the rerun trains 4..6 again
    folder = tmp_path / "run"
    os.remove(folder / "ep0-ba6-rank0.pt")
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "batch": 7, "loss": 1.0')  # a record cut short by the kill
    train([str(y)], [])
    out = capsys.readouterr().out
    assert f"resumed from {folder / 'ep0-ba3-rank0.pt'} at batch 3 (tokens 1,536)" in out
    resumed = read_metrics(folder)
    assert [r["batch"] for r in resumed] == [1, 2, 3, 4, 5, 6], "one record per batch"
    assert [r["loss"] for r in resumed[:3]] == [r["loss"] for r in records[:3]]
    assert [r["batch"] for r in read_metrics(folder, "eval")] == [3, 6]
