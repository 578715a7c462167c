"""What a checkpoint may make the scripts write: tokenizer files by allow-listed plain names, nothing else."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flex_bert.data.tiny_tokenizers import WORD_LEVEL_IDS, save_word_level_tokenizer
from flex_bert.hf_checkpoint import (
    TOKENIZER_FILES,
    export_to_hf,
    tokenizer_dir_to_state,
    tokenizer_state_to_dir,
)
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from tests._train_fixtures import tiny_mds  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
    **WORD_LEVEL_IDS,
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer_state(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tok")
    save_word_level_tokenizer(folder, 128)
    return tokenizer_dir_to_state(folder)


def _checkpoint(path: Path, tokenizer) -> Path:
    cfg = FlexBertConfig.from_dict(TINY)
    model = {f"model.{k}": v for k, v in FlexBertForMaskedLM(cfg).state_dict().items()}
    state = {
        "model": model,
        "callbacks": {"RunInfo": {"flex_bert_config": cfg.to_dict(), "tokenizer": tokenizer}},
    }
    torch.save({"state": state}, path)
    return path


def test_a_stored_tokenizer_name_cannot_write_outside_the_output_folder(tokenizer_state, tmp_path, capsys):
    """The reported attack: a `../sitecustomize.py` entry written by convert_to_hf.py, evaluate_mlm.py."""
    import importlib.util

    planted = tmp_path / "sitecustomize.py"
    evil = dict(tokenizer_state)
    evil["../sitecustomize.py"] = {"file_extension": ".py", "content": f"open({str(planted)!r}, 'w')\n"}
    ckpt = _checkpoint(tmp_path / "evil.pt", evil)
    out = tmp_path / "out" / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "convert_to_hf.py",
            "--input-checkpoint",
            ckpt,
            "--output-dir",
            out,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "'../sitecustomize.py'" in proc.stderr.strip().splitlines()[-1], proc.stderr
    spec = importlib.util.spec_from_file_location("evaluate_mlm", ROOT / "scripts" / "evaluate_mlm.py")
    evaluate_mlm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_mlm)
    assert evaluate_mlm.main(["--checkpoint", str(ckpt), "--data", str(tmp_path), "--device", "cpu"]) != 0
    assert "'../sitecustomize.py'" in capsys.readouterr().err
    assert not planted.exists() and not (tmp_path / "out" / "sitecustomize.py").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def _bad_entries(tmp_path: Path) -> dict:
    return {
        "parent folder": {"../tokenizer.json": {"file_extension": ".json", "content": {}}},
        "absolute path": {str(tmp_path / "abs.json"): {"file_extension": ".json", "content": {}}},
        "sub-folder": {"sub/tokenizer.json": {"file_extension": ".json", "content": {}}},
        "python code": {"tokenization_evil": {"file_extension": ".py", "content": "import os"}},
        "not a tokenizer file": {"evil.json": {"file_extension": ".json", "content": {}}},
        "extension mismatch": {"vocab.txt": {"file_extension": ".json", "content": {}}},
        "binary model": {"spiece": {"file_extension": ".model", "content": b"x"}},
        "entry not a mapping": {"tokenizer.json": "{}"},
        "no file_extension": {"tokenizer.json": {"content": {}}},
        "no content": {"vocab.txt": {"file_extension": ".txt"}},
        "json content an int": {"tokenizer.json": {"file_extension": ".json", "content": 3}},
        "json content not JSON": {
            "tokenizer.json": {"file_extension": ".json", "content": {"a": torch.ones(1)}}
        },
        "txt content a string": {"vocab.txt": {"file_extension": ".txt", "content": "a\nb"}},
        "txt lines not strings": {"vocab.txt": {"file_extension": ".txt", "content": [1, 2]}},
        "jinja content a list": {"chat_template.jinja": {"file_extension": ".jinja", "content": ["x"]}},
        "name not a string": {7: {"file_extension": ".json", "content": {}}},
    }


@pytest.mark.parametrize("case", list(_bad_entries(Path("/x"))))
def test_bad_tokenizer_entries_are_one_line_and_nothing_is_written(tokenizer_state, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    state = {**tokenizer_state, **_bad_entries(tmp_path)[case]}  # valid files alongside: none written either
    with pytest.raises(ValueError) as err:
        tokenizer_state_to_dir(state, out)
    assert "\n" not in str(err.value) and "--tokenizer" in str(err.value)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.py"))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c.update(state=[1, 2]),
        lambda c: c["state"].update(callbacks=["RunInfo"]),
        lambda c: c["state"].update(integrations={"huggingface": {"tokenizer": 5}}),
        lambda c: c["state"]["callbacks"]["RunInfo"].update(tokenizer=["tokenizer.json"]),
        lambda c: c["state"]["callbacks"]["RunInfo"].update(tokenizer="tokenizer.json"),
    ],
)
def test_malformed_checkpoint_structure_is_one_line(tokenizer_state, tmp_path, mangle):
    base = tmp_path / "base.pt"
    _checkpoint(base, tokenizer_state)
    ckpt = copy.deepcopy(torch.load(base, weights_only=True))
    mangle(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        export_to_hf(tmp_path / "bad.pt", tmp_path / "hf", config=_yaml(tmp_path))
    assert "\n" not in str(err.value)


def _yaml(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model_config": TINY}))
    return path


def test_only_allow_listed_tokenizer_files_are_stored_and_code_is_named(tmp_path, capsys):
    folder = tmp_path / "tok"
    save_word_level_tokenizer(folder, 128)
    (folder / "tokenization_custom.py").write_text("import os\n")
    (folder / "vocab.txt").write_text("a\nb\n")
    state = tokenizer_dir_to_state(folder)
    assert set(state) == {p.name for p in folder.iterdir()} - {"tokenization_custom.py"}
    assert set(state) <= TOKENIZER_FILES
    assert "tokenization_custom.py" in capsys.readouterr().out
    tokenizer_state_to_dir(state, tmp_path)
    for name in state:
        restored, original = (tmp_path / name).read_text(), (folder / name).read_text()
        if name.endswith(".json"):
            restored, original = json.loads(restored), json.loads(original)
        assert restored == original, name


def _script_help(name: str, monkeypatch, capsys) -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit):
        module.main()
    return capsys.readouterr().out


def test_every_script_that_opens_a_checkpoint_has_the_switch_its_refusal_names(tmp_path, monkeypatch, capsys):
    from flex_bert.hf_checkpoint import import_from_hf
    from flex_bert.hf_config import flexbert_config_to_hf
    from tests._train_fixtures import write_code_running_checkpoint

    for name in ("convert_to_hf", "convert_from_hf", "evaluate_mlm"):
        assert "--trust-checkpoint" in _script_help(name, monkeypatch, capsys), name
    hf_dir, target = tmp_path / "hf", tmp_path / "pwned"
    flexbert_config_to_hf(FlexBertConfig.from_dict(TINY)).save_pretrained(hf_dir)
    write_code_running_checkpoint(hf_dir / "pytorch_model.bin", target)
    with pytest.raises(ValueError, match="pass --trust-checkpoint"):
        import_from_hf(hf_dir, tmp_path / "out.pt", mask_token_id=WORD_LEVEL_IDS["mask_token_id"])
    assert not target.exists()


def test_main_py_refusals_name_its_config_key(tmp_path, tiny_mds):  # noqa: F811
    """pretrained_checkpoint is opened by training: the hint is the config key, not a flag main.py lacks."""
    from flex_bert.train.run import train
    from tests._train_fixtures import tiny_yaml, write_code_running_checkpoint

    evil, target = tmp_path / "evil.pt", tmp_path / "pwned"
    write_code_running_checkpoint(evil, target)
    y = tiny_yaml(tiny_mds, tmp_path, "run", **{"model.pretrained_checkpoint": str(evil)})
    with pytest.raises(ValueError, match="trust_checkpoint: true") as err:
        train([str(y)], [])
    assert "--trust-checkpoint" not in str(err.value) and not target.exists()
