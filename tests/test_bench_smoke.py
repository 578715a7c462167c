"""CPU smoke tests of the benchmark scripts: each runs end to end in its tiny mode and reports sane figures.

The figures themselves are not checked (a loaded 2-core CPU says nothing about an H100); only that the scripts
run through the real loader, packer, masker, model, optimizer and Hugging Face baseline and print/write results.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_bench_packing_tiny(tmp_path):
    out = tmp_path / "packing.json"
    proc = _run(["scripts/bench_packing.py", "--tokens", "400000", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [r["layout"] for r in results] == ["12x8192", "96x1024"]
    for r in results:
        assert r["rows"] >= 2
        assert 0.9 < r["packing_efficiency"] <= 1.0
        for key in ("pack_tokens_per_s", "mask_tokens_per_s", "both_tokens_per_s"):
            assert r[key] > 0
    assert "pack+mask" in proc.stdout


def test_bench_fp8_tiny(tmp_path):
    """The MLP block runs both ways; each FP8 product lies within e4m3's rounding (3 mantissa bits: about 4%
    relative for random operands) of the fp32 product, not at a wrong transpose's or scale's ~100%."""
    out = tmp_path / "fp8.json"
    _run(["scripts/bench_fp8.py", "--device", "cpu", "--scale", "0.002", "--json", str(out)])
    results = json.loads(out.read_text())
    assert sorted(results) == ["base", "large"]
    for r in results.values():
        assert all(r[k] > 0 for k in ("bf16_ms", "fp8_ms", "torch_casts_ms", "kernel_casts_ms"))
        errors = [r[f"{p}_rel_err"] for p in ("wi_forward", "wo_forward", "wi_input_grad")]
        assert all(0.005 < e < 0.06 for e in errors), errors


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "bench.json"
    prof = tmp_path / "prof"
    proc = _run(
        ["scripts/bench_train.py", "--tiny", "--device", "cpu", "--json", str(out), "--profile", str(prof)]
    )
    data = json.loads(out.read_text())
    results = data["results"]
    assert [r["kind"].split(" (")[0] for r in results] == ["FlexBERT", "HF full 128x4", "HF padded"]
    assert all("error" not in r for r in results), results
    flex = results[0]
    assert flex["steps"] == 2 and flex["tokens_per_s"] > 0 and math.isfinite(flex["loss"])
    assert 0 < flex["token_efficiency"] <= 1 and 0 <= flex["loader_stall"] <= 1
    assert flex["vs_hf_full"] > 0 and flex["vs_hf_padded"] > 0
    # the HF-padded baseline ran FlexBERT's own documents (one packed row of 512 slots per step)
    assert 0 < results[2]["real_tokens_per_step"] <= 512 and 0 < results[2]["token_efficiency"] <= 1
    assert "| tiny@128 | FlexBERT |" in data["markdown"] and "| tiny@128 | FlexBERT |" in proc.stdout
    assert "MFU = FLOPs" in proc.stdout
    assert list(prof.glob("trace_flexbert_*.json")), "profiler trace missing"


def test_bench_train_tiny_cuda_graphs_flag_reports_the_graphs(tmp_path):
    """`--cuda-graphs` wraps the encoder in `pretraining_graphs`; on the CPU nothing is captured (the passes run
    eagerly) and the result says so."""
    out = tmp_path / "bench.json"
    _run(
        [
            "scripts/bench_train.py",
            "--tiny",
            "--device",
            "cpu",
            "--no-hf",
            "--cuda-graphs",
            "--json",
            str(out),
        ]
    )
    flex = json.loads(out.read_text())["results"][0]
    assert flex["compile"].endswith(", CUDA graphs") and flex["graph_captures_while_timed"] == 0
    assert flex["cuda_graphs"].startswith("CUDA graphs: 0 bucket(s) of [] (tokens, documents) captured in ")


def test_bench_train_tiny_fp8_switches_reach_the_model(tmp_path):
    """`--fp8 fp8_mlp fp8_qkv` builds the model with both (CPU: the FP8 compositions) and the JSON says so."""
    out = tmp_path / "bench.json"
    _run(["scripts/bench_train.py", "--tiny", "--device", "cpu", "--no-hf", "--fp8", "fp8_mlp", "fp8_qkv",
          "--corpus", "phrases", "--json", str(out)])  # fmt: skip
    flex = json.loads(out.read_text())["results"][0]
    assert flex["fp8_mlp"] is True and flex["fp8_qkv"] is True
    assert len(flex["losses"]) == flex["steps"] and all(math.isfinite(x) for x in flex["losses"])


def test_bench_finetune_tiny(tmp_path):
    """Packed FlexBERT fine-tuning against the HF Trainer (when accelerate is installed: the Trainer needs it)
    and a plain HF loop: same weights, data and steps, so in fp32 the losses agree to float precision."""
    import importlib.util

    trainer = importlib.util.find_spec("accelerate") is not None
    out = tmp_path / "ft.json"
    args = ["scripts/bench_finetune.py", "--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"]
    args += ["--batch-size", "2", "--eval-examples", "8", "--json", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])  # accelerate's
    proc = subprocess.run(
        [sys.executable, *args, *([] if trainer else ["--no-trainer"])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    kinds = ["FlexBERT packed", *(["HF Trainer"] if trainer else []), "HF loop"]
    assert [r["kind"] for r in data["results"]] == kinds
    assert data["header"]["batch_size"] == 2 and 50 <= data["header"]["mean_tokens_per_example"] <= 400
    for r in data["results"]:
        assert r["examples_per_s"] > 0 and r["tokens_per_s"] > 50 * r["examples_per_s"]
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"])
        assert r.get("attn_implementation", "sdpa") == "sdpa" and r["graphs_compiled_while_timed"] in (0, -1)
    assert list(data["summary"]) == [f"FlexBERT packed / {k}" for k in kinds[1:]]
    for s in data["summary"].values():
        assert s["speedup"] > 0 and s["train_loss_rel_diff"] < 1e-3 and s["eval_loss_rel_diff"] < 1e-4
    assert "| FlexBERT packed |" in proc.stdout and "FlexBERT packed / HF loop:" in proc.stdout


def _bench_finetune():
    from flex_bert.bench import finetune

    return finetune


def test_bench_finetune_refuses_a_ratio_when_losses_differ():
    """A speed ratio needs equal work in the steady state: a NaN loss, one 10% off or a graph compiled while
    timed gives no ratio, naming why."""
    compare = _bench_finetune().compare
    flex = {"examples_per_s": 500.0, "train_loss": 0.90, "eval_loss": 0.80}
    same = compare(flex, {"examples_per_s": 250.0, "train_loss": 0.91, "eval_loss": 0.79})
    assert same["speedup"] == 2.0 and "refused" not in same
    nan = compare(flex, {"examples_per_s": 250.0, "train_loss": 0.90, "eval_loss": math.nan})
    assert nan["speedup"] is None and "eval loss 0.8 against nan" in nan["refused"]
    off = compare(flex, {"examples_per_s": 250.0, "train_loss": 1.00, "eval_loss": 0.80})
    assert off["speedup"] is None and "train loss" in off["refused"] and "eval loss" not in off["refused"]
    hf = {"kind": "HF Trainer", "examples_per_s": 25.0, "train_loss": 0.90, "eval_loss": 0.80}
    recompiled = compare(flex, hf | {"graphs_compiled_while_timed": 1})
    assert recompiled["speedup"] is None
    assert recompiled["refused"] == "HF Trainer compiled 1 graph(s) while timed (more --warmup steps)"
    assert compare(flex, hf | {"graphs_compiled_while_timed": 0})["speedup"] == 20.0


def test_bench_finetune_hf_masks_leave_no_query_without_keys():
    """Padding more than half a window past an example's end: in a sliding-window layer those query rows see
    no key (sdpa gives NaN for them on a GPU). With the benchmark's masks each row sees a key, and the rows of
    real tokens are exactly transformers' own."""
    import torch
    from transformers import ModernBertConfig
    from transformers.masking_utils import create_bidirectional_sliding_window_mask, sdpa_mask

    cfg = ModernBertConfig(local_attention=8, attn_implementation="sdpa")
    cfg._attn_implementation = "sdpa"
    pad = torch.tensor([[1] * 30 + [0] * 34, [1] * 64])
    kwargs = dict(config=cfg, inputs_embeds=torch.zeros(2, 64, 4), attention_mask=pad)
    before = create_bidirectional_sliding_window_mask(**kwargs)
    assert not before[0, 0, 40:].any()  # rows of padding 10+ past the end (window 4 each side): no key
    _bench_finetune().rows_never_empty()
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    try:
        after = create_bidirectional_sliding_window_mask(**kwargs)
    finally:
        ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = sdpa_mask
    assert after.any(dim=-1).all()
    assert torch.equal(after[0, :, :30], before[0, :, :30]) and torch.equal(after[1], before[1])
