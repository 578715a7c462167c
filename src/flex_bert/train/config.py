"""Typed training configuration: the seed guide's YAML, key for key, plus this project's additions.

Every default is declared once, here, with its valid values (``checks.setting``). ``load_config`` merges YAML
files and ``key=value`` overrides onto these dataclasses with OmegaConf, so an unknown or misspelled key (at any
depth), a wrong type, a value out of range or a missing value fails before any work, in one line naming the key.
A top-level key that the config uses by name (``${checkpoint_dir}``, or ``{pretrain_run_name}`` in a path) is a
variable, not a typo: it is accepted and dropped once resolved
(``flex_bert.train.compat``, which also reports how upstream's and composer's keys are read). Sections that choose
an implementation (scheduler, callbacks, loggers, algorithms) are checked against their tables (each entry's
config lives beside its class) and replaced by the checked configs the builders use. Cross-field rules are in
``validate``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from flex_bert.model.config import CONTEXT_LENGTH
from flex_bert.train.algorithms import parse_algorithms
from flex_bert.train.callbacks import parse_callbacks
from flex_bert.train.checks import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_TIME,
    PROBABILITY,
    SEED,
    OneOf,
    Range,
    TimeRange,
    check_settings,
    one_line,
    parse_section,
    setting,
    suggest,
)
from flex_bert.train.loggers import LOGGERS
from flex_bert.train.schedulers import parse_scheduler
from flex_bert.train.shape import run_shape
from flex_bert.train.upstream_model import ModelConfigNode, settle_node

OPTIMIZERS = ("decoupled_stableadamw",)  # fine-tuning has torch's adamw too (finetune_config)


@dataclass
class StreamConfig:
    """One dataset folder of a mixture (mosaicml-streaming ``Stream``)."""

    local: str = MISSING
    remote: str | None = None
    split: str | None = None
    proportion: float | None = setting(None, POSITIVE)  # share of each epoch's samples
    repeat: float | None = setting(None, POSITIVE)  # or: how many times this folder is seen per epoch


@dataclass
class DatasetConfig:
    local: str | None = None
    remote: str | None = None
    split: str | None = None
    tokenizer_name: str | None = (
        None  # must equal the top-level tokenizer_name (the seed YAML interpolates it)
    )
    # the run's shared values unless a section sets its own
    max_seq_len: int = setting("${max_seq_len}", COUNT)
    shuffle: bool = True
    mlm_probability: float = setting("${mlm_probability}", PROBABILITY)
    streaming: bool = False  # false: data must be local (upstream's NoStreamingDataset); true: remote allowed
    shuffle_seed: int = setting(9176, SEED)
    whole_word_mask: bool = False  # TAPT option: mask whole words (all [MASK]), as HF's whole-word collator
    streams: dict[str, StreamConfig] | None = None  # weighted dataset folders instead of local/split
    # evaluation masks are seeded per document: the same masks at every evaluation
    eval_seed: int = setting(0, SEED)


@dataclass
class LoaderConfig:
    name: str = "text"  # the only loader; the name is kept for the seed YAML
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    drop_last: bool = True
    num_workers: int = setting(0, NON_NEGATIVE)
    # true: best-fit packing of whole documents into rows; false: each max_seq_len slot of a row holds one
    # document (upstream's unpacked batches: global_train_batch_size documents per step), still unpadded
    sequence_packing: bool = False
    # documents the best-fit packer chooses from (default: 4 rows' worth of tokens)
    packing_buffer_docs: int | None = setting(None, COUNT)
    # upstream's batch-size warmup (packed training): a device's packed rows grow one at a time from
    # batch_size_warmup_min_size / device_train_microbatch_size to the full batch while the first
    # batch_size_warmup_tokens real tokens are trained, each size for about the same number of steps
    batch_size_warmup_min_size: int | None = setting(None, COUNT)
    batch_size_warmup_tokens: str | None = setting(None, TimeRange(lo=0, lo_open=True, units=("tok",)))
    prefetch_factor: int = setting(2, COUNT)
    pin_memory: bool = True


@dataclass
class ModelSection:
    name: str = "flex_bert"
    pretrained_model_name: str | None = None  # upstream leftover; has no effect
    tokenizer_name: str | None = None  # must equal the top-level tokenizer_name
    disable_train_metrics: bool = True
    pretrained_checkpoint: str | None = None  # weights only, e.g. from scripts/convert_from_hf.py
    # upstream: the metric re-computes the loss without label smoothing; there is none here, so no effect
    recompute_metric_loss: bool = False
    gradient_checkpointing: bool | None = None  # upstream's place for model_config.gradient_checkpointing
    # with model_config.compile_model on a GPU: Inductor's coordinate-descent tuning of the compiled kernels.
    # Off by default: the memory-bound work runs in FlexBERT's own Triton kernels, so it gains nothing measurable
    # (docs/PERFORMANCE.md) and adds minutes of compilation; its launch configurations are chosen by timing, so
    # runs on different machines may differ in the last bits
    compile_tuning: bool = False
    # typed (upstream_model.ModelConfigNode): a misspelled key fails at the merge; then the keys set, as a mapping
    model_config: Any = field(default_factory=ModelConfigNode)


@dataclass
class OptimizerConfig:
    name: str = "decoupled_stableadamw"
    lr: float = setting(3e-4, POSITIVE)  # decoupled weight decay divides by max_lr = lr
    betas: list[float] = setting([0.9, 0.98], Range(lo=0, hi=1, hi_open=True, length=2))
    eps: float = setting(1e-6, POSITIVE)
    # decoupled: the share of the weights removed per step at the peak lr (1 or more would zero or flip them)
    weight_decay: float = setting(1e-5, Range(lo=0, hi=1, hi_open=True))
    filter_bias_norm_wd: bool = True  # norms and biases get no weight decay
    log_grad_norm: bool = False  # log the global gradient norm every batch (the callback sets an interval)


@dataclass
class InitFromCheckpoint:
    """Upstream's initialisation of a larger model from a smaller one's checkpoint by weight tiling."""

    checkpoint_cfg: Any = (
        MISSING  # the smaller model's YAML file (its `model` section), or that section itself
    )
    checkpoint_load_path: str = MISSING  # reads <checkpoint_load_path>/<checkpoint_run_name>/latest-rank0.pt
    checkpoint_run_name: str = MISSING
    mode: str = setting(
        "tile_weights_from_middle",
        OneOf(("tile_weights_from_middle", "tile_weights_from_edge", "center_weights")),
    )


@dataclass
class TrainConfig:
    run_name: str = MISSING
    # Shared values the sections interpolate (${data_local}, ${max_seq_len}, ...).
    data_local: str | None = None
    data_remote: str | None = None
    max_seq_len: int = setting(CONTEXT_LENGTH, COUNT)
    tokenizer_name: str = "answerdotai/ModernBERT-base"
    mlm_probability: float = setting(0.3, PROBABILITY)
    # token durations count padding too, as upstream's default; the ModernBERT YAMLs set false (real tokens)
    count_padding_tokens: bool = True

    model: ModelSection = field(default_factory=ModelSection)
    train_loader: LoaderConfig = field(default_factory=LoaderConfig)
    eval_loader: LoaderConfig | None = None
    # the sections that name implementations: checked at load into their configs (schedulers.SCHEDULERS,
    # callbacks.CALLBACKS, loggers.LOGGERS, algorithms.ALGORITHMS), which the builders use
    scheduler: Any = field(default_factory=lambda: {"name": "constant_with_warmup"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    max_duration: str = setting(MISSING, TimeRange(lo=0, lo_open=True, units=("ba", "tok", "sp", "ep")))
    eval_interval: str = setting("1ep", POSITIVE_TIME)
    eval_subset_num_batches: int = setting(-1, Range(lo=1, also=(-1,)))  # -1: the whole eval split
    global_train_batch_size: int = setting(MISSING, COUNT)  # in max_seq_len slots, not documents (packing)
    global_eval_batch_size: int | None = setting(None, COUNT)
    # documents per GPU and evaluation batch; unset: global_eval_batch_size / GPUs (as upstream), else 32
    device_eval_batch_size: int | None = setting(None, COUNT)
    # composer's: each evaluation batch runs in micro-batches of this many documents (unset: the whole batch)
    device_eval_microbatch_size: int | None = setting(None, COUNT)
    device_train_microbatch_size: int = setting(MISSING, COUNT)  # slots per micro-batch = one packed row
    seed: int = setting(17, SEED)
    precision: str = setting("amp_bf16", OneOf(("amp_bf16", "amp_fp16", "fp32")))
    device: str = setting("auto", OneOf(("auto", "gpu", "cpu")))

    progress_bar: bool = False
    log_to_console: bool = True
    # composer's console logger counts in batches or epochs only
    console_log_interval: str = setting("1ba", TimeRange(lo=0, lo_open=True, units=("ba", "ep")))
    callbacks: dict[str, Any] = field(default_factory=dict)
    loggers: dict[str, Any] = field(default_factory=dict)
    algorithms: dict[str, Any] = field(default_factory=dict)
    # composer's Trainer arguments that upstream's main.py passes through, with composer's meaning
    train_subset_num_batches: int = setting(-1, Range(lo=1, also=(-1,)))  # batches per epoch; -1: all
    spin_dataloaders: bool = True  # the packed loader resumes from its saved position either way
    python_log_level: str | None = setting(
        None, OneOf((None, "debug", "info", "warning", "error", "critical"))
    )
    # composer's whole-model torch.compile: this recipe compiles each layer instead (model_config.compile_model)
    compile_config: dict[str, Any] | None = None

    save_folder: str | None = None
    save_interval: str = setting("1000ba", POSITIVE_TIME)
    # -1 keeps all; composer deletes every local checkpoint with 0 (it expects a remote copy)
    save_num_checkpoints_to_keep: int = setting(-1, Range(lo=1, also=(-1,)))
    save_overwrite: bool = False
    load_path: str | None = None
    load_weights_only: bool = False
    trust_checkpoint: bool = False  # allow full unpickling of load_path, autoresume, pretrained_checkpoint
    autoresume: bool = False
    reset_time: bool = False
    restart_override: bool = False
    restart_override_max_lr: bool = (
        False  # upstream keeps the checkpoint's max_lr; true sets it to optimizer.lr
    )
    # resuming on data (or a batch shape) other than the checkpoint's is an error; true starts the data
    # stream again instead (weights, optimizer and time continue)
    restart_data_if_changed: bool = False
    init_from_checkpoint: InitFromCheckpoint | None = None

    fsdp_config: dict[str, Any] | None = None
    dist_timeout: float = setting(600.0, Range(lo=0, lo_open=True, hi=timedelta.max.total_seconds()))


def load_config(yaml_paths: list[str], overrides: list[str] | None = None) -> DictConfig:
    """YAML files, then ``key=value`` overrides, onto the typed schema; resolved and validated."""
    return load_config_and_notes(yaml_paths, overrides)[0]


def load_config_and_notes(
    yaml_paths: list[str], overrides: list[str] | None = None
) -> tuple[DictConfig, list]:
    """The config, and one line for each upstream or composer key that was mapped or is ignored.

    omegaconf names an unknown key (at any depth), a wrong type or a broken interpolation; ``one_line`` makes
    that one line, with a close match for an unknown key. Variables (top-level keys the config uses by name,
    in an interpolation or a path's braces) join the schema for the merge and leave it once resolved."""
    from flex_bert.train import compat

    try:
        parts = [OmegaConf.load(p) for p in yaml_paths] + [OmegaConf.from_dotlist(list(overrides or []))]
        variables = compat.variables(parts, TrainConfig)
        cfg = OmegaConf.structured(TrainConfig)
        with open_dict(cfg):
            cfg.update({v: None for v in variables})
        cfg = OmegaConf.merge(cfg, *parts)
        OmegaConf.resolve(cfg)
        settle_node(cfg)
        values = {v: cfg[v] for v in variables}
        with open_dict(cfg):
            for v in variables:
                del cfg[v]
        filled = compat.fill_paths(cfg, values)
    except OmegaConfBaseException as e:
        raise one_line(e) from None
    except TypeError as e:  # omegaconf: e.g. a list item set as `key.0=...` over a list
        raise ValueError(f"cannot merge the config files and overrides: {e}") from None
    except (OSError, yaml.YAMLError) as e:  # a missing file, or YAML syntax (the message spans lines)
        raise ValueError(f"cannot read the config: {' '.join(str(e).split())}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"missing required config values: {', '.join(missing)}")
    validate(cfg)
    return cfg, compat.notes(cfg, variables, filled)


def validate(cfg: DictConfig) -> None:
    """Each setting's declared rule (``checks.setting``), the sections that name implementations (whose checked
    configs replace the YAML's mappings), then cross-field rules, each naming the key to change."""
    from flex_bert.train import compat

    check_settings(cfg)
    cfg.scheduler = parse_scheduler(cfg.scheduler)
    cfg.callbacks = parse_callbacks(cfg.callbacks, cfg.optimizer.log_grad_norm)
    cfg.loggers = parse_section("loggers", cfg.loggers, LOGGERS)
    cfg.algorithms = parse_algorithms(cfg.algorithms)
    compat.check_model_config(cfg)
    compat.check_batch_size_warmup(cfg)
    compat.check_init_from_checkpoint(cfg)
    if cfg.optimizer.name not in OPTIMIZERS:
        raise ValueError(
            f"optimizer.name {cfg.optimizer.name!r} is not supported{suggest(cfg.optimizer.name, OPTIMIZERS)}"
        )
    if cfg.model.name != "flex_bert":
        raise ValueError(f"model.name must be 'flex_bert', got {cfg.model.name!r}")
    for section in ("train_loader", "eval_loader"):
        loader = cfg[section]
        if loader is None:
            continue
        if loader.name != "text":
            raise ValueError(f"{section}.name must be 'text' (the seed YAML's name), got {loader.name!r}")
        ds = loader.dataset
        if ds.streams is None and ds.local is None:
            raise ValueError(f"{section}.dataset needs `local` (with `split`) or `streams`")
        if ds.remote and not ds.streaming:
            raise ValueError(f"{section}.dataset.remote is set but streaming is false: set streaming: true")
        if ds.max_seq_len > cfg.max_seq_len and section == "train_loader":
            raise ValueError(
                f"{section}.dataset.max_seq_len ({ds.max_seq_len}) exceeds max_seq_len ({cfg.max_seq_len})"
            )
    if cfg.eval_loader is not None and cfg.eval_loader.sequence_packing:
        raise ValueError(
            "eval_loader.sequence_packing must be false: evaluation runs whole, unpacked documents"
        )
    shape = run_shape(cfg)  # the batch splits evenly into packed rows on this job's GPUs
    given_global = cfg.global_eval_batch_size
    if cfg.device_eval_batch_size is not None and given_global not in (
        None,
        shape.eval_batch_size * shape.world_size,
    ):
        warnings.warn(
            f"global_eval_batch_size ({given_global}) has no effect: evaluation takes device_eval_batch_size "
            f"({cfg.device_eval_batch_size}) documents per GPU x {shape.world_size} GPU(s)",
            stacklevel=2,
        )
    for key in ("reset_time", "restart_override"):
        if cfg[key] and not cfg.load_path:  # a phase-2 YAML smoke-tested from scratch: upstream goes on too
            warnings.warn(f"{key}: true has no effect without load_path (nothing is loaded)", stacklevel=2)
    for key, value in (
        ("model.tokenizer_name", cfg.model.tokenizer_name),
        ("train_loader.dataset.tokenizer_name", cfg.train_loader.dataset.tokenizer_name),
        (
            "eval_loader.dataset.tokenizer_name",
            cfg.eval_loader.dataset.tokenizer_name if cfg.eval_loader is not None else None,
        ),
    ):
        if value is not None and value != cfg.tokenizer_name:
            raise ValueError(
                f"{key} ({value!r}) differs from tokenizer_name ({cfg.tokenizer_name!r}), which is the one used: "
                "set tokenizer_name (the seed YAML's sections interpolate ${tokenizer_name})"
            )
    if cfg.eval_loader is not None and cfg.eval_loader.dataset.shuffle:
        warnings.warn(
            "eval_loader.dataset.shuffle has no effect: evaluation reads documents in order", stacklevel=2
        )
    if cfg.model.pretrained_model_name not in (None, "bert-base-uncased"):
        warnings.warn(
            "model.pretrained_model_name has no effect (an upstream leftover); use load_path", stacklevel=2
        )
