"""Name -> implementation tables for the config sections that choose one (plain dicts; errors list names).

A settings dataclass validates each YAML section: unknown keys are errors with a suggestion, and each field's
valid values are declared beside its default (``checks.setting``). Schedulers map to ``(settings, builder)``;
callbacks, loggers and algorithms to their settings, built in ``flex_bert.train.callbacks``. Entries upstream's
main.py builds that this recipe does not are in ``REFUSED``: their name fails at load with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flex_bert.train.checks import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_TIME,
    POSITIVE,
    POSITIVE_TIME,
    OneOf,
    Range,
    TimeRange,
    check_settings,
    one_line,
    setting,
    suggest,
)


# ---- schedulers -------------------------------------------------------------------------------------------
# alpha_* multiply the optimizer's lr: a negative one would ascend the loss; alpha_f is where a decay ends.
@dataclass
class ConstantWithWarmup:
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha: float = setting(1.0, NON_NEGATIVE)


@dataclass
class WarmupStableDecay:
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_decay: str = setting("0.1dur", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_f: float = setting(0.0, FRACTION)


@dataclass
class OneMinusSqrt:
    t_decay: str = setting("1dur", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_f: float = setting(0.0, FRACTION)
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)


@dataclass
class CosineWithWarmup:
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_f: float = setting(0.0, FRACTION)


@dataclass
class LinearDecayWithWarmup:
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_i: float = setting(1.0, NON_NEGATIVE)
    alpha_f: float = setting(0.0, FRACTION)


def _composer_sched(cls_name: str):
    def build(s):
        import composer.optim.scheduler as cs

        return getattr(cs, cls_name)(**asdict(s))

    return build


def _own_sched(cls_name: str):
    def build(s):
        from flex_bert.train import schedulers

        return getattr(schedulers, cls_name)(**asdict(s))

    return build


SCHEDULERS = {
    "constant_with_warmup": (ConstantWithWarmup, _composer_sched("ConstantWithWarmupScheduler")),
    "warmup_stable_decay": (WarmupStableDecay, _own_sched("WarmupStableDecayScheduler")),
    "one_minus_sqrt": (OneMinusSqrt, _own_sched("OneMinusSqrtScheduler")),
    "cosine_with_warmup": (CosineWithWarmup, _composer_sched("CosineAnnealingWithWarmupScheduler")),
    "linear_decay_with_warmup": (LinearDecayWithWarmup, _composer_sched("LinearWithWarmupScheduler")),
}

OPTIMIZERS = {"decoupled_stableadamw"}


# ---- callbacks --------------------------------------------------------------------------------------------
@dataclass
class SpeedMonitorSettings:
    window_size: int = setting(100, COUNT)
    gpu_flops_available: float | None = setting(
        None, POSITIVE
    )  # peak FLOP/s for MFU (default: H100/H200 989e12)


@dataclass
class Empty:
    pass


@dataclass
class ScheduledGcSettings:
    # run Python's garbage collector every N batches (automatic gc off meanwhile)
    batch_interval: int = setting(1000, COUNT)


@dataclass
class LogGradNormSettings:
    batch_log_interval: int = setting(10, COUNT)
    log_optimizer_metrics: bool = True  # upstream's switch: false logs nothing


@dataclass
class OptimizerMonitorSettings:  # composer's OptimizerMonitor
    log_optimizer_metrics: bool = True
    batch_log_interval: int = setting(10, COUNT)


@dataclass
class RuntimeEstimatorSettings:  # composer's RuntimeEstimator
    skip_batches: int = setting(1, Range(lo=0))
    time_unit: str = setting("hours", OneOf(("seconds", "minutes", "hours", "days")))


@dataclass
class PackingEfficiencySettings:
    log_interval: int = setting(10, COUNT)


@dataclass
class NanGuardSettings:
    action: str = setting("stop", OneOf(("stop", "skip")))
    max_consecutive_skips: int = setting(10, COUNT)  # skip: more non-finite batches in a row stop the run


@dataclass
class ProgressSettings:
    # one line (batch, loss, lr, tokens/s, MFU, ETA) at most every N seconds, and at the first and last batch
    every_seconds: float = setting(30.0, NON_NEGATIVE)
    enabled: bool = True


@dataclass
class TorchProfileSettings:
    folder: str | None = None  # default: <save_folder>/profile
    start_batch: int = setting(10, COUNT)  # profile batches [start_batch, start_batch + num_batches)
    num_batches: int = setting(3, COUNT)
    trace: bool = False  # also write a Chrome trace per rank (tens of MB)


CALLBACKS: dict[str, type] = {  # name -> settings; built in flex_bert.train.callbacks
    "speed_monitor": SpeedMonitorSettings,
    "lr_monitor": Empty,
    "scheduled_gc": ScheduledGcSettings,
    "log_grad_norm": LogGradNormSettings,
    "packing_efficiency": PackingEfficiencySettings,
    "memory_monitor": Empty,
    "nan_guard": NanGuardSettings,
    "progress": ProgressSettings,
    "torch_profile": TorchProfileSettings,
    "optimizer_monitor": OptimizerMonitorSettings,
    "runtime_estimator": RuntimeEstimatorSettings,
    "dataloader_speed": Empty,  # upstream's: how long each batch took to come out of the loader
}


# ---- loggers ----------------------------------------------------------------------------------------------
@dataclass
class WandbSettings:  # composer's WandBLogger arguments
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_artifacts: bool = False
    rank_zero_only: bool = True
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to wandb.init (resume, id, mode, ...)


@dataclass
class TensorboardSettings:
    log_dir: str | None = None


LOGGERS: dict[str, type] = {
    "wandb": WandbSettings,
    "tensorboard": TensorboardSettings,
}


# ---- algorithms (composer's) ----------------------------------------------------------------------------
@dataclass
class GradientClippingSettings:
    clipping_type: str = setting("norm", OneOf(("norm", "value", "adaptive")))
    clipping_threshold: float = setting(1.0, POSITIVE)


@dataclass
class EmaSettings:
    half_life: str | None = setting("1000ba", TimeRange(lo=0, lo_open=True, units=("ba", "ep")))
    smoothing: float | None = setting(None, Range(lo=0, hi=1, lo_open=True, hi_open=True))
    ema_start: str = setting("0.0dur", NON_NEGATIVE_TIME)
    update_interval: str | None = setting(None, TimeRange(lo=0, lo_open=True, units=("ba", "ep")))


ALGORITHMS: dict[str, type] = {
    "gradient_clipping": GradientClippingSettings,
    "ema": EmaSettings,
}

# Names upstream's main.py builds that have no meaning for this model, and what to use instead.
REFUSED = {
    "algorithms.alibi": "ALiBi replaces position embeddings in BERT; FlexBERT uses rotary embeddings",
    "algorithms.gated_linear_units": "it swaps BERT's MLP for a GLU by surgery; FlexBERT's MLP is a GLU already",
    "algorithms.rope_schedule": "a schedule of the rotary base is not implemented; set model_config.rotary_emb_base "
    "per phase",
}


def _validated(where: str, settings_cls: type, settings) -> Any:
    try:
        out = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(settings_cls), settings))
    except (
        OmegaConfBaseException,
        ValueError,
    ) as e:  # omegaconf's ValueError: settings that are not a mapping
        raise one_line(e, where) from None
    check_settings(out, where)
    return out


def check_named(section: str, name: str, settings, table: dict) -> Any:
    if f"{section}.{name}" in REFUSED:
        raise ValueError(f"{section}.{name} is not supported: {REFUSED[f'{section}.{name}']}")
    if name not in table:
        raise ValueError(f"unknown {section} entry {name!r}{suggest(name, table)}")
    return _validated(f"{section}.{name}", table[name], settings)


def check_section(section: str, cfg, table: dict) -> Any:
    """A ``name`` + settings section (the scheduler)."""
    data = dict(OmegaConf.to_container(cfg)) if OmegaConf.is_config(cfg) else dict(cfg)
    name = data.pop("name", None)
    if name not in table:
        raise ValueError(f"{section}.name {name!r} is not supported{suggest(str(name), table)}")
    return _validated(f"{section}", table[name][0], data)


def build_scheduler(cfg) -> Any:
    """The scheduler. A zero warmup in any unit (the guide's ``t_warmup: 0tok``) is ``0dur``, so that it
    goes with a ``max_duration``/``t_max`` in batches too (composer refuses mixed units, even for zero)."""
    from composer.core import Time

    settings = check_section("scheduler", cfg, SCHEDULERS)
    warmup = getattr(settings, "t_warmup", None)
    if warmup is not None and Time.from_timestring(str(warmup)).value == 0:
        settings.t_warmup = "0dur"
    return SCHEDULERS[cfg["name"]][1](settings)
