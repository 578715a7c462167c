"""Scores of fine-tuned task models: predictions, accuracy, macro-F1, per-class F1, and a paired bootstrap.

One computation (numpy, from weighted counts) serves the training metric (train/finetune.py), the final
evaluation and the ablation's bootstrap. Predictions and truth are arrays:
    single_label  (n,) label ids
    multi_label   (n, L) 0/1; accuracy is exact match (every label of the example right)
    token         (m,) label ids of the scored words (first pieces), with `groups` (m,): their sentence;
                  scored per word, every tag a class (`O` included), not per entity as seqeval does
F1 of a class = 2 TP / (2 TP + FP + FN). A class absent from both truth and predictions has no F1 (None)
and is left out of the macro average, as scikit-learn's f1_score does when not given `labels`.
"""

from __future__ import annotations

import numpy as np
import torch

from flex_bert.data.masking import IGNORE_INDEX

METRICS = ("accuracy", "macro_f1")
RESAMPLES_PER_CHUNK = 200  # bootstrap weights are (chunk x items) floats


def _indicators(truth, pred, num_labels: int, task: str):
    """(T, P, correct): (items, L) 0/1 truth and prediction, (items,) 1 where the item is fully right."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if task == "multi_label":
        T, P = truth.astype(np.float64), pred.astype(np.float64)
        return T, P, (T == P).all(axis=1).astype(np.float64)
    eye = np.eye(num_labels)
    return eye[truth], eye[pred], (truth == pred).astype(np.float64)


def weighted_counts(truth, pred, num_labels: int, task: str, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per class TP, FP, FN (B, L), items right and items (B,), under B rows of item weights (B, items)."""
    T, P, correct = _indicators(truth, pred, num_labels, task)
    return {
        "tp": weights @ (T * P),
        "fp": weights @ ((1 - T) * P),
        "fn": weights @ (T * (1 - P)),
        "correct": weights @ correct,
        "items": weights.sum(1),
    }


def from_counts(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """accuracy (B,), f1 (B, L) (NaN: class absent from truth and predictions) and macro_f1 (B,)."""
    denominator = 2 * c["tp"] + c["fp"] + c["fn"]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * c["tp"] / denominator, np.nan)
        present = np.isfinite(f1)
        macro = np.where(present.any(1), np.nansum(f1, axis=1) / present.sum(1), np.nan)
        return {"accuracy": c["correct"] / c["items"], "f1": f1, "macro_f1": macro}


def weighted_scores(truth, pred, num_labels: int, task: str, weights: np.ndarray) -> dict[str, np.ndarray]:
    return from_counts(weighted_counts(truth, pred, num_labels, task, weights))


def scores(truth, pred, labels: list[str], task: str) -> dict:
    """{"accuracy", "macro_f1", "per_class_f1": {label: F1 or None}, "items"} of one set of predictions."""
    s = weighted_scores(truth, pred, len(labels), task, np.ones((1, len(truth))))
    f1 = [None if np.isnan(v) else float(v) for v in s["f1"][0]]
    return {
        "accuracy": float(s["accuracy"][0]),
        "macro_f1": float(s["macro_f1"][0]),
        "per_class_f1": dict(zip(labels, f1, strict=True)),
        "items": len(truth),
    }


def paired_bootstrap(
    truth,
    preds_a: list,
    preds_b: list,
    num_labels: int,
    task: str,
    metric: str,
    groups=None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Paired bootstrap of metric(B) - metric(A) over the evaluation examples (token tasks: sentences).

    Each model's metric is the mean over its seeds (`preds_*` hold one prediction array per seed); every
    resample reweights the same examples for all of them. Returns the observed difference, the 95% percentile
    interval and a two-sided p-value, 2 x the smaller share of resampled differences on either side of 0.
    """
    n_items = len(truth)
    groups = np.arange(n_items) if groups is None else np.asarray(groups)
    n_units = int(groups.max()) + 1
    rng = np.random.default_rng(seed)

    def metric_of(preds, weights):
        return np.mean([weighted_scores(truth, p, num_labels, task, weights)[metric] for p in preds], axis=0)

    observed = float(
        (metric_of(preds_b, np.ones((1, n_items))) - metric_of(preds_a, np.ones((1, n_items))))[0]
    )
    diffs = []
    for start in range(0, resamples, RESAMPLES_PER_CHUNK):
        b = min(RESAMPLES_PER_CHUNK, resamples - start)
        weights = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=b).astype(np.float64)[
            :, groups
        ]
        diffs.append(metric_of(preds_b, weights) - metric_of(preds_a, weights))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return {"diff": observed, "ci95": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))], "p": p}


def predictions(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth, pred) of a batch: argmax (single-label, and token tasks at labels != -100) or logit > 0."""
    if task == "token":
        scored = labels != IGNORE_INDEX
        return labels[scored], logits[scored].argmax(-1)
    if task == "multi_label":
        return labels.long(), (logits > 0).long()
    return labels, logits.argmax(-1)


@torch.no_grad()
def predict(model, batches, task: str, device: str = "cpu", precision: str = "fp32") -> dict:
    """Run a task model over collated batches (`data.labelled.collate`): {"truth", "pred", "groups"} lists,
    `groups` (token tasks) the example of each scored word, counted across batches. `precision` is composer's
    (amp_bf16: bf16 autocast, as training and its evaluations ran)."""
    from composer.core.precision import get_precision_context

    model.eval().to(device)
    truth, pred, groups, offset = [], [], [], 0
    for batch in batches:
        cu, labels = batch["cu_seqlens"].to(device), batch["labels"].to(device)
        with get_precision_context(precision):
            out = model(batch["input_ids"].to(device), cu_seqlens=cu, max_seqlen=batch["max_seqlen"])
        logits = out.logits
        t, p = predictions(logits.float(), labels, task)
        truth += t.tolist()
        pred += p.tolist()
        if task == "token":
            where = torch.nonzero(labels != IGNORE_INDEX)[:, 0].to(cu.dtype)
            groups += (torch.searchsorted(cu, where, right=True) - 1 + offset).tolist()
        offset += len(cu) - 1
    return {"truth": truth, "pred": pred, "groups": groups or None}
