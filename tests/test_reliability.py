"""Reliability rules: a non-finite loss stops (or skips) a batch; re-launching a phase after a crash continues it."""

from types import SimpleNamespace

import pytest
import torch

from flex_bert.train.callbacks import NanGuard, NonFiniteLoss
from flex_bert.train.run import train
from tests._train_fixtures import (  # noqa: F401
    free_port,
    read_metrics,
    tiny_mds,
    tiny_yaml,
    write_code_running_checkpoint,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Logger:
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, m):
        self.metrics.update(m)


def _state(loss, model):
    return SimpleNamespace(loss=loss, model=model, timestamp=SimpleNamespace(batch=41))


def _checkpoint(path, weight: float) -> None:
    """A composer checkpoint's layout: the model's weights under state.model."""
    torch.save({"state": {"model": {"model.w": torch.full((2, 2), weight)}}, "rng": []}, path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_guard_stops_naming_batch_and_checkpoint(tmp_path, bad):
    _checkpoint(tmp_path / "ep0-ba40-rank0.pt", 1.0)
    guard, model = NanGuard("stop", str(tmp_path)), torch.nn.Linear(2, 2)
    guard.after_loss(_state(torch.tensor(1.0), model), _Logger())
    guard.after_loss(_state(torch.tensor(bad), model), _Logger())  # the second micro-batch diverged
    with pytest.raises(NonFiniteLoss, match=r"batch 42\. Roll back to .*ep0-ba40-rank0\.pt") as err:
        guard.after_train_batch(_state(None, model), _Logger())
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)  # main.py prints it as one line


def test_nan_guard_names_the_newest_checkpoint_with_finite_weights(tmp_path):
    """Weights can diverge before the loss does: a checkpoint with a non-finite weight is passed over."""
    for batch, weight in ((10, 1.0), (20, 2.0), (30, float("inf")), (40, float("nan"))):
        _checkpoint(tmp_path / f"ep0-ba{batch}-rank0.pt", weight)
    (tmp_path / "ep0-ba50-rank0.pt").write_bytes(b"truncated")
    guard, model = NanGuard("stop", str(tmp_path)), torch.nn.Linear(2, 2)
    guard.after_loss(_state(torch.tensor(float("nan")), model), _Logger())
    with pytest.raises(NonFiniteLoss, match=r"Roll back to .*ep0-ba20-rank0\.pt \(as load_path\)"):
        guard.after_train_batch(_state(None, model), _Logger())
    for batch in (10, 20):
        _checkpoint(tmp_path / f"ep0-ba{batch}-rank0.pt", float("nan"))
    guard.after_loss(_state(torch.tensor(float("nan")), model), _Logger())
    with pytest.raises(NonFiniteLoss, match="None of this run's 5 checkpoints holds finite weights"):
        guard.after_train_batch(_state(None, model), _Logger())


def test_nan_guard_skip_stops_after_max_consecutive_skips(tmp_path):
    guard, model, logger = (
        NanGuard("skip", str(tmp_path), max_consecutive_skips=2),
        torch.nn.Linear(2, 2),
        _Logger(),
    )

    def batch(loss: float) -> None:
        model(torch.ones(1, 2)).sum().backward()
        guard.after_loss(_state(torch.tensor(loss), model), logger)
        guard.after_train_batch(_state(None, model), logger)

    for loss in (
        float("nan"),
        float("nan"),
        0.5,
        float("nan"),
        float("inf"),
    ):  # a finite batch resets the run
        batch(loss)
    assert logger.metrics["train/nonfinite_batches_skipped"] == 4
    with pytest.raises(
        NonFiniteLoss, match="3 in a row, more than callbacks.nan_guard.max_consecutive_skips"
    ):
        batch(float("nan"))


@pytest.mark.slow
def test_nan_guard_stop_is_one_line_from_main_py(tiny_mds, tmp_path):  # noqa: F811
    """The real path: composer runs the guard inside the optimizer step; main.py prints its stop as one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    y = tiny_yaml(tiny_mds, tmp_path, "diverge", max_duration="8ba", **{"optimizer.lr": 1e30})
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run(
        [sys.executable, "main.py", str(y)], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite training loss at batch "), proc.stderr[-3000:]
    assert "Roll back to" in last


def test_nan_guard_skip_drops_the_update_and_counts_it():
    guard, model, logger = NanGuard("skip"), torch.nn.Linear(2, 2), _Logger()
    model(torch.ones(1, 2)).sum().backward()
    guard.after_loss(_state({"total": torch.tensor(float("nan"))}, model), logger)
    guard.after_train_batch(_state(None, model), logger)
    assert all(p.grad is None for p in model.parameters())
    assert logger.metrics["train/nonfinite_batches_skipped"] == 1
    model(torch.ones(1, 2)).sum().backward()  # a finite batch is left alone
    guard.after_loss(_state(torch.tensor(0.5), model), logger)
    guard.after_train_batch(_state(None, model), logger)
    assert all(p.grad is not None for p in model.parameters())


def test_relaunching_a_phase_after_a_crash_continues_it(tiny_mds, tmp_path, capsys):  # noqa: F811
    step0 = tiny_yaml(tiny_mds, tmp_path, "step0", max_duration="6ba", save_interval="6ba")
    train([str(step0)], [])
    common = dict(
        load_path=str(tmp_path / "step0" / "latest-rank0.pt"),
        reset_time=True,
        restart_override=True,
        autoresume=True,
        save_interval="4ba",
        **{"optimizer.lr": 1e-3},
    )
    # the first launch "crashes" after batch 4 (stands in for a kill: its last checkpoint is at batch 4)
    train([str(tiny_yaml(tiny_mds, tmp_path, "phase", max_duration="4ba", **common))], [])
    # the same command again, now running to its end: it must continue phase 2 from batch 4
    y = tiny_yaml(tiny_mds, tmp_path, "phase", max_duration="8ba", **common)
    capsys.readouterr()
    trainer = train([str(y)], [])
    batches = [r["batch"] for r in read_metrics(tmp_path / "phase")]
    assert batches == [1, 2, 3, 4, 5, 6, 7, 8], "time continued, it was not reset to 0 again"
    assert "resumed from" in capsys.readouterr().out
    assert int(trainer.state.optimizers[0].param_groups[1]["step"]) == 6 + 8


def test_autoresume_falls_back_past_a_corrupted_checkpoint(tiny_mds, tmp_path, capsys):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "run", max_duration="6ba", save_interval="3ba", autoresume=True)
    train([str(y)], [])
    folder = tmp_path / "run"
    newest = folder / "ep0-ba6-rank0.pt"
    assert (folder / "latest-rank0.pt").resolve() == newest.resolve()
    assert not list(folder.glob(".tmp-*")), "no temporary checkpoint file is left behind"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a crash while writing, or a disk error
    y = tiny_yaml(tiny_mds, tmp_path, "run", max_duration="8ba", save_interval="3ba", autoresume=True)
    trainer = train([str(y)], [])
    out = capsys.readouterr().out
    assert "ep0-ba6-rank0.pt is truncated or corrupted" in out
    assert (folder / "ep0-ba6-rank0.pt.corrupt").exists()
    assert f"resumed from {folder / 'ep0-ba3-rank0.pt'} at batch 3" in out, "the newest intact checkpoint"
    batches = [r["batch"] for r in read_metrics(folder)]
    assert batches == [1, 2, 3, 4, 5, 6, 7, 8], "one record per batch: batches 4-6 were trained again"
    assert int(trainer.state.timestamp.batch) == 8


def test_scripts_never_run_code_from_a_checkpoint(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    write_code_running_checkpoint(evil, target)
    commands = [
        ["scripts/convert_to_hf.py", "--input-checkpoint", str(evil), "--output-dir", str(tmp_path / "hf")],
        ["scripts/evaluate_mlm.py", "--checkpoint", str(evil), "--data", str(tmp_path)],
    ]
    for cmd in commands:
        proc = subprocess.run([sys.executable, *cmd], cwd=root, capture_output=True, text=True)
        assert proc.returncode != 0
        assert "--trust-checkpoint" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not target.exists()


def _nan_guard_rank(rank: int, port: int, results) -> None:
    import torch.distributed as td

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    guard, model = NanGuard("skip"), torch.nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    loss = torch.tensor(float("nan") if rank == 1 else 0.5)  # only rank 1 diverged
    guard.after_loss(_state(loss, model), _Logger())
    guard.after_train_batch(_state(None, model), _Logger())
    results[rank] = all(p.grad is None for p in model.parameters())
    td.destroy_process_group()


def test_nan_guard_decides_for_all_ranks_together(monkeypatch):
    """Gradients are averaged across ranks before the guard runs: one rank's NaN must skip the step everywhere."""
    import torch.multiprocessing as mp

    port = free_port()
    results = mp.Manager().dict()
    monkeypatch.setenv("WORLD_SIZE", "2")  # what the launcher sets; composer's dist reads it
    mp.spawn(_nan_guard_rank, args=(port, results), nprocs=2, join=True)
    assert dict(results) == {0: True, 1: True}
