"""FlexBertConfig: the seed YAML's keys, errors that say what to do, presets, and upstream's parameter layout."""

import warnings

import pytest
import torch
import yaml

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from flex_bert.train.upstream_model import from_upstream
from tests import _config_shapes as shapes

# model_config of the BioClinical ModernBERT phase-1 YAML, verbatim (note `eps: 1e-5` is a *string* to YAML 1.1).
SEED_MODEL_CONFIG = """
vocab_size: 50368
init_method: full_megatron
num_hidden_layers: 22
hidden_size: 768
intermediate_size: 1152
num_attention_heads: 12 # to have head size of 64
attention_layer: rope
attention_probs_dropout_prob: 0.0
attn_out_bias: false
attn_out_dropout_prob: 0.1
attn_qkv_bias: false
bert_layer: prenorm
embed_dropout_prob: 0.0
embed_norm: true
final_norm: true
skip_first_prenorm: true
embedding_layer: sans_pos
loss_function: fa_cross_entropy
loss_kwargs:
  reduction: mean
mlp_dropout_prob: 0.0
mlp_in_bias: false
mlp_layer: glu
mlp_out_bias: false
normalization: layernorm
norm_kwargs:
  eps: 1e-5
  bias: false
hidden_act: gelu
head_pred_act: gelu
activation_function: gelu # better safe than sorry
padding: unpadded
rotary_emb_dim: null
rotary_emb_base: 160000.0
rotary_emb_scale_base: null
rotary_emb_interleaved: false
local_attn_rotary_emb_base: 10000.0
local_attn_rotary_emb_dim: null
allow_embedding_resizing: true
sliding_window: 128
global_attn_every_n_layers: 3
unpad_embeddings: true
compile_model: true
masked_prediction: true
"""


def test_seed_yaml_loads_and_equals_base_preset():
    d = yaml.safe_load(SEED_MODEL_CONFIG)
    assert d["norm_kwargs"]["eps"] == "1e-5"  # the trap this guards against
    cfg = FlexBertConfig.from_dict(d)
    assert cfg == FlexBertConfig.base()
    assert cfg.norm_eps == 1e-5 and isinstance(cfg.norm_kwargs["eps"], float)
    assert FlexBertConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_suggests_close_match():
    with pytest.raises(
        ValueError, match=r"unknown model_config key 'hiden_size'; did you mean 'hidden_size'\?"
    ):
        FlexBertConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match="unknown model_config key 'zzz'$"):
        FlexBertConfig.from_dict({"zzz": 1})


@pytest.mark.parametrize(
    "key,value",
    [
        ("attention_layer", "alibi"),
        ("bert_layer", "postnorm"),
        ("mlp_layer", "mlp"),
        ("normalization", "rmsnorm"),
        ("padding", "padded"),
        ("embedding_layer", "absolute_pos"),
        ("rotary_emb_interleaved", True),
        ("rotary_emb_scale_base", 512.0),
        ("loss_function", "focal"),
        ("init_method", "mitchell"),
        ("head_pred_act", "silu"),
        ("attention_probs_dropout_prob", 0.1),
    ],
)
def test_unsupported_value_names_key_and_allowed(key, value):
    with pytest.raises(ValueError, match=rf"{key}=.* is not supported; allowed: \["):
        FlexBertConfig.from_dict({key: value})


@pytest.mark.parametrize(
    "change,match",
    [
        ({"hidden_size": 100}, "divisible by num_attention_heads"),
        ({"sliding_window": 127}, "positive even"),
        ({"global_attn_every_n_layers": 0}, "must be positive"),
        ({"rotary_emb_dim": 32}, "rotary_emb_dim=32 is not supported"),
        ({"attention_backend": "triton"}, r"attention_backend='triton' is not supported; allowed: \['auto'"),
        ({"loss_kwargs": {"reduction": "sum"}}, "reduction='mean'"),
        ({"norm_kwargs": {"eps": 1e-5, "elementwise_affine": False}}, "norm_kwargs"),
        ({"num_hidden_layers": "22"}, "num_hidden_layers' must be"),
        ({"vocab_size": 1000}, "pad_token_id=50283 must be < vocab_size"),
    ],
)
def test_cross_field_and_type_errors(change, match):
    with pytest.raises(ValueError, match=match):
        FlexBertConfig.from_dict(change)


def test_upstream_keys_without_effect_warn():
    with pytest.warns(UserWarning, match="deterministic_fa2"):
        cfg = from_upstream({"deterministic_fa2": True})
    assert cfg == FlexBertConfig.from_dict({})


# model_config keys of the Hebrew ModernBERT YAMLs that are not in the seed YAML (tests/_config_shapes.py), less
# the fork's tokenizer ids, with max_seq_len resolved. All of them leave upstream's FlexBERT MLM model unchanged
# except rotary_emb_base_local, the fork's local rotary base.
FORK_TOKEN_IDS = ("cls_token_id", "pad_token_id", "sep_token_id")
HEBREW_EXTRA_KEYS = {k: v for k, v in shapes.HEBREW_ARCH_EXTRA.items() if k not in FORK_TOKEN_IDS}
HEBREW_EXTRA_KEYS["max_position_embeddings"] = 1024


def test_hebrew_model_config_keys_load_in_one_warning_and_the_forks_local_base_is_used():
    seed = yaml.safe_load(SEED_MODEL_CONFIG)
    del seed["local_attn_rotary_emb_base"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = from_upstream({**seed, **HEBREW_EXTRA_KEYS})
    assert len(caught) == 1, [str(w.message) for w in caught]
    for ignored in ("layer_norm_eps", "type_vocab_size", "bos_token_id", "num_initial_layers"):
        assert ignored in str(caught[0].message)
    assert cfg.local_rope_theta == 10000.0 and cfg.rotary_emb_base == 160000.0
    assert cfg == FlexBertConfig.base(max_position_embeddings=1024)
    # the name of this config wins where both are set
    both = from_upstream({"rotary_emb_base_local": 10000.0, "local_attn_rotary_emb_base": 500.0})
    assert both.local_rope_theta == 500.0


@pytest.mark.parametrize(
    "key,value",
    [("init_small_embedding", True), ("initial_attention_layer", "base"), ("initial_mlp_layer", "mlp")],
)
def test_upstream_options_that_change_the_model_are_refused(key, value):
    with pytest.raises(ValueError, match=rf"{key}=.* is not supported"):
        FlexBertConfig.from_dict({key: value})


def test_local_rotary_base_left_out_follows_the_global_one_as_upstream():
    # upstream FlexBertConfig: local_attn_rotary_emb_base defaults to -1, "use rotary_emb_base"
    assert FlexBertConfig.from_dict({"rotary_emb_base": 160000.0}).local_rope_theta == 160000.0
    assert FlexBertConfig.from_dict({}).local_rope_theta == FlexBertConfig.from_dict({}).rotary_emb_base
    # the released checkpoints' 160000 / 10000 stay the presets
    for preset in (FlexBertConfig.base(), FlexBertConfig.large()):
        assert (preset.rotary_emb_base, preset.local_rope_theta) == (160000.0, 10000.0)


def test_layer_pattern_and_rope_bases():
    cfg = FlexBertConfig.base()
    local = [cfg.is_local_layer(i) for i in range(22)]
    assert [i for i, x in enumerate(local) if not x] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert cfg.local_rope_theta == 10000.0
    for unset in (-1, None):
        assert FlexBertConfig.base(local_attn_rotary_emb_base=unset).local_rope_theta == 160000.0
    assert not any(FlexBertConfig.base(sliding_window=-1).is_local_layer(i) for i in range(22))


# Upstream's Composer key list (MODERNBERT_FACTS, "Checkpoint layout"), written out here, not derived.
def upstream_keys(layers: int, hidden: int, inter: int, vocab: int = 50368) -> dict[str, tuple]:
    keys = {
        "model.bert.embeddings.tok_embeddings.weight": (vocab, hidden),
        "model.bert.embeddings.norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"model.bert.encoder.layers.{i}."
        if i >= 1:
            keys[p + "attn_norm.weight"] = (hidden,)
        keys[p + "attn.Wqkv.weight"] = (3 * hidden, hidden)
        keys[p + "attn.Wo.weight"] = (hidden, hidden)
        keys[p + "mlp_norm.weight"] = (hidden,)
        keys[p + "mlp.Wi.weight"] = (2 * inter, hidden)
        keys[p + "mlp.Wo.weight"] = (hidden, inter)
    keys |= {
        "model.bert.final_norm.weight": (hidden,),
        "model.head.dense.weight": (hidden, hidden),
        "model.head.norm.weight": (hidden,),
        "model.decoder.weight": (vocab, hidden),
        "model.decoder.bias": (vocab,),
    }
    return keys


@pytest.mark.parametrize(
    "preset,dims,n_params", [("base", (22, 768, 1152), 149_655_232), ("large", (28, 1024, 2624), 395_881_664)]
)
def test_presets_match_upstream_keys_shapes_and_counts(preset, dims, n_params):
    with torch.device("meta"):
        model = FlexBertForMaskedLM(getattr(FlexBertConfig, preset)())
    got = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == upstream_keys(*dims)
    if preset == "base":
        assert len(got) == 138
    assert model.num_parameters() == n_params
    assert model.decoder.weight is model.bert.embeddings.tok_embeddings.weight
    assert list(model.buffers()) == []  # nothing but parameters is saved


def test_warning_free_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlexBertConfig.from_dict(yaml.safe_load(SEED_MODEL_CONFIG))


def test_training_flops_closed_form():
    from flex_bert.model.flops import training_flops_per_token

    cfg = FlexBertConfig.base()
    H, inter, V, L = 768, 1152, 50368, 1024
    matrices = 6 * 22 * (4 * H * H + 3 * H * inter)
    head = 6 * (H * H + H * V) * 0.3
    attention = 3 * 4 * H * (8 * L + 14 * 129)  # per token: 8 global layers, 14 local (129 keys)
    assert training_flops_per_token(cfg, [L, L], 0.3) == pytest.approx(matrices + head + attention, rel=1e-12)
    assert 0.82e9 < training_flops_per_token(cfg, [L], 0.3) < 0.83e9  # MODERNBERT_FACTS: about 0.83 GFLOP
    docs = [1024, 100, 5000, 129, 130]  # per document: 8 global layers see L keys, 14 local min(L, 129)
    attention = sum(3 * 4 * H * n * (8 * n + 14 * min(n, 129)) for n in docs) / sum(docs)
    assert training_flops_per_token(cfg, docs, 0.3) == pytest.approx(matrices + head + attention, rel=1e-12)
    # Documents shorter than the window: local layers cost what global ones do.
    short = training_flops_per_token(cfg, [100], 0.0)
    all_global = training_flops_per_token(FlexBertConfig.base(sliding_window=-1), [100], 0.0)
    assert short == pytest.approx(all_global)
