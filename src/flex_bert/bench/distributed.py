"""Multi-GPU checks through the real training path: launching `main.py` on N processes, reading the runs'
metrics, and comparing two runs step by step (`scripts/check_distributed.py`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# bf16 autocast: two runs that differ only in how gradients are summed drift apart by rounding. Losses of the
# first step must agree to float rounding; later ones to this relative tolerance.
FIRST_STEP_RTOL = 1e-4
LOSS_RTOL = 2e-2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_data(root: Path, max_seq_lens: list[int], docs_per_domain: int) -> tuple[Path, dict[int, Path]]:
    """Demo corpus -> tiny tokenizer -> MDS train/eval splits (merged), one data root per max_seq_len."""
    from flex_bert.data.demo_corpus import tokenize_demo_corpus, write_demo_corpus
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    files = write_demo_corpus(root / "corpus", seed=0, docs_per_domain=docs_per_domain, eval_docs=64)
    tok = root / "tokenizer"
    train_bpe_tokenizer([files["clinical"], files["finance"]], tok, vocab_size=1024)
    roots = {}
    for L in max_seq_lens:
        roots[L] = root / f"mds{L}"
        tokenize_demo_corpus(files, tok, roots[L], L, num_workers=min(8, os.cpu_count() or 1))
    return tok, roots


class Runner:
    """Runs ``root/main.py yaml`` with overrides on 1 process or N (composer's launcher), logs under ``out``."""

    def __init__(self, root: Path, yaml: Path, out: Path, tokenizer: Path, cpu: bool):
        self.root, self.yaml, self.out, self.tokenizer, self.cpu = root, yaml, out, tokenizer, cpu

    def run(
        self, name: str, gpus: int, overrides: list[str], *, save_folder: Path | None = None
    ) -> list[dict]:
        """Launch main.py on ``gpus`` processes; return the rank-0 metrics.jsonl records of this run."""
        folder = save_folder or self.out / name
        base = [
            f"run_name={name}",
            f"save_folder={folder}",
            f"tokenizer_name={self.tokenizer}",
            "load_path=null",
            "reset_time=false",
            "restart_override=false",
            "model.model_config.attn_out_dropout_prob=0.0",
            "scheduler.t_warmup=0ba",
            "eval_interval=100000ba",
            "save_interval=100000ba",
            "console_log_interval=1ba",
            "callbacks.speed_monitor.window_size=10",
            "train_loader.num_workers=2",
            "eval_loader.num_workers=0",
            "device_eval_batch_size=8",
        ]
        env = dict(
            os.environ, PYTHONPATH=f"{self.root / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        )
        env.setdefault("NCCL_NVLS_ENABLE", "0")
        if self.cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif gpus == 1:
            env["CUDA_VISIBLE_DEVICES"] = "0"
        main = [str(self.root / "main.py"), str(self.yaml), *base, *overrides]
        if gpus == 1:
            cmd = [sys.executable, *main]
        else:
            cmd = [sys.executable, "-m", "composer.cli.launcher", "-n", str(gpus)]
            cmd += ["--master_port", str(free_port()), *main]
        start = time.perf_counter()
        log = self.out / "logs" / f"{name}-{gpus}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=self.root, env=env, stdout=f, stderr=subprocess.STDOUT)
        print(
            f"  {name} on {gpus} {'process' if self.cpu else 'GPU'}(s): rc {proc.returncode}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        if proc.returncode:
            raise RuntimeError(f"{name} failed; log tail:\n" + log.read_text()[-4000:])
        recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if r["kind"] == "train"]


def compare(ref: list[dict], got: list[dict]) -> dict:
    """Per-step comparison of two runs' train records (same batches expected)."""
    rel = [abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, got)]
    return {
        "steps": len(got),
        "same_steps": [r["batch"] for r in ref] == [r["batch"] for r in got],
        "same_tokens": [r["tokens"] for r in ref] == [r["tokens"] for r in got],
        "first_loss": [ref[0]["loss"], got[0]["loss"]],
        "last_loss": [ref[-1]["loss"], got[-1]["loss"]],
        "first_step_rel_diff": rel[0],
        "max_rel_diff": max(rel),
        "mean_rel_diff": sum(rel) / len(rel),
    }


def passed(c: dict) -> bool:
    return (
        c["same_steps"]
        and c["same_tokens"]
        and c["first_step_rel_diff"] <= FIRST_STEP_RTOL
        and c["max_rel_diff"] <= LOSS_RTOL
    )
