"""Upstream, BioClinical and community YAMLs run as written: a config of each one's shape (same keys and
structure, tests/_config_shapes.py) trains 3 batches of a tiny model on the CPU with only its paths, sizes and
durations changed. The phases run in one working directory, so each later phase loads the checkpoint its
YAML names (upstream's ``checkpoints/{pretrain_run_name}/latest-rank0.pt``, a tiled ``init_from_checkpoint``)."""

import math
from pathlib import Path

import pytest

from flex_bert.train.config import load_config
from flex_bert.train.run import dry_run, train
from tests import _config_shapes as shapes
from tests._train_fixtures import read_metrics, tiny_mds  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tokenizer(tiny_mds):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_mds["tokenizer"]))


@pytest.fixture(scope="module")
def data(tiny_mds):  # noqa: F811
    return tiny_mds["data"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("upstream")


@pytest.fixture(scope="module")
def run_in(workdir):
    """Train a config in the shared working directory; returns the trainer and its train records."""

    def run(cfg: dict):
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(workdir)
            mp.setenv("WANDB_MODE", "offline")
            mp.setenv("WANDB_DIR", str(workdir))
            mp.setenv("WANDB_SILENT", "true")
            path = shapes.write(cfg, workdir / f"{cfg['run_name']}.yaml")
            trainer = train([str(path)], [])
            trainer.close()
            folder = load_config([str(path)]).save_folder.format(run_name=cfg["run_name"])
        records = read_metrics(workdir / folder, kind=None)
        train_records = [r for r in records if r["kind"] == "train"]
        assert [r["batch"] for r in train_records] == [1, 2, 3]
        assert all(math.isfinite(r["loss"]) for r in train_records)
        assert [r for r in records if r["kind"] == "eval"], "evaluated"
        return trainer, train_records

    return run


@pytest.fixture(scope="module")
def base_pretrain(run_in, data, tokenizer):
    """Upstream's modernbert-base-pretrain shape: batch-size warmup, warmup-stable-decay, 1024 context."""
    return run_in(shapes.for_cpu(shapes.modernbert("pretrain", "base"), data, tokenizer))


@pytest.fixture(scope="module")
def large_pretrain(base_pretrain, run_in, data, tokenizer):
    """Upstream's modernbert-large-pretrain shape: ModernBERT-large tiled from the base checkpoint."""
    cfg = shapes.for_cpu(shapes.modernbert("pretrain", "large"), data, tokenizer, large=True)
    return run_in(cfg)


def test_upstream_pretrain_shape_warms_the_batch_size_up(base_pretrain):
    trainer, records = base_pretrain
    # packing_efficiency logs real tokens / slots of each batch; a row is 2 x 128 slots
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *records], records)]
    rows = [round(t / r["train/packing_efficiency"] / 256) for t, r in zip(tokens, records)]
    # upstream's schedule, 1 row (batch_size_warmup_min_size = device_train_microbatch_size) up to 2 over 300
    # real tokens: [1] has the whole warmup, so the batch grows once 300 tokens have been trained
    seen = [sum(tokens[:i]) for i in range(3)]
    assert rows == [1 if s < 300 else 2 for s in seen] and rows[0] == 1 and rows[-1] == 2, (rows, seen)
    # left out, the local layers' rotary base follows rotary_emb_base (upstream's default): 10000 here
    assert trainer.state.model.config.local_rope_theta == 10000.0


def test_upstream_large_pretrain_shape_starts_from_the_tiled_base(large_pretrain):
    trainer, _ = large_pretrain
    model = trainer.state.model.model
    assert model.config.hidden_size == shapes.TINY_LARGE["hidden_size"]
    assert model.decoder.weight is model.bert.embeddings.tok_embeddings.weight


@pytest.fixture(scope="module")
def bioclinical_phase1(base_pretrain, large_pretrain, run_in, workdir, data, tokenizer):
    """The BioClinical phase 1 shape of a size, from upstream's pre-training shape's checkpoint; run once."""
    runs = {}

    def phase1(size: str):
        if size not in runs:
            load = str(workdir / "checkpoints" / f"modernbert-{size}-pretrain" / "latest-rank0.pt")
            cfg = shapes.for_cpu(
                shapes.bioclinical(1, size), data, tokenizer, large=size == "large", load_path=load
            )
            runs[size] = (*run_in(cfg), cfg)
        return runs[size]

    return phase1


def test_bioclinical_phase1_base_shape(bioclinical_phase1):
    trainer, records, _ = bioclinical_phase1("base")
    assert all(r["lr"] == pytest.approx(3e-4) for r in records), "restart_override: the YAML's lr"


def test_bioclinical_phase1_large_shape_evaluates_in_micro_batches(bioclinical_phase1):
    trainer, _, cfg = bioclinical_phase1("large")
    evaluator = trainer.state.evaluators[0]
    # upstream: global_eval_batch_size / GPUs documents per batch, in micro-batches of device_eval_microbatch_size
    assert evaluator.dataloader.dataloader.batch_size == cfg["global_eval_batch_size"]
    assert evaluator.device_eval_microbatch_size == cfg["device_eval_microbatch_size"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("size", ["base", "large"])
def test_upstream_context_extension_and_decay_shapes(
    size,
    base_pretrain,
    large_pretrain,
    run_in,
    data,
    tokenizer,
):
    for phase in ("context-extension", "learning-rate-decay"):
        cfg = shapes.modernbert(phase, size)
        trainer, records = run_in(shapes.for_cpu(cfg, data, tokenizer, large=size == "large"))
        assert trainer.state.model.config.local_rope_theta == 10000.0
        assert trainer.state.model.config.rotary_emb_base == 160000.0


@pytest.mark.slow
@pytest.mark.parametrize("size", ["base", "large"])
def test_bioclinical_phase2_shapes(size, bioclinical_phase1, run_in, data, tokenizer):
    bioclinical_phase1(size)
    cfg = shapes.for_cpu(shapes.bioclinical(2, size), data, tokenizer, large=size == "large")
    _, records = run_in(cfg)  # loads checkpoints/phase1_<size>_clinical/latest-rank0.pt as written
    assert records[-1]["lr"] < records[0]["lr"], "one_minus_sqrt decays"


@pytest.mark.slow
def test_hebrew_shapes(run_in, workdir, data, tokenizer):
    cfg = shapes.for_cpu(shapes.hebrew("0.1"), data, tokenizer, load_path=None)
    trainer, _ = run_in(cfg)
    config = trainer.state.model.config
    assert config.local_rope_theta == 10000.0 and config.rotary_emb_base == 160000.0  # rotary_emb_base_local
    assert [type(a).__name__ for a in trainer.state.algorithms] == ["GradientClipping"]
    first = workdir / "checkpoints" / "hebrew" / "modern-bert-base-phase-0.1" / "ckpt" / "latest-rank0.pt"
    assert first.exists()
    cfg = shapes.for_cpu(shapes.hebrew("2"), data, tokenizer, load_path=str(first))
    run_in(cfg)
    large = shapes.for_cpu(shapes.hebrew("large-0"), data, tokenizer, large=True)
    large["base_model"]["model_config"] |= {**shapes.TINY, "pad_token_id": tokenizer.pad_token_id}
    large["base_model"]["model_config"] |= {
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    trainer, _ = run_in(large)
    assert trainer.state.model.config.num_hidden_layers == shapes.TINY_LARGE["num_hidden_layers"]


def test_climate_shape_unpacked_with_composer_keys(base_pretrain, run_in, workdir, data, tokenizer):
    load = str(workdir / "checkpoints" / "modernbert-base-pretrain" / "latest-rank0.pt")
    cfg = shapes.for_cpu(shapes.climate(), data, tokenizer, load_path=load)
    trainer, records = run_in(cfg)
    assert "throughput/batch_serve_time_ms" in records[0], "the dataloader_speed callback"
    assert trainer.spin_dataloaders is False
    assert [type(a).__name__ for a in trainer.state.algorithms] == ["GradientClipping"]


@pytest.mark.parametrize("variant", ["rope-base", "base"])
def test_upstream_main_ablation_shapes_are_refused_at_load_in_one_line(
    variant,
    tmp_path,
    data,
    tokenizer,
):
    cfg = shapes.for_cpu(shapes.upstream_main(variant), data, tokenizer)
    path = shapes.write(cfg, tmp_path / "c.yml")
    with pytest.raises(ValueError, match="is not supported") as err:
        dry_run([str(path)], [])
    assert "\n" not in str(err.value) and "model_config" in str(err.value)


def test_mosaic_and_hf_bert_configs_are_refused_in_one_line(tmp_path):
    cfg = shapes.upstream_main("rope-base")
    cfg["model"] = {
        "name": "mosaic_bert",
        "use_pretrained": True,
        "pretrained_model_name": "bert-base-uncased",
    }
    path = shapes.write(cfg, tmp_path / "c.yml")
    with pytest.raises(
        ValueError, match="model.name 'mosaic_bert' is not supported: this recipe trains FlexBERT"
    ):
        load_config([str(path)])


def _keys(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()))


def test_phase1_large_yaml_is_the_bioclinical_large_yaml_key_for_key():
    import yaml

    ours = yaml.safe_load((Path(__file__).parents[1] / "yamls" / "phase1_large.yml").read_text())
    theirs = shapes.bioclinical(1, "large")
    assert _keys(ours) == _keys(theirs)
    for key in ("seed", "global_train_batch_size", "global_eval_batch_size", "device_eval_microbatch_size"):
        assert ours[key] == theirs[key], key
