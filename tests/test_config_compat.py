"""How migrating users' YAMLs are read: variables, composer's and upstream's keys, refusals at load in one line,
and upstream's features (batch-size warmup, unpacked batches, weight tiling) against their definitions."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from flex_bert.data.batch_warmup import BatchSizeWarmup
from flex_bert.data.eval_batches import collate_flat, split_flat
from flex_bert.data.loaders import PackedMLMDataset
from flex_bert.data.masking import MaskingSpec
from flex_bert.model.tiling import layer_map, tile, tile_state_dict
from flex_bert.train.config import load_config, load_config_and_notes
from flex_bert.train.run import dry_run
from tests import _config_shapes as shapes

SEED = "tests/data/seed_phase1.yml"
SPEC = MaskingSpec(mask_token_id=4, vocab_size=500, special_ids=(0, 1, 2, 3, 4))


def _write(tmp_path: Path, cfg: dict, name: str = "c.yml") -> str:
    (tmp_path / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(tmp_path / name)


def _seed() -> dict:
    return yaml.safe_load(Path(SEED).read_text())


# ---- variables and unknown keys ------------------------------------------------------------------------------
def test_keys_used_by_name_are_variables_and_unknown_ones_are_still_refused(tmp_path):
    cfg = _seed() | {
        "checkpoint_dir": "ckpts",
        "run_group": "base",
        "pretrain_run_name": "phase0",
        "data_corpus": "clinical",
    }
    cfg["save_folder"] = "${checkpoint_dir}/${run_group}/${run_name}/ckpt"
    cfg["load_path"] = "${checkpoint_dir}/{pretrain_run_name}/latest-rank0.pt"
    cfg["data_local"] = "data/${data_corpus}"
    loaded, notes = load_config_and_notes([_write(tmp_path, cfg)])
    assert loaded.save_folder == "ckpts/base/phase1_all_3ep_constant/ckpt"
    assert loaded.load_path == "ckpts/phase0/latest-rank0.pt"  # composer would not fill {pretrain_run_name}
    assert loaded.train_loader.dataset.local == "data/clinical"
    assert not {"checkpoint_dir", "run_group", "pretrain_run_name", "data_corpus"} & set(loaded)
    assert any("checkpoint_dir, data_corpus, pretrain_run_name, run_group" in n for n in notes)
    cfg["data_locl"] = "elsewhere"  # nothing uses it: a typo
    with pytest.raises(ValueError, match="unknown config key 'data_locl'; did you mean 'data_local'") as err:
        load_config([_write(tmp_path, cfg)])
    assert "\n" not in str(err.value)


def test_an_unknown_nested_key_is_one_line_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'batch_size_warmup_tokens'") as err:
        load_config([SEED], ["train_loader.batch_size_warmup_tokns=1000tok"])
    assert "\n" not in str(err.value)


def test_reset_time_and_restart_override_without_load_path_warn_and_go_on():
    with pytest.warns(UserWarning, match="reset_time: true has no effect without load_path"):
        cfg, notes = load_config_and_notes([SEED], ["load_path=null"])
    assert cfg.reset_time and "reset_time: ignored (no load_path)" in notes


def test_left_out_count_padding_tokens_counts_padding_as_upstream(tmp_path):
    cfg = _seed()
    del cfg["count_padding_tokens"]  # upstream's main.py: cfg.get("count_padding_tokens", True)
    assert load_config([_write(tmp_path, cfg)]).count_padding_tokens is True


# ---- composer's keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override,match",
    [
        ("algorithms.alibi.max_sequence_length=512", "algorithms.alibi is not supported: ALiBi"),
        ("algorithms.rope_schedule.min_rope_theta=10000", "set model_config.rotary_emb_base per phase"),
        ("algorithms.gated_linear_units.act_fn=gelu", "FlexBERT's MLP is a GLU already"),
        ("algorithms.gradient_clipping.clipping_type=l3", "algorithms.gradient_clipping.clipping_type"),
        ("train_loader.batch_size_warmup_min_size=96", "set both batch_size_warmup_min_size"),
        ("python_log_level=loud", "python_log_level must be one of"),
    ],
)
def test_refusals_happen_at_load_in_one_line(override, match):
    with pytest.raises(ValueError, match=match) as err:
        load_config([SEED], [override])
    assert "\n" not in str(err.value)


def test_batch_size_warmup_minimum_must_be_whole_rows():
    warmup = ["train_loader.batch_size_warmup_tokens=1000tok"]
    with pytest.raises(ValueError, match=r"multiple of device_train_microbatch_size \(12\)"):
        load_config([SEED], [*warmup, "train_loader.batch_size_warmup_min_size=18"])
    load_config([SEED], [*warmup, "train_loader.batch_size_warmup_min_size=24"])


def test_composer_callbacks_loggers_and_algorithms_are_built_with_composers_meaning():
    from composer.algorithms import EMA, GradientClipping
    from composer.callbacks import OptimizerMonitor, RuntimeEstimator, SpeedMonitor
    from composer.loggers import WandBLogger

    from flex_bert.train.algorithms import build_algorithms
    from flex_bert.train.callbacks import DataloaderSpeed, LogGradNorm, build_callbacks
    from flex_bert.train.loggers import build_loggers
    from flex_bert.train.shape import run_shape

    cfg = load_config(
        [SEED],
        [
            "callbacks.speed_monitor.gpu_flops_available=1e12",
            "callbacks.log_grad_norm.log_optimizer_metrics=false",
            "callbacks.optimizer_monitor.batch_log_interval=5",
            "callbacks.runtime_estimator.time_unit=minutes",
            "callbacks.dataloader_speed={}",
            "loggers.wandb.project=p",
            "loggers.wandb.group=g",
            "loggers.wandb.init_kwargs={resume: allow, allow_val_change: true}",
            "algorithms.gradient_clipping.clipping_threshold=0.5",
            "algorithms.ema.half_life=10ba",
            "optimizer.log_grad_norm=false",
        ],
    )
    run = run_shape(cfg)
    callbacks = {type(c): c for c in build_callbacks(OmegaConf.to_object(cfg.callbacks), run)}
    assert callbacks[SpeedMonitor].gpu_flops_available == 1e12
    assert LogGradNorm not in callbacks, "log_optimizer_metrics: false logs nothing (upstream's switch)"
    assert callbacks[OptimizerMonitor].batch_log_interval == 5
    assert callbacks[RuntimeEstimator].divider == 60  # minutes
    assert DataloaderSpeed in callbacks
    (wandb,) = [x for x in build_loggers(OmegaConf.to_object(cfg.loggers), run) if isinstance(x, WandBLogger)]
    assert wandb._init_kwargs["resume"] == "allow" and wandb._init_kwargs["allow_val_change"] is True
    assert wandb._init_kwargs["group"] == "g" and wandb._init_kwargs["project"] == "p"
    # autoresume asks each logger for a checkpoint: without log_artifacts wandb holds none, so its API (which
    # needs a login, even for a run logging offline) is not asked
    with pytest.raises(FileNotFoundError, match="log_artifacts"):
        wandb.download_file("latest-rank0.pt", "/nonexistent/latest-rank0.pt")
    clipping, ema = build_algorithms(OmegaConf.to_object(cfg.algorithms))
    assert isinstance(clipping, GradientClipping) and clipping.clipping_threshold == 0.5
    assert isinstance(ema, EMA)


def test_eval_batch_is_global_over_gpus_unless_given_per_gpu(tmp_path):
    from flex_bert.train.shape import run_shape

    def eval_batch_size(cfg):
        return run_shape(cfg).eval_batch_size

    cfg = _seed()
    del cfg["device_eval_batch_size"]
    assert eval_batch_size(load_config([_write(tmp_path, cfg)])) == 1024  # upstream's: global / GPUs (1 here)
    del cfg["global_eval_batch_size"]
    assert eval_batch_size(load_config([_write(tmp_path, cfg)])) == 32
    with pytest.warns(UserWarning, match="global_eval_batch_size .1024. has no effect"):
        assert eval_batch_size(load_config([SEED])) == 128


def test_eval_micro_batches_are_the_documents_of_the_batch_in_order():
    rng = np.random.default_rng(0)
    items = [(rng.integers(5, 500, n), np.where(rng.random(n) < 0.3, 7, -100)) for n in (5, 9, 3, 12, 4)]
    whole = collate_flat(items)
    parts = split_flat(whole, 2)
    assert [p["doc_lengths"][0] for p in parts] == [[5, 9], [3, 12], [4]]
    assert torch.equal(torch.cat([p["input_ids"][0] for p in parts]), whole["input_ids"][0])
    assert torch.equal(torch.cat([p["labels"][0] for p in parts]), whole["labels"][0])
    for part, docs in zip(parts, ([0, 1], [2, 3], [4])):
        expected = collate_flat([items[i] for i in docs])
        assert [c.tolist() for c in part["cu_seqlens"]] == [c.tolist() for c in expected["cu_seqlens"]]
        assert (
            part["num_labelled"] == expected["num_labelled"] and part["num_tokens"] == expected["num_tokens"]
        )
    assert split_flat(whole, 8) == [whole]


# ---- dry_run reports the mapped and ignored keys -----------------------------------------------------------------
def _dry_run_without_data(path: str) -> tuple[list[str], dict]:
    """dry_run's notes and plan for a config whose data and tokenizer are not here (its later checks fail)."""
    from flex_bert.train.config import load_config_and_notes
    from flex_bert.train.preflight import PreflightFailed
    from flex_bert.train.run import plan

    with pytest.raises(PreflightFailed):
        dry_run([path], [])
    cfg, notes = load_config_and_notes([path], [])
    return notes, plan(cfg)


def test_dry_run_prints_which_upstream_keys_were_mapped_or_ignored(tmp_path, capsys):
    notes, _ = _dry_run_without_data(_write(tmp_path, shapes.hebrew("0.1")))
    out = capsys.readouterr().out
    for expected in (
        "variables (used by name only, then dropped): checkpoint_dir, data_corpus",
        "model_config.rotary_emb_base_local: mapped to local_attn_rotary_emb_base = 10000.0",
        "layer_norm_eps",
        "train_loader.batch_size_warmup_*: ignored without sequence_packing",
        "algorithms.gradient_clipping",
        "model.pretrained_model_name: ignored",
    ):
        assert any(expected in n for n in notes), expected
    assert all(f"config: {n}" in out for n in notes)
    _, info = _dry_run_without_data(_write(tmp_path, shapes.modernbert("pretrain", "base")))
    assert "the batch-size warmup trains smaller batches first" in info["planned_steps_note"]
    notes, _ = _dry_run_without_data(_write(tmp_path, shapes.modernbert("context-extension", "base")))
    assert (
        "filled from variables (composer fills only its own names): load_path: {pretrain_run_name}" in notes
    )


def test_model_config_left_to_defaults_that_differ_from_upstreams_is_reported(tmp_path):
    cfg = _seed()
    for key in ("rotary_emb_base", "sliding_window", "local_attn_rotary_emb_base"):
        del cfg["model"]["model_config"][key]
    _, notes = load_config_and_notes([_write(tmp_path, cfg)])
    (line,) = [n for n in notes if n.startswith("model_config leaves")]
    assert (
        "rotary_emb_base=160000.0 (upstream 10000.0)" in line and "sliding_window=128 (upstream -1)" in line
    )


# ---- batch-size warmup -------------------------------------------------------------------------------------------
def test_batch_size_warmup_thresholds_are_upstreams():
    # upstream's BatchSizeWarmupScheduler(1, 4, 600): sizes 1, 2, 3 share 600 tokens in proportion (100 per
    # row): it grows at ceil(100 * 1), ceil(100 * 3), ceil(100 * 6)
    w = BatchSizeWarmup(min_rows=1, max_rows=4, tokens=600)
    assert w.thresholds == [100, 300, 600]
    assert [w.rows(t) for t in (0, 99, 100, 299, 300, 599, 600, 10**9)] == [1, 1, 2, 2, 3, 3, 4, 4]
    # (2, 5, 100): sizes 2, 3, 4 over 9 -> 100/9 per row; ceil(200/9) = 23, ceil(500/9) = 56, ceil(900/9) = 100
    assert BatchSizeWarmup(2, 5, 100).thresholds == [23, 56, 100]


def _docs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": np.concatenate([[1], rng.integers(5, 500, rng.integers(3, 120)), [2]])}
        for _ in range(n)
    ]


def _dataset(docs, **kw):
    args = dict(
        row_len=256, max_seq_len=128, pad_id=3, masking=SPEC, mlm_probability=0.3, seed=5, shuffle=True
    )
    return PackedMLMDataset(docs, **{**args, "rows_per_batch": 4, **kw})


def test_warmup_batches_grow_by_the_tokens_before_them_and_resume_exactly():
    warmup = BatchSizeWarmup(min_rows=1, max_rows=4, tokens=3000)
    batches = list(_dataset(_docs(), warmup=warmup))
    seen = 0
    for batch in batches[:12]:
        assert batch["input_ids"].shape[0] == warmup.rows(seen)
        seen += batch["num_tokens"]
    assert [b["input_ids"].shape[0] for b in batches[:2]] == [1, 1] and batches[-2]["input_ids"].shape[0] == 4
    resumed = _dataset(_docs(), warmup=warmup)
    resumed.load_state_dict({"packing_state": vars(batches[4]["packing_state"])})
    for a, b in zip(list(resumed), batches[5:]):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


# ---- unpacked batches ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop_last", [True, False])
def test_unpacked_rows_hold_one_document_per_slot_in_order(drop_last):
    docs = _docs(9)
    ds = _dataset(docs, rows_per_batch=1, docs_per_row=2, shuffle=False, drop_last=drop_last, buffer_docs=3)
    rows = [b["doc_lengths"][0] for b in ds]
    lengths = [len(d["input_ids"]) for d in docs]
    assert [sorted(r) for r in rows] == [
        sorted(lengths[i : i + 2]) for i in range(0, 8 if drop_last else 9, 2)
    ]
    for batch in _dataset(docs, rows_per_batch=1, docs_per_row=2, shuffle=False):
        real = batch["num_tokens"]
        assert (batch["input_ids"][0, real:] == 3).all() and (batch["labels"][0, real:] == -100).all()


# ---- weight tiling ------------------------------------------------------------------------------------------------
def test_tiling_modes_by_hand():
    small, init = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(7)
    # upstream's loops, run by hand: the middle copy at offset (7 - 3) // 2 = 2, then repeats outwards
    assert tile(small, init, "tile_weights_from_middle").tolist() == [2, 3, 1, 2, 3, 1, 2]
    assert tile(small, init, "tile_weights_from_edge").tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert tile(small, init, "center_weights").tolist() == [0, 0, 1, 2, 3, 0, 0]
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # offsets (3 - 2) // 2 = 0 rows and (4 - 2) // 2 = 1 column: column 0 repeats old column 1, column 3 old 0
    assert tile(matrix, torch.zeros(3, 4), "tile_weights_from_middle").tolist() == [
        [2, 1, 2, 1],
        [4, 3, 4, 3],
        [2, 1, 2, 1],
    ]
    with pytest.raises(ValueError, match="cannot tile"):
        tile(torch.zeros(4), torch.zeros(3), "tile_weights_from_edge")


def test_layer_map_is_gophers_rounding():
    assert layer_map(2, 3) == [0, 1, 1]  # round(2/3), round(4/3)
    assert layer_map(22, 28)[:4] == [0, 1, 2, 2] and layer_map(22, 28)[-1] == 21  # round(22*27/28) = 21
    assert layer_map(2, 4) == [0, 0, 1, 1]  # round(1.5) = 2 is past the last layer: the last one


def test_tiled_state_dict_fills_each_part_and_keeps_upstreams_exceptions():
    from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

    ids = dict(
        pad_token_id=3, cls_token_id=1, sep_token_id=2, mask_token_id=4, vocab_size=64, sliding_window=8
    )
    small = FlexBertForMaskedLM(
        FlexBertConfig(num_hidden_layers=2, hidden_size=8, intermediate_size=12, num_attention_heads=2, **ids)
    )
    big = FlexBertForMaskedLM(
        FlexBertConfig(
            num_hidden_layers=3, hidden_size=16, intermediate_size=20, num_attention_heads=4, **ids
        )
    )
    s, new = small.state_dict(), big.state_dict()
    out = tile_state_dict(s, new, "tile_weights_from_edge")
    q, k, v = out["bert.encoder.layers.2.attn.Wqkv.weight"].chunk(3)
    for part, old in zip((q, k, v), s["bert.encoder.layers.1.attn.Wqkv.weight"].chunk(3)):
        assert torch.equal(part, old.repeat(2, 2))  # layer 2 of 3 reads layer round(4/3) = 1; Q, K, V apart
    gelu_in, gate = out["bert.encoder.layers.0.mlp.Wi.weight"].chunk(2)
    old_in, old_gate = s["bert.encoder.layers.0.mlp.Wi.weight"].chunk(2)
    assert torch.equal(gelu_in, old_in.repeat(2, 2)[:20]) and torch.equal(gate, old_gate.repeat(2, 2)[:20])
    assert torch.equal(
        out["bert.embeddings.tok_embeddings.weight"], s["bert.embeddings.tok_embeddings.weight"].repeat(1, 2)
    )
    assert torch.equal(out["bert.final_norm.weight"], new["bert.final_norm.weight"]), "as upstream: not tiled"
    assert torch.equal(out["decoder.weight"], out["bert.embeddings.tok_embeddings.weight"])
    assert torch.equal(out["decoder.bias"], s["decoder.bias"])
    big.load_state_dict(out)
    wrong = FlexBertForMaskedLM(
        FlexBertConfig(
            num_hidden_layers=3,
            hidden_size=16,
            intermediate_size=20,
            num_attention_heads=4,
            **{**ids, "vocab_size": 80},
        )
    )
    with pytest.raises(ValueError, match="vocabulary"):
        tile_state_dict(s, wrong.state_dict())


def test_init_from_checkpoint_is_checked_at_load(tmp_path):
    base = shapes.modernbert("pretrain", "base")
    (tmp_path / "small.yml").write_text(yaml.safe_dump(base))
    spec = {
        "checkpoint_cfg": str(tmp_path / "small.yml"),
        "checkpoint_load_path": str(tmp_path),
        "checkpoint_run_name": "small",
    }
    cfg = _seed() | {"init_from_checkpoint": spec}
    with pytest.raises(ValueError, match="no checkpoint at .*small/latest-rank0.pt"):
        load_config([_write(tmp_path, cfg)])
    cfg["model"]["model_config"]["hidden_size"] = 384
    with pytest.raises(ValueError, match=r"hidden_size \(768\) exceeds this model's \(384\)"):
        load_config([_write(tmp_path, cfg)])
    cfg["init_from_checkpoint"]["mode"] = "stretch"
    with pytest.raises(ValueError, match="init_from_checkpoint.mode"):
        load_config([_write(tmp_path, cfg)])
