"""README.md's "Your workflow, step by step" table, run end to end as subprocesses on a tiny model and corpus.

The commands are read from the table itself, so a changed README command is what gets run. They run in a
temporary folder holding links to main.py, data/, scripts/ and yamls/ (the README's paths are relative to
the repository), with only what a tiny CPU run needs added: the tokenizer and sizes as flags or key=value
overrides. Step 1 (download) is replaced by a tiny step-0 run whose checkpoint is put where phase1.yml's
load_path expects the downloaded one (the demo trains such a stand-in too); step 9 uses its Hugging Face
export as the downloaded base model.
"""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# a tiny model and short run in place of ModernBERT-base for hours: sizes only, the YAMLs' recipe unchanged
TINY = [
    "max_seq_len=128",
    "model.model_config.vocab_size=512",
    "model.model_config.num_hidden_layers=3",
    "model.model_config.hidden_size=64",
    "model.model_config.intermediate_size=96",
    "model.model_config.num_attention_heads=4",
    "model.model_config.sliding_window=16",
    "model.model_config.compile_model=false",
    "global_train_batch_size=4",
    "device_train_microbatch_size=2",
    "device_eval_batch_size=8",
    "train_loader.num_workers=0",
    "eval_loader.num_workers=0",
    "max_duration=3ba",
    "eval_interval=3ba",
    "save_interval=3ba",
]


def readme_steps() -> dict[int, list[str]]:
    """Step number -> the backquoted commands of its row in the README's workflow table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your workflow, step by step", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+)\. [^|]*\| (.*) \|$", section, re.M)
    return {int(n): re.findall(r"`([^`]+)`", cell) for n, cell in rows}


def _run(work: Path, command: str, *extra: str, exit_code: int = 0) -> str:
    """A README command (plus `extra` arguments) in `work`, in this interpreter's environment (the README
    activates .venv first): its output, after checking its exit code (0 unless said)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # a tiny CPU run: composer's launcher then starts one process
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    words = shlex.split(command)
    program = shutil.which(words[0], path=env["PATH"])
    assert program, f"{words[0]} is not installed beside {sys.executable}"
    proc = subprocess.run(
        [program, *words[1:], *extra], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == exit_code, (
        f"{command} {' '.join(extra)} exited {proc.returncode}:\n{out[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A folder laid out like the repository, with a tiny corpus and tokenizer."""
    from flex_bert.data.demo_corpus import write_demo_corpus
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    work = tmp_path_factory.mktemp("workflow")
    for name in ("main.py", "data", "scripts", "yamls"):
        (work / name).symlink_to(ROOT / name)
    files = write_demo_corpus(work / "corpus", seed=0, docs_per_domain=30, eval_docs=8)
    train_bpe_tokenizer([files["clinical"]], work / "tokenizer", vocab_size=512)
    return {"dir": work, "tokenizer": str(work / "tokenizer"), "csv": files["clinical"]}


def test_readme_workflow_runs_as_written(work, monkeypatch):
    steps, w, tok = readme_steps(), work["dir"], work["tokenizer"]
    assert set(steps) == set(range(1, 10)), f"the README's table lists steps {sorted(steps)}"

    # 2. one MDS folder per dataset (the tiny CSV where the command reads it); --eval_fraction (README:
    # Converter) holds out the eval split's documents
    convert = steps[2][0]
    args = shlex.split(convert)
    assert args[:2] == ["python", "data/convert_dataset_to_mds.py"]
    dataset, out_dir, counts = (
        args[args.index(flag) + 1] for flag in ("--dataset", "--out_dir", "--out_token_counts")
    )
    (w / dataset).parent.mkdir(parents=True)
    shutil.copy(work["csv"], w / dataset)
    sizes = ["--tokenizer", tok, "--max_seq_len", "128", "--num_workers", "1", "--no_progress"]
    _run(w, convert, *sizes, "--eval_fraction", "0.2")
    name = Path(dataset).stem
    stats = {
        split: json.loads((w / out_dir / ".." / split / f"{name}.conversion.json").read_text())
        for split in ("train", "eval")
    }
    assert all(s["complete"] is True and s["samples"] > 0 for s in stats.values())
    assert (w / counts).read_text() == f"{dataset} {stats['train']['tokens']}\n"

    # 3. merge-index each split
    merge = steps[3][0]
    assert merge.endswith("/train") and steps[3][1] == ".../eval", "the table: merge train (and .../eval)"
    for split in ("train", "eval"):
        _run(w, merge.replace("/train", f"/{split}"))
        assert (w / "tokenized_datasets" / split / "index.json").is_file()

    # 4. the plan of ModernBERT-base's phase 1, as written: offline and before the download, it prints the
    # plan, then names what is missing (the hub tokenizer, the starting checkpoint) and exits non-zero
    from omegaconf import OmegaConf

    assert "--dry_run" in steps[4][0] and "phase1.yml" in steps[4][0]
    dry = _run(w, steps[4][0], exit_code=1)
    assert "error: tokenizer: cannot load tokenizer 'answerdotai/ModernBERT-base'" in dry
    assert "error: load_path: checkpoint" in dry and "does not exist" in dry
    plan = json.loads(re.findall(r"^\{\n.*?^\}$", dry, re.S | re.M)[-1])
    phase1 = OmegaConf.load(ROOT / "yamls" / "phase1.yml")
    assert plan["parameters"] == 149_655_232  # ModernBERT-base (docs: MODERNBERT_FACTS.md)
    assert plan["tokens_per_optimizer_step"] == phase1.global_train_batch_size * phase1.max_seq_len

    # 1. (download) -> a tiny step 0 at the path phase1.yml's load_path names
    from flex_bert.train.run import train

    monkeypatch.chdir(w)
    train(
        ["yamls/phase1.yml"],
        [
            f"tokenizer_name={tok}",
            *TINY,
            "load_path=null",
            "reset_time=false",
            "restart_override=false",
            "save_folder=step0",
        ],
    )
    start = w / phase1.load_path
    start.parent.mkdir(parents=True)
    shutil.copy(w / "step0" / "latest-rank0.pt", start)

    # 5., 6. phase 1 from it, phase 2 from phase 1 (each YAML's own load_path)
    for step, yaml_name in ((5, "phase1"), (6, "phase2")):
        assert steps[step][0].startswith("composer main.py") and f"yamls/{yaml_name}.yml" in steps[step][0]
        out = _run(w, steps[step][0], f"tokenizer_name={tok}", *TINY)
        yaml = OmegaConf.load(ROOT / "yamls" / f"{yaml_name}.yml")
        folder = w / yaml.save_folder.format(run_name=yaml.run_name)
        assert (folder / "latest-rank0.pt").is_file() and (folder / "config.yaml").is_file()
        records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["batch"] for r in records if r["kind"] == "train"] == [1, 2, 3], out[-2000:]
    assert "restart_override" in out, "phase 2 started from phase 1's checkpoint"

    # 7. export to Hugging Face
    export = steps[7][0]
    _run(w, export)
    args = shlex.split(export)
    checkpoint, hf_dir = args[args.index("--input-checkpoint") + 1], args[args.index("--output-dir") + 1]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(w / hf_dir)
    assert type(model).__name__ == "ModernBertForMaskedLM" and model.config.hidden_size == 64
    assert len(AutoTokenizer.from_pretrained(w / hf_dir)) <= 512

    # 8. evaluate the export (--hf_model DIR) and the checkpoint (--checkpoint CKPT)
    evaluate, alternative = steps[8]
    assert "--hf_model DIR" in evaluate and alternative == "--checkpoint CKPT"
    for command in (
        evaluate.replace("DIR", hf_dir),
        evaluate.replace("--hf_model DIR", alternative).replace("CKPT", checkpoint),
    ):
        found = re.search(r"\bloss\W+([\d.]+)", _run(w, command))
        assert found and math.isfinite(float(found.group(1))) and float(found.group(1)) > 0, command

    # 9. the ablation, as written: the step-0 stand-in exported by step 7's command plays the downloaded
    # base (an HF folder), a tiny labelled task (data/demo_task.py) sits where --set train_file points, and
    # a tiny budget comes as more --set overrides (the later value wins) with 2 seeds
    from flex_bert.data.demo_task import write_demo_task

    ablation = steps[9][0]
    args = shlex.split(ablation)
    assert args[:2] == ["python", "scripts/ablation.py"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    models = dict(a.split("=", 1) for i, a in enumerate(args) if "=" in a and args[i - 1] != "--set")
    assert list(models) == ["base", "dapt"] and models["dapt"] == checkpoint
    train_file = next(s.split("=", 1)[1] for s in sets if s.startswith("train_file="))
    assert Path(train_file).name == "train.csv"
    write_demo_task(w / Path(train_file).parent, seed=0, train=96, test=0)
    _run(w, export.replace(checkpoint, str(start.relative_to(w))).replace(hf_dir, models["base"]))
    budget = ["max_seq_len=48", "batch_size=16", "max_duration=2ep", "optimizer.lr=1e-3", "pooling=mean"]
    _run(w, ablation, "--seeds", "2", "--resamples", "200", *(x for s in budget for x in ("--set", s)))
    out = w / args[args.index("--out") + 1]
    assert all((out / f"ablation.{ext}").is_file() for ext in ("md", "json", "png"))
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary["models"]) == ["base", "dapt"] and summary["seeds"] == [1, 2]
    for row in summary["models"].values():
        assert all(math.isfinite(v) for m in ("accuracy", "macro_f1") for v in row[m]["values"]), row
    assert summary["models"]["base"]["start"] == models["base"]
    assert "| base |" in (out / "ablation.md").read_text()
