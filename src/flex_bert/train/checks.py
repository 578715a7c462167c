"""Valid values of the config settings, declared on the settings dataclasses beside each default.

A field made with ``setting(default, rule)`` carries its rule (``Range``, ``TimeRange`` or ``OneOf``) in its
metadata; ``check_settings`` walks a whole config (nested sections, dicts of sections) and checks every rule,
so a bad value fails at load, in one line naming the key and what is valid. ``one_line`` turns omegaconf's
multi-line errors (unknown key, wrong type, bad interpolation) into the same kind of line.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from composer.utils.reproducibility import MAX_SEED
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

INT64_MAX = 2**63 - 1  # counts and seeds reach torch and numpy as int64
TIME_UNITS = ("ba", "tok", "sp", "ep", "dur")  # composer's training-progress units


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (either end open, or absent), or one of ``also``; lists: ``length`` such values."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()  # special values outside the range, e.g. -1 for "all"
    length: int | None = None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        else:
            text = "finite"
        text = " or ".join([*map(str, self.also), text])
        return f"{self.length} values, each {text}" if self.length else text

    def holds(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if v in self.also:
            return True
        if not math.isfinite(v) or (isinstance(v, int) and abs(v) > INT64_MAX):
            return False
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def check(self, key: str, value) -> None:
        values = list(value) if self.length else [value]
        if (self.length and len(values) != self.length) or not all(self.holds(v) for v in values):
            wide = any(isinstance(v, int) and abs(v) > INT64_MAX for v in values)
            raise ValueError(
                f"{key} must be {self.describe()}{' (and fit in 64 bits)' if wide else ''}, "
                f"got {values if self.length else value!r}"
            )


@dataclass(frozen=True)
class TimeRange(Range):
    """A composer time string (``"1000ba"``, ``"0.1dur"``) in one of ``units``, its value in the range."""

    units: tuple[str, ...] = TIME_UNITS

    def check(self, key: str, value) -> None:
        from composer.core import Time

        hint = f"a time string in {'/'.join(self.units)} with a value {self.describe()}, e.g. '100{self.units[0]}'"
        try:
            t = Time.from_timestring(str(value))
        except (ValueError, TypeError) as e:  # composer: ValueError for a bad string, TypeError for "1.5ba"
            raise ValueError(f"{key} must be {hint}; got {value!r} ({e})") from None
        if t.unit.value not in self.units or not self.holds(t.value):
            raise ValueError(f"{key} must be {hint}; got {value!r}")


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def check(self, key: str, value) -> None:
        if value not in self.choices:
            raise ValueError(f"{key} must be one of {', '.join(map(str, self.choices))}; got {value!r}")


# The rules most settings share.
COUNT = Range(lo=1)  # sizes, intervals in batches, numbers of things
NON_NEGATIVE = Range(lo=0)
POSITIVE = Range(lo=0, lo_open=True)
PROBABILITY = Range(lo=0, hi=1, lo_open=True, hi_open=True)
FRACTION = Range(lo=0, hi=1)
SEED = Range(lo=0, hi=MAX_SEED)  # composer seeds numpy's legacy generator, which takes 32 bits
POSITIVE_TIME = TimeRange(lo=0, lo_open=True)  # intervals and lengths: a zero one would never fire or end
NON_NEGATIVE_TIME = TimeRange(lo=0)  # a warmup or decay may be zero


def setting(default: Any, rule, **kwargs) -> Any:
    """A dataclass field with its default and its rule (a list default is copied for each instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule}, **kwargs)
    return field(default=default, metadata={"rule": rule}, **kwargs)


def check_settings(node, where: str = "") -> None:
    """Check every declared rule in a settings dataclass instance or a structured OmegaConf node, recursively."""
    cls = OmegaConf.get_type(node) if OmegaConf.is_config(node) else type(node)
    if is_dataclass(cls):
        items = [(f.name, _value(node, f.name), f.metadata.get("rule")) for f in fields(cls)]
    elif OmegaConf.is_dict(node) or isinstance(node, dict):  # a dict of sections (streams)
        items = [(str(k), v, None) for k, v in node.items()]
    else:
        return
    for name, value, rule in items:
        key = f"{where}.{name}" if where else name
        if rule is not None and value is not None:
            rule.check(key, value)
        check_settings(value, key)


def _value(node, name: str):
    return node[name] if OmegaConf.is_config(node) else getattr(node, name)


def suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {sorted(valid)}"


def one_line(e: Exception, where: str = "") -> ValueError:
    """omegaconf's error (several lines: key, types) as one line naming the full key."""
    key = ".".join(k for k in (where, str(getattr(e, "full_key", "") or "")) if k)
    if isinstance(e, ConfigKeyError) and is_dataclass(getattr(e, "object_type", None)):
        names = [f.name for f in fields(e.object_type)]
        return ValueError(f"unknown config key {key!r}{suggest(str(e.key), names)}")
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ValueError(f"{key}: {message}" if key else message)


def parse_settings(where: str, settings_cls: type, settings) -> Any:
    """``settings`` (a mapping, or None for all defaults) as a checked ``settings_cls`` instance: unknown keys,
    types and every declared rule, each failing in one line naming the key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        out = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(settings_cls), settings or {}))
    except (
        OmegaConfBaseException,
        ValueError,
    ) as e:  # omegaconf's ValueError: settings that are not a mapping
        raise one_line(e, where) from None
    check_settings(out, where)
    return out


def parse_section(
    section: str, entries, table: dict[str, type], refused: dict[str, str] | None = None
) -> dict:
    """A section of named entries (callbacks, loggers, algorithms): name -> its checked config."""
    out = {}
    for name, settings in (entries or {}).items():
        if name in (refused or {}):
            raise ValueError(f"{section}.{name} is not supported: {refused[name]}")
        if name not in table:
            raise ValueError(f"unknown {section} entry {name!r}{suggest(name, table)}")
        out[name] = parse_settings(f"{section}.{name}", table[name], settings)
    return out
