"""The typed config: the seed guide's YAML accepted key for key; mistakes fail early, naming the key."""

from pathlib import Path

import pytest
import yaml

from flex_bert.train.config import load_config
from flex_bert.train.run import dry_run, plan

SEED = "tests/data/seed_phase1.yml"


def test_seed_yaml_is_accepted_key_for_key():
    cfg = load_config([SEED])
    raw = yaml.safe_load(Path(SEED).read_text())
    for key in raw:  # nothing the user wrote is dropped
        assert key in cfg, key
    assert cfg.max_duration == "160_453_000_000tok"
    assert cfg.scheduler.t_max == "160_453_000_000tok"  # ${max_duration} resolved
    assert cfg.train_loader.dataset.local == "data/All_tokenized_mds"
    assert cfg.train_loader.dataset.max_seq_len == 8192
    assert cfg.eval_loader.dataset.mlm_probability == 0.15
    assert cfg.model.model_config["num_hidden_layers"] == 22
    assert cfg.callbacks.log_grad_norm.batch_log_interval == 10


def test_plan_for_the_seed_yaml():
    info = plan(load_config([SEED]))
    assert info["parameters"] == 149_655_232
    assert info["tokens_per_optimizer_step"] == 576 * 8192
    assert info["planned_steps"] == -(-160_453_000_000 // (576 * 8192))


def test_overrides_apply():
    cfg = load_config([SEED], ["max_duration=10ba", "optimizer.lr=1e-4", "train_loader.num_workers=0"])
    assert cfg.max_duration == "10ba" and cfg.scheduler.t_max == "10ba"
    assert cfg.optimizer.lr == 1e-4


@pytest.mark.parametrize(
    "override,match",
    [
        ("max_durration=10ba", "did you mean 'max_duration'"),
        ("optimizer.weight_decya=0.1", "weight_decay"),
        ("train_loader.dataset.shufle=false", "shuffle"),
        ("scheduler.name=one_minus_sqr", "one_minus_sqrt"),
        ("scheduler.t_warmpu=1ba", "t_warmup"),
        ("callbacks.speed_monitr.window_size=3", "speed_monitor"),
        ("train_loader.foo=1", "unknown config key 'train_loader.foo'"),
        (
            "eval_loader.dataset.shufle=false",
            "unknown config key 'eval_loader.dataset.shufle'; did you mean 'shuffle'",
        ),
        ("train_loader.dataset.streams.a.locl=x", "did you mean 'local'"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("optimizer.betas=[0.9,", "cannot read the config"),  # YAML syntax
        ("callbacks.nan_guard=3", "callbacks.nan_guard"),
        ("global_train_batch_size=100", "multiple of"),
        ("precision=bf16", "precision"),
        ("train_loader.dataset.tokenizer_name=other/tok", "differs from tokenizer_name"),
    ],
)
def test_mistakes_fail_naming_the_key(override, match):
    with pytest.raises(ValueError, match=match) as err:  # main.py prints a ValueError as one line
        load_config([SEED], [override])
    assert "\n" not in str(err.value)


def test_unknown_model_config_key_is_an_error_at_load():
    with pytest.raises(ValueError, match="hidden_size"):
        load_config([SEED], ["model.model_config.hiden_size=3"])
    with pytest.raises(ValueError, match=r"mlp_layer='mlp' is not supported"):  # upstream's ablation layers
        load_config([SEED], ["model.model_config.mlp_layer=mlp"])


def test_a_misspelled_model_config_key_names_its_full_key_with_a_close_match():
    """model.model_config is a typed node: the merge itself refuses the key, as for any other section."""
    with pytest.raises(ValueError) as err:
        load_config([SEED], ["model.model_config.hiden_size=3"])
    assert str(err.value) == "unknown config key 'model.model_config.hiden_size'; did you mean 'hidden_size'?"


def test_missing_required_value_is_named(tmp_path):
    raw = yaml.safe_load(Path(SEED).read_text())
    del raw["max_duration"]
    raw["scheduler"]["t_max"] = "1000ba"
    (tmp_path / "c.yml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="missing required config values: max_duration"):
        load_config([str(tmp_path / "c.yml")])


def test_dry_run_turns_epochs_into_tokens_from_the_conversion_stats(tmp_path):
    from flex_bert.data.demo_corpus import write_demo_corpus
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer
    from tests._data_fixtures import run_convert

    files = write_demo_corpus(tmp_path / "corpus", docs_per_domain=20, eval_docs=2)
    train_bpe_tokenizer([files["clinical"]], tmp_path / "tok", vocab_size=300)
    stats = run_convert(files["clinical"], tmp_path / "mds" / "train", tmp_path / "tok")["train"]
    overrides = [f"data_local={tmp_path / 'mds'}", "max_duration=3ep", "scheduler.t_max=1000ba"]
    with pytest.raises(ValueError, match=f"max_duration={3 * stats['tokens']}tok"):
        dry_run([SEED], overrides)


# Every numeric setting, with those of 0 and -1 that are valid for it (stated here, not read from the code):
# -1 means "all" for eval_subset_num_batches and save_num_checkpoints_to_keep (composer deletes every local
# checkpoint with 0); seeds, worker counts, weight decay and the constant lr multiplier may be 0; the lr may
# not (decoupled weight decay divides by max_lr = lr). Floats without an upper bound take a huge finite value
# (HUGE_INT read as a float); weight decay is below 1 (decoupled: the share of the weights removed per step)
# and a timeout fits in a timedelta. Entries: (key, scheduler name or None, valid values).
HUGE_INT, HUGE_FLOAT = str(2**64), "1e400"  # beyond int64; an infinite float
NUMERIC = [
    ("max_seq_len", None, ()),
    ("mlm_probability", None, ()),
    ("eval_subset_num_batches", None, (-1,)),
    ("global_train_batch_size", None, ()),
    ("global_eval_batch_size", None, ()),
    ("device_eval_batch_size", None, ()),
    ("device_eval_microbatch_size", None, ()),
    ("train_subset_num_batches", None, (-1,)),
    ("device_train_microbatch_size", None, ()),
    ("seed", None, (0,)),
    ("save_num_checkpoints_to_keep", None, (-1,)),
    ("dist_timeout", None, ()),
    ("train_loader.num_workers", None, (0,)),
    ("train_loader.packing_buffer_docs", None, ()),
    ("train_loader.prefetch_factor", None, ()),
    ("train_loader.batch_size_warmup_min_size", None, ()),
    ("train_loader.dataset.max_seq_len", None, ()),
    ("train_loader.dataset.mlm_probability", None, ()),
    ("train_loader.dataset.shuffle_seed", None, (0,)),
    ("train_loader.dataset.eval_seed", None, (0,)),
    ("train_loader.dataset.streams.a.proportion", None, (HUGE_INT,)),
    ("train_loader.dataset.streams.a.repeat", None, (HUGE_INT,)),
    ("eval_loader.num_workers", None, (0,)),
    ("eval_loader.dataset.mlm_probability", None, ()),
    ("optimizer.lr", None, (HUGE_INT,)),
    ("optimizer.eps", None, (HUGE_INT,)),
    ("optimizer.weight_decay", None, (0,)),
    ("scheduler.alpha", "constant_with_warmup", (0, HUGE_INT)),
    ("scheduler.alpha_f", "warmup_stable_decay", (0,)),
    ("scheduler.alpha_f", "one_minus_sqrt", (0,)),
    ("scheduler.alpha_f", "cosine_with_warmup", (0,)),
    ("scheduler.alpha_f", "linear_decay_with_warmup", (0,)),
    ("scheduler.alpha_i", "linear_decay_with_warmup", (0, HUGE_INT)),
    ("callbacks.speed_monitor.window_size", None, ()),
    ("callbacks.speed_monitor.gpu_flops_available", None, (HUGE_INT,)),
    ("callbacks.optimizer_monitor.batch_log_interval", None, ()),
    ("callbacks.runtime_estimator.skip_batches", None, (0,)),
    ("callbacks.scheduled_gc.batch_interval", None, ()),
    ("callbacks.log_grad_norm.batch_log_interval", None, ()),
    ("callbacks.packing_efficiency.log_interval", None, ()),
    ("callbacks.nan_guard.max_consecutive_skips", None, ()),
    ("callbacks.progress.every_seconds", None, (0, HUGE_INT)),
    ("callbacks.torch_profile.start_batch", None, ()),
    ("callbacks.torch_profile.num_batches", None, ()),
]


@pytest.mark.parametrize("key,scheduler,valid", NUMERIC, ids=[f"{k}-{s}" if s else k for k, s, _ in NUMERIC])
def test_numeric_settings_are_range_checked_at_load_in_one_line(key, scheduler, valid):
    context = [f"scheduler.name={scheduler}"] if scheduler else []
    if ".streams." in key:
        context.append("train_loader.dataset.streams.a.local=somewhere")
    for value in ("0", "-1", HUGE_INT, HUGE_FLOAT, "abc", "nan"):
        override = f"{key}={value}"
        if value in map(str, valid):
            load_config([SEED], [*context, override])
            continue
        with pytest.raises(ValueError) as err:
            load_config([SEED], [*context, override])
        message = str(err.value)
        assert "\n" not in message and key in message, (override, message)


def _numeric_fields(cls, prefix: str):
    import dataclasses
    import typing

    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        nested = [a for a in typing.get_args(hint) or [hint] if dataclasses.is_dataclass(a)]
        key = f"{prefix}{f.name}"
        if nested:
            yield from _numeric_fields(nested[0], f"{key}.")
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            yield from _numeric_fields(typing.get_args(hint)[1], f"{key}.a.")
        elif {int, float} & {*typing.get_args(hint), hint}:
            yield key, f.metadata.get("rule")


def test_every_numeric_setting_declares_its_range_and_is_in_the_table_above():
    from flex_bert.train.callbacks import CALLBACKS
    from flex_bert.train.config import TrainConfig
    from flex_bert.train.schedulers import SCHEDULERS

    rules = dict(_numeric_fields(TrainConfig, ""))
    for s in SCHEDULERS.values():
        rules.update(_numeric_fields(s, "scheduler."))
    for n, s in CALLBACKS.items():
        rules.update(_numeric_fields(s, f"callbacks.{n}."))
    assert [k for k, rule in rules.items() if rule is None] == []
    found = {
        k for k in rules if not (k.startswith("eval_loader.") and k.replace("eval_", "train_", 1) in rules)
    }
    assert found - {k for k, _, _ in NUMERIC} == {"optimizer.betas"}  # a list: tested below


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.betas=[1.0,0.98]"],
        ["optimizer.betas=[0.9,-0.1]"],
        ["optimizer.betas=[0.9]"],
        ["optimizer.betas=[0.9,abc]"],
        ["device=tpu"],
        ["callbacks.nan_guard.action=ignore"],
    ],
)
def test_optimizer_betas_and_choices_are_checked_at_load(overrides):
    key = overrides[0].split("=")[0]
    with pytest.raises(ValueError, match=key) as err:
        load_config([SEED], overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["save_interval=0ba"],  # would never save
        ["eval_interval=0ba"],  # would never evaluate
        ["eval_interval=-10ba"],
        ["save_interval=often"],
        ["save_interval=10"],  # no unit
        ["console_log_interval=0ba"],
        ["console_log_interval=100tok"],  # composer's console logger counts batches or epochs
        ["max_duration=0tok"],
        ["max_duration=1.5ba"],
        ["max_duration=0.5dur"],
        ["scheduler.t_warmup=ten"],
        ["scheduler.t_warmup=-1ba"],
        ["scheduler.t_max=0ba"],
        ["scheduler.name=warmup_stable_decay", "scheduler.t_decay=1.5ba"],
    ],
)
def test_time_strings_are_parsed_at_load_and_zero_intervals_refused(overrides):
    key = overrides[-1].split("=")[0]
    with pytest.raises(ValueError, match=key) as err:
        load_config([SEED], overrides)
    assert "\n" not in str(err.value)


def test_valid_time_strings_load():
    cfg = load_config([SEED], ["save_interval=0.25dur", "eval_interval=1ep", "scheduler.t_warmup=0.1dur"])
    assert cfg.save_interval == "0.25dur"


@pytest.mark.parametrize(
    "override,key",
    [
        ("device_train_microbatch_size=0", "device_train_microbatch_size"),  # a ZeroDivisionError
        ("train_loader.foo=1", "train_loader.foo"),  # omegaconf's KeyError
    ],
)
def test_main_dry_run_refuses_bad_settings_in_one_line(override, key):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    cmd = [sys.executable, "main.py", SEED, override, "--dry_run"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and key in last, proc.stderr
