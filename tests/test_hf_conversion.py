"""HF <-> FlexBERT: key mapping, configs, checkpoint round trips, and the two conversion scripts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flex_bert.data.tiny_tokenizers import WORD_LEVEL_IDS, save_word_level_tokenizer
from flex_bert.hf_checkpoint import export_to_hf, import_from_hf, load_composer_model_state
from flex_bert.hf_config import flexbert_config_to_hf, hf_config_to_flexbert
from flex_bert.hf_state import flexbert_state_to_hf, hf_state_to_flexbert
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[1]
VOCAB = 128
TINY = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
    sliding_window=8, global_attn_every_n_layers=3, rotary_emb_base=1000.0, local_attn_rotary_emb_base=50.0,
    **WORD_LEVEL_IDS,
)  # fmt: skip


def tiny_config(**overrides) -> FlexBertConfig:
    return FlexBertConfig.from_dict({**TINY, **overrides})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A saved tiny HF ModernBertForMaskedLM with non-trivial norms/biases and a tiny tokenizer."""
    torch.manual_seed(0)
    model = transformers.ModernBertForMaskedLM(flexbert_config_to_hf(tiny_config())).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("hf_src")
    model.save_pretrained(out)
    save_word_level_tokenizer(out, VOCAB)
    return out


def load_hf(path):
    return transformers.AutoModelForMaskedLM.from_pretrained(path, attn_implementation="sdpa").eval()


def test_key_mapping_names():
    sd = FlexBertForMaskedLM(tiny_config(num_hidden_layers=2)).state_dict()
    hf_keys = sorted(flexbert_state_to_hf({f"model.{k}": v for k, v in sd.items()}))
    assert hf_keys == sorted([
        "model.embeddings.tok_embeddings.weight", "model.embeddings.norm.weight",
        "model.layers.0.attn.Wqkv.weight", "model.layers.0.attn.Wo.weight", "model.layers.0.mlp_norm.weight",
        "model.layers.0.mlp.Wi.weight", "model.layers.0.mlp.Wo.weight", "model.layers.1.attn_norm.weight",
        "model.layers.1.attn.Wqkv.weight", "model.layers.1.attn.Wo.weight", "model.layers.1.mlp_norm.weight",
        "model.layers.1.mlp.Wi.weight", "model.layers.1.mlp.Wo.weight", "model.final_norm.weight",
        "head.dense.weight", "head.norm.weight", "decoder.bias",
    ])  # fmt: skip
    back = hf_state_to_flexbert(flexbert_state_to_hf(sd))
    assert sorted(back) == sorted(sd)
    assert back["decoder.weight"] is back["bert.embeddings.tok_embeddings.weight"]
    with pytest.raises(ValueError, match="unexpected state dict key 'foo.weight'"):
        flexbert_state_to_hf({"foo.weight": torch.zeros(1)})


def test_config_round_trip_and_upstream_bugs_not_repeated():
    cfg = tiny_config()
    hf_cfg = flexbert_config_to_hf(cfg)
    assert hf_cfg.layer_types == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]
    assert hf_cfg.rope_parameters["full_attention"]["rope_theta"] == 1000.0
    assert hf_cfg.rope_parameters["sliding_attention"]["rope_theta"] == 50.0
    assert hf_cfg.local_attention == 8 and hf_cfg.classifier_activation == "gelu"
    assert (hf_cfg.pad_token_id, hf_cfg.cls_token_id, hf_cfg.sep_token_id) == (0, 2, 3)
    back = hf_config_to_flexbert(hf_cfg, mask_token_id=4)
    assert back == cfg

    # Phase-1 configs leave the local base unset: HF gets the global theta, never -1 (upstream issue 209).
    for unset in (-1, None):
        rope = flexbert_config_to_hf(tiny_config(local_attn_rotary_emb_base=unset)).rope_parameters
        assert rope["sliding_attention"]["rope_theta"] == 1000.0
    bad = flexbert_config_to_hf(cfg)
    bad.rope_parameters["sliding_attention"]["rope_theta"] = -1
    bad.classifier_activation = "silu"
    with pytest.warns(UserWarning, match="silu"):
        fixed = hf_config_to_flexbert(bad, mask_token_id=4)
    assert fixed.local_rope_theta == 1000.0 and fixed.head_pred_act == "gelu"
    base = hf_config_to_flexbert(flexbert_config_to_hf(FlexBertConfig.base()))
    assert base == FlexBertConfig.base()


def test_import_export_round_trip_is_exact(hf_dir, tmp_path):
    ckpt = import_from_hf(hf_dir, tmp_path / "ckpt.pt")
    raw = torch.load(ckpt, weights_only=True)
    state = raw["state"]
    assert len(state["model"]) == 30 and all(k.startswith("model.") for k in state["model"])
    assert FlexBertConfig.from_dict(state["flex_bert_config"]) == tiny_config()
    assert "tokenizer.json" in state["integrations"]["huggingface"]["tokenizer"]

    flex_sd = load_composer_model_state(ckpt)
    assert "bert.encoder.layers.1.attn_norm.weight" in flex_sd
    model = FlexBertForMaskedLM(tiny_config()).eval()
    model.load_state_dict(flex_sd)  # strict

    out = export_to_hf(ckpt, tmp_path / "hf_out")  # tokenizer from the checkpoint
    original, exported = load_hf(hf_dir), load_hf(out)
    a, b = original.state_dict(), exported.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(5, VOCAB, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        ref = original(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(exported(input_ids=ids, attention_mask=mask).logits, ref)
        ours = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], rtol=1e-5, atol=1e-5)

    fill = transformers.pipeline("fill-mask", model=str(out), device="cpu")
    preds = fill("the patient was given [MASK] dose")
    assert len(preds) == 5 and all("token_str" in p for p in preds)
    config = json.loads((out / "config.json").read_text())
    assert config["local_rope_theta"] == 50.0 and config["classifier_activation"] == "gelu"


def test_export_bfloat16_and_upstream_checkpoint_needs_config(hf_dir, tmp_path):
    ckpt = torch.load(import_from_hf(hf_dir, tmp_path / "ckpt.pt"), weights_only=True)
    del ckpt["state"]["flex_bert_config"]  # like an upstream checkpoint
    upstream = tmp_path / "upstream.pt"
    torch.save(ckpt, upstream)
    with pytest.raises(ValueError, match="--config"):
        export_to_hf(upstream, tmp_path / "x")
    with pytest.raises(ValueError, match="does not match its config"):
        export_to_hf(upstream, tmp_path / "x", config="base")
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(yaml.safe_dump({"model": {"name": "flex_bert", "model_config": TINY}}))
    out = export_to_hf(upstream, tmp_path / "bf16", dtype="bfloat16", config=yaml_path)
    exported = transformers.AutoModelForMaskedLM.from_pretrained(out, dtype="auto")
    assert exported.model.embeddings.tok_embeddings.weight.dtype == torch.bfloat16
    del ckpt["state"]["integrations"]
    torch.save(ckpt, upstream)
    with pytest.raises(ValueError, match="--tokenizer"):
        export_to_hf(upstream, tmp_path / "y", config=yaml_path)


def test_export_reads_config_and_tokenizer_from_run_info_callback(hf_dir, tmp_path):
    """Training checkpoints keep both in the RunInfo callback's state (state.callbacks.RunInfo)."""
    state = torch.load(import_from_hf(hf_dir, tmp_path / "ckpt.pt"), weights_only=True)["state"]
    run_info = {"flex_bert_config": state.pop("flex_bert_config"), "run_config": {}}
    run_info["tokenizer"] = state.pop("integrations")["huggingface"]["tokenizer"]
    state["callbacks"] = {"SpeedMonitor": {}, "RunInfo": run_info}
    torch.save({"state": state}, tmp_path / "trained.pt")
    out = export_to_hf(tmp_path / "trained.pt", tmp_path / "hf")
    assert torch.equal(load_hf(out).decoder.bias, load_hf(hf_dir).decoder.bias)
    assert (out / "tokenizer.json").exists()


def _run(script, *args):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *map(str, args)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_scripts_smoke(hf_dir, tmp_path):
    ckpt = tmp_path / "from_hf.pt"
    _run("convert_from_hf.py", "--input-dir", hf_dir, "--output-checkpoint", ckpt)
    out = tmp_path / "to_hf"
    _run("convert_to_hf.py", "--input-checkpoint", ckpt, "--output-dir", out, "--dtype", "bfloat16",
         "--tokenizer", hf_dir)  # fmt: skip
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
