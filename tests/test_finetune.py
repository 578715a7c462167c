"""Fine-tuning through composer: the result and best checkpoint, early stopping, starting points, every
task end to end, export through scripts/convert_to_hf.py, and one-line errors for bad input."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from flex_bert.data.labelled import collate
from flex_bert.hf_tasks import load_start, load_task_checkpoint
from flex_bert.task_eval import predict, scores
from flex_bert.train.finetune import KeepBest, finetune
from flex_bert.train.finetune_config import load_finetune_config
from tests._finetune_fixtures import (  # noqa: F401
    REPO,
    SEQUENCE_YAML,
    finetune_overrides,
    tiny_task,
    trained_run,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run(task_files, tmp_path, yaml=SEQUENCE_YAML, **changes):
    changes.setdefault("start", task_files["untrained"])
    changes.setdefault("save_folder", tmp_path / "run")
    return finetune(load_finetune_config([yaml], finetune_overrides(task_files, **changes)))


def test_result_best_checkpoint_and_export(trained_run, tiny_task, tmp_path):  # noqa: F811
    result, folder = trained_run["result"], trained_run["folder"]
    assert json.loads((folder / "result.json").read_text())["complete"] is True
    assert result["labels"] == ["clinical", "finance"] and result["reported_split"] == "eval"
    assert result["cuda_graphs"] == "eager: this run is on the CPU"  # auto, the default
    train, carved = result["data"]["train"], result["data"]["eval"]
    assert train["rows_read"] == 120 and train["skipped"] == {} and carved["examples"] == 30
    assert sorted(result["predictions"]["truth"]) == [0] * 15 + [1] * 15  # stratified: 25% of each label
    history = [h["macro_f1"] for h in result["evaluations"]]
    assert len(history) == 2 and result["best"]["value"] == max(history)
    assert result["scores"]["accuracy"] > 0.9  # the domain is easy to learn
    # best.pt holds the best evaluation's weights: scoring it again gives the result's predictions
    model, tokenizer_dir = load_task_checkpoint(folder / "best.pt")
    stored = torch.load(folder / "best.pt", weights_only=True)["state"]["finetune"]
    assert stored["best"] == result["best"]
    cfg = load_finetune_config([SEQUENCE_YAML], finetune_overrides(tiny_task, start="x", save_folder="y"))
    from flex_bert.data.tokenize import open_tokenizer as build_tokenizer
    from flex_bert.train.finetune import prepare_data

    enc = prepare_data(cfg, build_tokenizer(tokenizer_dir))["splits"]["eval"]
    again = predict(model, [collate(enc.input_ids, enc.targets, "single_label")], "single_label")
    assert again["pred"] == result["predictions"]["pred"]
    assert scores(again["truth"], again["pred"], result["labels"], "single_label") == result["scores"]
    # scripts/convert_to_hf.py: ModernBertForSequenceClassification with the labels, same logits
    out = tmp_path / "hf"
    cmd = [sys.executable, str(REPO / "scripts" / "convert_to_hf.py"), "--input-checkpoint", str(folder / "best.pt"),
           "--output-dir", str(out)]  # fmt: skip
    subprocess.run(
        cmd, check=True, capture_output=True, env={"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    )
    import transformers

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, attn_implementation="sdpa"
    ).eval()
    assert hf.config.id2label == {0: "clinical", 1: "finance"} and hf.config.label2id["finance"] == 1
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(
        ["Started aspirin 5 mg daily.", "Revenue grew by 5 percent."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        ref = hf(**batch).logits
        ours = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_keep_best_keeps_the_best_evaluation(tiny_task, tmp_path):  # noqa: F811
    from flex_bert.model import FlexBertConfig
    from flex_bert.model.classification import TaskConfig, build_task_model

    config = FlexBertConfig.from_dict(
        torch.load(tiny_task["untrained"], weights_only=True)["state"]["flex_bert_config"]
    )
    model = build_task_model(config, TaskConfig("single_label", ["a", "b"]))
    keep = KeepBest("macro_f1", tmp_path / "best.pt", str(tiny_task["tokenizer"]), {})
    kept = {}
    for batch, value in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        with torch.no_grad():
            model.classifier.bias.fill_(batch)
        metric = SimpleNamespace(compute=lambda v=value: torch.tensor(v, dtype=torch.float64))
        state = SimpleNamespace(
            eval_metrics={"eval": {"macro_f1": metric}},
            timestamp=SimpleNamespace(epoch=batch, batch=batch * 10),
            model=SimpleNamespace(model=model),
        )
        keep.eval_end(state, None)
        kept[batch] = float(load_task_checkpoint(tmp_path / "best.pt")[0].classifier.bias[0])
    assert keep.best == {
        "metric": "macro_f1",
        "value": 0.7,
        "epoch": 2,
        "batch": 20,
    }  # a tie does not replace it
    assert kept == {1: 1.0, 2: 2.0, 3: 2.0, 4: 2.0} and float(keep.state_dict["classifier.bias"][0]) == 2.0


def test_early_stopping_after_patience_without_improvement(tiny_task, tmp_path):  # noqa: F811
    """lr 0: the metric never improves on the first evaluation; with patience 2 batches and an evaluation
    after every batch, composer's EarlyStopper stops at batch 4 (4 - 1 > 2) of 10."""
    result = run(tiny_task, tmp_path, **{"optimizer.lr": 0.0, "eval_interval": "1ba", "patience": "2ba",
                                         "max_duration": "10ba"})  # fmt: skip
    assert [h["batch"] for h in result["evaluations"]] == [1, 2, 3, 4]
    assert result["best"]["batch"] == 1


def test_start_from_hf_folder_equals_start_from_checkpoint(tiny_task, tmp_path):  # noqa: F811
    from flex_bert.hf_checkpoint import export_to_hf

    hf_dir = export_to_hf(tiny_task["untrained"], tmp_path / "hf")
    cfg_a, state_a, tok_a = load_start(tiny_task["untrained"])
    cfg_b, state_b, tok_b = load_start(hf_dir)
    assert sorted(state_a) == sorted(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    same = {"compile_model": 0, "attention_backend": 0, "global_attn_every_n_layers": 0}  # no effect here
    same["local_attn_rotary_emb_base"] = (
        0  # -1 ("as the global base") exports as that base: compared resolved
    )
    assert cfg_a.to_dict() | same == cfg_b.to_dict() | same
    assert cfg_a.local_rope_theta == cfg_b.local_rope_theta
    assert [cfg_a.is_local_layer(i) for i in range(2)] == [cfg_b.is_local_layer(i) for i in range(2)]
    assert tok_a and tok_b


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task", ["multi_label", "token"])
def test_multi_label_and_token_tasks_end_to_end(tiny_task, tmp_path, task):  # noqa: F811
    import csv

    with open(tiny_task["data"], newline="") as f:
        rows = list(csv.DictReader(f))
    if task == "multi_label":  # the domain, plus "long" for the texts of 120 characters
        data = [
            {"text": r["text"], "label": [r["label"]] + (["long"] if len(r["text"]) == 120 else [])}
            for r in rows
        ]
        changes = {}
    else:  # tag numbers
        data = [{"words": r["text"].split(), "tags": ["NUM" if w[:1].isdigit() else "O" for w in r["text"].split()]}
                for r in rows]  # fmt: skip
        changes = {"text_column": "words", "label_column": "tags"}
    path = _write_jsonl(tmp_path / "data.jsonl", data)
    result = run(tiny_task, tmp_path, train_file=path, task=task, max_duration="3ba", **changes)
    assert result["complete"] and 0.0 <= result["scores"]["macro_f1"] <= 1.0
    expected = ["NUM", "O"] if task == "token" else ["clinical", "finance", "long"]
    assert result["labels"] == expected and set(result["scores"]["per_class_f1"]) == set(expected)
    if task == "token":
        assert result["predictions"]["groups"][-1] == result["data"]["eval"]["examples"] - 1


def test_bad_input_is_one_line_error(tiny_task, tmp_path):  # noqa: F811
    bad_label_csv = tmp_path / "bad.csv"
    bad_label_csv.write_text("text,category\nsome text,a\n")
    cases = [
        (["lerning_rate=1"], "unknown task file key 'lerning_rate'"),
        (["task=regression"], "task 'regression' is not supported"),
        (["batch_size=abc"], "task file key 'batch_size': Value 'abc' of type 'str' could not be converted"),
        (
            [f"train_file={bad_label_csv}"],
            "no column 'label'; columns found: ['text', 'category'] (choose one with label_column)",
        ),
        ([f"start={tmp_path / 'missing.pt'}"], "does not exist"),
    ]
    for changes, match in cases:
        overrides = finetune_overrides(tiny_task, start=tiny_task["untrained"], save_folder=tmp_path / "x")
        with pytest.raises(ValueError) as e:
            finetune(load_finetune_config([SEQUENCE_YAML], overrides + changes))
        assert match in str(e.value) and "\n" not in str(e.value)
    cmd = [sys.executable, str(REPO / "scripts" / "finetune.py"), SEQUENCE_YAML, *overrides, cases[3][0][0]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")})
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: {bad_label_csv}: " + cases[3][1]
    ]


@pytest.mark.parametrize("task", ["single_label", "multi_label", "token"])
def test_micro_batches_are_whole_examples(task):
    from flex_bert.train.finetune import split_examples

    ids = [[2, 5, 6, 3], [2, 7, 3], [2, 8, 9, 10, 3], [2, 11, 3], [2, 12, 13, 3]]
    targets = {
        "single_label": [0, 1, 1, 0, 1],
        "multi_label": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]],
        "token": [
            [-100, 0, 1, -100],
            [-100, 1, -100],
            [-100, 0, -100, 1, -100],
            [-100, 0, -100],
            [-100, 1, 0, -100],
        ],
    }[task]
    parts = split_examples(collate(ids, targets, task), 2, task)
    assert [p["input_ids"].tolist() for p in parts] == [ids[0] + ids[1], ids[2] + ids[3], ids[4]]
    assert [p["cu_seqlens"].tolist() for p in parts] == [[0, 4, 7], [0, 5, 8], [0, 4]]
    assert [p["max_seqlen"] for p in parts] == [4, 5, 4]
    assert [p["labels"].tolist() for p in parts] == [
        targets[0] + targets[1] if task == "token" else targets[0:2],
        targets[2] + targets[3] if task == "token" else targets[2:4],
        targets[4] if task == "token" else targets[4:5],
    ]


def test_stableadamw_with_micro_batches_updates_the_encoder(tiny_task, tmp_path):  # noqa: F811
    result = run(tiny_task, tmp_path, **{"optimizer.name": "decoupled_stableadamw", "microbatch_size": 4,
                                         "max_duration": "2ba", "eval_interval": "2ba"})  # fmt: skip
    assert result["complete"]
    model, _ = load_task_checkpoint(tmp_path / "run" / "best.pt")
    _, start, _ = load_start(tiny_task["untrained"])
    key = "bert.encoder.layers.1.mlp.Wi.weight"
    assert not torch.equal(model.state_dict()[key], start[key])


def test_column_flags_set_the_task_file_keys(tiny_task, tmp_path):  # noqa: F811
    """--text_column / --label_column on scripts/finetune.py are the task file's text_column / label_column."""
    renamed = tmp_path / "renamed.csv"
    lines = tiny_task["data"].read_text().splitlines(keepends=True)
    renamed.write_text("sentence,category\n" + "".join(lines[1:]))
    overrides = finetune_overrides(
        tiny_task, train_file=renamed, start=tiny_task["untrained"], save_folder=tmp_path / "run",
        max_duration="1ba", eval_interval="1ba",
    )  # fmt: skip
    script = str(REPO / "scripts" / "finetune.py")
    cmd = [sys.executable, script, "--text_column", "sentence", SEQUENCE_YAML, *overrides, "--label_column"]
    proc = subprocess.run(
        [*cmd, "category"], capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "result.json").read_text())["config"]
    assert (config["text_column"], config["label_column"]) == ("sentence", "category")


def test_cpu_fine_tuning_sets_torch_threads_as_pretraining_does(tiny_task, tmp_path, monkeypatch):  # noqa: F811
    """One core is left to the data path (builders.set_cpu_threads, pre-training's rule): on 4 cores with the
    examples loaded in the main process, 3 intra-op threads, whatever torch had before."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tiny_task, tmp_path, device="cpu", max_duration="1ba")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
@pytest.mark.parametrize("task", ["single_label", "token"])
def test_cuda_graphs_fine_tune_as_eager_does(tiny_task, tmp_path, capsys, task):  # noqa: F811
    """Through composer on the GPU (bf16): `cuda_graphs: auto` captures the encoder's buckets, prints what it
    captured, and ends where the eager run ends (same seed, data and steps; the evaluations agree)."""
    changes = {"task": task, "model_config.attention_backend": "varlen"}
    if task == "token":
        import csv

        with open(tiny_task["data"], newline="") as f:
            rows = [r["text"].split() for r in csv.DictReader(f)]
        data = [{"words": w, "tags": ["NUM" if x[:1].isdigit() else "O" for x in w]} for w in rows]
        changes.update(train_file=_write_jsonl(tmp_path / "data.jsonl", data), text_column="words",
                       label_column="tags")  # fmt: skip
    results = {}
    for graphs in ("false", "auto"):  # auto: graphs on one GPU
        capsys.readouterr()
        results[graphs] = run(tiny_task, tmp_path, save_folder=tmp_path / f"g{graphs}", device="gpu",
                              cuda_graphs=graphs, graph_bucket_tokens=32, **changes)  # fmt: skip
        printed = capsys.readouterr().out
        assert ("CUDA graphs:" in printed) == (graphs == "auto")
        ran = results[graphs]["cuda_graphs"]
        assert ran.startswith("CUDA graphs: ") if graphs == "auto" else ran == "eager: cuda_graphs: false"
    assert "0 training batch(es) outside the static bounds ran eagerly" in printed
    eager, graphed = (r["evaluations"] for r in (results["false"], results["auto"]))
    assert len(eager) == len(graphed) >= 2
    for a, b in zip(eager, graphed, strict=True):
        assert abs(a["macro_f1"] - b["macro_f1"]) <= 0.05, (eager, graphed)
