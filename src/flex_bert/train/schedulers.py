"""Learning-rate schedules: each one's config (defaults and valid values, ``checks.setting``) beside it, and the
two composer lacks, warmup-stable-decay and 1-sqrt (ModernBERT's and BioClinical's).

Each returns a multiplier of the optimizer's lr, as composer schedulers do. Durations are composer time strings
(``"3000ba"``, ``"160_453_000_000tok"``, ``"0.1dur"``). Composer steps the scheduler before it advances the
timestamp, so the lr it logs for batch ``b`` is the multiplier at ``b`` (upstream behaves the same).
``SCHEDULERS`` is the YAML's ``scheduler.name`` -> config; ``parse_scheduler`` checks a section once, at load,
and the checked config's ``build()`` makes the scheduler.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from composer.core import State, Time
from composer.optim import scheduler as composer_schedulers
from composer.optim.scheduler import ComposerScheduler

from flex_bert.train.checks import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_TIME,
    POSITIVE_TIME,
    parse_settings,
    setting,
    suggest,
)
from flex_bert.train.composer_private import convert_time


def _progress(state: State, t_start: Time, t_len: Time) -> float:
    """Fraction of [t_start, t_start + t_len] elapsed, in [0, 1]."""
    if t_len.value <= 0:
        return 1.0
    now = state.timestamp.get(t_start.unit).value
    return min(1.0, max(0.0, (now - t_start.value) / t_len.value))


def _times(state: State, ssr: float, *durations) -> list[Time]:
    times = [convert_time(t, state, ssr) for t in durations]
    units = {t.unit for t in times if t.value}  # a zero duration ("0ba", "0tok") fits any unit
    if len(units) > 1:
        raise ValueError(
            f"scheduler durations must share one unit (or use 'dur'), got {[str(t) for t in times]}"
        )
    unit = units.pop() if units else times[-1].unit
    return [t if t.value else Time(0, unit) for t in times]


class _WarmupStableThenDecay(ComposerScheduler):
    """Linear warmup to 1 over ``t_warmup``, 1 until ``t_max - t_decay``, then ``self.decay(fraction)``."""

    def __init__(self, t_warmup: str, t_decay: str, t_max: str, alpha_f: float):
        self.t_warmup, self.t_decay, self.t_max, self.alpha_f = t_warmup, t_decay, t_max, alpha_f

    def decay(self, frac: float) -> float:
        raise NotImplementedError

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        t_warmup, t_decay, t_max = _times(state, ssr, self.t_warmup, self.t_decay, self.t_max)
        now = state.timestamp.get(t_max.unit).value
        if t_warmup.value > 0 and now < t_warmup.value:
            return now / t_warmup.value
        decay_start = Time(t_max.value - t_decay.value, t_max.unit)
        return self.decay(_progress(state, decay_start, t_decay))


class WarmupStableDecayScheduler(_WarmupStableThenDecay):
    """Linear warmup to 1, constant, then linear decay to ``alpha_f`` over the last ``t_decay`` of ``t_max``."""

    def decay(self, frac: float) -> float:
        return 1.0 + (self.alpha_f - 1.0) * frac


class OneMinusSqrtScheduler(_WarmupStableThenDecay):
    """1 until ``t_max - t_decay``, then ``alpha_f + (1 - alpha_f) * (1 - sqrt(elapsed / t_decay))``.

    BioClinical's phase 2 uses ``t_decay = t_max = max_duration`` and ``alpha_f = 0.001``.
    """

    def decay(self, frac: float) -> float:
        return self.alpha_f + (1.0 - self.alpha_f) * (1.0 - math.sqrt(frac))


# ---- configs: alpha_* multiply the optimizer's lr (a negative one would ascend the loss); alpha_f is where a
# decay ends. `name` is the table key, kept so that the saved config names its scheduler.
@dataclass
class _Schedule:
    name: str = ""

    def scheduler_class(self) -> type:
        raise NotImplementedError

    def build(self) -> ComposerScheduler:
        """The scheduler. A zero warmup in any unit (the guide's ``t_warmup: 0tok``) is ``0dur``, so that it
        goes with a ``max_duration``/``t_max`` in batches too (composer refuses mixed units, even for zero)."""
        kwargs = {k: v for k, v in asdict(self).items() if k != "name"}
        if "t_warmup" in kwargs and Time.from_timestring(str(kwargs["t_warmup"])).value == 0:
            kwargs["t_warmup"] = "0dur"
        return self.scheduler_class()(**kwargs)


@dataclass
class ConstantWithWarmup(_Schedule):
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha: float = setting(1.0, NON_NEGATIVE)

    def scheduler_class(self) -> type:
        return composer_schedulers.ConstantWithWarmupScheduler


@dataclass
class WarmupStableDecay(_Schedule):
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_decay: str = setting("0.1dur", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_f: float = setting(0.0, FRACTION)

    def scheduler_class(self) -> type:
        return WarmupStableDecayScheduler


@dataclass
class OneMinusSqrt(_Schedule):
    t_decay: str = setting("1dur", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_f: float = setting(0.0, FRACTION)
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)

    def scheduler_class(self) -> type:
        return OneMinusSqrtScheduler


@dataclass
class CosineWithWarmup(_Schedule):
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_f: float = setting(0.0, FRACTION)

    def scheduler_class(self) -> type:
        return composer_schedulers.CosineAnnealingWithWarmupScheduler


@dataclass
class LinearDecayWithWarmup(_Schedule):
    t_warmup: str = setting("0ba", NON_NEGATIVE_TIME)
    t_max: str = setting("1dur", POSITIVE_TIME)
    alpha_i: float = setting(1.0, NON_NEGATIVE)
    alpha_f: float = setting(0.0, FRACTION)

    def scheduler_class(self) -> type:
        return composer_schedulers.LinearWithWarmupScheduler


SCHEDULERS: dict[str, type[_Schedule]] = {
    "constant_with_warmup": ConstantWithWarmup,
    "warmup_stable_decay": WarmupStableDecay,
    "one_minus_sqrt": OneMinusSqrt,
    "cosine_with_warmup": CosineWithWarmup,
    "linear_decay_with_warmup": LinearDecayWithWarmup,
}


def parse_scheduler(section) -> _Schedule:
    """A ``name`` + settings section, checked (unknown keys, types, ranges): the config ``build()`` uses."""
    from omegaconf import OmegaConf

    data = dict(OmegaConf.to_container(section)) if OmegaConf.is_config(section) else dict(section)
    name = data.get("name")
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler.name {name!r} is not supported{suggest(str(name), SCHEDULERS)}")
    return parse_settings("scheduler", SCHEDULERS[name], data)
