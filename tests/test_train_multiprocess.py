"""`composer -n 2 main.py ...` on CPU (gloo): two processes, one global batch, one checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

from tests._train_fixtures import free_port, read_metrics, tiny_mds, tiny_yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def test_composer_launcher_two_processes(tiny_mds, tmp_path):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "ddp", max_duration="3ba", eval_interval="3ba", save_interval="3ba")
    composer = Path(sys.executable).with_name("composer")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [str(composer), "-n", "2", "--master_port", str(free_port()), str(ROOT / "main.py"), str(y)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = read_metrics(tmp_path / "ddp", kind=None)
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["batch"] for r in train] == [1, 2, 3]
    # 4 slots of 128 tokens per global batch, split over 2 ranks: tokens are summed across ranks
    assert 0.9 * 3 * 4 * 128 < train[-1]["tokens"] <= 3 * 4 * 128
    assert (tmp_path / "ddp" / "latest-rank0.pt").exists()
    assert any(r["kind"] == "eval" for r in recs)


def _launch(n: int, y: Path, *overrides: str, fsdp2: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **({"FSDP_VERSION": "2"} if fsdp2 else {}))
    if n == 1:
        cmd = [sys.executable, str(ROOT / "main.py"), str(y), *overrides]
    else:
        composer = Path(sys.executable).with_name("composer")
        cmd = [
            str(composer),
            "-n",
            str(n),
            "--master_port",
            str(free_port()),
            str(ROOT / "main.py"),
            str(y),
            *overrides,
        ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_fsdp_checkpoints_resume_across_world_sizes_and_export(tiny_mds, tmp_path):  # noqa: F811
    """FSDP (composer's FSDP2, full state dicts) on 2 processes -> resumed on 1 -> on 2 again -> HF export."""
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "fsdp",
        max_duration="4ba",
        save_interval="2ba",
        eval_interval="100ba",
        autoresume=True,
        fsdp_config={"sharding_strategy": "FULL_SHARD", "state_dict_type": "full"},
    )
    legs = [(2, "max_duration=4ba", True), (1, "max_duration=6ba", False), (2, "max_duration=8ba", True)]
    for n, duration, fsdp2 in legs:
        extra = [] if fsdp2 else ["fsdp_config=null"]
        proc = _launch(n, y, duration, *extra, fsdp2=fsdp2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["batch"] for r in read_metrics(tmp_path / "fsdp")] == list(range(1, 9))
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_to_hf.py"),
            "--input-checkpoint",
            str(tmp_path / "fsdp" / "latest-rank0.pt"),
            "--output-dir",
            str(tmp_path / "hf"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").num_parameters() > 0


def test_two_processes_train_exactly_like_one(tiny_mds, tmp_path):  # noqa: F811
    """Same global batch on 1 and 2 processes: the same batches (one packed stream, each rank takes its rows),
    so the same token counts and, in fp32 on the CPU, the same losses up to the order of gradient sums."""
    runs = {}
    for n in (1, 2):
        y = tiny_yaml(
            tiny_mds,
            tmp_path,
            f"world{n}",
            max_duration="6ba",
            save_interval="100ba",
            eval_interval="100ba",
            global_train_batch_size=8,
            **{"model.model_config.attn_out_dropout_prob": 0.0},
        )
        proc = _launch(n, y)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[n] = read_metrics(tmp_path / f"world{n}")
    assert [r["tokens"] for r in runs[1]] == [r["tokens"] for r in runs[2]]
    assert runs[1][0]["loss"] == runs[2][0]["loss"]
    for a, b in zip(runs[1], runs[2], strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])
