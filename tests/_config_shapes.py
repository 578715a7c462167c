"""Configs of the shape of the YAMLs people migrate with: the same keys and structure, written here.

- ``modernbert(phase, size)``: upstream ModernBERT's training YAMLs (pre-training, context extension, learning
  rate decay; base and large), as on its pretraining-documentation branch;
- ``bioclinical(phase, size)``: the BioClinical ModernBERT authors' phase 1 and phase 2 YAMLs;
- ``hebrew(phase)``: a Hebrew ModernBERT fork's phase 0.1 (from scratch, unpacked), phase 2 (context
  extension from a previous phase's weights) and large phase 0 (tiled from its base model);
- ``climate()``: continued pre-training without packing, with composer's own keys (wandb ``init_kwargs``,
  ``algorithms``, ``spin_dataloaders``, ``device_eval_microbatch_size``, the ``dataloader_speed`` callback);
- ``upstream_main(variant)``: upstream's ``yamls/main`` architecture ablations (other layer types).

``for_cpu`` then changes only paths, sizes and durations (and two resources: loader workers and compilation,
which take minutes on a CPU) so that a config runs a few batches of a tiny model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ARCH = {  # the ModernBERT architecture keys shared by every FlexBERT shape below
    "vocab_size": 50368,
    "init_method": "full_megatron",
    "num_hidden_layers": 22,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_attention_heads": 12,
    "attention_layer": "rope",
    "attention_probs_dropout_prob": 0.0,
    "attn_out_bias": False,
    "attn_out_dropout_prob": 0.1,
    "attn_qkv_bias": False,
    "bert_layer": "prenorm",
    "embed_dropout_prob": 0.0,
    "embed_norm": True,
    "final_norm": True,
    "skip_first_prenorm": True,
    "embedding_layer": "sans_pos",
    "loss_function": "fa_cross_entropy",
    "loss_kwargs": {"reduction": "mean"},
    "mlp_dropout_prob": 0.0,
    "mlp_in_bias": False,
    "mlp_layer": "glu",
    "mlp_out_bias": False,
    "normalization": "layernorm",
    "norm_kwargs": {"eps": "1e-5", "bias": False},  # a string, as YAML 1.1 reads 1e-5
    "hidden_act": "gelu",
    "head_pred_act": "gelu",
    "activation_function": "gelu",
    "padding": "unpadded",
    "rotary_emb_dim": None,
    "rotary_emb_base": 10000.0,
    "rotary_emb_scale_base": None,
    "rotary_emb_interleaved": False,
    "allow_embedding_resizing": True,
    "sliding_window": 128,
    "global_attn_every_n_layers": 3,
    "unpad_embeddings": True,
    "compile_model": True,
    "masked_prediction": True,
}
LARGE = {"num_hidden_layers": 28, "hidden_size": 1024, "intermediate_size": 2624, "num_attention_heads": 16}
LONG_ROPE = {
    "rotary_emb_base": 160000.0,
    "local_attn_rotary_emb_base": 10000.0,
    "local_attn_rotary_emb_dim": None,
}


def _loader(
    split, mlm, *, local="${data_local}", remote="${data_remote}", shuffle=True, packing=True, **more
):
    dataset = {
        "local": local,
        "remote": remote,
        "split": split,
        "tokenizer_name": "${tokenizer_name}",
        "max_seq_len": "${max_seq_len}",
        "shuffle": shuffle,
        "mlm_probability": mlm,
        "streaming": False,
        **more,
    }
    return {
        "name": "text",
        "dataset": dataset,
        "drop_last": shuffle,
        "num_workers": 6 if shuffle else 3,
        "sequence_packing": packing,
    }


def _model(model_config: dict) -> dict:
    return {
        "name": "flex_bert",
        "pretrained_model_name": "bert-base-uncased",
        "tokenizer_name": "${tokenizer_name}",
        "disable_train_metrics": True,
        "model_config": copy.deepcopy(model_config),  # the shapes share ARCH's nested dicts otherwise
    }


def _callbacks(window: int) -> dict:
    return {
        "speed_monitor": {"window_size": window},
        "lr_monitor": {},
        "scheduled_gc": {},
        "log_grad_norm": {"batch_log_interval": 10},
        "packing_efficiency": {"log_interval": 10},
    }


def _optimizer(lr, weight_decay=1.0e-5) -> dict:
    return {
        "name": "decoupled_stableadamw",
        "lr": lr,
        "betas": [0.9, 0.98],
        "eps": 1.0e-06,
        "weight_decay": weight_decay,
        "filter_bias_norm_wd": True,
        "log_grad_norm": True,
    }


# upstream's batch sizes: (global train, global eval, device eval batch, device eval micro-batch, device train
# micro-batch) per size and phase
MODERNBERT_SIZES = {
    ("base", "pretrain"): (4608, 1024, 128, None, 96),
    ("base", "context-extension"): (576, 1024, 128, None, 12),
    ("base", "learning-rate-decay"): (576, 1024, 128, None, 12),
    ("large", "pretrain"): (4928, 896, 112, None, 56),
    ("large", "context-extension"): (616, 616, None, 14, 7),
    ("large", "learning-rate-decay"): (624, 624, None, 6, 6),
}


def modernbert(phase: str, size: str) -> dict:
    """Upstream's yamls/modernbert/modernbert-{size}-{phase}.yaml."""
    large, later = size == "large", phase != "pretrain"
    cfg = {"data_local": "data_folder", "data_remote": None}
    if later:
        cfg |= {"pretrain_data_local": "pretrain_data_folder", "pretrain_data_remote": None}
    cfg |= {
        "max_seq_len": 8192 if later else 1024,
        "tokenizer_name": f"answerdotai/ModernBERT-{size}",
        "mlm_probability": 0.3,
        "count_padding_tokens": False,
        "run_name": f"modernbert-{size}-{phase}",
    }
    if phase == "context-extension":
        cfg["pretrain_run_name"] = f"modernbert-{size}-pretrain"
    elif phase == "learning-rate-decay":
        cfg["context_extension_run_name"] = f"modernbert-{size}-context-extension"
    cfg["model"] = _model({**ARCH, **(LARGE if large else {}), **(LONG_ROPE if later else {})})
    train = _loader(None if later else "train", "${mlm_probability}")
    if later:
        train["dataset"]["shuffle_seed"] = 2998
    else:
        train |= {
            "batch_size_warmup_min_size": "${device_train_microbatch_size}",
            "batch_size_warmup_tokens": "10_000_000_000tok" if large else "50_000_000_000tok",
        }
    where = dict(local="${pretrain_data_local}", remote="${pretrain_data_remote}") if later else {}
    cfg["train_loader"] = train
    cfg["eval_loader"] = _loader("validation", 0.15, shuffle=False, packing=False, **where)
    cfg["scheduler"] = {
        "pretrain": {
            "name": "warmup_stable_decay",
            "t_warmup": "3_000_000_000tok",
            "alpha_f": 0.0,
            "t_decay": "0tok",
        },
        "context-extension": {"name": "constant_with_warmup", "t_warmup": "0tok", "t_max": "${max_duration}"},
        "learning-rate-decay": {
            "name": "one_minus_sqrt",
            "alpha_f": 0.001,
            "t_decay": "${max_duration}",
            "t_max": "${max_duration}",
        },
    }[phase]
    lr = {(False, False): 8e-4, (False, True): 3e-4, (True, False): 5e-4, (True, True): 5e-5}[(large, later)]
    cfg["optimizer"] = _optimizer(lr, 1.0e-6 if large and later else 1.0e-5)
    train_batch, eval_batch, device_eval, eval_micro, train_micro = MODERNBERT_SIZES[(size, phase)]
    cfg |= {
        "max_duration": {"pretrain": "1_719_000_000_000tok", "context-extension": "250_000_000_000tok"}.get(
            phase, "50_000_000_000tok"
        ),
        "eval_interval": "1000ba" if phase == "learning-rate-decay" else "4000ba",
        "global_train_batch_size": train_batch,
        "global_eval_batch_size": eval_batch,
    }
    if large and not later:
        cfg["init_from_checkpoint"] = {
            "checkpoint_cfg": "modernbert-base-pretrain.yaml",
            "checkpoint_load_path": "checkpoints",
            "checkpoint_run_name": "modernbert-base-pretrain",
            "mode": "tile_weights_from_middle",
        }
    cfg["seed"] = 314 if large else 17
    cfg |= (
        {"device_eval_batch_size": device_eval}
        if device_eval
        else {"device_eval_microbatch_size": eval_micro}
    )
    cfg |= {
        "device_train_microbatch_size": train_micro,
        "precision": "amp_bf16",
        "progress_bar": False,
        "log_to_console": True,
        "console_log_interval": "500ba" if later else "100ba",
        "callbacks": _callbacks(50 if later else 100),
        "save_interval": "1000ba" if phase == "learning-rate-decay" else "4000ba",
        "save_num_checkpoints_to_keep": -1,
        "save_folder": "checkpoints/{run_name}",
    }
    if later:
        previous = "pretrain_run_name" if phase == "context-extension" else "context_extension_run_name"
        cfg |= {
            "load_path": f"checkpoints/{{{previous}}}/latest-rank0.pt",
            "autoresume": False,
            "reset_time": True,
            "restart_override": True,
        }
    return cfg


def bioclinical(phase: int, size: str) -> dict:
    """The BioClinical ModernBERT phase 1 / phase 2 YAMLs (base and large)."""
    large = size == "large"
    cfg = {
        "data_local": "data/All_tokenized_mds" if phase == 1 else "data/Clinical_tokenized_mds",
        "data_remote": None,
        "max_seq_len": 8192,
        "tokenizer_name": f"answerdotai/ModernBERT-{size}",
        "mlm_probability": 0.3 if phase == 1 else 0.15,
        "count_padding_tokens": False,
        "run_name": f"phase{phase}_{size}_clinical",
    }
    cfg["model"] = _model({**ARCH, **(LARGE if large else {}), **LONG_ROPE})
    cfg["train_loader"] = _loader("train", "${mlm_probability}", shuffle_seed=2998)
    cfg["eval_loader"] = _loader("eval", 0.15, shuffle=False, packing=False)
    if phase == 1:
        cfg["scheduler"] = {"name": "constant_with_warmup", "t_warmup": "0tok", "t_max": "${max_duration}"}
    else:
        decay = "2_749_112_000tok" if large else "${max_duration}"
        cfg["scheduler"] = {
            "name": "one_minus_sqrt",
            "alpha_f": 0.001,
            "t_decay": decay,
            "t_max": "${max_duration}",
        }
    cfg["optimizer"] = _optimizer(5e-5 if large else 3e-4, 1.0e-6 if large else 1.0e-5)
    cfg |= {
        "max_duration": "160_453_000_000tok" if phase == 1 else "8_247_337_000tok",
        "eval_interval": "3000ba" if phase == 1 else "150ba",
        "global_train_batch_size": 616 if large else 576,
        "global_eval_batch_size": 616 if large else 1024,
    }
    if large:
        cfg |= {"seed": 314, "device_eval_microbatch_size": 14, "device_train_microbatch_size": 7}
    else:
        cfg |= {"seed": 17, "device_eval_batch_size": 128, "device_train_microbatch_size": 12}
    cfg |= {
        "precision": "amp_bf16",
        "progress_bar": False,
        "log_to_console": True,
        "console_log_interval": "150ba" if phase == 1 else "40ba",
        "callbacks": _callbacks(50),
        "save_interval": "3000ba" if phase == 1 else "150ba",
        "save_num_checkpoints_to_keep": -1,
        "save_folder": "checkpoints/{run_name}",
        "load_path": f"checkpoints/modernbert-{size}-context-extension/context-extension/ep0-ba1-rank0.pt"
        if phase == 1
        else f"checkpoints/phase1_{size}_clinical/latest-rank0.pt",
        "autoresume": False,
        "reset_time": True,
        "restart_override": True,
    }
    return cfg


HEBREW_ARCH_EXTRA = {  # the fork's model_config keys beyond ModernBERT's, with their values there
    "layer_norm_eps": "1e-5",
    "max_position_embeddings": "${max_seq_len}",
    "sparse_prediction": False,
    "rotary_emb_base_local": 10000.0,
    "init_std": 0.02,
    "init_cutoff_factor": 2.0,
    "init_small_embedding": False,
    "deterministic_fa2": False,
    "initial_attention_layer": None,
    "initial_bert_layer": None,
    "initial_mlp_layer": None,
    "num_initial_layers": 0,
    "pad_logits": False,
    "type_vocab_size": 1,
    "bos_token_id": 2,
    "cls_token_id": 2,
    "eos_token_id": 3,
    "pad_token_id": 100001,
    "sep_token_id": 3,
}


def _hebrew_model(large: bool) -> dict:
    arch = {**ARCH, **(LARGE if large else {}), "rotary_emb_base": 160000.0, "vocab_size": 100002}
    model = _model({**arch, **HEBREW_ARCH_EXTRA})
    del model["disable_train_metrics"]
    return {"name": "flex_bert", "recompute_metric_loss": False, **model}


def hebrew(phase: str) -> dict:
    """A Hebrew ModernBERT fork's phase 0.1 / phase 2 / large phase 0 YAMLs."""
    cfg = {}
    if phase != "0.1":
        cfg["run_group"] = "large" if phase == "large-0" else "base"
    cfg |= {"data_corpus": "hebrew"} if phase == "0.1" else {}
    cfg |= {
        "data_local": "./data/hebrewmodernbert/${data_corpus}" if phase == "0.1" else "./data/hebrew_packed",
        "data_remote": None,
        "max_seq_len": 8192 if phase == "2" else 1024,
        "tokenizer_name": "tokenizer",
        "mlm_probability": 0.2 if phase == "large-0" else 0.3,
    }
    if phase != "0.1":
        cfg["count_padding_tokens"] = False
    cfg["run_name"] = f"modern-bert-{'large' if phase == 'large-0' else 'base'}-phase-{phase}"
    cfg["model"] = _hebrew_model(phase == "large-0")
    if phase == "2":
        cfg["model"]["model_config"]["loss_kwargs"]["inplace_backward"] = True
    if phase == "large-0":
        cfg["base_model"] = _hebrew_model(False)
        for key in ("bert_layer", "embedding_layer", "padding", "compile_model"):
            cfg["base_model"]["model_config"][key] = f"${{model.model_config.{key}}}"
    train = _loader("train", "${mlm_probability}", packing=None)
    del train["sequence_packing"]
    if phase != "large-0":
        del train["dataset"]["streaming"]
    else:
        train["dataset"]["shuffle_seed"] = 71
        train["prefetch_factor"] = 4
    train["num_workers"] = 8
    if phase != "2":
        train |= {
            "batch_size_warmup_min_size": "${device_train_microbatch_size}",
            "batch_size_warmup_tokens": "50_000_000_000tok",
        }
    evaluation = _loader("validation", 0.15, shuffle=False, packing=None)
    del evaluation["sequence_packing"]
    if phase != "large-0":
        del evaluation["dataset"]["streaming"]
    evaluation["num_workers"] = 8
    cfg |= {"train_loader": train, "eval_loader": evaluation}
    cfg["scheduler"] = {
        "0.1": {"name": "linear_decay_with_warmup", "t_warmup": "0.06dur", "alpha_f": 0.02},
        "2": {
            "name": "one_minus_sqrt",
            "alpha_f": 0.001,
            "t_decay": "${max_duration}",
            "t_max": "${max_duration}",
        },
        "large-0": {"name": "constant_with_warmup", "t_warmup": "0.06dur", "t_max": "${max_duration}"},
    }[phase]
    cfg["optimizer"] = _optimizer({"0.1": 8.0e-4, "2": 3e-4, "large-0": 5.0e-4}[phase])
    cfg |= {"max_duration": "850_000_000_000tok", "eval_interval": "10000ba"}
    if phase != "0.1":
        cfg["eval_subset_num_batches"] = 100
    cfg |= {
        "seed": 17,
        "global_train_batch_size": 576 if phase == "2" else 4608,
        "device_train_microbatch_size": {"0.1": 128, "2": 24, "large-0": 576}[phase],
        "precision": "amp_bf16",
        "global_eval_batch_size": 64 if phase == "2" else 1024,
        "device_eval_microbatch_size": {"0.1": 128, "2": 4, "large-0": 64}[phase],
        "progress_bar": True,
        "log_to_console": False,
        "console_log_interval": "10ba",
        "algorithms": {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0}},
        "callbacks": {"speed_monitor": {"window_size": 50}, "lr_monitor": {}},
        "loggers": {"wandb": {"project": f"HebModernBERT-phase{phase}", "entity": "someone"}},
        "checkpoint_dir": "checkpoints",
        "save_interval": "4000ba",
        "save_num_checkpoints_to_keep": 20 if phase == "large-0" else -1,
    }
    if phase == "large-0":
        cfg["loggers"]["wandb"]["init_kwargs"] = {"resume": "allow", "allow_val_change": True}
    if phase == "0.1":
        cfg["save_folder"] = "${checkpoint_dir}/${data_corpus}/${run_name}/ckpt"
        cfg["load_path"] = "${checkpoint_dir}/${data_corpus}/${run_name}/ckpt/latest-rank0.pt"
    else:
        cfg["save_folder"] = "${checkpoint_dir}/${run_group}/${run_name}/ckpt"
    if phase == "2":
        cfg |= {
            "load_path": "${checkpoint_dir}/${run_group}/modern-bert-base-phase-0.1/ckpt/latest-rank0.pt",
            "load_weights_only": True,
        }
    if phase == "large-0":
        cfg["init_from_checkpoint"] = {
            "checkpoint_cfg": "${base_model}",
            "checkpoint_load_path": "${checkpoint_dir}",
            "checkpoint_run_name": "hebrew/modern-bert-base-phase-0.1/ckpt",
            "mode": "tile_weights_from_middle",
        }
    if phase != "0.1":
        cfg |= {"spin_dataloaders": False, "autoresume": True}
    return cfg


def climate() -> dict:
    """Continued pre-training of ModernBERT-base on a domain corpus, unpacked, with composer's own keys."""
    cfg = bioclinical(1, "base")
    cfg["run_name"] = "climate-modernbert"
    cfg["train_loader"]["sequence_packing"] = False
    cfg["train_loader"]["dataset"]["streaming"] = False
    del cfg["device_eval_batch_size"]
    cfg |= {"device_eval_microbatch_size": 32, "spin_dataloaders": False, "python_log_level": "info"}
    cfg["algorithms"] = {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0}}
    cfg["callbacks"] = {
        "speed_monitor": {"window_size": 50, "gpu_flops_available": 989e12},
        "lr_monitor": {},
        "dataloader_speed": {},
        "runtime_estimator": {},
        "optimizer_monitor": {"log_optimizer_metrics": True},
    }
    cfg["loggers"] = {"wandb": {"project": "climate", "group": "cpt", "init_kwargs": {"tags": ["mlm"]}}}
    return cfg


def upstream_main(variant: str) -> dict:
    """Upstream's yamls/main/flex-bert-{variant}.yaml: BERT-base-sized FlexBERT ablations."""
    arch = {
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "attention_layer": {"rope-base": "rope", "base": "base"}[variant],
        "attention_probs_dropout_prob": 0.0,
        "embed_norm": False,
        "final_norm": True,
        "embedding_layer": "sans_pos" if variant == "rope-base" else "absolute_pos",
        "mlp_layer": "mlp",
        "normalization": "rmsnorm",
        "norm_kwargs": {"eps": "1e-6"},
        "padding": "unpadded",
        "sparse_prediction": False,
        "hidden_act": "gelu",
        "init_method": "full_megatron",
        "deterministic_fa2": False,
        "num_initial_layers": 0,
        "sliding_window": 128,
        "global_attn_every_n_layers": 3,
        "unpad_embeddings": True,
        "pad_logits": False,
    }
    return {
        "data_local": "./my-copy-c4",
        "data_remote": None,
        "max_seq_len": 512,
        "tokenizer_name": "bert-base-uncased",
        "mlm_probability": 0.3,
        "run_name": f"flex-bert-{variant}",
        "model": {
            "name": "flex_bert",
            "recompute_metric_loss": False,
            "pretrained_model_name": "${tokenizer_name}",
            "tokenizer_name": "${tokenizer_name}",
            "model_config": arch,
        },
        "train_loader": _loader("train", "${mlm_probability}"),
        "eval_loader": _loader("val", 0.15, shuffle=False),
        "scheduler": {"name": "linear_decay_with_warmup", "t_warmup": "0.06dur", "alpha_f": 0.02},
        "optimizer": {
            "name": "decoupled_adamw",
            "lr": 5.0e-4,
            "betas": [0.9, 0.98],
            "eps": 1.0e-06,
            "weight_decay": 1.0e-5,
            "filter_bias_norm_wd": True,
        },
        "max_duration": "286720000sp",
        "eval_interval": "2000ba",
        "global_train_batch_size": 4096,
        "seed": 17,
        "device_train_microbatch_size": 128,
        "precision": "amp_bf16",
        "global_eval_batch_size": 256,
        "device_eval_microbatch_size": 64,
        "progress_bar": False,
        "log_to_console": True,
        "console_log_interval": "1ba",
        "algorithms": {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0}},
        "callbacks": {"speed_monitor": {"window_size": 10}, "lr_monitor": {}},
    }


# ---- CPU overrides: paths, sizes, durations ---------------------------------------------------------------
TINY = {
    "vocab_size": 512,
    "num_hidden_layers": 3,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_attention_heads": 2,
    "sliding_window": 16,
}
TINY_LARGE = {
    **TINY,
    "num_hidden_layers": 4,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
}
SIZE_KEYS = (
    "global_train_batch_size",
    "device_train_microbatch_size",
    "global_eval_batch_size",
    "device_eval_batch_size",
    "device_eval_microbatch_size",
)


def for_cpu(
    cfg: dict, data: Path, tokenizer, *, large: bool = False, batches: int = 3, eval_split="eval", **paths
) -> dict:
    """``cfg`` with paths, sizes and durations for a few CPU batches of a tiny model (and loader workers and
    compilation off: resources, not config reading). ``paths`` sets further path keys (dotted)."""
    cfg = copy.deepcopy(cfg)
    model_config = cfg["model"]["model_config"]
    model_config |= TINY_LARGE if large else TINY
    model_config["compile_model"] = False
    for key in ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id"):
        if key in model_config:  # ids of the tokenizer the run now uses
            name = {"bos_token_id": "cls_token_id", "eos_token_id": "sep_token_id"}.get(key, key)
            model_config[key] = getattr(tokenizer, name)
    if "max_position_embeddings" in model_config:
        model_config["max_position_embeddings"] = 128
    unsplit = cfg["train_loader"]["dataset"]["split"] is None  # data_local is the training split itself
    cfg |= {"data_local": str(data / "train" if unsplit else data), "tokenizer_name": tokenizer.name_or_path}
    cfg["max_seq_len"] = 128
    if "pretrain_data_local" in cfg:
        cfg["pretrain_data_local"] = str(data)
    sizes = {
        "global_train_batch_size": 4,
        "device_train_microbatch_size": 2,
        "global_eval_batch_size": 8,
        "device_eval_batch_size": 8,
        "device_eval_microbatch_size": 4,
    }
    cfg |= {k: sizes[k] for k in SIZE_KEYS if k in cfg}
    for section in ("train_loader", "eval_loader"):
        cfg[section]["num_workers"] = 0
        if cfg[section]["dataset"]["split"] not in (None, "train"):
            cfg[section]["dataset"]["split"] = eval_split
    cfg |= {
        "max_duration": f"{batches}ba",
        "eval_interval": f"{batches}ba",
        "save_interval": f"{batches}ba",
        "console_log_interval": "1ba",
    }
    if "eval_subset_num_batches" in cfg:
        cfg["eval_subset_num_batches"] = 2
    for key in ("t_warmup", "t_decay"):
        value = cfg["scheduler"].get(key)
        if isinstance(value, str) and "${" not in value and not value.endswith("dur"):
            zero = value.replace("_", "").startswith("0")
            cfg["scheduler"][key] = "0ba" if zero else {"t_warmup": "1ba", "t_decay": f"{batches - 1}ba"}[key]
    if "batch_size_warmup_tokens" in cfg["train_loader"]:
        cfg["train_loader"]["batch_size_warmup_tokens"] = "300tok"
    if "packing_efficiency" in cfg.get("callbacks", {}):
        cfg["callbacks"]["packing_efficiency"]["log_interval"] = 1
    for dotted, value in paths.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
