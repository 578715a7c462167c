"""Training end to end on CPU: a from-scratch step 0, phase 1 from its checkpoint (reset_time,
restart_override), phase 2 with the 1-sqrt decay; the loss falls; an upstream-layout checkpoint restores."""

import math

import pytest
import torch

from flex_bert.train.run import train
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml, write_code_running_checkpoint  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def phases(tiny_mds, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("phases")
    step0 = tiny_yaml(
        tiny_mds,
        tmp,
        "step0",
        max_duration="40ba",
        save_interval="20ba",
        **{"optimizer.lr": 3e-3, "scheduler.t_warmup": "5ba"},
    )
    train([str(step0)], [])
    phase1 = tiny_yaml(
        tiny_mds,
        tmp,
        "phase1",
        load_path=str(tmp / "step0" / "latest-rank0.pt"),
        reset_time=True,
        restart_override=True,
        **{"optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-4, "scheduler.t_warmup": "0ba"},
    )
    trainer1 = train([str(phase1)], [])
    phase2 = tiny_yaml(
        tiny_mds,
        tmp,
        "phase2",
        load_path=str(tmp / "phase1" / "latest-rank0.pt"),
        reset_time=True,
        restart_override=True,
        mlm_probability=0.15,
        max_duration="10ba",
        scheduler={"name": "one_minus_sqrt", "t_decay": "10ba", "t_max": "10ba", "alpha_f": 0.001},
        **{"optimizer.lr": 1e-3},
    )
    train([str(phase2)], [])
    return tmp, trainer1


def test_step0_loss_falls(phases):
    tmp, _ = phases
    losses = [r["loss"] for r in read_metrics(tmp / "step0")]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses


def test_phase1_resets_time_and_overrides_lr_and_weight_decay(phases):
    tmp, trainer1 = phases
    recs = read_metrics(tmp / "phase1")
    assert [r["batch"] for r in recs] == list(range(1, 13)), "reset_time: batches count from zero again"
    assert all(r["lr"] == pytest.approx(1e-3) for r in recs), "restart_override: the YAML's lr, constant"
    groups = trainer1.state.optimizers[0].param_groups
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == pytest.approx(1e-4)
    assert groups[1]["max_lr"] == pytest.approx(3e-3), "upstream semantics: max_lr stays the checkpoint's"
    assert int(groups[1]["step"]) == 40 + 12, "optimizer moments and step count were restored, not reset"


def test_phase2_follows_one_minus_sqrt(phases):
    tmp, _ = phases
    recs = read_metrics(tmp / "phase2")
    lrs = [r["lr"] for r in recs]
    # composer steps the scheduler before advancing time: the lr used at batch b is the value at b-1
    expected = [1e-3 * (0.001 + 0.999 * (1 - math.sqrt(b / 10))) for b in range(0, 10)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_eval_loss_improves_across_phases(phases):
    tmp, _ = phases
    first = read_metrics(tmp / "step0", "eval")[-1]["metrics/eval/LanguageCrossEntropy"]
    last = read_metrics(tmp / "phase2", "eval")[-1]["metrics/eval/LanguageCrossEntropy"]
    assert last < first


def _upstream_layout(ckpt: dict) -> dict:
    """Rewrite a checkpoint of ours into the layout of the official runs (torch-optimi 0.2.1, their callbacks)."""
    state = ckpt["state"]
    for group in state["optimizers"]["StableAdamW"]["param_groups"]:
        for key in ("triton", "setup", "gradient_release"):
            group.pop(key, None)
    state["callbacks"] = {
        "SpeedMonitor": {},
        "LRMonitor": {},
        "OptimizerMonitor": {},
        "DataloaderSpeedMonitor": {},
        "ScheduledGarbageCollector": {},
    }
    state["dataset_state"] = {"train": {"epoch": 3, "sample_in_epoch": 1234}}
    state["algorithms"] = []
    return ckpt


def test_upstream_layout_checkpoint_restores_like_ours(phases, tiny_mds, tmp_path):  # noqa: F811
    tmp, _ = phases
    ours = tmp / "step0" / "latest-rank0.pt"
    theirs = tmp_path / "upstream.pt"
    ckpt = torch.load(ours, weights_only=False)
    torch.save(_upstream_layout(ckpt), theirs)
    runs = {}
    for label, path in (("ours", ours), ("upstream", theirs)):
        y = tiny_yaml(
            tiny_mds,
            tmp_path,
            f"from_{label}",
            load_path=str(path),
            reset_time=True,
            restart_override=True,
            max_duration="3ba",
            eval_interval="3ba",
            save_interval="3ba",
        )
        trainer = train([str(y)], [])
        runs[label] = (trainer, [r["loss"] for r in read_metrics(tmp_path / f"from_{label}")])
    assert runs["ours"][1] == runs["upstream"][1], "same losses from either layout"
    p_ours = dict(runs["ours"][0].state.model.named_parameters())
    for name, p in runs["upstream"][0].state.model.named_parameters():
        assert torch.equal(p, p_ours[name]), name
    opt = runs["upstream"][0].state.optimizers[0]
    assert all(g["setup"] for g in opt.param_groups) and int(opt.param_groups[1]["step"]) == 40 + 3


def test_load_path_never_runs_code_from_a_pickle(tiny_mds, tmp_path):  # noqa: F811
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    write_code_running_checkpoint(evil, target)
    y = tiny_yaml(tiny_mds, tmp_path, "evil", load_path=str(evil))
    with pytest.raises(ValueError, match="trust_checkpoint"):
        train([str(y)], [])
    assert not target.exists()


def test_truncated_checkpoint_is_an_error_naming_the_file(phases, tiny_mds, tmp_path):  # noqa: F811
    tmp, _ = phases
    data = (tmp / "step0" / "latest-rank0.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    y = tiny_yaml(tiny_mds, tmp_path, "broken", load_path=str(broken))
    with pytest.raises(ValueError, match="broken.pt"):
        train([str(y)], [])


def test_training_refuses_data_of_another_tokenizer_or_longer_samples(tiny_mds, tmp_path):  # noqa: F811
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    other = tmp_path / "other_tok"
    train_bpe_tokenizer([tiny_mds["root"] / "corpus" / "finance.csv"], other, vocab_size=300)
    y = tiny_yaml(tiny_mds, tmp_path, "other", tokenizer_name=str(other))
    with pytest.raises(ValueError, match="not with the training tokenizer"):
        train([str(y)], [])
    y = tiny_yaml(tiny_mds, tmp_path, "short", max_seq_len=64)
    with pytest.raises(ValueError, match="--max_seq_len 64"):
        train([str(y)], [])


def test_weighted_mixture_from_the_yaml(tiny_mds, tmp_path):  # noqa: F811
    train_dir = tiny_mds["data"] / "train"
    streams = {
        "clinical": {"local": str(train_dir / "clinical"), "proportion": 0.8},
        "finance": {"local": str(train_dir / "finance"), "proportion": 0.2},
    }
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "mix",
        max_duration="4ba",
        eval_interval="4ba",
        save_interval="4ba",
        **{"train_loader.dataset.streams": streams},
    )
    train([str(y)], [])
    assert len(read_metrics(tmp_path / "mix")) == 4
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "mix_bad",
        **{
            "train_loader.dataset.streams": {
                "clinical": {"local": str(train_dir / "clinical"), "proportoin": 0.8}
            }
        },
    )
    with pytest.raises(Exception, match="proportion"):
        train([str(y)], [])


def test_epoch_durations_are_refused_with_the_token_count(tiny_mds, tmp_path):  # noqa: F811
    y = tiny_yaml(tiny_mds, tmp_path, "ep", max_duration="2ep")
    with pytest.raises(ValueError, match=r"max_duration=\d+tok \(2 x the [\d,]+ tokens"):
        train([str(y)], [])


def test_tapt_style_run_whole_words_across_epochs(tiny_mds, tmp_path):  # noqa: F811
    """Several epochs (given in tokens), evaluation and checkpoints every epoch, whole-word masking."""
    from flex_bert.data.merge import read_conversion_stats

    train_dir = tiny_mds["data"] / "train"
    tokens = sum(read_conversion_stats(train_dir / n)["tokens"] for n in ("clinical", "finance"))
    y = tiny_yaml(
        tiny_mds,
        tmp_path,
        "tapt",
        max_duration=f"{int(2.5 * tokens)}tok",
        eval_interval="1ep",
        save_interval="1ep",
        **{"train_loader.dataset.whole_word_mask": True, "scheduler.t_warmup": "0tok"},
    )
    trainer = train([str(y)], [])
    assert int(trainer.state.timestamp.epoch) == 2
    evals = [r for r in read_metrics(tmp_path / "tapt", "eval")]
    assert len(evals) >= 2
    assert sorted(p.name for p in (tmp_path / "tapt").glob("ep*-rank0.pt"))[:2] == sorted(
        f"ep{e}-ba{b}-rank0.pt" for e, b in [(1, evals[0]["batch"]), (2, evals[1]["batch"])]
    )
