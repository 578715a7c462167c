"""Every script in scripts/ runs: `--help` for each (the argument parser and every import), and a tiny real run
where one is cheap on a CPU. `REAL_RUNS` names, for each script, the test that runs it for real (or why none
can on a CPU), so a new script cannot go untested unnoticed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh"))

REAL_RUNS = {
    "ablation.py": "tests/test_ablation.py",
    "bench_allreduce.py": "GPU only (NCCL between GPUs)",
    "bench_attention.py": "GPU figures; its CPU mode compiles flex_attention for minutes",
    "bench_convert.py": "test_bench_convert_tiny_corpus",
    "bench_finetune.py": "tests/test_bench_smoke.py::test_bench_finetune_tiny",
    "bench_fused.py": "GPU only (Triton kernels)",
    "bench_fp8.py": "tests/test_bench_smoke.py::test_bench_fp8_tiny",
    "bench_packing.py": "tests/test_bench_smoke.py::test_bench_packing_tiny",
    "bench_train.py": "tests/test_bench_smoke.py::test_bench_train_tiny",
    "check_compile.py": "test_check_compile_tiny_model_has_no_graph_break",
    "check_kernels.py": "tests/test_check_kernels.py",
    "check_distributed.py": "several training processes (minutes; `--cpu` by hand)",
    "convert_from_hf.py": "test_convert_from_hf_tiny_model",
    "convert_to_hf.py": "tests/test_evaluate_mlm.py, tests/test_finetune.py",
    "demo.py": "`make demo`",
    "evaluate_mlm.py": "tests/test_evaluate_mlm.py",
    "finetune.py": "tests/test_ablation.py (through flex_bert.ablation)",
    "make_tokenizer.py": "tests/test_make_tokenizer.py",
    "plot_metrics.py": "tests/test_plot_metrics.py",
    "slurm_multinode.sh": "Slurm only; `bash -n` here",
}


def _run(args: list[str], timeout: int = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_every_script_is_accounted_for():
    assert sorted(REAL_RUNS) == SCRIPTS


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.endswith(".py")])
def test_help(script):
    proc = _run([sys.executable, f"scripts/{script}", "--help"], timeout=60)
    assert "usage" in proc.stdout.lower()


def test_slurm_script_parses():
    _run(["bash", "-n", "scripts/slurm_multinode.sh"])


def test_check_compile_tiny_model_has_no_graph_break():
    proc = _run([sys.executable, "scripts/check_compile.py", "--tiny"])
    lines = [line for line in proc.stdout.splitlines() if ": graphs " in line]
    assert len(lines) == 4, proc.stdout  # layer 0, a local layer, a later global layer, the head
    assert all(line.endswith("graphs 1, graph breaks 0") for line in lines), proc.stdout


def test_bench_convert_tiny_corpus():
    args = ["--mb", "0.2", "--workers", "1", "--skip_seed", "--max_seq_len", "512"]
    proc = _run([sys.executable, "scripts/bench_convert.py", *args])
    assert "| ours | 1 |" in proc.stdout


def test_convert_from_hf_tiny_model(tmp_path):
    import torch
    from transformers import ModernBertForMaskedLM

    from flex_bert.data.tiny_tokenizers import WORD_LEVEL_IDS, save_word_level_tokenizer
    from flex_bert.hf_checkpoint import load_flexbert_checkpoint
    from flex_bert.hf_config import flexbert_config_to_hf
    from flex_bert.model import FlexBertConfig

    cfg = FlexBertConfig(
        vocab_size=128, num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=2,
        **WORD_LEVEL_IDS,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = ModernBertForMaskedLM(flexbert_config_to_hf(cfg))
    hf.save_pretrained(tmp_path / "hf")
    save_word_level_tokenizer(tmp_path / "hf", vocab_size=128)
    out = tmp_path / "flex.pt"
    _run([sys.executable, "scripts/convert_from_hf.py", "--input-dir", str(tmp_path / "hf"),
          "--output-checkpoint", str(out)])  # fmt: skip
    model, tok_dir = load_flexbert_checkpoint(out)
    assert model.config.mask_token_id == WORD_LEVEL_IDS["mask_token_id"] and tok_dir is not None
    hf_wqkv = hf.model.layers[1].attn.Wqkv.weight
    assert torch.equal(model.bert.encoder.layers[1].attn.Wqkv.weight, hf_wqkv)
