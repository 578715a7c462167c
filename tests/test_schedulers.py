"""Learning-rate multipliers against their closed forms, in batches and in tokens."""

import math

import pytest
import torch
from composer.core import State, Time, Timestamp
from composer.devices import DeviceCPU

from flex_bert.train.schedulers import parse_scheduler


def build_scheduler(section):
    return parse_scheduler(section).build()


def _state(max_duration: str) -> State:
    return State(
        model=torch.nn.Linear(1, 1),
        rank_zero_seed=0,
        run_name="t",
        device=DeviceCPU(),
        max_duration=max_duration,
    )


def _at(state: State, **time) -> State:
    state.timestamp = Timestamp(**time)
    return state


def test_one_minus_sqrt_bioclinical_phase2():
    state = _state("1000ba")
    sched = build_scheduler(
        {"name": "one_minus_sqrt", "t_decay": "1000ba", "t_max": "1000ba", "alpha_f": 0.001}
    )
    for b in (0, 1, 10, 250, 500, 999, 1000):
        expected = 0.001 + 0.999 * (1 - math.sqrt(b / 1000))
        assert sched(_at(state, batch=b)) == pytest.approx(expected, abs=1e-12)


def test_one_minus_sqrt_decays_only_over_the_last_t_decay_in_tokens():
    state = _state("1_000_000tok")
    sched = build_scheduler({"name": "one_minus_sqrt", "t_decay": "0.2dur", "t_max": "1dur", "alpha_f": 0.0})
    assert sched(_at(state, token=799_999)) == 1.0
    assert sched(_at(state, token=800_000)) == 1.0
    assert sched(_at(state, token=850_000)) == pytest.approx(1 - math.sqrt(50_000 / 200_000))
    assert sched(_at(state, token=1_000_000)) == pytest.approx(0.0)


def test_warmup_stable_decay():
    state = _state("100ba")
    sched = build_scheduler(
        {"name": "warmup_stable_decay", "t_warmup": "10ba", "t_decay": "20ba", "alpha_f": 0.1}
    )
    assert sched(_at(state, batch=0)) == 0.0
    assert sched(_at(state, batch=5)) == pytest.approx(0.5)
    assert sched(_at(state, batch=10)) == 1.0
    assert sched(_at(state, batch=80)) == 1.0
    assert sched(_at(state, batch=90)) == pytest.approx(1 + (0.1 - 1) * 0.5)
    assert sched(_at(state, batch=100)) == pytest.approx(0.1)


def test_composer_schedulers_by_name():
    state = _state("100ba")
    const = build_scheduler({"name": "constant_with_warmup", "t_warmup": "10ba", "t_max": "100ba"})
    assert const(_at(state, batch=5)) == pytest.approx(0.5)
    assert const(_at(state, batch=50)) == 1.0
    cos = build_scheduler({"name": "cosine_with_warmup", "t_warmup": "0ba", "t_max": "100ba", "alpha_f": 0.0})
    assert cos(_at(state, batch=50)) == pytest.approx(0.5)
    lin = build_scheduler({"name": "linear_decay_with_warmup", "t_warmup": "0ba", "t_max": "100ba"})
    assert lin(_at(state, batch=25)) == pytest.approx(0.75)


def test_unknown_scheduler_and_key_are_errors_with_a_suggestion():
    with pytest.raises(ValueError, match="one_minus_sqrt"):
        build_scheduler({"name": "one_minus_sqr"})
    with pytest.raises(ValueError, match="did you mean 't_decay'"):
        build_scheduler({"name": "one_minus_sqrt", "t_decya": "10ba"})


def test_mixed_units_are_an_error():
    state = _state("100ba")
    sched = build_scheduler({"name": "one_minus_sqrt", "t_decay": "1000tok", "t_max": "100ba"})
    with pytest.raises(ValueError, match="one unit"):
        sched(_at(state, batch=1))
    assert Time.from_timestring("160_453_000_000tok").value == 160_453_000_000


def test_the_guides_zero_warmup_in_tokens_goes_with_a_duration_in_batches():
    """`t_warmup: 0tok` with `max_duration: 30ba` (a user who counts steps): composer refuses the mixed units
    even for a zero warmup; it is the same schedule as 0ba."""
    state = _state("30ba")
    sched = build_scheduler({"name": "constant_with_warmup", "t_warmup": "0tok", "t_max": "30ba"})
    assert [sched(_at(state, batch=b)) for b in (0, 15, 29)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="same units"):  # a real warmup in other units stays an error
        build_scheduler({"name": "constant_with_warmup", "t_warmup": "10tok", "t_max": "30ba"})(state)


@pytest.mark.parametrize(
    "settings,match",
    [
        ({"name": "warmup_stable_decay", "alpha_f": -2.0}, r"scheduler\.alpha_f must be in \[0, 1\]"),
        ({"name": "cosine_with_warmup", "alpha_f": 1.5}, r"scheduler\.alpha_f must be in \[0, 1\]"),
        ({"name": "linear_decay_with_warmup", "alpha_i": -1.0}, r"scheduler\.alpha_i must be >= 0"),
        ({"name": "constant_with_warmup", "t_warmup": "10 batches"}, r"scheduler\.t_warmup must be a time"),
        ({"name": "one_minus_sqrt", "t_decay": "-5ba"}, r"scheduler\.t_decay must be a time"),
        ({"name": "one_minus_sqrt", "t_max": "0dur"}, r"scheduler\.t_max must be a time"),
    ],
)
def test_scheduler_settings_out_of_range_are_refused_before_training(settings, match):
    """A negative multiplier would make the lr negative (gradient ascent); a bad time string would fail only
    at the first step, inside composer."""
    with pytest.raises(ValueError, match=match) as err:
        build_scheduler(settings)
    assert "\n" not in str(err.value)
