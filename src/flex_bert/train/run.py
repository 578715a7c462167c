"""The training run: config -> model, data, optimizer, schedule, callbacks, loggers -> composer Trainer."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys

import torch
from composer import Trainer
from composer.core import Time, TimeUnit
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf

from flex_bert.checkpoint_io import TRUST_KEY, safe_torch_load
from flex_bert.data.tokenize import open_tokenizer
from flex_bert.folder_lock import folder_lock
from flex_bert.train import builders, compat
from flex_bert.train.algorithms import build_algorithms
from flex_bert.train.callbacks import DataResume, RunInfo, build_callbacks
from flex_bert.train.composer_private import route_checkpoint_reads, take_resumed_rng_state
from flex_bert.train.config import load_config_and_notes
from flex_bert.train.loggers import build_loggers
from flex_bert.train.mixture_report import MixtureReport, stream_labels
from flex_bert.train.optim import build_optimizer
from flex_bert.train.restart import (
    Phase,
    apply_restart_override,
    own_checkpoint,
    resolve_phase,
    write_checkpoint_atomically,
)
from flex_bert.train.shape import fill_run_name, run_shape


def _device(cfg: DictConfig) -> str:
    if cfg.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _precision(cfg: DictConfig, device: str) -> str:
    return (
        cfg.precision if device == "gpu" else "fp32"
    )  # autocast bf16 on CPU is slow and not the GPU's numerics


def start(cfg: DictConfig) -> Phase:
    """Seeds, CPU threads, the process group, then this launch's phase (``restart.resolve_phase``)."""
    reproducibility.seed_all(cfg.seed)
    device = _device(cfg)
    if device == "cpu":
        builders.set_cpu_threads(cfg.train_loader.num_workers)
    if not dist.is_initialized() and dist.get_world_size() > 1:
        dist.initialize_dist(device, timeout=cfg.dist_timeout)
    return resolve_phase(cfg)


def build_trainer(cfg: DictConfig, phase: Phase | None = None) -> Trainer:
    """The trainer of a loaded config; ``phase``: this launch's start from ``start`` (called here if not given)."""
    phase = phase or start(cfg)
    run, device = run_shape(cfg), _device(cfg)
    tokenizer = open_tokenizer(cfg.tokenizer_name)
    config = builders.build_model_config(compat.model_settings(cfg), tokenizer)
    model = builders.build_model(
        config,
        cfg.model,
        weights=phase.weights_path,
        trust=cfg.trust_checkpoint,
        tiled=cfg.init_from_checkpoint,
    )
    write_checkpoint_atomically()
    route_checkpoint_reads(
        lambda path: safe_torch_load(path, cfg.trust_checkpoint, TRUST_KEY)
    )  # no code runs
    train_data = builders.run_train_data(cfg, run, tokenizer, config.vocab_size)
    train_data.dataloader.dataset.saved_position = phase.data_position
    evaluator = builders.run_evaluator(cfg, run, tokenizer, config.vocab_size)
    data_resume = DataResume()
    run_info = RunInfo(
        config.to_dict(), OmegaConf.to_container(cfg, resolve=True), _tokenizer_files(tokenizer)
    )
    callbacks = build_callbacks(OmegaConf.to_object(cfg.callbacks), run)
    trainer = Trainer(
        run_name=cfg.run_name,
        model=model,
        train_dataloader=train_data,
        eval_dataloader=evaluator,
        eval_interval=cfg.eval_interval,
        max_duration=cfg.max_duration,
        optimizers=build_optimizer(model, cfg.optimizer),
        schedulers=OmegaConf.to_object(cfg.scheduler).build(),
        device=device,
        precision=_precision(cfg, device),
        device_train_microbatch_size=1,  # one packed row of device_train_microbatch_size x max_seq_len
        seed=cfg.seed,
        # MixtureReport: what the data is made of
        callbacks=[
            run_info,
            data_resume,
            *callbacks,
            MixtureReport(*stream_labels(cfg.train_loader.dataset)),
        ],
        loggers=build_loggers(OmegaConf.to_object(cfg.loggers), run),
        algorithms=build_algorithms(OmegaConf.to_object(cfg.algorithms)),
        train_subset_num_batches=cfg.train_subset_num_batches,
        spin_dataloaders=cfg.spin_dataloaders,
        python_log_level=cfg.python_log_level,
        progress_bar=cfg.progress_bar and sys.stdout.isatty(),  # a bar in a log file is noise
        log_to_console=cfg.log_to_console,
        console_log_interval=cfg.console_log_interval,
        save_folder=phase.save_folder,
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        load_path=phase.load_path,
        autoresume=cfg.autoresume,
        parallelism_config={"fsdp": OmegaConf.to_container(cfg.fsdp_config)} if cfg.fsdp_config else None,
        dist_timeout=cfg.dist_timeout,
    )
    if phase.resuming and int(trainer.state.timestamp.batch_in_epoch) > 0:
        # composer restores the checkpoint's random state mid-epoch only when it spins the loader, which a
        # resumable dataset skips: DataResume restores it just before the first batch instead.
        data_resume.rng_state = take_resumed_rng_state(trainer)
    return trainer


def _tokenizer_files(tokenizer) -> dict:
    import tempfile

    from flex_bert.hf_checkpoint import tokenizer_dir_to_state

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return tokenizer_dir_to_state(tmp)


def check_duration(cfg: DictConfig) -> None:
    """Packed batches per epoch are not known ahead, so composer cannot turn epochs into steps for schedules."""
    duration = Time.from_timestring(str(cfg.max_duration))
    if duration.unit == TimeUnit.EPOCH:
        tokens = _split_tokens(cfg.train_loader.dataset)
        hint = (
            f"max_duration={int(duration.value * tokens)}tok ({duration.value:g} x the {tokens:,} tokens of "
            "the training split)"
            if tokens
            else "a token count (see the conversion.json of each dataset)"
        )
        raise ValueError(
            f"max_duration {cfg.max_duration!r} is in epochs, but packed batches per epoch are not known ahead, so "
            f"schedules cannot be placed in it; give {hint}. Epochs still pass as the data runs out."
        )


def train(yamls: list[str], overrides: list[str]) -> Trainer:
    cfg, notes = load_config_and_notes(yamls, overrides)
    _print_notes(notes)
    check_duration(cfg)
    with _lock_save_folder(cfg):
        phase = start(cfg)
        trainer = build_trainer(cfg, phase)
        if phase.resuming and _complete(trainer, phase, cfg):
            return trainer
        _say_where_it_starts(trainer, phase)
        if phase.apply_overrides:
            apply_restart_override(
                trainer, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.restart_override_max_lr
            )
        _save_resolved_config(cfg, phase.save_folder)
        try:
            trainer.fit(reset_time=phase.reset_time)
        except FileExistsError as e:  # composer: a fresh run's checkpoint names are taken in save_folder
            raise ValueError(
                f"{e} (autoresume: true continues the run that saved it; save_overwrite: true replaces it)"
            ) from None
    return trainer


def _say_where_it_starts(trainer: Trainer, phase: Phase) -> None:
    """One line: a resumed run names the checkpoint and the position it continues from."""
    if dist.get_global_rank() != 0:
        return
    stamp = trainer.state.timestamp
    if phase.resuming:
        latest = os.path.realpath(own_checkpoint(phase.save_folder))
        line = f"resumed from {latest} at batch {int(stamp.batch):,} (tokens {int(stamp.token):,})"
    elif phase.load_path:
        reset = "time reset to 0" if phase.reset_time else f"continuing at batch {int(stamp.batch):,}"
        line = f"phase start: weights and optimizer state from {phase.load_path}, {reset}"
    elif phase.weights_path:
        line = f"phase start: weights from {phase.weights_path}, time starts at 0"
    else:
        line = "fresh start"
    print(line, flush=True)


def _lock_save_folder(cfg: DictConfig):
    """One training run per save_folder: global rank 0 holds its lock (the other ranks belong to its run)."""
    folder = fill_run_name(cfg.save_folder, cfg.run_name)
    if folder and "://" not in folder and dist.get_global_rank() == 0:
        return folder_lock(folder, what="training run")
    return contextlib.nullcontext()


def _complete(trainer: Trainer, phase: Phase, cfg: DictConfig) -> bool:
    """A resumed run whose checkpoint already reached max_duration has nothing to do: says so, one line."""
    duration = trainer.state.max_duration
    if trainer.state.timestamp.get(duration.unit) < duration:
        return False
    latest = os.path.realpath(own_checkpoint(phase.save_folder))
    batch = int(trainer.state.timestamp.batch)
    print(
        f"run already complete: {latest} (max_duration {cfg.max_duration} reached at batch {batch}); "
        "nothing to do",
        flush=True,
    )
    return True


def _print_notes(notes: list[str]) -> None:
    """How this config's upstream and composer keys were read (mapped or ignored), one line each."""
    for line in notes:
        print(f"config: {line}", flush=True)


def _save_resolved_config(cfg: DictConfig, folder: str | None) -> None:
    if folder and dist.get_global_rank() == 0:
        os.makedirs(folder, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(folder, "config.yaml"), resolve=True)


def plan(cfg: DictConfig) -> dict:
    """Parameter count, tokens per optimizer step and the number of steps, without touching a GPU."""
    from flex_bert.model import FlexBertForMaskedLM

    try:
        config = builders.build_model_config(compat.model_settings(cfg), open_tokenizer(cfg.tokenizer_name))
    except ValueError as e:  # no tokenizer here yet: count with the config's own special-token ids
        print(f"note: {e}")
        config = compat.check_model_config(cfg)
    with torch.device("meta"):
        n_params = FlexBertForMaskedLM(config).num_parameters()
    run = run_shape(cfg)
    slots = run.rows_per_global_batch * run.row_len
    duration = Time.from_timestring(str(cfg.max_duration))
    if duration.unit == TimeUnit.BATCH:
        steps, how = duration.value, "exact"
    elif duration.unit == TimeUnit.TOKEN:
        steps, how = (
            math.ceil(duration.value / slots),
            "at 100% packing efficiency (real tokens per step <= slots)",
        )
    else:
        steps, how = None, f"not known ahead for a duration in {duration.unit.value}"
    if steps is not None and builders.batch_size_warmup_given(cfg.train_loader):
        how += "; more steps: the batch-size warmup trains smaller batches first"
    return {
        "parameters": n_params,
        "tokens_per_optimizer_step": slots,
        "rows_per_step": run.rows_per_global_batch,
        "planned_steps": steps,
        "planned_steps_note": how,
    }


def _split_tokens(dataset_cfg: DictConfig) -> int | None:
    """Tokens of the training split, from the conversion stats beside its dataset folders."""
    from flex_bert.data.merge import dataset_folders, read_conversion_stats

    if dataset_cfg.streams:
        folders = [s["local"] for s in dataset_cfg.streams.values()]
    elif dataset_cfg.local:
        try:
            folders = dataset_folders(os.path.join(dataset_cfg.local, dataset_cfg.split or ""))
        except ValueError:
            return None
    else:
        return None
    try:
        return sum(read_conversion_stats(f)["tokens"] for f in folders)
    except ValueError:
        return None


def dry_run(yamls: list[str], overrides: list[str]) -> dict:
    """The resolved config, how upstream and composer keys were read, the plan, and every check a run would
    make before its first batch (preflight): raises PreflightFailed naming each problem."""
    from flex_bert.train.preflight import preflight

    cfg, notes = load_config_and_notes(yamls, overrides)
    check_duration(cfg)
    print(OmegaConf.to_yaml(cfg, resolve=True))
    _print_notes(notes)
    info = plan(cfg)
    print(json.dumps(info, indent=2))
    for line in preflight(cfg):
        print(f"ok: {line}")
    print("dry run: no problems found", flush=True)
    return {**info, "config_notes": notes}
