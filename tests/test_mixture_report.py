"""The per-stream report of the training data: printed lines and `data/samples/<stream>` metrics.

The metrics are checked against which samples were really packed: every document of every batch is
recovered from its tokens (masked positions from the labels) and looked up in the MDS folders it came from.
"""

import re
from collections import Counter

import numpy as np
import pytest
import torch
from composer.core import Callback

from flex_bert.data.merge import read_conversion_stats
from flex_bert.train import run
from tests._data_fixtures import read_mds
from tests._train_fixtures import read_metrics, tiny_mds, tiny_yaml  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
NAMES = ("clinical", "finance")


class PackedStreams(Callback):
    """Per batch: how many samples of each stream the batches so far held, from the batches' own tokens."""

    def __init__(self, origin: dict[tuple, str]):
        self.origin = origin
        self.seen: Counter = Counter()
        self.per_batch: list[dict] = []

    def after_dataloader(self, state, logger) -> None:
        batch = state.batch
        tokens = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"]).numpy()
        for row, lengths in zip(tokens, batch["doc_lengths"]):
            for doc in np.split(row[: sum(lengths)], np.cumsum(lengths)[:-1]):
                self.seen[self.origin[tuple(doc.tolist())]] += 1
        self.per_batch.append(dict(self.seen))


def _origin(folders: dict[str, object]) -> dict[tuple, str]:
    """Sample tokens -> the stream holding them (no sample is in two streams of the tiny corpus)."""
    out: dict[tuple, str] = {}
    for name, folder in folders.items():
        for ids in read_mds(folder):
            assert out.setdefault(tuple(ids.tolist()), name) == name
    return out


def _train(monkeypatch, yaml_path, origin) -> PackedStreams:
    recorder = PackedStreams(origin)
    build = run.build_callbacks
    with monkeypatch.context() as patch:
        patch.setattr(run, "build_callbacks", lambda *args: [*build(*args), recorder])
        run.train([str(yaml_path)], [])
    return recorder


def _logged(folder, names=NAMES) -> list[dict]:
    return [
        {n: r[f"data/samples/{n}"] for n in names if r[f"data/samples/{n}"]} for r in read_metrics(folder)
    ]


def _stream_lines(out: str, epoch: int) -> dict[str, re.Match]:
    """The printed line of each stream at the start of `epoch`."""
    block = out.split(f"training data, epoch {epoch}")[1]
    pattern = r"\n  (\w+): ([\d,]+) samples \(([\d.]+)% of the epoch; ([^)]*)\), (about )?([\d,]+) tokens"
    return {m.group(1): m for m in re.finditer(pattern, block)}


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_proportions_printed_and_counted(tiny_mds, tmp_path, monkeypatch, capsys):  # noqa: F811
    folders = {n: tiny_mds["data"] / "train" / n for n in NAMES}
    streams = {"clinical": {"local": str(folders["clinical"]), "proportion": 0.8}}
    streams["finance"] = {"local": str(folders["finance"]), "proportion": 0.2}
    y = tiny_yaml(
        tiny_mds, tmp_path, "mix", max_duration="6ba", save_interval="6ba", eval_interval="6ba",
        **{"train_loader.dataset.streams": streams},
    )  # fmt: skip
    recorder = _train(monkeypatch, y, _origin(folders))
    assert _logged(tmp_path / "mix") == recorder.per_batch
    assert set(recorder.per_batch[-1]) == set(NAMES), "six shuffled batches hold both streams"

    stats = {n: read_conversion_stats(f) for n, f in folders.items()}
    epoch = sum(s["samples"] for s in stats.values())  # relative weights: an epoch as long as the data
    lines = _stream_lines(capsys.readouterr().out, 0)
    for name, configured in (("clinical", 0.8), ("finance", 0.2)):
        m = lines[name]
        chosen = _int(m.group(2))
        assert abs(chosen - configured * epoch) < 1, "streaming's rounding: at most one sample off"
        assert m.group(3) == f"{100 * chosen / epoch:.1f}" and m.group(4) == f"configured {configured:.1%}"
        share = chosen / stats[name]["samples"]  # 1.6 and 0.4 copies: a random part of one copy
        assert m.group(5) == "about " and _int(m.group(6)) == pytest.approx(
            share * stats[name]["tokens"], 0.01
        )


def test_single_split_one_line(tiny_mds, tmp_path, monkeypatch, capsys):  # noqa: F811
    folders = {n: tiny_mds["data"] / "train" / n for n in NAMES}
    y = tiny_yaml(tiny_mds, tmp_path, "one", max_duration="2ba", save_interval="2ba", eval_interval="2ba")
    recorder = _train(monkeypatch, y, _origin(folders))
    stats = [read_conversion_stats(f) for f in folders.values()]
    samples, tokens = sum(s["samples"] for s in stats), sum(s["tokens"] for s in stats)
    out = capsys.readouterr().out
    assert f"training data, epoch 0: train: {samples:,} samples, {tokens:,} tokens\n" in out
    total = [sum(seen.values()) for seen in recorder.per_batch]
    assert [r["data/samples/train"] for r in read_metrics(tmp_path / "one")] == total


def test_counts_across_epochs_a_resume_and_a_new_phase(tiny_mds, tmp_path, monkeypatch, capsys):  # noqa: F811
    folders = {n: tiny_mds["data"] / "train" / n for n in NAMES}
    streams = {n: {"local": str(f), "repeat": r} for (n, f), r in zip(folders.items(), (0.2, 0.05))}
    common = {"eval_loader": None, "train_loader.dataset.streams": streams}
    y = tiny_yaml(tiny_mds, tmp_path, "whole", max_duration="22ba", save_interval="10ba", **common)
    recorder = _train(monkeypatch, y, _origin(folders))
    logged = _logged(tmp_path / "whole")
    assert logged == recorder.per_batch
    out = capsys.readouterr().out
    for epoch in (0, 1):  # 22 batches cross into the second epoch (92 samples, ~19 batches)
        lines = _stream_lines(out, epoch)
        for name, repeat in (("clinical", 0.2), ("finance", 0.05)):
            available = read_conversion_stats(folders[name])["samples"]
            assert _int(lines[name].group(2)) == int(repeat * available)  # streaming: int(repeat x samples)
            assert lines[name].group(4) == f"configured repeat {repeat:g}"

    checkpoint = str(tmp_path / "whole" / "ep0-ba10-rank0.pt")
    y = tiny_yaml(tiny_mds, tmp_path, "continued", max_duration="22ba", load_path=checkpoint, **common)
    run.train([str(y)], [])
    assert _logged(tmp_path / "continued") == logged[10:], "a resumed run continues its counts"
    assert "training data, epoch 0 (resuming at sample " in capsys.readouterr().out

    y = tiny_yaml(
        tiny_mds, tmp_path, "phase", max_duration="2ba", load_path=checkpoint, reset_time=True, **common
    )
    run.train([str(y)], [])
    assert _logged(tmp_path / "phase") == logged[:2], "a new phase reads the data from its start again"
