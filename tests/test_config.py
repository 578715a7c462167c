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
        ("optimizer.lr=fast", "lr"),
        ("global_train_batch_size=100", "multiple of"),
        ("precision=bf16", "precision"),
        ("train_loader.dataset.tokenizer_name=other/tok", "differs from tokenizer_name"),
    ],
)
def test_mistakes_fail_naming_the_key(override, match):
    with pytest.raises(Exception, match=match):
        load_config([SEED], [override])


def test_unknown_model_config_key_is_an_error():
    from flex_bert.train.builders import build_model_config

    class Tok:
        pad_token_id, cls_token_id, sep_token_id, mask_token_id = 50283, 50281, 50282, 50284

        def __len__(self):
            return 50280

    cfg = load_config([SEED], ["model.model_config.hiden_size=3"])
    with pytest.raises(ValueError, match="hidden_size"):
        build_model_config(cfg, Tok())


def test_missing_required_value_is_named(tmp_path):
    raw = yaml.safe_load(Path(SEED).read_text())
    del raw["max_duration"]
    raw["scheduler"]["t_max"] = "1000ba"
    (tmp_path / "c.yml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="missing required config values: max_duration"):
        load_config([str(tmp_path / "c.yml")])


def test_dry_run_turns_epochs_into_tokens_from_the_conversion_stats(tmp_path):
    from flex_bert.data.demo_corpus import build_tiny_tokenizer, write_demo_corpus
    from tests._data_fixtures import run_convert

    files = write_demo_corpus(tmp_path / "corpus", docs_per_domain=20, eval_docs=2)
    build_tiny_tokenizer([files["clinical"]], tmp_path / "tok", vocab_size=300)
    stats = run_convert(files["clinical"], tmp_path / "mds" / "train", tmp_path / "tok")["train"]
    overrides = [f"data_local={tmp_path / 'mds'}", "max_duration=3ep", "scheduler.t_max=1000ba"]
    with pytest.raises(ValueError, match=f"max_duration={3 * stats['tokens']}tok"):
        dry_run([SEED], overrides)
