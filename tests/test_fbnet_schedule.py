"""The cosine schedule with restarts and a gradient-rising stage (seed 003) that FBNet brought to
the shared schedules (search/training.py), at chosen steps, and its config keys."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from lightnas_cli.errors import ConfigError
from lightnas_cli.search.training import LearningRateSchedule, schedule_from_config


def restarts(**overrides) -> LearningRateSchedule:
    # Period 0: steps 0-9 (peak 1.0); period 1: steps 10-29 (peak 0.5, rise over 4 steps);
    # period 2: steps 30-69 (peak 0.25). Floor: 0.1 x the period's peak.
    options = dict(base_lr=1.0, kind="cosine_restarts", restart_steps=10, period_mul=2.0,
                   peak_mul=0.5, floor=0.1, rise_steps=4)
    options.update(overrides)
    return LearningRateSchedule(**options)


def cosine(low: float, peak: float, fraction: float) -> float:
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * fraction))


def test_first_period_decays_from_the_peak_to_the_floor() -> None:
    schedule = restarts()
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(5) == pytest.approx(0.1 + 0.9 * 0.5)              # half-way: 0.55
    assert schedule(9) == pytest.approx(cosine(0.1, 1.0, 0.9))
    assert schedule.period(9) == (0, 0, 10) and schedule.period(10) == (1, 10, 20)


def test_restart_rises_linearly_from_the_floor_then_decays() -> None:
    schedule = restarts()
    assert schedule(10) == pytest.approx(0.05)                        # the new floor: 0.1 x 0.5
    assert schedule(11) == pytest.approx(0.05 + 0.45 * 1 / 4)         # inside the rising stage
    assert schedule(12) == pytest.approx(0.275)
    assert schedule(13) == pytest.approx(0.05 + 0.45 * 3 / 4)
    assert schedule(14) == pytest.approx(0.5)                         # the peak, then the cosine
    assert schedule(22) == pytest.approx(cosine(0.05, 0.5, 8 / 16))
    assert schedule(30) == pytest.approx(0.025)                       # second restart: x0.5 again
    assert schedule(34) == pytest.approx(0.25)
    assert schedule.period(69) == (2, 30, 40) and schedule.period(70) == (3, 70, 80)


def test_rate_is_continuous_across_a_restart_and_never_below_the_floor() -> None:
    schedule = restarts()
    for step in range(200):
        index, _, _ = schedule.period(step)
        assert schedule(step) >= 0.1 * 0.5 ** index - 1e-12
    # The last step of a period is close to its floor, the first of the next is the new floor.
    assert schedule(29) == pytest.approx(cosine(0.05, 0.5, 15 / 16))
    assert abs(schedule(29) - schedule(30)) < 0.05


def test_rise_never_takes_more_than_half_a_period_and_warmup_comes_first() -> None:
    schedule = restarts(rise_steps=100, period_mul=1.0)
    assert schedule.period(25) == (2, 20, 10)
    assert schedule(15) == pytest.approx(0.5)                         # rise clamped to 5 steps
    assert schedule(12) == pytest.approx(0.05 + 0.45 * 2 / 5)
    warm = restarts(warmup_steps=4)
    assert warm(0) == pytest.approx(0.25) and warm(3) == pytest.approx(1.0)
    assert warm(4) == pytest.approx(1.0) and warm(14) == pytest.approx(0.05)


def test_schedule_from_config_reads_the_restart_keys() -> None:
    train = SimpleNamespace(lr=0.2, lr_schedule="cosine_restarts", epochs=3, warmup_epochs=0.0,
                            restart_epochs=0.5, restart_period_mul=3.0, restart_peak_mul=0.9,
                            lr_floor=0.01, rise_steps=2)
    schedule = schedule_from_config(train, steps_per_epoch=8)
    assert (schedule.restart_steps, schedule.period_mul, schedule.peak_mul, schedule.floor,
            schedule.rise_steps) == (4, 3.0, 0.9, 0.01, 2)
    assert schedule(4) == pytest.approx(0.2 * 0.9 * 0.01)
    with pytest.raises(ConfigError, match="first period"):
        LearningRateSchedule(0.1, "cosine_restarts", restart_steps=0)


def test_config_accepts_and_checks_the_keys(tmp_path) -> None:
    from lightnas_cli.config import load_config

    cfg = load_config(None, ["method=enas", "train.lr_schedule=cosine_restarts",
                             "train.rise_steps=7", "train.restart_epochs=2.5"])
    assert cfg.train.rise_steps == 7 and cfg.train.restart_peak_mul == 0.95
    with pytest.raises(ConfigError, match="lr_floor"):
        load_config(None, ["method=enas", "train.lr_floor=1.5"])
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_config(None, ["method=enas", "train.lr_schedule=cosine_restart"])
