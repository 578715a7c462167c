"""The Hugging Face export is hub-ready: a model card that matches the run, and tokenizer files that
transformers 4.x and 5.x both load and that frame inputs [CLS] ... [SEP] as pre-training samples were."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flex_bert.hf_export import PORTABLE_TOKENIZER_CLASS, make_tokenizer_portable
from flex_bert.train.run import train
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tokenizer_without_post_processor(out: Path):
    from flex_bert.data.tiny_tokenizers import word_level_tokenizer

    word_level_tokenizer(8, words=["a", "b", "c"], post_processor=False).save_pretrained(str(out))


def test_tokenizer_export_frames_inputs_and_names_a_class_every_release_knows(tmp_path):
    from transformers import AutoTokenizer

    _tokenizer_without_post_processor(tmp_path)
    assert AutoTokenizer.from_pretrained(str(tmp_path))("a b")["input_ids"] == [5, 6]
    changes = make_tokenizer_portable(tmp_path)
    assert len(changes) == 2
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("a b")["input_ids"] == [2, 5, 6, 3]
    assert tok("a", "c")["input_ids"] == [2, 5, 3, 7, 3]
    assert make_tokenizer_portable(tmp_path) == [], "a second pass changes nothing"


def test_export_writes_a_model_card_that_matches_the_run(tiny_mds, tmp_path):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "card", max_duration="4ba", eval_interval="2ba", save_interval="4ba")
    train([str(y)], [])
    out = tmp_path / "hf"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_to_hf.py"),
            "--input-checkpoint",
            str(tmp_path / "card" / "latest-rank0.pt"),
            "--output-dir",
            str(out),
            "--base-model",
            "org/base",
        ],
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": str(ROOT / "src"),
            "HF_HUB_OFFLINE": "1",
            "PATH": str(Path(sys.executable).parent),
        },
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/base" and front["pipeline_tag"] == "fill-mask"
    last_train = read_metrics(tmp_path / "card")[-1]
    assert f"tokens trained in this phase: {last_train['tokens']:,}" in card
    last_eval = read_metrics(tmp_path / "card", "eval")[-1]["metrics/eval/LanguageCrossEntropy"]
    assert f"final eval loss (masked-LM cross-entropy): {last_eval:.4f}" in card
    for name in ("clinical", "finance"):
        stats = json.loads((tiny_mds["data"] / "train" / f"{name}.conversion.json").read_text())
        assert f"- {name}: {stats['documents']:,} documents, {stats['tokens']:,} tokens" in card
    recipe = yaml.safe_load(card.split("```yaml")[1].split("```")[0])
    assert recipe == yaml.safe_load((tmp_path / "card" / "config.yaml").read_text())
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "local_files_only" not in config, "no arguments of the call that read the tokenizer"


def test_conversion_warns_when_the_tokenizer_does_not_frame_inputs(tmp_path, caplog):
    from flex_bert.data.tokenize import load_tokenizer

    _tokenizer_without_post_processor(tmp_path / "plain")
    with caplog.at_level("WARNING"):
        load_tokenizer(str(tmp_path / "plain"))
    assert "does not add [CLS] ... [SEP] itself" in caplog.text
    make_tokenizer_portable(tmp_path / "plain")
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_tokenizer(str(tmp_path / "plain"))
    assert "does not add" not in caplog.text
