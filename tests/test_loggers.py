"""The optional loggers start and record a tiny run's metrics offline (wandb in offline mode, tensorboard to
event files), with the versions pinned in requirements/lock.txt (the `[wandb]` and `[tensorboard]` extras)."""

import json
import time

import pytest

from flex_bert.train.run import train
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_wandb_logger_records_the_run_offline(tiny_mds, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "wb",
        max_duration="3ba",
        eval_interval="3ba",
        save_interval="3ba",
        loggers={"wandb": {"project": "flexbert-test", "tags": ["ci"]}},
    )
    train([str(y)], []).close()  # composer's WandBLogger finishes the wandb run on close
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, "one offline run"
    history = _wandb_history(files[0])
    losses = [h["loss/train/total"] for h in history if "loss/train/total" in h]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(tmp_path / "wb")], rel=1e-6)


def _wandb_history(path, timeout: float = 20.0) -> list[dict]:
    """The logged rows of an offline run file, read with wandb's own record reader (wandb's service process
    may still be flushing the file for a moment after the run finishes)."""
    deadline = time.monotonic() + timeout
    while not (rows := _read_history(path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return rows


def _read_history(path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(path))
    rows = []
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
    return rows


def test_tensorboard_logger_writes_scalars(tiny_mds, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "tb",
        max_duration="3ba",
        eval_interval="3ba",
        save_interval="3ba",
        loggers={"tensorboard": {"log_dir": str(log_dir)}},
    )
    train([str(y)], [])
    events = list(log_dir.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {log_dir}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("loss/train/total")]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(tmp_path / "tb")], rel=1e-6)
