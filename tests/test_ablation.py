"""scripts/ablation.py end to end on two tiny starting points x 2 seeds (untrained, and one whose encoder was
trained on the task), its resumption, its refusal of a changed task file, and the table's arithmetic."""

import json
import runpy
import sys

import pytest

from flex_bert.ablation import markdown, summarize
from flex_bert.hf_tasks import load_task_checkpoint
from tests._finetune_fixtures import (  # noqa: F401
    REPO,
    SEQUENCE_YAML,
    finetune_overrides,
    mlm_checkpoint_from_task_model,
    tiny_task,
    trained_run,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ablation_cli(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["ablation.py", *args])
    runpy.run_path(str(REPO / "scripts" / "ablation.py"), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_start(trained_run, tiny_task, tmp_path_factory):  # noqa: F811
    model, _ = load_task_checkpoint(trained_run["folder"] / "best.pt")
    path = tmp_path_factory.mktemp("trained_start") / "trained.pt"
    return mlm_checkpoint_from_task_model(path, model, tiny_task["tokenizer"])


def test_ablation_end_to_end(tiny_task, trained_start, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The table (trained beats untrained), resumption, and refusal of another task file.

    One optimizer step each: enough for the trained encoder's features, not for the untrained one's."""
    budget = finetune_overrides(tiny_task, pooling="mean", max_duration="1ba", eval_interval="1ba")
    sets = [a for item in budget for a in ("--set", item)]
    out = tmp_path / "ablation"
    models = [f"untrained={tiny_task['untrained']}", f"trained={trained_start}"]
    args = ["--task", SEQUENCE_YAML, "--out", str(out), "--seeds", "2", "--resamples", "500", *sets, *models]
    printed = ablation_cli(monkeypatch, capsys, args)
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary["models"]) == ["untrained", "trained"] and summary["seeds"] == [1, 2]
    assert summary["reported_split"] == "eval" and summary["items"] == 30
    for row in summary["models"].values():
        assert set(row) == {"start", "accuracy", "macro_f1", "per_class_f1"}
        assert len(row["accuracy"]["values"]) == 2 and set(row["per_class_f1"]) == {"clinical", "finance"}
    untrained, trained = (summary["models"][m]["accuracy"]["mean"] for m in ("untrained", "trained"))
    assert trained > 0.9 and trained > untrained + 0.15
    vs = summary["vs_first"]["trained"]["accuracy"]
    assert vs["per_seed"]["mean"] == pytest.approx(trained - untrained)
    assert vs["bootstrap"]["diff"] == pytest.approx(trained - untrained)
    assert vs["bootstrap"]["ci95"][0] > 0 and vs["bootstrap"]["p"] < 0.05
    table = (out / "ablation.md").read_text()
    assert "| model | accuracy | macro-F1 | d accuracy | d macro-F1 |" in table
    assert "| untrained |" in table and "(reference)" in table and "| clinical |" in table
    assert table in printed
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumable: only the missing cell runs again, and fixed seeds give the same table
    (out / "cells" / "trained-seed2" / "result.json").unlink()
    printed = ablation_cli(monkeypatch, capsys, args)
    assert printed.count("finished earlier, not re-run") == 3
    assert json.loads((out / "ablation.json").read_text()) == summary
    # a finished cell made with another task file is not mixed in
    with pytest.raises(SystemExit, match=r"error: .*untrained-seed1/result.json was made with another task file "
                       r"\(keys \['max_seq_len'\] differ\)"):  # fmt: skip
        ablation_cli(monkeypatch, capsys, [*args, "--set", "max_seq_len=40"])


def _cell(seed, acc, f1, pred):
    return {
        "seed": seed, "task": "single_label", "labels": ["a", "b"], "reported_split": "test",
        "scores": {"accuracy": acc, "macro_f1": f1, "per_class_f1": {"a": f1, "b": None}, "items": 4},
        "predictions": {"truth": [0, 0, 1, 1], "pred": pred, "groups": None},
    }  # fmt: skip


def test_summary_arithmetic_and_refusal_of_mismatched_examples():
    results = {
        "base": [_cell(1, 0.50, 0.4, [0, 1, 0, 1]), _cell(2, 0.75, 0.6, [0, 0, 0, 1])],
        "dapt": [_cell(1, 0.75, 0.7, [0, 0, 0, 1]), _cell(2, 1.00, 1.0, [0, 0, 1, 1])],
    }
    s = summarize(results, {"base": "b", "dapt": "d"}, resamples=200)
    assert s["models"]["base"]["accuracy"]["mean"] == pytest.approx(0.625)
    assert s["models"]["base"]["accuracy"]["std"] == pytest.approx(0.1767767)  # sample std of 0.5, 0.75
    assert s["models"]["dapt"]["per_class_f1"]["b"]["mean"] is None
    assert s["vs_first"]["dapt"]["macro_f1"]["per_seed"]["mean"] == pytest.approx(0.35)
    assert s["vs_first"]["dapt"]["macro_f1"]["per_seed"]["std"] == pytest.approx(0.0707107)  # of 0.3, 0.4
    assert "| dapt | 0.8750 +- 0.1768 |" in markdown(s)
    results["dapt"][1]["predictions"]["truth"] = [0, 1, 1, 1]
    with pytest.raises(ValueError, match="dapt, seed 2 was scored on other examples"):
        summarize(results, {"base": "b", "dapt": "d"})


def test_column_flags_set_the_task_file_keys(tiny_task, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--words_column / --tags_column (aliases of --text_column / --label_column) reach the task file's keys:
    the run reads the columns they name."""
    budget = finetune_overrides(tiny_task)
    sets = [a for item in budget for a in ("--set", item)]
    models = [f"a={tiny_task['untrained']}", f"b={tiny_task['untrained']}"]
    args = ["--task", SEQUENCE_YAML, "--out", str(tmp_path), *models, *sets, "--tags_column", "category"]
    with pytest.raises(SystemExit, match=r"^error: .*domain.csv: no column 'category'; columns found"):
        ablation_cli(monkeypatch, capsys, args)
    args[-2:] = ["--words_column", "sentence"]
    with pytest.raises(SystemExit, match=r"^error: .*domain.csv: no column 'sentence'; columns found"):
        ablation_cli(monkeypatch, capsys, args)
