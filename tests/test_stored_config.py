"""A checkpoint's stored FlexBertConfig with upstream's pinned keys (as every checkpoint of this recipe stored
them before they left the config) loads; one of them at another value is refused in one line."""

import pytest
import torch

from flex_bert.bench.train import TINY_MODEL
from flex_bert.hf_checkpoint import checkpoint_config
from flex_bert.hf_tasks import load_start
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

# The upstream keys and values these checkpoints stored (the BioClinical phase-1 YAML's), written out here.
STORED_PINNED = {
    "attention_layer": "rope",
    "bert_layer": "prenorm",
    "mlp_layer": "glu",
    "normalization": "layernorm",
    "padding": "unpadded",
    "embedding_layer": "sans_pos",
    "loss_function": "fa_cross_entropy",
    "activation_function": "gelu",
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "embed_norm": True,
    "final_norm": True,
    "head_pred_norm": True,
    "init_small_embedding": False,
    "initial_attention_layer": None,
    "initial_bert_layer": None,
    "initial_mlp_layer": None,
}


def _write_checkpoint(path, stored_config):
    model = FlexBertForMaskedLM(FlexBertConfig.from_dict(TINY_MODEL))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state": {"model": state, "flex_bert_config": stored_config}}, path)
    return path


def test_stored_config_with_upstreams_pinned_keys_loads(tmp_path):
    tiny = FlexBertConfig.from_dict(TINY_MODEL)
    stored = {**tiny.to_dict(), **STORED_PINNED}
    cfg, state, _ = load_start(_write_checkpoint(tmp_path / "old.pt", stored))
    assert cfg == tiny and len(state) > 0
    assert checkpoint_config({"state": {"flex_bert_config": stored}}, None) == tiny
    # what is stored from here on holds only fields that change the computation
    assert not set(STORED_PINNED) & set(cfg.to_dict())


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("final_norm", False, "[True]"),
        ("attention_layer", "base", "['rope']"),
        ("loss_function", "focal", "['cross_entropy', 'fa_cross_entropy']"),
    ],
)
def test_stored_config_with_a_pinned_key_at_another_value_is_refused(tmp_path, key, value, allowed):
    stored = {**FlexBertConfig.from_dict(TINY_MODEL).to_dict(), **STORED_PINNED, key: value}
    with pytest.raises(ValueError) as err:
        load_start(_write_checkpoint(tmp_path / "bad.pt", stored))
    assert str(err.value) == f"model_config {key}={value!r} is not supported; allowed: {allowed}"
