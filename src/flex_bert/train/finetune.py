"""Fine-tuning a FlexBERT starting point on a labelled task, through composer.

    task file -> labelled splits (data/labelled.py; the held-out split carved when none is given) ->
    task model (model/classification.py; encoder and head from the starting point, a new classifier) ->
    composer Trainer (AdamW or StableAdamW, linear decay with warmup, evaluation every `eval_interval`,
    composer's EarlyStopper, KeepBest) -> the best weights scored on the test split (or the eval split)

Batches are examples laid out flat with `cu_seqlens`, no padding, as pre-training's packed rows. The output
folder holds `best.pt` (a task checkpoint: `scripts/convert_to_hf.py` exports it) and, written last and
atomically, `result.json` (scores, predictions, data reports): a folder without it is not a finished run.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from composer import Trainer
from composer.callbacks import EarlyStopper
from composer.core import Callback, DataSpec, Evaluator, State
from composer.loggers import Logger
from composer.models import ComposerModel
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchmetrics import Metric

from flex_bert.data.labelled import Columns, collate, encode, label_map, read_split, stratified_split
from flex_bert.data.tokenize import open_tokenizer
from flex_bert.hf_tasks import load_start, save_task_checkpoint
from flex_bert.model import FlexBertConfig
from flex_bert.model.classification import TaskConfig, build_task_model
from flex_bert.task_eval import from_counts, predict, predictions, scores, weighted_counts
from flex_bert.train.builders import set_cpu_threads
from flex_bert.train.compilation import prepare
from flex_bert.train.cuda_graphs import checkpointed, use_cuda_graphs
from flex_bert.train.optim import build_optimizer


# ------------------------------------------------------------------------------------------------ data
def prepare_data(cfg: DictConfig, tokenizer) -> dict:
    """{"labels", "splits": {name: Encoded}, "reports": {name: report dict}}; prints one line per split."""
    columns = Columns(cfg.task, cfg.text_column, cfg.label_column, cfg.label_separator)
    given = None if cfg.labels is None else [str(x) for x in cfg.labels]
    train, train_report = read_split(cfg.train_file, columns, "train", given)
    labels = given or label_map(train, cfg.task)
    reports = {"train": train_report}
    if cfg.eval_file:
        held_out, reports["eval"] = read_split(cfg.eval_file, columns, "eval", labels)
    else:
        train, held_out = stratified_split(train, cfg.eval_fraction, cfg.split_seed, cfg.task)
    splits = {"train": train, "eval": held_out}
    if cfg.test_file:
        splits["test"], reports["test"] = read_split(cfg.test_file, columns, "test", labels)
    encoded = {k: encode(v, tokenizer, labels, cfg.task, cfg.max_seq_len) for k, v in splits.items()}
    out = {name: r.as_dict() for name, r in reports.items()}
    if not cfg.eval_file:
        out["eval"] = {
            "split": "eval",
            "carved_from": "train",
            "fraction": cfg.eval_fraction,
            "examples": len(held_out),
        }
    for name, enc in encoded.items():
        out.setdefault(name, {}).update(truncated=enc.truncated, dropped_words=enc.dropped_words)
    if dist.get_global_rank() == 0:
        for r in reports.values():
            print(r.summary(), flush=True)
    return {"labels": labels, "splits": encoded, "reports": out}


def _loader(enc, task: str, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    items = list(zip(enc.input_ids, enc.targets, strict=True))
    return DataLoader(
        items,
        batch_size=batch_size,
        sampler=dist.get_sampler(items, shuffle=shuffle, seed=seed, drop_last=False),
        collate_fn=lambda b: collate([x for x, _ in b], [y for _, y in b], task),
    )


def split_examples(batch: dict, n: int | float, task: str) -> list[dict]:
    """Micro-batches of n whole examples of a flat batch."""
    cu, n, token_labels = batch["cu_seqlens"], int(n), task == "token"
    out = []
    for i in range(0, len(cu) - 1, n):
        j = min(i + n, len(cu) - 1)
        a, b = int(cu[i]), int(cu[j])
        out.append(
            {
                "input_ids": batch["input_ids"][a:b],
                "cu_seqlens": cu[i : j + 1] - cu[i],
                "max_seqlen": int((cu[i + 1 : j + 1] - cu[i:j]).max()),
                "labels": batch["labels"][a:b] if token_labels else batch["labels"][i:j],
            }
        )
    return out


def _dataspec(loader: DataLoader, task: str) -> DataSpec:
    return DataSpec(
        loader,
        split_batch=functools.partial(split_examples, task=task),
        get_num_samples_in_batch=lambda b: len(b["cu_seqlens"]) - 1,
        get_num_tokens_in_batch=lambda b: b["input_ids"].numel(),
    )


# --------------------------------------------------------------------------------------------- composer
class TaskMetric(Metric):
    """accuracy or macro_f1 from counts accumulated over the evaluation (task_eval's computation)."""

    full_state_update = False

    def __init__(self, which: str, task: str, num_labels: int):
        super().__init__()
        self.which, self.task, self.num_labels = which, task, num_labels
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(num_labels, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("correct", "items"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        truth, pred = (x.cpu().numpy() for x in predictions(logits.detach().float(), labels, self.task))
        c = weighted_counts(truth, pred, self.num_labels, self.task, np.ones((1, len(truth))))
        for name, value in c.items():
            state = getattr(self, name)
            state += torch.as_tensor(value[0], dtype=torch.float64, device=state.device)

    def compute(self) -> torch.Tensor:
        c = {k: getattr(self, k).cpu().numpy()[None] for k in ("tp", "fp", "fn", "correct", "items")}
        return torch.tensor(float(from_counts(c)[self.which][0]), dtype=torch.float64)


class TaskComposerModel(ComposerModel):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.val_metrics = {
            m: TaskMetric(m, model.task.task, model.task.num_labels) for m in ("accuracy", "macro_f1")
        }

    def forward(self, batch: dict):
        return self.model(
            batch["input_ids"],
            cu_seqlens=batch["cu_seqlens"],
            max_seqlen=batch["max_seqlen"],
            labels=batch["labels"],
        )

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        return outputs.loss

    def eval_forward(self, batch: dict, outputs=None):
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch: dict, outputs, metric) -> None:
        metric.update(outputs.logits, batch["labels"])

    def get_metrics(self, is_train: bool = False) -> dict:
        return {} if is_train else self.val_metrics


class KeepBest(Callback):
    """After each evaluation: if `metric` beat every earlier value, keep these weights (in memory, and as
    `best.pt` from rank 0) and note when."""

    def __init__(self, metric: str, path: Path, tokenizer_dir: str, extra: dict):
        self.metric, self.path, self.tokenizer_dir, self.extra = metric, path, tokenizer_dir, extra
        self.best, self.state_dict, self.history = None, None, []

    def eval_end(self, state: State, logger: Logger) -> None:
        value = float(state.eval_metrics["eval"][self.metric].compute())
        when = {"epoch": int(state.timestamp.epoch), "batch": int(state.timestamp.batch)}
        self.history.append({**when, self.metric: value})
        if self.best is not None and not value > self.best["value"]:
            return
        model = state.model.module.model if hasattr(state.model, "module") else state.model.model
        self.best = {"metric": self.metric, "value": value, **when}
        self.state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if dist.get_global_rank() == 0:
            save_task_checkpoint(
                self.path, model, self.tokenizer_dir, {"finetune": {**self.extra, "best": self.best}}
            )
            print(
                f"  evaluation at batch {when['batch']}: {self.metric} {value:.4f} (best so far)", flush=True
            )


# -------------------------------------------------------------------------------------------------- run
def _device(cfg: DictConfig) -> str:
    return ("gpu" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def build_task(cfg: DictConfig, labels: list[str], tokenizer, start_cfg: FlexBertConfig, mlm_state: dict):
    """The task model: the starting point's encoder and head (its config with `model_config` on top)."""
    config = FlexBertConfig.from_dict({**start_cfg.to_dict(), **OmegaConf.to_container(cfg.model_config)})
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}"
        )
    model = build_task_model(config, TaskConfig(cfg.task, labels, cfg.pooling, cfg.classifier_dropout))
    model.load_encoder_state(mlm_state)
    prepare(model, config)  # checkpointing where model_config asks; task models are not compiled
    return model


def task_graphs(model, micro_batch: int, max_seq_len: int, graph_bucket_tokens: int):
    """CUDA graphs for a task model: at most `micro_batch` examples of at most `max_seq_len` tokens a pass,
    buckets of `graph_bucket_tokens` (at most max_seq_len, as the padding document must fit)."""
    bucket = min(graph_bucket_tokens, max_seq_len)
    return use_cuda_graphs(model.bert, max_docs=micro_batch, max_seqlen=max_seq_len, bucket_tokens=bucket)


def run_graphs(model, cfg: DictConfig, device: str, world: int, micro_batch: int):
    """The task file's `cuda_graphs` for this run: (task_graphs' GraphedEncoder, None) or, where the run is
    eager, (None, why) (`auto` prints why; `true` raises there)."""
    if cfg.cuda_graphs is False:
        return None, "cuda_graphs: false"
    why_not = (
        "this run is on the CPU"
        if device != "gpu"
        else f"this run is on {world} GPUs (graphs run on one)"
        if world > 1
        else "gradient checkpointing is on"
        if checkpointed(model.bert)
        else None
    )
    if why_not is None:
        return task_graphs(model, micro_batch, cfg.max_seq_len, cfg.graph_bucket_tokens), None
    if cfg.cuda_graphs is True:
        raise ValueError(f"cuda_graphs: true, but {why_not}; set cuda_graphs=auto or false")
    print(f"cuda_graphs: auto runs eagerly: {why_not}", flush=True)
    return None, why_not


def finetune(cfg: DictConfig) -> dict:
    """Fine-tune, keep the best evaluation, score it; returns (and writes) result.json's content."""
    started = time.time()
    reproducibility.seed_all(cfg.seed)
    if _device(cfg) == "cpu":
        set_cpu_threads(loader_workers=0)  # the task's DataLoaders load in the main process
    start_cfg, mlm_state, stored_tokenizer = load_start(cfg.start, trust=cfg.trust_checkpoint)
    tokenizer_dir = cfg.tokenizer or stored_tokenizer
    if tokenizer_dir is None:
        raise ValueError(f"{cfg.start} holds no tokenizer: set `tokenizer` in the task file")
    tokenizer = open_tokenizer(tokenizer_dir)
    data = prepare_data(cfg, tokenizer)
    model = build_task(cfg, data["labels"], tokenizer, start_cfg, mlm_state)
    del mlm_state
    device, world = _device(cfg), dist.get_world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size ({cfg.batch_size}) must divide into {world} GPU(s)")
    micro_batch = cfg.microbatch_size or cfg.batch_size // world
    graphs, eager_because = run_graphs(model, cfg, device, world, micro_batch)
    splits, folder = data["splits"], Path(cfg.save_folder)
    keep = KeepBest(cfg.metric, folder / "best.pt", tokenizer_dir, {"start": cfg.start, "seed": cfg.seed})
    callbacks = [keep] + (
        [EarlyStopper(cfg.metric, "eval", comp="gt", patience=cfg.patience)] if cfg.patience else []
    )
    eval_spec = _dataspec(_loader(splits["eval"], cfg.task, cfg.eval_batch_size, False, cfg.seed), cfg.task)
    trainer = Trainer(
        model=TaskComposerModel(model),
        train_dataloader=_dataspec(
            _loader(splits["train"], cfg.task, cfg.batch_size // world, True, cfg.seed), cfg.task
        ),
        eval_dataloader=Evaluator(label="eval", dataloader=eval_spec, metric_names=["accuracy", "macro_f1"]),
        eval_interval=cfg.eval_interval,
        max_duration=cfg.max_duration,
        optimizers=build_optimizer(model, cfg.optimizer),
        schedulers=OmegaConf.to_object(cfg.scheduler).build(),
        device=device,
        precision=cfg.precision if device == "gpu" else "fp32",
        device_train_microbatch_size=micro_batch,
        seed=cfg.seed,
        callbacks=callbacks,
        loggers=[],
        progress_bar=cfg.progress_bar,
        log_to_console=cfg.log_to_console,
    )
    trainer.fit()
    graph_run = f"eager: {eager_because}" if graphs is None else graphs.summary()
    if graphs is not None:
        print(graph_run, flush=True)
        graphs.release()  # dropped now, not when a later collection finds the encoder <-> graphs cycle
    if keep.best is None:  # the run ended before its first evaluation
        trainer.eval()
    model.load_state_dict(keep.state_dict)
    report_split = "test" if "test" in splits else "eval"
    enc = splits[report_split]
    batches = (collate(enc.input_ids[i : i + cfg.eval_batch_size], enc.targets[i : i + cfg.eval_batch_size], cfg.task)
               for i in range(0, len(enc.input_ids), cfg.eval_batch_size))  # fmt: skip
    out = predict(model, batches, cfg.task, "cuda" if device == "gpu" else "cpu", trainer.state.precision)
    result = {
        "complete": True,
        "start": cfg.start,
        "seed": cfg.seed,
        "task": cfg.task,
        "labels": data["labels"],
        "reported_split": report_split,
        "scores": scores(out["truth"], out["pred"], data["labels"], cfg.task),
        "best": keep.best,
        "evaluations": keep.history,
        "predictions": out,
        "data": data["reports"],
        "cuda_graphs": graph_run,  # what ran: the graphs' summary, or why the run was eager
        "seconds": time.time() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    trainer.close()
    if dist.get_global_rank() == 0:
        write_json_atomically(folder / "result.json", result)
    return result


def write_json_atomically(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)
