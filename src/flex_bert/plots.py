"""Loss, learning rate and tokens/s of training runs, read from their save folders, drawn to one PNG."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EVAL_LOSS = "metrics/eval/LanguageCrossEntropy"
TOKENS_PER_SEC = "throughput/tokens_per_sec"


@dataclass
class Run:
    label: str
    train: list[dict]
    evals: list[dict]
    mask_rate: float | None  # the training mlm_probability, from the run's config.yaml


def read_run(folder: str | Path, label: str | None = None) -> Run:
    """A save folder's ``metrics.jsonl`` (and ``config.yaml`` for the mask rate); ValueError if it has none."""
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{folder} has no metrics.jsonl: not the save_folder of a training run")
    records = []
    for n, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{metrics}:{n} is not a JSON record") from None
    return Run(
        label=label or folder.name,
        train=[r for r in records if r.get("kind") == "train"],
        evals=[r for r in records if r.get("kind") == "eval" and EVAL_LOSS in r],
        mask_rate=_mask_rate(folder / "config.yaml"),
    )


def _mask_rate(config: Path) -> float | None:
    if not config.is_file():
        return None
    import yaml

    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    try:
        return float(cfg["train_loader"]["dataset"]["mlm_probability"])
    except (KeyError, TypeError, ValueError):
        return None


def plot_runs(runs: list[Run], out: str | Path, end_to_end: bool = False) -> Path:
    """One row of panels (loss, lr, tokens/s), one line per run. ``end_to_end`` lays the runs one after the
    other on the step axis (the phases of one model); otherwise they start together (runs to compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, lr_ax, speed_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    offset = 0
    for run in runs:
        name = run.label + (f" (mask {run.mask_rate:.0%})" if run.mask_rate is not None else "")
        steps = [offset + r["batch"] for r in run.train]
        line = loss_ax.plot(steps, [r.get("loss") for r in run.train], label=f"{name}: train")[0]
        loss_ax.plot(
            [offset + r["batch"] for r in run.evals],
            [r[EVAL_LOSS] for r in run.evals],
            "o",
            color=line.get_color(),
            label=f"{name}: eval",
        )
        lr_ax.plot(steps, [r.get("lr") for r in run.train], color=line.get_color(), label=name)
        speed = [(offset + r["batch"], r[TOKENS_PER_SEC]) for r in run.train if TOKENS_PER_SEC in r]
        speed_ax.plot([s for s, _ in speed], [v for _, v in speed], color=line.get_color(), label=name)
        if end_to_end and run.train:
            offset = steps[-1]
            loss_ax.axvline(offset, color="grey", lw=0.5)
    where = "stages laid end to end" if end_to_end else "from each run's start"
    for ax, ylabel in ((loss_ax, "masked-LM loss"), (lr_ax, "learning rate"), (speed_ax, "tokens/s")):
        ax.set_xlabel(f"optimizer step ({where})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not speed_ax.lines or not any(len(li.get_xdata()) for li in speed_ax.lines):
        speed_ax.text(
            0.5,
            0.5,
            "no tokens/s logged\n(callbacks: speed_monitor)",
            ha="center",
            va="center",
            transform=speed_ax.transAxes,
        )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
