"""The downstream ablation: fine-tune N starting points x S seeds on one task, then one table.

    out/cells/<model>-seed<s>/{best.pt, result.json}   one fine-tuning run per cell (train/finetune.py)
    out/ablation.md, out/ablation.json, out/ablation.png  written once every cell is done

A cell whose result.json exists is not run again (the ablation resumes after a crash), provided it was made
with the same resolved task file; otherwise the ablation refuses, naming the keys that differ. Every model is
compared with the first: the mean and std over seeds of the per-seed difference (seed s against seed s), and
a paired bootstrap over the evaluation examples (task_eval.paired_bootstrap) giving a 95% interval and p.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flex_bert.task_eval import METRICS, paired_bootstrap

SIGNIFICANT = 0.05  # p below this gets a `*` in the table


def cell_config(task_files: list[str], overrides: list[str], start: str, seed: int, folder: Path):
    from flex_bert.train.finetune_config import load_finetune_config

    return load_finetune_config(
        task_files, [*overrides, f"start={start}", f"seed={seed}", f"save_folder={folder}"]
    )


def _finished(folder: Path, config: dict) -> dict | None:
    """The cell's result if it is complete and was made with `config`; None if it has not finished."""
    path = folder / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if not result.get("complete"):
        return None
    differ = sorted(
        k for k in config.keys() | result["config"].keys() if config.get(k) != result["config"].get(k)
    )
    if differ:
        raise ValueError(
            f"{path} was made with another task file (keys {differ} differ): use another --out, or delete it"
        )
    return result


def run_cells(
    models: dict[str, str], task_files: list[str], overrides: list[str], out: Path, seeds: list[int]
):
    """{model: [result per seed]}: each missing cell fine-tuned, each finished one read back."""
    from omegaconf import OmegaConf

    from flex_bert.train.finetune import finetune

    results: dict[str, list[dict]] = {}
    for name, start in models.items():
        for seed in seeds:
            folder = out / "cells" / f"{name}-seed{seed}"
            cfg = cell_config(task_files, overrides, start, seed, folder)
            done = _finished(folder, OmegaConf.to_container(cfg, resolve=True))
            print(
                f"== {name}, seed {seed}: {'finished earlier, not re-run' if done else 'fine-tuning'}",
                flush=True,
            )
            results.setdefault(name, []).append(done or finetune(cfg))
    return results


def _mean_std(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "values": values}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": values}


def summarize(results: dict[str, list[dict]], models: dict[str, str], resamples: int = 2000) -> dict:
    """Mean +- std per model, and per-seed and bootstrap differences to the first model."""
    first = next(iter(results))
    ref = results[first][0]
    for name, cells in results.items():
        for r in cells:
            if r["predictions"]["truth"] != ref["predictions"]["truth"] or r["labels"] != ref["labels"]:
                raise ValueError(
                    f"{name}, seed {r['seed']} was scored on other examples or labels than {first}"
                )
    labels, task = ref["labels"], ref["task"]
    summary = {
        "task": task,
        "labels": labels,
        "reported_split": ref["reported_split"],
        "items": ref["scores"]["items"],
        "seeds": [r["seed"] for r in results[first]],
        "models": {},
        "vs_first": {},
    }
    for name, cells in results.items():
        row = {m: _mean_std([r["scores"][m] for r in cells]) for m in METRICS}
        row["per_class_f1"] = {
            lab: _mean_std([r["scores"]["per_class_f1"][lab] for r in cells]) for lab in labels
        }
        summary["models"][name] = {"start": models[name], **row}
        if name == first:
            continue
        summary["vs_first"][name] = {}
        for m in METRICS:
            diffs = [b["scores"][m] - a["scores"][m] for a, b in zip(results[first], cells, strict=True)]
            boot = paired_bootstrap(
                ref["predictions"]["truth"],
                [r["predictions"]["pred"] for r in results[first]],
                [r["predictions"]["pred"] for r in cells],
                len(labels),
                task,
                m,
                groups=ref["predictions"]["groups"],
                resamples=resamples,
            )
            summary["vs_first"][name][m] = {"per_seed": _mean_std(diffs), "bootstrap": boot}
    return summary


def _pm(stat: dict) -> str:
    return "n/a" if stat["mean"] is None else f"{stat['mean']:.4f} +- {stat['std']:.4f}"


def markdown(summary: dict) -> str:
    models, first = summary["models"], next(iter(summary["models"]))
    lines = [
        f"Task: {summary['task']}, {summary['items']} {summary['reported_split']} items, seeds {summary['seeds']} "
        f"(mean +- std over seeds). Differences to `{first}`: per-seed mean +- std, and a paired bootstrap over "
        f"the examples (95% interval, p; `*`: p < {SIGNIFICANT}).",
        "",
        "| model | accuracy | macro-F1 | d accuracy | d macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for name, row in models.items():
        cells = [_pm(row["accuracy"]), _pm(row["macro_f1"])]
        for m in METRICS:
            vs = summary["vs_first"].get(name, {}).get(m)
            if vs is None:
                cells.append("(reference)")
                continue
            b = vs["bootstrap"]
            star = "*" if b["p"] < SIGNIFICANT else ""
            cells.append(
                f"{_pm(vs['per_seed'])} [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] p={b['p']:.3f}{star}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per-class F1:",
        "",
        "| label | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
    ]
    for lab in summary["labels"]:
        lines.append(f"| {lab} | " + " | ".join(_pm(r["per_class_f1"][lab]) for r in models.values()) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["models"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
    width = 0.38
    for i, m in enumerate(METRICS):
        means = [summary["models"][n][m]["mean"] for n in names]
        stds = [summary["models"][n][m]["std"] for n in names]
        x = np.arange(len(names)) + (i - 0.5) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, label=m.replace("_", "-"))
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{summary['reported_split']} score (mean +- std over {len(summary['seeds'])} seeds)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_ablation(
    models: dict[str, str],
    task_files: list[str],
    out: str | Path,
    seeds: list[int],
    overrides: list[str] | None = None,
    resamples: int = 2000,
) -> dict:
    """Every cell, then ablation.{md,json,png} under `out` (written only once every cell is done)."""
    from flex_bert.train.finetune import write_json_atomically

    if len(models) < 2:
        raise ValueError("give at least two starting points (name=path), the first being the reference")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    out = Path(out)
    results = run_cells(models, task_files, list(overrides or []), out, seeds)
    summary = summarize(results, models, resamples)
    table = markdown(summary)
    write_json_atomically(out / "ablation.json", summary)
    (out / "ablation.md").write_text(table)
    plot(summary, out / "ablation.png")
    return summary
