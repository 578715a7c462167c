"""``--dry_run``'s checks: everything a run would refuse after start-up, found in seconds, one line each.

Each check builds what training builds (tokenizer, model config, the train and eval data with all their
checks) or reads what it would read (the starting checkpoint, through the safe loader, against the model
config), without weights on a device, without a Trainer. Problems are collected, not stopped at. The
training data is also described: per stream, its samples, tokens and shares of an epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig


class PreflightFailed(ValueError):
    """One line per problem (main.py prints each as ``error: ...``)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def preflight(cfg: DictConfig) -> list[str]:
    """Lines that say what was checked; raises PreflightFailed naming every problem found."""
    from flex_bert.data.tokenize import open_tokenizer
    from flex_bert.train import builders, compat
    from flex_bert.train.shape import run_shape

    problems: list[str] = []
    notes: list[str] = []

    def attempt(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ValueError, OSError) as e:  # DataError is a ValueError; torch/zip errors come as ValueError
            problems.append(f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            return None

    tokenizer = attempt("tokenizer", lambda: open_tokenizer(cfg.tokenizer_name))
    settings = compat.model_settings(cfg)
    config = tokenizer and attempt("model_config", lambda: builders.build_model_config(settings, tokenizer))
    for key in ("load_path", "model.pretrained_checkpoint"):
        path = cfg.load_path if key == "load_path" else cfg.model.pretrained_checkpoint
        if path:
            checked = attempt(key, lambda p=path: _check_checkpoint(p, cfg, config))
            if checked:
                notes.append(f"{key}: {checked}")
    if tokenizer is not None and config is not None:
        run = run_shape(cfg)
        train = attempt(
            "train data",
            lambda: builders.run_train_data(cfg, run, tokenizer, config.vocab_size),
        )
        if train is not None:
            report = attempt("train data", lambda: _train_data_report(cfg, train.dataloader.dataset))
            notes += [report] if report else []
        if cfg.eval_loader is not None:
            evaluator = attempt(
                "eval data",
                lambda: builders.run_evaluator(cfg, run, tokenizer, config.vocab_size),
            )
            if evaluator is not None:
                notes.append(f"eval data: {len(evaluator.dataloader.dataloader.dataset):,} documents")
    resume = _resume_note(cfg)
    if resume:
        notes.append(resume)
    if problems:
        raise PreflightFailed(problems)
    return notes


def _check_checkpoint(path: str, cfg: DictConfig, config) -> str:
    """The checkpoint exists, loads under the safe loader (or trust_checkpoint) and its weights are exactly
    those of model_config; returns what it holds."""
    from flex_bert.checkpoint_io import TRUST_KEY
    from flex_bert.hf_checkpoint import load_composer_model_state
    from flex_bert.hf_state import check_state_matches_config

    if "://" in path:
        return f"{path} is remote: checked when it is downloaded"
    state = load_composer_model_state(path, cfg.trust_checkpoint, TRUST_KEY)
    if config is not None:
        check_state_matches_config(state, config, hint="model.model_config describes another architecture")
    return f"{path} loads and matches model_config ({len(state)} tensors)"


def _train_data_report(cfg: DictConfig, dataset) -> str:
    """Epoch 0 of the training data, per stream, as the run prints it at its start (streaming's resampling);
    a stream without conversion stats is a problem: its tokens and their share cannot be told."""
    import numpy as np

    from flex_bert.train.mixture_report import (
        epoch_report,
        epoch_streams,
        missing_stats,
        stream_labels,
        stream_lines,
    )

    names, weights = stream_labels(cfg.train_loader.dataset)
    problem = missing_stats(names, dataset.documents)
    if problem:
        raise ValueError(problem)
    chosen = np.bincount(epoch_streams(dataset, 0, names), minlength=len(names))
    lines = stream_lines(names, weights, dataset.documents, chosen)
    return epoch_report("train data, epoch 0", lines, chosen)


def _resume_note(cfg: DictConfig) -> str | None:
    from flex_bert.train.restart import own_checkpoint
    from flex_bert.train.shape import fill_run_name

    folder = fill_run_name(cfg.save_folder, cfg.run_name)
    latest = cfg.autoresume and own_checkpoint(folder)
    if latest:
        return f"autoresume: would continue from {os.path.realpath(latest)} (load_path is not applied again)"
    return None
