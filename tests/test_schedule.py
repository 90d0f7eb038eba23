"""Schedule values: queries at fractional epochs, the sample clock, exact counting, JSON."""

import dataclasses
import math
import random

import pytest

from growbatch.schedule.schedule import SCHEDULE_VERSION, Phase, Schedule


def two_phase(drop_last: bool = False) -> Schedule:
    # N = 1000; B = 128 until epoch 1.5, then 300 until epoch 3
    return Schedule((Phase(0, 1.5, 0.1, 128, 0.9), Phase(1.5, 3, 0.1, 300, 0.9)), 1000, drop_last)


# -- queries ---------------------------------------------------------------------------
def test_values_at_fractional_epochs():
    s = two_phase()
    assert [s.batch_size_at(e) for e in (0, 1.0, 1.4999, 1.5, 2.99, 5)] == [128, 128, 128, 300, 300, 300]
    assert s.lr_at(2) == 0.1 and s.momentum_at(2) == 0.9
    assert s.epochs == 3
    assert s.noise_scale_at(0) == pytest.approx(0.1 / 0.1 * (1000 / 128 - 1))


def test_phase_at_position_follows_the_sample_clock():
    s = two_phase()
    # epoch 1.5 begins at position 500 of epoch 1
    assert s.batch_size_at(1, 499) == 128
    assert s.batch_size_at(1, 500) == 300


def test_batch_sizes_cut_on_the_sample_clock_with_a_phase_starting_mid_epoch():
    kept, dropped = two_phase(False), two_phase(True)
    assert kept.batch_sizes(0) == [128] * 7 + [1000 - 7 * 128]
    assert dropped.batch_sizes(0) == [128] * 7
    # cuts at 0, 128, 256, 384 (< 500) at B = 128, then 512 and 812 at B = 300
    assert kept.batch_sizes(1) == [128] * 4 + [300, 1000 - 4 * 128 - 300]
    assert dropped.batch_sizes(1) == [128] * 4 + [300]
    assert kept.batch_sizes(2) == [300] * 3 + [100]
    assert kept.batch_sizes(1, position=812) == [188]
    assert kept.next_batch_size(2, 1000) == 0


# -- exact counting ------------------------------------------------------------------
@pytest.mark.parametrize("drop_last", [False, True])
def test_plan_counts_a_phase_starting_mid_epoch(drop_last):
    plan = two_phase(drop_last).plan()
    first, second = plan.phases
    if not drop_last:
        # epoch 0: 7 full + 1 short; epoch 1: 4 batches of 128 before position 500
        assert first.updates == (7 + 1) + 4
        assert first.samples == 1000 + 4 * 128
        # epoch 1 from 512: one of 300, one short of 188; epoch 2: 3 full + 1 short of 100
        assert second.updates == (1 + 1) + (3 + 1)
        assert second.samples == (300 + 188) + 1000
    else:
        assert first.updates == 7 + 4
        assert first.samples == 7 * 128 + 4 * 128
        assert second.updates == 1 + 3
        assert second.samples == 300 + 3 * 300
    assert plan.total_updates == first.updates + second.updates
    assert plan.total_samples == first.samples + second.samples


def test_plan_on_the_docstring_example():
    s = Schedule((Phase(0, 2, 0.1, 128, 0.9), Phase(2, 3, 0.1, 640, 0.9)), dataset_size=1000)
    assert s.plan().total_updates == 2 * math.ceil(1000 / 128) + math.ceil(1000 / 640)
    assert s.plan().total_samples == 3 * 1000


def test_a_phase_shorter_than_one_batch_gets_no_update():
    # the batch of 400 cut at position 0 runs past the phase [0.1, 0.2): that phase cuts nothing
    s = Schedule((Phase(0, 0.1, 0.1, 400), Phase(0.1, 0.2, 0.1, 10), Phase(0.2, 1, 0.1, 300)), 1000)
    assert s.batch_sizes(0) == [400, 300, 300]
    assert [p.updates for p in s.plan().phases] == [1, 0, 2]


def _brute_force(schedule: Schedule) -> tuple[list[int], list[int]]:
    """Updates and samples per phase by cutting every batch with Schedule.batch_sizes."""
    updates = [0] * len(schedule.phases)
    samples = [0] * len(schedule.phases)
    for epoch in range(schedule.epochs):
        position = 0
        for size in schedule.batch_sizes(epoch):
            i = schedule.phase_index_at(epoch, position)
            updates[i] += 1
            samples[i] += size
            position += size
    return updates, samples


def _random_schedule(rng: random.Random) -> Schedule:
    n = rng.randint(1, 300)
    epochs = rng.randint(1, 5)
    # boundaries: whole, thirds (not exact in binary), and arbitrary fractions of an epoch
    cuts = {rng.choice([rng.randint(1, epochs), rng.randint(1, 3 * epochs) / 3, rng.uniform(0, epochs)])
            for _ in range(rng.randint(0, 5))}
    bounds = [0, *sorted(c for c in cuts if 0 < c < epochs), epochs]
    phases = tuple(Phase(a, b, rng.uniform(0.01, 1), rng.randint(1, n), rng.choice([0.0, 0.9]))
                   for a, b in zip(bounds, bounds[1:]))
    return Schedule(phases, n, drop_last=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(40))
def test_plan_matches_a_brute_force_loop_over_batch_sizes(seed):
    rng = random.Random(seed)
    for _ in range(10):
        schedule = _random_schedule(rng)
        plan = schedule.plan()
        updates, samples = _brute_force(schedule)
        assert [p.updates for p in plan.phases] == updates, schedule
        assert [p.samples for p in plan.phases] == samples, schedule


# -- JSON ------------------------------------------------------------------------------
def test_json_round_trip():
    s = Schedule(
        (Phase(0, 1 / 3, 0.1, 128, 0.9), Phase(1 / 3, 60, 0.032000000000000001, 640, 0.9), Phase(60, 61, 0.5, 77, 0.0)),
        dataset_size=50_000, drop_last=True, name="round-trip",
    )
    back = Schedule.from_json(s.to_json())
    assert back == s
    assert back.plan() == s.plan()
    assert back.batch_sizes(0, 16_000) == s.batch_sizes(0, 16_000)
    assert s.to_dict()["version"] == SCHEDULE_VERSION


def test_plan_to_dict_has_the_planner_keys():
    data = two_phase().plan().to_dict()
    assert {"name", "dataset_size", "epochs", "phases", "total_updates", "total_samples"} <= set(data)
    assert set(data["phases"][0]) == {"start_epoch", "end_epoch", "lr", "momentum", "batch_size", "noise_scale",
                                      "updates", "samples"}
    assert data["total_updates"] == sum(p["updates"] for p in data["phases"])


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("{not json", ValueError, r"a schedule should be valid JSON"),
        ("[1, 2]", TypeError, r"a schedule should be a JSON object, but got list"),
        ('{"version": 99, "phases": [], "dataset_size": 10}', ValueError,
         r"schedule version should be 1, but got version=99"),
        ('{"version": 1, "phases": []}', ValueError, r"a schedule needs the key 'dataset_size'"),
    ],
)
def test_from_json_errors(text, error, match):
    with pytest.raises(error, match=match):
        Schedule.from_json(text)


# -- errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Phase(0, 1, 0.1, 0), ValueError, r"batch_size should be a positive integer value, but got batch_size=0"),
        (lambda: Phase(0, 1, -0.1, 128), ValueError, r"Phase.lr should be non-negative, but got lr=-0.1"),
        (lambda: Phase(0, 1, 0.1, 128, 1.0), ValueError, r"momentum should be in \[0, 1\), but got momentum=1"),
        (lambda: Phase(2, 1, 0.1, 128), ValueError, r"Phase needs 0 <= start_epoch < end_epoch, but got start_epoch=2, end_epoch=1"),
        (lambda: Phase(0, math.inf, 0.1, 128), TypeError, r"Phase.end_epoch should be a finite number, but got end_epoch=inf"),
        (lambda: Schedule((), 100), ValueError, r"a Schedule needs at least one Phase"),
        (lambda: Schedule((Phase(1, 2, 0.1, 10),), 100), ValueError, r"the first phase should start at epoch 0, but starts at 1"),
        (lambda: Schedule((Phase(0, 1, 0.1, 10), Phase(1.5, 2, 0.1, 10)), 100), ValueError,
         r"phases should be contiguous, but one ends at epoch 1 and the next starts at 1.5"),
        (lambda: Schedule((Phase(0, 1.5, 0.1, 10),), 100), ValueError, r"a schedule should end on a whole epoch, but ends at epoch 1.5"),
        (lambda: Schedule((Phase(0, 1, 0.1, 200),), 100), ValueError,
         r"batch_size should be at most the data set size 100, but got batch_size=200"),
        (lambda: Schedule((Phase(0, 1, 0.1, 10),), 0), ValueError, r"dataset_size should be a positive integer value"),
        (lambda: Schedule(((0, 1, 0.1, 10),), 100), TypeError, r"Schedule.phases should hold Phase values"),
    ],
)
def test_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_schedules_are_immutable():
    s = two_phase()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.dataset_size = 10  # type: ignore[misc]
