"""The task file of a fine-tuning run (`yamls/finetune/*.yml`): data, head, optimisation, early stopping.

Typed as the pre-training config (`train/config.py`): YAML files, then `key=value` overrides, onto these
dataclasses; an unknown key, a wrong type or a missing value fails before any work, naming the key. Every
default of fine-tuning is declared here once (a standard BERT recipe: AdamW 5e-5, 10% warmup, linear decay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flex_bert.train.checks import suggest
from flex_bert.train.config import OptimizerConfig
from flex_bert.train.schedulers import parse_scheduler

TASK_METRICS = ("accuracy", "macro_f1")  # task_eval.METRICS; the early-stopping and best-checkpoint metric


@dataclass
class FinetuneOptimizerConfig(OptimizerConfig):
    name: str = "adamw"  # or decoupled_stableadamw
    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01


@dataclass
class FinetuneConfig:
    task: str = MISSING  # single_label | multi_label | token
    train_file: str = MISSING  # CSV, JSONL or Parquet (a file, folder or glob)
    eval_file: str | None = None  # None: a stratified eval_fraction of train_file is held out
    test_file: str | None = None  # None: scores are reported on the eval split (also used to pick the best)
    text_column: str = "text"  # token tasks: the column of word lists
    label_column: str = "label"  # token tasks: the column of tag lists
    label_separator: str = "|"  # multi-label labels joined in one string (CSV)
    labels: list[str] | None = None  # the label order (id -> name); None: the training labels, sorted
    eval_fraction: float = 0.1
    split_seed: int = 0  # the held-out split depends on this, not on `seed`: every run sees the same split

    start: str | None = None  # HF ModernBertForMaskedLM folder or a checkpoint of this recipe
    tokenizer: str | None = None  # None: the starting point's
    trust_checkpoint: bool = False
    model_config: dict[str, Any] = field(default_factory=dict)  # FlexBertConfig overrides (attention_backend)
    pooling: str = "cls"  # classifier_pooling: cls | mean
    classifier_dropout: float = 0.0
    max_seq_len: int = 512
    # the encoder's training passes replayed as CUDA graphs (train/cuda_graphs.py): auto = where they can run
    # (one GPU, no gradient checkpointing), true = required (an error where they cannot), false = never
    cuda_graphs: Any = "auto"
    graph_bucket_tokens: int = 256  # with CUDA graphs: batches padded to a multiple of this (<= max_seq_len)

    optimizer: FinetuneOptimizerConfig = field(default_factory=FinetuneOptimizerConfig)
    scheduler: Any = field(default_factory=lambda: {"name": "linear_decay_with_warmup", "t_warmup": "0.1dur"})
    batch_size: int = 32  # examples per optimizer step (all GPUs together)
    microbatch_size: int | None = None  # examples per forward pass on a GPU; None: the whole device batch
    eval_batch_size: int = 64
    max_duration: str = "3ep"
    eval_interval: str = "1ep"
    metric: str = "macro_f1"  # accuracy | macro_f1: the best checkpoint and early stopping follow it
    patience: str | None = "2ep"  # stop when the metric has not improved for this long; None: never
    seed: int = 17  # head initialisation, data order, dropout

    save_folder: str = MISSING  # best.pt (the best checkpoint) and result.json
    device: str = "auto"  # auto | gpu | cpu
    precision: str = "amp_bf16"  # on a CPU the run uses fp32
    progress_bar: bool = False
    log_to_console: bool = False


# Flags of scripts/finetune.py and scripts/ablation.py, each only another way to write `KEY=VALUE` for its key
KEY_FLAGS = {
    "text_column": ("--text_column", "--words_column"),  # token tasks: the column of word lists
    "label_column": ("--label_column", "--tags_column"),  # token tasks: the column of tag lists
}


def add_key_flags(parser) -> None:
    """KEY_FLAGS as options of an argparse parser."""
    for key, flags in KEY_FLAGS.items():
        parser.add_argument(*flags, dest=key, metavar="COLUMN", help=f"the task file's {key} ({key}=COLUMN)")


def key_flag_overrides(args) -> list[str]:
    """The KEY_FLAGS given on the command line as `key=value` overrides."""
    return [f"{key}={getattr(args, key)}" for key in KEY_FLAGS if getattr(args, key) is not None]


def load_finetune_config(yaml_paths: list[str], overrides: list[str] | None = None) -> DictConfig:
    """YAML files, then `key=value` overrides, onto FinetuneConfig; resolved and checked."""
    schema = OmegaConf.structured(FinetuneConfig)
    parts = [OmegaConf.load(p) for p in yaml_paths] + [OmegaConf.from_dotlist(list(overrides or []))]
    for part in parts:
        for key in part:
            if key not in schema.keys():  # noqa: SIM118 (`in` is False for a MISSING value)
                raise ValueError(f"unknown task file key {key!r}{suggest(str(key), schema.keys())}")
    try:
        cfg = OmegaConf.merge(schema, *parts)
    except OmegaConfBaseException as e:  # a wrong type: one line naming the key
        raise ValueError(f"task file key {e.full_key!r}: {str(e).splitlines()[0]}") from None
    OmegaConf.resolve(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"missing required task file values: {', '.join(missing)}")
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    from flex_bert.model.classification import POOLINGS, TASKS

    cfg.scheduler = parse_scheduler(cfg.scheduler)  # checked once: finetune builds from this config
    for key, value, allowed in (
        ("task", cfg.task, TASKS),
        ("pooling", cfg.pooling, POOLINGS),
        ("metric", cfg.metric, TASK_METRICS),
        ("optimizer.name", cfg.optimizer.name, ("adamw", "decoupled_stableadamw")),
        ("device", cfg.device, ("auto", "gpu", "cpu")),
        ("precision", cfg.precision, ("amp_bf16", "amp_fp16", "fp32")),
    ):
        if value not in allowed:
            raise ValueError(f"{key} {value!r} is not supported{suggest(str(value), allowed)}")
    # checked apart from the tuple above: 1 == True would pass there
    if not (isinstance(cfg.cuda_graphs, bool) or cfg.cuda_graphs == "auto"):
        raise ValueError(f"cuda_graphs must be auto, true or false, got {cfg.cuda_graphs!r}")
    if cfg.start is None:
        raise ValueError("start is not set: give the starting point (an HF folder or a .pt checkpoint)")
    if not 0.0 < cfg.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {cfg.eval_fraction}")
    if cfg.max_seq_len < 3:
        raise ValueError(f"max_seq_len must be at least 3 ([CLS] + 1 token + [SEP]), got {cfg.max_seq_len}")
    for key in ("batch_size", "eval_batch_size", "microbatch_size", "graph_bucket_tokens"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ValueError(f"{key} must be at least 1, got {cfg[key]}")
