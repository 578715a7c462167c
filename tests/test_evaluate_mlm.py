"""evaluate_mlm: the same masked batches for a checkpoint and its Hugging Face export give the same loss."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flex_bert.data.masking import MaskingSpec, mask_tokens
from flex_bert.hf_checkpoint import export_to_hf
from flex_bert.train.run import train
from tests._train_fixtures import tiny_mds, tiny_yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_mds, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("eval")
    train([str(tiny_yaml(tiny_mds, tmp, "run", max_duration="6ba", save_interval="6ba"))], [])
    ckpt = tmp / "run" / "latest-rank0.pt"
    export_to_hf(ckpt, tmp / "hf")
    return ckpt, tmp / "hf"


def _run(*args):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate_mlm.py"), *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_checkpoint_and_hf_export_score_the_same(trained, tiny_mds):  # noqa: F811
    ckpt, hf = trained
    data = ["--data", str(tiny_mds["data"]), "--split", "eval", "--seed", "3", "--max_seq_len", "128"]
    a, b = _run("--checkpoint", str(ckpt), *data), _run("--hf_model", str(hf), *data)
    assert a["masked_tokens"] == b["masked_tokens"] > 100
    assert a["documents"] == b["documents"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]), rel=1e-12)


def test_loss_equals_an_independent_computation(trained, tiny_mds):  # noqa: F811
    """Mean cross-entropy over every masked token of the split, computed here with HF, one document at a time."""
    from streaming import StreamingDataset
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    _, hf = trained
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForMaskedLM.from_pretrained(hf).eval()
    docs = StreamingDataset(local=str(tiny_mds["data"]), split="eval", shuffle=False, batch_size=1)
    spec = MaskingSpec.from_tokenizer(tok)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(docs)):
            ids, labels = mask_tokens(docs[i]["input_ids"], 0.15, spec, np.random.default_rng([7, i]))
            logits = model(input_ids=torch.from_numpy(ids)[None]).logits[0].double()
            lab = torch.from_numpy(labels)
            total += float(torch.nn.functional.cross_entropy(logits, lab, ignore_index=-100, reduction="sum"))
            count += int((lab != -100).sum())
    got = _run("--hf_model", str(hf), "--data", str(tiny_mds["data"]), "--seed", "7", "--max_seq_len", "128")
    assert got["masked_tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-6)


def test_dapt_path_from_a_released_hf_model(trained, tiny_mds, tmp_path):  # noqa: F811
    """The DAPT procedure's start: a Hugging Face model folder -> convert_from_hf.py -> load_path with
    load_weights_only (fresh optimizer and schedule) -> training starts from exactly those weights."""
    from safetensors.torch import load_file

    from flex_bert.hf_state import hf_state_to_flexbert
    from flex_bert.train.config import load_config
    from flex_bert.train.run import build_trainer

    _, hf = trained
    ckpt = tmp_path / "from_hf.pt"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_from_hf.py"),
            "--input-dir",
            str(hf),
            "--output-checkpoint",
            str(ckpt),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "dapt",
        load_path=str(ckpt),
        load_weights_only=True,
        max_duration="3ba",
        save_interval="3ba",
        eval_interval="3ba",
        **{"optimizer.lr": 1e-3},
    )
    trainer = build_trainer(load_config([str(y)]))
    expected = hf_state_to_flexbert(load_file(str(hf / "model.safetensors")))
    loaded = trainer.state.model.model.state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    trainer.fit()
    assert int(trainer.state.optimizers[0].param_groups[1]["step"]) == 3, "a fresh optimizer"
