"""DynamicBatchSampler: coverage per epoch, batch sizes on the sample clock, ranks, resume, DataLoader."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils.data import DataLoader

import growbatch.batching.sampler
from growbatch import DynamicBatchSampler, Phase, Schedule, step_schedule
from growbatch.batching.sampler import SAMPLER_VERSION, rank_share

SIZES = [1, 10, 257]
KINDS = ["constant", "steps", "capped"]
WORLD_SIZES = [1, 2, 3, 8]


def make_schedule(kind: str, n: int) -> Schedule | int:
    """A fixed batch, three steps with a change at epoch 2.5 (mid-epoch), or a capped increase."""
    if kind == "constant":
        return max(1, n // 7)
    if kind == "steps":
        sizes = (max(1, n // 9), max(1, n // 4), max(1, n // 2))
        return Schedule((Phase(0, 1, 0.1, sizes[0]), Phase(1, 2.5, 0.1, sizes[1]), Phase(2.5, 4, 0.1, sizes[2])), n)
    first = max(1, n // 16)
    return step_schedule("increase", lr=0.1, batch_size=first, epochs=4, milestones=[1.5, 3], factor=5,
                         dataset_size=n, max_batch_size=max(first, n // 3))


def rank_samplers(n: int, schedule, world_size: int, **kwargs) -> list[DynamicBatchSampler]:
    return [DynamicBatchSampler(n, schedule, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]


def global_batches(samplers: list[DynamicBatchSampler]) -> list[list[int]]:
    """One pass of every rank, each global batch rebuilt by concatenating the shares in rank order."""
    per_rank = [list(s) for s in samplers]
    assert len({len(batches) for batches in per_rank}) == 1  # ranks stay in step
    return [sum(shares, []) for shares in zip(*per_rank)]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_every_index_once_per_epoch_and_sizes_follow_the_schedule(n, kind, drop_last, world_size):
    samplers = rank_samplers(n, make_schedule(kind, n), world_size, drop_last=drop_last, seed=3)
    schedule = samplers[0].schedule
    assert schedule.drop_last == drop_last
    reference = DynamicBatchSampler(n, make_schedule(kind, n), drop_last=drop_last, seed=3)  # one rank
    updates = samples = 0
    for epoch in range(schedule.epochs + 1):  # one epoch past the end: the last phase holds
        batches = global_batches(samplers)
        assert batches == list(reference)
        sizes = [len(b) for b in batches]
        assert sizes == schedule.batch_sizes(epoch)
        seen = sum(batches, [])
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(range(n))
        if drop_last:
            assert 0 <= n - len(seen) < schedule.batch_size_at(epoch, len(seen))
        else:
            assert sorted(seen) == list(range(n))
        assert all(s.epoch == epoch and s.position == sum(sizes) for s in samplers)
        assert samplers[0].last_global_batch_size == sizes[-1]
        if epoch < schedule.epochs:
            updates, samples = updates + len(sizes), samples + sum(sizes)
    plan = schedule.plan()
    assert (updates, samples) == (plan.total_updates, plan.total_samples)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("size", [1, 2, 7, 64, 1001])
def test_global_batch_split_as_evenly_as_possible(size, world_size):
    bounds = [rank_share(size, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [stop - start for start, stop in bounds]
    assert lengths == [size // world_size + (r < size % world_size) for r in range(world_size)]


def test_ranks_beyond_a_small_global_batch_yield_empty_lists():
    samplers = rank_samplers(10, 2, 3, shuffle=False)
    assert [list(s) for s in samplers] == [[[0], [2], [4], [6], [8]], [[1], [3], [5], [7], [9]], [[]] * 5]
    assert samplers[2].last_global_batch_size == 2


def test_a_change_in_the_middle_of_an_epoch_applies_to_the_batch_cut_after_it():
    schedule = Schedule((Phase(0, 1.5, 0.1, 400), Phase(1.5, 3, 0.1, 800)), dataset_size=1000)
    sampler = DynamicBatchSampler(1000, schedule, shuffle=False)
    assert [[len(b) for b in sampler] for _ in range(3)] == [[400, 400, 200], [400, 400, 200], [800, 200]]
    assert schedule.plan().total_updates == 3 + 3 + 2


@pytest.mark.parametrize("kind", KINDS)
def test_len_is_the_number_of_batches_a_pass_started_now_yields(kind):
    sampler = DynamicBatchSampler(257, make_schedule(kind, 257), seed=1)
    for epoch in range(4):
        expected = len(sampler.schedule.batch_sizes(epoch))
        assert len(sampler) == expected
        iterator = iter(sampler)
        next(iterator)
        assert len(sampler) == expected - 1  # the rest of this epoch
        assert len(list(iterator)) == expected - 1
        # the epoch is over: len now counts the next epoch, which the next pass yields
        assert len(sampler) == len(sampler.schedule.batch_sizes(epoch + 1))


def test_permutation_depends_on_seed_and_epoch_only():
    a, b = DynamicBatchSampler(100, 100, seed=5), DynamicBatchSampler(100, 100, seed=5)
    c = DynamicBatchSampler(100, 100, seed=6)
    epoch0_a, epoch1_a = list(a), list(a)
    assert epoch0_a == list(b) and epoch1_a == list(b)
    assert epoch0_a != epoch1_a and epoch0_a != list(c)
    assert sorted(epoch0_a[0]) == list(range(100))
    assert list(DynamicBatchSampler(100, 30, shuffle=False))[0] == list(range(30))


def test_next_pass_moves_to_the_next_epoch_and_set_epoch_still_jumps():
    auto = DynamicBatchSampler(50, 16, seed=2)
    passes = [list(auto) for _ in range(3)]
    assert auto.epoch == 2
    manual = DynamicBatchSampler(50, 16, seed=2)
    for epoch in range(3):
        manual.set_epoch(epoch)
        assert list(manual) == passes[epoch]
        manual.set_epoch(epoch)  # the same epoch again: identical
        assert list(manual) == passes[epoch]
    auto.set_epoch(1)
    assert (auto.epoch, auto.position) == (1, 0)
    assert list(auto) == passes[1]


def test_set_epoch_stops_an_iteration_in_progress():
    sampler = DynamicBatchSampler(100, 10)
    stale = iter(sampler)
    next(stale)
    sampler.set_epoch(4)
    assert list(stale) == []
    assert sampler.position == 0 and len(list(sampler)) == 10


def test_a_new_pass_mid_epoch_continues_the_epoch_and_stops_the_older_iterator():
    reference = list(DynamicBatchSampler(100, 10, seed=3))
    sampler = DynamicBatchSampler(100, 10, seed=3)
    old = iter(sampler)
    first = [next(old), next(old)]
    assert first + list(sampler) == reference  # a `break`, then a new `for`: the rest of epoch 0
    assert list(old) == [] and sampler.epoch == 0


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_epoch_yields_the_identical_remaining_batches(kind, drop_last, world_size):
    n = 257
    schedule = make_schedule(kind, n)
    full = rank_samplers(n, schedule, world_size, drop_last=drop_last, seed=9)
    expected = [global_batches(full) for _ in range(5)]
    for epoch, cut in [(0, 1), (2, 2), (2, len(expected[2]) - 1), (3, len(expected[3]))]:
        runs = rank_samplers(n, schedule, world_size, drop_last=drop_last, seed=9)
        for s in runs:
            s.set_epoch(epoch)
            iterator = iter(s)
            for _ in range(cut):
                next(iterator)
        states = [s.state_dict() for s in runs]
        # other seed and shuffle on purpose: the state restores them
        resumed = rank_samplers(n, schedule, world_size, drop_last=drop_last, seed=0, shuffle=False)
        for s, state in zip(resumed, states):
            s.load_state_dict(state)
        assert all(s.last_global_batch_size == len(expected[epoch][cut - 1]) for s in resumed)
        # at the end of an epoch the next pass is the next epoch
        assert global_batches(resumed) == (expected[epoch][cut:] if cut < len(expected[epoch]) else expected[epoch + 1])


def test_state_dict_has_explicit_keys():
    sampler = DynamicBatchSampler(100, 30, seed=4, shuffle=False)
    iterator = iter(sampler)
    next(iterator)
    assert sampler.state_dict() == {
        "version": SAMPLER_VERSION, "dataset_size": 100, "seed": 4, "shuffle": False,
        "epoch": 0, "position": 30, "last_global_batch_size": 30,
    }


class _Identity(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def _milestone_schedule() -> Schedule:
    # 128 -> 640 in the middle of epoch 1 (epoch 1.5 = position 1000 of 2000)
    return Schedule((Phase(0, 1.5, 0.1, 128), Phase(1.5, 3, 0.1, 640)), dataset_size=2000)


def test_dataloader_with_two_persistent_workers_cuts_exact_sizes_across_a_milestone():
    schedule = _milestone_schedule()
    sampler = DynamicBatchSampler(2000, schedule, seed=1)
    loader = DataLoader(_Identity(2000), batch_sampler=sampler, num_workers=2, persistent_workers=True)
    for epoch in range(3):  # no set_epoch: each pass moves on by itself
        batches = [b.tolist() for b in loader]
        assert [len(b) for b in batches] == schedule.batch_sizes(epoch)
        assert sorted(sum(batches, [])) == list(range(2000))
        assert sampler.epoch == epoch
    reference = DynamicBatchSampler(2000, schedule, seed=1)
    reference.set_epoch(2)
    assert batches == list(reference)


@pytest.mark.parametrize("consumed", [3, 8, 9])  # epoch 1: 8 x 128, then the milestone: 640, 336
def test_checkpoint_of_what_was_consumed_with_a_prefetching_dataloader(consumed):
    schedule = _milestone_schedule()
    sampler = DynamicBatchSampler(2000, schedule, seed=1)
    loader = DataLoader(_Identity(2000), batch_sampler=sampler, num_workers=2, persistent_workers=True)
    reference = DynamicBatchSampler(2000, schedule, seed=1)
    expected = [list(reference) for _ in range(3)]
    assert list(loader)  # epoch 0
    taken = []
    for batch in loader:  # epoch 1
        taken.append(batch.tolist())
        if len(taken) == consumed:
            break
    assert taken == expected[1][:consumed]
    consumed_samples = sum(map(len, taken))
    assert sampler.position > consumed_samples  # the workers have run ahead
    state = sampler.state_dict(batches_consumed=consumed)
    assert (state["epoch"], state["position"]) == (1, consumed_samples)
    assert state["last_global_batch_size"] == len(taken[-1])

    resumed = DynamicBatchSampler(2000, schedule)
    resumed.load_state_dict(state)
    resumed_loader = DataLoader(_Identity(2000), batch_sampler=resumed, num_workers=2, persistent_workers=True)
    assert [b.tolist() for b in resumed_loader] == expected[1][consumed:]
    assert [b.tolist() for b in resumed_loader] == expected[2]


def test_batches_consumed_counts_from_the_start_of_the_current_pass():
    sampler = DynamicBatchSampler(100, 10, seed=1)
    iterator = iter(sampler)
    for _ in range(6):
        next(iterator)
    sampler.load_state_dict(sampler.state_dict(batches_consumed=4))  # resume at position 40
    iterator = iter(sampler)
    next(iterator)
    next(iterator)
    assert sampler.state_dict(batches_consumed=1)["position"] == 50
    with pytest.raises(ValueError, match=r"batches_consumed should be at most the 2 batches this pass has cut, but got batches_consumed=3"):
        sampler.state_dict(batches_consumed=3)
    with pytest.raises(ValueError, match=r"batches_consumed should be an integer >= 0, but got batches_consumed=-1"):
        sampler.state_dict(batches_consumed=-1)


def test_drop_last_overrides_the_schedule():
    schedule = Schedule((Phase(0, 1, 0.1, 30),), dataset_size=100)
    assert [len(b) for b in DynamicBatchSampler(100, schedule)] == [30, 30, 30, 10]
    assert [len(b) for b in DynamicBatchSampler(100, schedule, drop_last=True)] == [30, 30, 30]
    assert [len(b) for b in DynamicBatchSampler(100, 30)] == [30, 30, 30, 10]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"schedule_or_batch_size": 0}, ValueError, r"batch_size should be a positive integer value, but got batch_size=0"),
        ({"schedule_or_batch_size": 101}, ValueError, r"batch_size should be at most the data set size 100, but got batch_size=101"),
        ({"schedule_or_batch_size": 2.5}, TypeError, r"should be a growbatch.Schedule or a positive int, but got 2.5"),
        ({"rank": 2, "world_size": 2}, ValueError, r"rank should be in \[0, world_size=2\), but got rank=2"),
        ({"world_size": 0}, ValueError, r"world_size should be an integer >= 1, but got world_size=0"),
        ({"seed": -1}, ValueError, r"seed should be an integer >= 0, but got seed=-1"),
        ({"shuffle": 1}, TypeError, r"shuffle should be True or False, but got shuffle=1"),
        ({"drop_last": "yes"}, TypeError, r"drop_last should be None, True or False, but got drop_last='yes'"),
        ({"dataset_size": 0}, ValueError, r"dataset_size should be a positive integer value, but got dataset_size=0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"dataset_size": 100, "schedule_or_batch_size": 10, **kwargs}
    with pytest.raises(error, match=match):
        DynamicBatchSampler(arguments.pop("dataset_size"), arguments.pop("schedule_or_batch_size"), **arguments)


def test_schedule_for_another_dataset_size():
    schedule = Schedule((Phase(0, 1, 0.1, 10),), dataset_size=50)
    with pytest.raises(ValueError, match=r"the schedule is for dataset_size=50, but dataset_size=100"):
        DynamicBatchSampler(100, schedule)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dataset_size": 99}, r"the state is for dataset_size=99, but this sampler has dataset_size=100"),
        ({"version": 2}, r"sampler state version should be 1, but got version=2"),
        ({"position": 15}, r"position=15 is not where this schedule cuts a batch of epoch 0 \(valid: 0, 10, 20, 30, \.\.\., 100\)"),
        ({"position": -10}, r"position should be an integer >= 0, but got position=-10"),
        ({"seed": -3}, r"seed should be an integer >= 0, but got seed=-3"),
    ],
)
def test_bad_state(change, match):
    sampler = DynamicBatchSampler(100, 10)
    with pytest.raises(ValueError, match=match):
        sampler.load_state_dict({**sampler.state_dict(), **change})
    state = sampler.state_dict()
    del state["epoch"]
    with pytest.raises(ValueError, match=r"the sampler state lacks the keys \['epoch'\]"):
        sampler.load_state_dict(state)


def test_set_epoch_rejects_a_negative_epoch():
    with pytest.raises(ValueError, match=r"epoch should be an integer >= 0, but got epoch=-1"):
        DynamicBatchSampler(10, 2).set_epoch(-1)


def test_docstring_examples():
    assert doctest.testmod(growbatch.batching.sampler).failed == 0
