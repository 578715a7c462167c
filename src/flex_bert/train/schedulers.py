"""Learning-rate schedules composer lacks: warmup-stable-decay and 1-sqrt (ModernBERT's and BioClinical's).

Both return a multiplier of the optimizer's lr, as composer schedulers do. Durations are composer time strings
(``"3000ba"``, ``"160_453_000_000tok"``, ``"0.1dur"``). Composer steps the scheduler before it advances the
timestamp, so the lr it logs for batch ``b`` is the multiplier at ``b`` (upstream behaves the same).
"""

from __future__ import annotations

import math

from composer.core import State, Time
from composer.optim.scheduler import ComposerScheduler, _convert_time


def _progress(state: State, t_start: Time, t_len: Time) -> float:
    """Fraction of [t_start, t_start + t_len] elapsed, in [0, 1]."""
    if t_len.value <= 0:
        return 1.0
    now = state.timestamp.get(t_start.unit).value
    return min(1.0, max(0.0, (now - t_start.value) / t_len.value))


def _times(state: State, ssr: float, *durations) -> list[Time]:
    times = [_convert_time(t, state, ssr) for t in durations]
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

    def __init__(
        self, t_warmup: str = "0ba", t_decay: str = "0.1dur", t_max: str = "1dur", alpha_f: float = 0.0
    ):
        super().__init__(t_warmup, t_decay, t_max, alpha_f)

    def decay(self, frac: float) -> float:
        return 1.0 + (self.alpha_f - 1.0) * frac


class OneMinusSqrtScheduler(_WarmupStableThenDecay):
    """1 until ``t_max - t_decay``, then ``alpha_f + (1 - alpha_f) * (1 - sqrt(elapsed / t_decay))``.

    BioClinical's phase 2 uses ``t_decay = t_max = max_duration`` and ``alpha_f = 0.001``.
    """

    def __init__(
        self, t_decay: str = "1dur", t_max: str = "1dur", alpha_f: float = 0.0, t_warmup: str = "0ba"
    ):
        super().__init__(t_warmup, t_decay, t_max, alpha_f)

    def decay(self, frac: float) -> float:
        return self.alpha_f + (1.0 - self.alpha_f) * (1.0 - math.sqrt(frac))
