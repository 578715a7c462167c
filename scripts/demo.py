"""The whole continued pre-training path, offline on a CPU, in a few minutes (`make demo`).

corpus (bundled generator) -> tiny tokenizer -> CSV to MDS per dataset -> merge -> step 0: a tiny FlexBERT
trained from scratch (stands in for ModernBERT's pre-decay checkpoint) -> phase 1 (load_path, reset_time,
restart_override, constant lr, 30% masking) -> phase 2 (1-sqrt decay, 15% masking) -> Hugging Face export ->
evaluation of every stage on the same masked eval documents -> fill-mask -> loss-curve PNG -> the downstream
ablation: each stage fine-tuned on a small labelled task made from the corpus (data/demo_task.py), 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo_out"
CKPT = ROOT / "checkpoints" / "demo"
STAGES = [("step 0 (pre-decay stand-in)", "pretrain"), ("+ phase 1", "phase1"), ("+ phase 2", "phase2")]
ABLATION_MODELS = [("step0", "pretrain"), ("phase1", "phase1"), ("phase2", "phase2")]


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def prepare_data() -> None:
    from flex_bert.data.convert import summary_line
    from flex_bert.data.demo_corpus import DEMO_DATASETS, tokenize_demo_corpus, write_demo_corpus
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    banner("1. corpus and tokenizer (generated; no hub)")
    files = write_demo_corpus(OUT / "corpus", seed=0)
    train_bpe_tokenizer([files["clinical"], files["finance"]], OUT / "tokenizer", vocab_size=1024)
    banner("2. CSV -> tokenized MDS, one folder per dataset (data/convert_dataset_to_mds.py)")
    tokenized = OUT / "tokenized"
    stats, merged = tokenize_demo_corpus(
        files, OUT / "tokenizer", tokenized, 256, token_counts=True, num_workers=1, overwrite=True
    )
    for split, name in DEMO_DATASETS:
        print(summary_line(stats[name], tokenized / split / name))
    banner("3. merge-index the splits (data/merge_index.py)")
    for split in ("train", "eval"):
        print(json.dumps(merged[split]))


def run_stage(stage: str) -> float:
    banner(f"training: composer main.py yamls/demo/{stage}.yml")
    start = time.time()
    cmd = [sys.executable, str(ROOT / "main.py"), f"yamls/demo/{stage}.yml"]
    log = OUT / f"{stage}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    lines = log.read_text().splitlines()
    print("\n".join(dict.fromkeys(ln for ln in lines if ln.startswith("restart_override"))))
    print("\n".join([ln for ln in lines if "Eval metrics" in ln][-2:]))
    if proc.returncode:
        print(log.read_text()[-4000:])
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); full log: {log}")
    return time.time() - start


def export_and_evaluate() -> list[dict]:
    from flex_bert.evaluate import evaluate, load_model_for_eval, masked_documents
    from flex_bert.hf_checkpoint import export_to_hf

    banner("export to Hugging Face (scripts/convert_to_hf.py)")
    hf_dir = CKPT / "hf"
    export_to_hf(CKPT / "demo_phase2" / "latest-rank0.pt", hf_dir)
    print(f"wrote {hf_dir}")
    banner("evaluation on the same masked eval documents (scripts/evaluate_mlm.py)")
    rows = []
    models = [
        (label, {"checkpoint": str(CKPT / f"demo_{stage}" / "latest-rank0.pt")}) for label, stage in STAGES
    ]
    models.append(("+ phase 2, exported to HF", {"hf_model": str(hf_dir)}))
    for label, source in models:
        model, kind, tokenizer = load_model_for_eval(**source)
        data = masked_documents(str(OUT / "tokenized"), "eval", tokenizer, 0.15, 0, 256)
        score = evaluate(model, kind, data, batch_size=16)
        rows.append({"model": label, **score.as_dict()})
    print("\n| model | MLM loss | accuracy | perplexity |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['loss']:.4f} | {r['accuracy']:.4f} | {r['perplexity']:.2f} |")
    return rows


def fill_mask() -> None:
    from transformers import pipeline

    banner("fill-mask with the exported model (transformers.pipeline)")
    fill = pipeline("fill-mask", model=str(CKPT / "hf"), device="cpu")
    mask = fill.tokenizer.mask_token
    for text in (
        f"Started metoprolol 25 mg twice{mask}.",
        f"The patient is a 54-year-old woman presenting with chest pain for two{mask}.",
    ):
        print(text)
        for guess in fill(text, top_k=3):
            print(f"  {guess['score']:.3f}  {guess['token_str']!r}")


def plot() -> Path:
    from flex_bert.plots import plot_runs, read_run

    runs = [read_run(CKPT / f"demo_{stage}", label) for label, stage in STAGES]
    return plot_runs(runs, OUT / "loss_curves.png", end_to_end=True)


def ablation() -> float:
    from flex_bert.data.demo_task import write_demo_task

    banner(
        "ablation: each stage fine-tuned on a labelled task (scripts/ablation.py, yamls/demo/finetune.yml)"
    )
    start = time.time()
    files = write_demo_task(OUT / "task", seed=0, test=600)
    print(
        f"task: is a sentence original, misspelled, or does a slot hold another slot's word? ({files['train']})"
    )
    stages = [f"{name}={CKPT / f'demo_{stage}' / 'latest-rank0.pt'}" for name, stage in ABLATION_MODELS]
    cmd = [sys.executable, str(ROOT / "scripts" / "ablation.py"), "--task", "yamls/demo/finetune.yml"]
    cmd += ["--out", str(OUT / "ablation"), "--seeds", "3", *stages]
    log = OUT / "ablation.log"
    with open(log, "w") as f:  # fine-tuning sets torch's CPU threads as training does (set_cpu_threads)
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        print(log.read_text()[-4000:])
        raise SystemExit(f"the ablation failed (exit {proc.returncode}); full log: {log}")
    print((OUT / "ablation" / "ablation.md").read_text())
    summary = json.loads((OUT / "ablation" / "ablation.json").read_text())
    first, last = ABLATION_MODELS[0][0], ABLATION_MODELS[-1][0]
    b = summary["vs_first"][last]["macro_f1"]["bootstrap"]
    verdict = "a significant difference" if b["p"] < 0.05 else "no significant difference"
    print(
        f"{last} vs {first}: macro-F1 {b['diff']:+.4f} (95% [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}], "
        f"p = {b['p']:.3f}): {verdict} on this task"
    )
    return time.time() - start


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    from flex_bert.train.builders import set_cpu_threads

    start = time.time()
    os.chdir(ROOT)
    set_cpu_threads(loader_workers=0)  # this process evaluates and fills masks; torch's default thrashes
    for path in (OUT, CKPT):
        shutil.rmtree(path, ignore_errors=True)
    prepare_data()
    for _, stage in STAGES:
        run_stage(stage)
    export_and_evaluate()
    fill_mask()
    png = plot()
    seconds = ablation()
    banner(f"done in {time.time() - start:.0f} s (the ablation {seconds:.0f} s). Artefacts:")
    print(f"  corpus, tokenizer, MDS:   {OUT}/corpus, {OUT}/tokenizer, {OUT}/tokenized/{{train,eval}}")
    print(f"  checkpoints + metrics:    {CKPT}/demo_{{pretrain,phase1,phase2}}/ (metrics.jsonl, config.yaml)")
    print(f"  Hugging Face export:      {CKPT}/hf")
    print(f"  loss curves:              {png}")
    print(f"  training logs:            {OUT}/*.log")
    print(
        f"  ablation (table, chart):  {OUT}/ablation/ablation.{{md,json,png}}, runs in {OUT}/ablation/cells"
    )


if __name__ == "__main__":
    main()
