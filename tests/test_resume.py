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
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml, write_code_running_checkpoint  # noqa: F401

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


def test_kill_9_then_autoresume_equals_an_uninterrupted_run(tiny_mds, tmp_path, capsys):  # noqa: F811
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

    capsys.readouterr()
    train([str(y)], [])  # the same command again
    assert "resumed from" in capsys.readouterr().out
    resumed = _train_records(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 61))
    start = 5 * (before // 5)  # the last checkpoint before the kill
    for b in range(start + 1, 61):
        assert resumed[b]["loss"] == pytest.approx(whole[b]["loss"], abs=1e-6), b
        assert resumed[b]["lr"] == pytest.approx(whole[b]["lr"], rel=1e-9), b
        assert resumed[b]["tokens"] == whole[b]["tokens"], b


@pytest.fixture(scope="module")
def finished(tiny_mds, tmp_path_factory):  # noqa: F811
    """A run that reached its max_duration: checkpoints at batches 3 and 6, latest -> batch 6."""
    tmp = tmp_path_factory.mktemp("finished")
    train([str(_short(tiny_mds, tmp, "6ba"))], [])
    return tmp / "run"


def _short(tiny_mds, tmp_path, duration, **changes):  # noqa: F811
    changes = {"autoresume": True, **changes}
    return tiny_yaml(tiny_mds, tmp_path, "run", max_duration=duration, save_interval="3ba", **changes)


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "run", symlinks=True))


@pytest.mark.parametrize(
    "link, overwrite",
    [("missing", True), ("missing", False), ("dangling", False), ("older", True)],
)
def test_resume_finds_the_newest_checkpoint_whatever_the_latest_link(
    finished,
    tiny_mds,  # noqa: F811
    tmp_path,
    capsys,
    link,
    overwrite,
):
    """A kill between composer's removing `latest` and re-creating it, or before it re-points it."""
    folder = _copy(finished, tmp_path)
    latest = folder / "latest-rank0.pt"
    latest.unlink()
    if link == "dangling":
        latest.symlink_to("ep0-ba9-rank0.pt")
    elif link == "older":
        latest.symlink_to("ep0-ba3-rank0.pt")
    leftover = folder / ".tmp-4242-ep0-ba9-rank0.pt"  # a checkpoint write the kill cut short
    leftover.write_bytes(b"partial")
    train([str(_short(tiny_mds, tmp_path, "8ba", save_overwrite=overwrite))], [])
    out = capsys.readouterr().out
    assert "resumed from" in out
    assert [r["batch"] for r in read_metrics(folder)] == [1, 2, 3, 4, 5, 6, 7, 8], "continued from batch 6"
    assert not leftover.exists()
    assert "now points at the newest intact checkpoint" in out and ".tmp-4242-ep0-ba9-rank0.pt" in out


@pytest.mark.parametrize("latest", ["symlink", "file"])
def test_autoresume_never_runs_code_from_the_save_folder(tiny_mds, tmp_path, latest):  # noqa: F811
    """A crafted checkpoint in save_folder (as composer links it, or a file named latest-rank0.pt)."""
    folder, target = tmp_path / "run", tmp_path / "pwned"
    folder.mkdir()
    crafted = folder / ("ep0-ba9-rank0.pt" if latest == "symlink" else "latest-rank0.pt")
    write_code_running_checkpoint(crafted, target)
    if latest == "symlink":
        (folder / "latest-rank0.pt").symlink_to(crafted.name)
    with pytest.raises(ValueError, match="trust_checkpoint: true") as err:
        train([str(_short(tiny_mds, tmp_path, "6ba"))], [])
    assert "\n" not in str(err.value) and str(crafted) in str(err.value)
    assert not target.exists()


def test_rerunning_a_finished_run_says_it_is_complete(finished, tiny_mds, tmp_path, capsys):  # noqa: F811
    folder = _copy(finished, tmp_path)
    before = (folder / "metrics.jsonl").read_text()
    train([str(_short(tiny_mds, tmp_path, "6ba"))], [])
    last = (folder / "ep0-ba6-rank0.pt").resolve()
    expected = f"run already complete: {last} (max_duration 6ba reached at batch 6); nothing to do"
    assert expected in capsys.readouterr().out.splitlines()
    assert (folder / "metrics.jsonl").read_text() == before


def test_a_second_run_on_the_same_save_folder_is_refused_naming_the_first(tiny_mds, tmp_path):  # noqa: F811
    y = _short(tiny_mds, tmp_path, "100000ba")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), str(y)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    lock = tmp_path / "run" / ".flexbert.lock"
    try:
        deadline = time.time() + 60
        while first.poll() is None and time.time() < deadline:
            if lock.exists() and f"pid {first.pid} " in lock.read_text():
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        with pytest.raises(ValueError, match=rf"in use by another training run \(pid {first.pid} on host"):
            train([str(y)], ["max_duration=1ba"])  # (a short run: were it not refused, the test ends soon)
    finally:
        first.kill()
        first.wait()


def test_only_global_rank_0_takes_the_save_folder_lock(tmp_path, monkeypatch):
    """The other ranks of a run share its folder; several nodes see one folder."""
    from omegaconf import OmegaConf

    from flex_bert.folder_lock import folder_lock
    from flex_bert.train.run import _lock_save_folder

    cfg = OmegaConf.create({"save_folder": str(tmp_path / "{run_name}"), "run_name": "run"})
    with folder_lock(tmp_path / "run"):
        monkeypatch.setenv("RANK", "1")
        with _lock_save_folder(cfg):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ValueError, match="in use by another training run"), _lock_save_folder(cfg):
            pass


def test_resuming_on_other_data_is_an_error_or_with_the_key_a_fresh_data_stream(
    finished,
    tiny_mds,  # noqa: F811
    tmp_path,
    capsys,
):
    """The reported case: the same run resumed with another data folder (here: the eval split, with fewer
    documents than the run had read) crashed with an IndexError or went on at the old position."""
    folder = _copy(finished, tmp_path)
    other = {"train_loader.dataset.split": "eval"}
    with pytest.raises(
        ValueError, match=r"the data changed since the checkpoint \(documents \d+ -> \d+, shards \w+ -> \w+"
    ):
        train([str(_short(tiny_mds, tmp_path, "8ba", **other))], [])
    capsys.readouterr()
    trainer = train([str(_short(tiny_mds, tmp_path, "8ba", restart_data_if_changed=True, **other))], [])
    out = capsys.readouterr().out
    assert "restart_data_if_changed is set, so the data stream starts again" in out
    assert "resumed from" in out and int(trainer.state.timestamp.batch) == 8
    assert [r["batch"] for r in read_metrics(folder)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_fresh_run_into_a_folder_with_later_checkpoints_is_one_line(finished, tiny_mds, tmp_path):  # noqa: F811
    _copy(finished, tmp_path)
    with pytest.raises(ValueError, match="may conflict with a future checkpoint.*autoresume: true continues"):
        train([str(_short(tiny_mds, tmp_path, "6ba", autoresume=False, save_overwrite=False))], [])
