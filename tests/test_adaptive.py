"""The adaptive rule on values: the batch follows k·B_simple, never shrinks, stays whole, and the lr takes over at the cap."""

from __future__ import annotations

import pytest

from growbatch.schedule.adaptive import AdaptiveBatch
from growbatch.schedule.schedule import Phase, Schedule

START = Schedule((Phase(0, 6, 0.1, 16, 0.9),), dataset_size=1442, name="adaptive")


def _rows(schedule: Schedule) -> list[tuple]:
    return [(p.start_epoch, p.end_epoch, p.lr, p.batch_size) for p in schedule.phases]


def test_the_batch_tracks_the_measured_noise_scale_in_whole_multiples_and_never_shrinks() -> None:
    rule = AdaptiveBatch(noise_multiple=1.0, max_batch_size=144, multiple=16)
    after_0 = rule.extend(START, 0, 50.0)  # 50 -> 48 (3 x 16)
    assert _rows(after_0) == [(0, 1, 0.1, 16), (1, 6, 0.1, 48)]
    after_1 = rule.extend(after_0, 1, 20.0)  # a smaller measurement: the batch stays
    assert after_1 == after_0
    after_2 = rule.extend(after_1, 2, 100.0)  # 100 -> 96
    assert _rows(after_2) == [(0, 1, 0.1, 16), (1, 3, 0.1, 48), (3, 6, 0.1, 96)]
    assert rule.extend(after_2, 5, 1000.0) == after_2  # after the last epoch: nothing to change


def test_past_the_cap_the_lr_falls_by_cap_over_target_and_never_rises() -> None:
    rule = AdaptiveBatch(noise_multiple=2.0, max_batch_size=144, multiple=16)  # cap: 144 = 9 x 16
    capped = rule.extend(START, 0, 144.0)  # target 288: batch 144, lr 0.1 * 144/288
    assert _rows(capped) == [(0, 1, 0.1, 16), (1, 6, pytest.approx(0.05), 144)]
    lower_target = rule.extend(capped, 1, 90.0)  # target 180: lr would be 0.08 > 0.05: it stays
    assert lower_target == capped


def test_an_unmeasured_epoch_keeps_the_schedule_and_bad_settings_are_named() -> None:
    rule = AdaptiveBatch(max_batch_size=144, multiple=8)
    assert rule.extend(START, 0, None) is START and rule.extend(START, 0, float("nan")) is START
    with pytest.raises(ValueError, match="noise_multiple should be a positive number, but got noise_multiple=0.0"):
        AdaptiveBatch(noise_multiple=0.0, max_batch_size=144)
    with pytest.raises(ValueError, match="multiple should be a positive integer value, but got multiple=0"):
        AdaptiveBatch(max_batch_size=144, multiple=0)
