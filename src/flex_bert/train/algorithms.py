"""Composer's algorithms a YAML's ``algorithms`` section can name, each with its config (defaults and valid
values) beside it, with composer's meaning (upstream's main.py builds the same ones). Entries upstream builds
that mean nothing for this model are refused at load with the reason (``REFUSED``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flex_bert.train.checks import (
    NON_NEGATIVE_TIME,
    POSITIVE,
    OneOf,
    Range,
    TimeRange,
    parse_section,
    setting,
)


@dataclass
class GradientClippingConfig:
    clipping_type: str = setting("norm", OneOf(("norm", "value", "adaptive")))
    clipping_threshold: float = setting(1.0, POSITIVE)

    def build(self):
        from composer.algorithms import GradientClipping

        return GradientClipping(**asdict(self))


@dataclass
class EmaConfig:
    half_life: str | None = setting("1000ba", TimeRange(lo=0, lo_open=True, units=("ba", "ep")))
    smoothing: float | None = setting(None, Range(lo=0, hi=1, lo_open=True, hi_open=True))
    ema_start: str = setting("0.0dur", NON_NEGATIVE_TIME)
    update_interval: str | None = setting(None, TimeRange(lo=0, lo_open=True, units=("ba", "ep")))

    def build(self):
        from composer.algorithms import EMA

        return EMA(**asdict(self))


ALGORITHMS: dict[str, type] = {"gradient_clipping": GradientClippingConfig, "ema": EmaConfig}

REFUSED = {
    "alibi": "ALiBi replaces position embeddings in BERT; FlexBERT uses rotary embeddings",
    "gated_linear_units": "it swaps BERT's MLP for a GLU by surgery; FlexBERT's MLP is a GLU already",
    "rope_schedule": "a schedule of the rotary base is not implemented; set model_config.rotary_emb_base per phase",
}


def parse_algorithms(entries) -> dict:
    return parse_section("algorithms", entries, ALGORITHMS, REFUSED)


def build_algorithms(section: dict) -> list:
    """The algorithms of a checked ``algorithms`` section (``parse_algorithms``)."""
    return [settings.build() for settings in section.values()]
