"""`--dry_run` finds in seconds what a run would refuse after start-up: one line per problem, exit non-zero."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flex_bert.train.preflight import PreflightFailed
from flex_bert.train.run import dry_run, train
from tests._train_fixtures import tiny_mds, tiny_yaml, write_code_running_checkpoint  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def step0(tiny_mds, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("step0")
    train([str(tiny_yaml(tiny_mds, tmp, "step0", max_duration="2ba", save_interval="2ba"))], [])
    return tmp / "step0" / "latest-rank0.pt"


def _cli(yaml_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "main.py", str(yaml_path), *overrides, "--dry_run"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_sound_phase_passes_and_says_what_it_checked(tiny_mds, step0, tmp_path, capsys):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "p1", load_path=str(step0), reset_time=True)
    dry_run([str(y)], [])
    out = capsys.readouterr().out
    assert f"ok: load_path: {step0} loads and matches model_config" in out
    assert "ok: train data:" in out and "ok: eval data:" in out
    assert out.rstrip().endswith("dry run: no problems found")


def test_every_problem_is_named_on_its_own_line(tiny_mds, step0, tmp_path):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "bad", load_path=str(tmp_path / "missing.pt"))
    proc = _cli(y, f"data_local={tmp_path / 'nowhere'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split(":")[1].strip() for e in errors] == ["load_path", "train data", "eval data"], errors
    assert "missing.pt does not exist" in errors[0]
    assert "nowhere" in errors[1]


def test_a_checkpoint_of_another_architecture_is_found(tiny_mds, step0, tmp_path):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "arch", load_path=str(step0))
    with pytest.raises(PreflightFailed) as e:
        dry_run([str(y)], ["model.model_config.num_hidden_layers=4"])
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith("load_path: checkpoint does not match its config")
    assert "model.model_config describes another architecture" in e.value.problems[0]


def test_a_pickle_that_runs_code_is_refused_without_running_it(tiny_mds, tmp_path):  # noqa: F811
    target, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    write_code_running_checkpoint(evil, target)
    with pytest.raises(PreflightFailed, match="load_path: .*trust_checkpoint"):
        dry_run([str(tiny_yaml(tiny_mds, tmp_path, "evil", load_path=str(evil)))], [])
    assert not target.exists()


def test_data_of_another_tokenizer_is_found(tiny_mds, tmp_path):  # noqa: F811
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    other = tmp_path / "other_tok"
    train_bpe_tokenizer(["alpha beta gamma delta"] * 50, other, vocab_size=300)
    y = tiny_yaml(tiny_mds, tmp_path, "tok", tokenizer_name=str(other))
    with pytest.raises(PreflightFailed) as e:
        dry_run([str(y)], ["model.model_config.vocab_size=512"])
    assert [p.split(":")[0] for p in e.value.problems] == ["train data", "eval data"]
    assert all("tokenized with" in p for p in e.value.problems)
