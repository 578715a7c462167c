"""`--dry_run` finds in seconds what a run would refuse after start-up: one line per problem, exit non-zero."""

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from streaming import Stream

from flex_bert.train.preflight import PreflightFailed
from flex_bert.train.run import dry_run, train
from tests._data_fixtures import demo_corpus, read_mds, read_streaming, run_convert, tiny_tokenizer_dir  # noqa: F401
from tests._train_fixtures import tiny_mds, tiny_yaml, write_code_running_checkpoint  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
STREAMS = ("clinical", "finance")


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
    assert "ok: train data, epoch 0: train: " in out and "ok: eval data:" in out
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


# ---- the training data's streams: samples, tokens and shares of an epoch ---------------------------------
@pytest.fixture(scope="module")
def two_streams(demo_corpus, tiny_tokenizer_dir, tmp_path_factory):  # noqa: F811
    """clinical and finance converted by the converter (not merged): a mixture's two dataset folders."""
    root = tmp_path_factory.mktemp("streams")
    for name in STREAMS:
        run_convert(demo_corpus[name], root, tiny_tokenizer_dir)
    return {"data": root, "tokenizer": tiny_tokenizer_dir}


def _mixture_yaml(two_streams, tmp_path, streams: dict, **changes) -> Path:
    return tiny_yaml(
        two_streams, tmp_path, "mix", eval_loader=None,
        **{"model.model_config.vocab_size": 1024, "train_loader.dataset.streams": streams, **changes},
    )  # fmt: skip


def test_dry_run_prints_each_streams_samples_tokens_and_shares(two_streams, tmp_path):
    folders = {n: two_streams["data"] / n for n in STREAMS}
    weights = {"clinical": 0.7, "finance": 0.3}
    streams = {n: {"local": str(f), "proportion": weights[n]} for n, f in folders.items()}
    proc = _cli(_mixture_yaml(two_streams, tmp_path, streams))
    assert proc.returncode == 0, proc.stderr

    # independently: the samples streaming's own StreamingDataset yields in an epoch, traced to their folder
    samples = {n: [tuple(ids.tolist()) for ids in read_mds(f)] for n, f in folders.items()}
    origin = {ids: n for n, all_ids in samples.items() for ids in all_ids}
    mixed = [Stream(local=str(f), proportion=weights[n]) for n, f in folders.items()]
    drawn = Counter(origin[tuple(ids.tolist())] for ids in read_streaming(streams=mixed))
    total = sum(drawn.values())
    tokens = {n: sum(map(len, samples[n])) * drawn[n] / len(samples[n]) for n in STREAMS}

    out = proc.stdout
    assert f"ok: train data, epoch 0: {total:,} samples from 2 streams" in out
    for n in STREAMS:
        copies = drawn[n] / len(samples[n])
        assert copies > 0 and copies != int(copies), "a fraction of the folder: its tokens are estimated"
        line = (
            f"\n  {n}: {drawn[n]:,} samples ({drawn[n] / total:.1%} of the epoch; configured {weights[n]:.1%}), "
            f"about {round(tokens[n]):,} tokens ({tokens[n] / sum(tokens.values()):.1%} of the tokens; "
            f"{copies:.2f} x its {len(samples[n]):,} samples)\n"
        )
        assert line in out, out
        assert abs(drawn[n] / total - weights[n]) < 0.01, "streaming draws the configured proportion"


def test_streams_that_cannot_be_counted_are_problems(two_streams, tmp_path):
    streams = {"clinical": {"local": str(tmp_path / "nowhere"), "proportion": 0.5}}
    streams["finance"] = {"local": str(two_streams["data"] / "finance"), "proportion": 0.5}
    proc = _cli(_mixture_yaml(two_streams, tmp_path, streams))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: train data: ") and "nowhere" in errors[0]

    other_tool = tmp_path / "mds" / "clinical"  # MDS without the converter's stats: trains, cannot be counted
    shutil.copytree(two_streams["data"] / "clinical", other_tool)
    y = tiny_yaml(
        two_streams, tmp_path, "one", eval_loader=None, data_local=str(other_tool.parent),
        **{"model.model_config.vocab_size": 1024, "train_loader.dataset.split": "clinical"},
    )  # fmt: skip
    with pytest.raises(PreflightFailed) as e:
        dry_run([str(y)], [])
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith(
        "train data: no conversion stats (<folder>.conversion.json) for clinical"
    )
