"""BatchSizeScheduler: lr and momentum of the phase where each update's batch is cut, state, composition."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils.data import DataLoader

import growbatch.batching.scheduler
from growbatch import BatchSizeScheduler, DynamicBatchSampler, Phase, Schedule, TensorLoader, step_schedule
from growbatch.batching.scheduler import SCHEDULER_VERSION


def mid_epoch_schedule(drop_last: bool = False) -> Schedule:
    """N=1000: lr 0.1 at 400, then (epoch 1.5 = position 500 of epoch 1) lr 0.05 at 800, then momentum 0.95."""
    return Schedule((Phase(0, 1.5, 0.1, 400, 0.9), Phase(1.5, 3, 0.05, 800, 0.9), Phase(3, 4, 0.05, 800, 0.95)),
                    dataset_size=1000, drop_last=drop_last)


def capped_schedule(drop_last: bool = False) -> Schedule:
    return step_schedule("hybrid", lr=0.1, batch_size=50, epochs=4, milestones=[1.5, 2.5, 3], factor=4,
                         dataset_size=1000, momentum=0.9, max_batch_size=200, batch_increases=3, drop_last=drop_last)


def make_optimizer(kind: str, lr: float = 1.0) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    groups = [{"params": params[:1]}, {"params": params[1:]}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.5)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(0.5, 0.99))
    return torch.optim.AdamW(groups, lr=lr, betas=(0.5, 0.99))


def momentum_of(group: dict) -> float:
    return group["momentum"] if "momentum" in group else group["betas"][0]


def fake_update(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    optimizer.step()


@pytest.mark.parametrize("optimizer_kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("make_schedule", [mid_epoch_schedule, capped_schedule])
def test_each_update_gets_the_phase_where_its_batch_is_cut(make_schedule, drop_last, optimizer_kind):
    sampler = DynamicBatchSampler(1000, make_schedule(), seed=2, drop_last=drop_last)
    optimizer = make_optimizer(optimizer_kind)
    scheduler = BatchSizeScheduler(sampler, optimizer, make_schedule())  # takes drop_last from the sampler
    schedule = sampler.schedule
    updates = 0
    for epoch in range(schedule.epochs + 1):
        for indices in sampler:
            cut_at = sampler.position - sampler.last_global_batch_size
            phase = schedule.phase_at(epoch, cut_at)
            assert scheduler.get_last_batch_size() == sampler.last_global_batch_size == len(indices)
            assert (scheduler.epoch, scheduler.position) == (epoch, cut_at)
            for group in optimizer.param_groups:
                assert (group["lr"], momentum_of(group)) == (phase.lr, phase.momentum)
            assert scheduler.get_last_lr() == [phase.lr, phase.lr]
            fake_update(optimizer)
            scheduler.step()
            updates += 1
        if epoch + 1 == schedule.epochs:
            assert updates == scheduler.last_epoch == schedule.plan().total_updates
            assert (scheduler.epoch, scheduler.position) == (schedule.epochs, 0)


def test_the_lr_changes_at_the_batch_where_the_phase_changes_mid_epoch():
    schedule = mid_epoch_schedule()
    optimizer = make_optimizer("sgd")
    scheduler = BatchSizeScheduler(DynamicBatchSampler(1000, schedule), optimizer, schedule)
    rows = []
    for _ in range(8):
        rows.append((scheduler.epoch, scheduler.position, scheduler.get_last_batch_size(), scheduler.get_last_lr()[0]))
        scheduler.step()
    assert rows == [(0, 0, 400, 0.1), (0, 400, 400, 0.1), (0, 800, 200, 0.1), (1, 0, 400, 0.1),
                    (1, 400, 400, 0.1), (1, 800, 200, 0.05), (2, 0, 800, 0.05), (2, 800, 200, 0.05)]


def test_the_constructor_applies_the_first_update_without_stepping():
    schedule = mid_epoch_schedule()
    optimizer = make_optimizer("sgd", lr=7.0)
    scheduler = BatchSizeScheduler(TensorLoader(torch.zeros(1000, 1, 1, 1), torch.zeros(1000, dtype=torch.long),
                                                schedule), optimizer, schedule)
    assert scheduler.last_epoch == 0 and (scheduler.epoch, scheduler.position) == (0, 0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1]
    assert [g["momentum"] for g in optimizer.param_groups] == [0.9, 0.9]


def test_the_clock_starts_where_the_sampler_stands():
    schedule = mid_epoch_schedule()
    sampler = DynamicBatchSampler(1000, schedule)
    sampler.load_state_dict({**sampler.state_dict(), "epoch": 1, "position": 800})
    scheduler = BatchSizeScheduler(sampler, make_optimizer("sgd"), schedule)
    assert (scheduler.epoch, scheduler.position, scheduler.get_last_lr()[0]) == (1, 800, 0.05)
    sampler.load_state_dict({**sampler.state_dict(), "epoch": 1, "position": 1000})  # epoch 1 is over
    assert (BatchSizeScheduler(sampler, make_optimizer("sgd"), schedule).epoch) == 2


class _Identity(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1000

    def __getitem__(self, index: int) -> int:
        return index


def test_prefetching_dataloader_does_not_move_the_scheduler():
    schedule = mid_epoch_schedule()
    sampler = DynamicBatchSampler(1000, schedule, seed=1)
    loader = DataLoader(_Identity(), batch_sampler=sampler, num_workers=2, persistent_workers=True)
    optimizer = make_optimizer("sgd")
    scheduler = BatchSizeScheduler(loader, optimizer, schedule)
    for epoch in range(3):
        position = 0
        for batch in loader:
            assert len(batch) == scheduler.get_last_batch_size()
            assert optimizer.param_groups[0]["lr"] == schedule.lr_at(epoch, position)
            position += len(batch)
            scheduler.step()


@pytest.mark.parametrize("make_torch_scheduler", [
    lambda optimizer: torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 5], gamma=0.1),
    lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1.0 / (1 + update)),
])
def test_set_lr_false_leaves_the_lr_to_a_torch_scheduler(make_torch_scheduler):
    schedule = mid_epoch_schedule()
    optimizer, reference = make_optimizer("sgd", lr=0.5), make_optimizer("sgd", lr=0.5)
    ours = BatchSizeScheduler(DynamicBatchSampler(1000, schedule), optimizer, schedule, set_lr=False)
    theirs, alone = make_torch_scheduler(optimizer), make_torch_scheduler(reference)
    for update in range(12):
        assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in reference.param_groups]
        assert ours.get_last_lr() == [g["lr"] for g in optimizer.param_groups]
        epoch, position = ours.epoch, ours.position
        assert optimizer.param_groups[0]["momentum"] == schedule.momentum_at(epoch, position)
        fake_update(optimizer)
        fake_update(reference)
        ours.step()
        theirs.step()
        alone.step()
    assert ours.last_epoch == 12 and (ours.epoch, ours.position) == (5, 0)  # 12 = 3 + 3 + 2 + 2 + 2
    assert optimizer.param_groups[0]["momentum"] == 0.95


def test_set_momentum_false_leaves_the_momentum():
    schedule = mid_epoch_schedule()
    optimizer = make_optimizer("adam")
    scheduler = BatchSizeScheduler(DynamicBatchSampler(1000, schedule), optimizer, schedule, set_momentum=False)
    for _ in range(12):
        scheduler.step()
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.99) and optimizer.param_groups[0]["lr"] == 0.05


def test_state_round_trip():
    schedule = mid_epoch_schedule()
    optimizer_a = make_optimizer("sgd")
    a = BatchSizeScheduler(DynamicBatchSampler(1000, schedule), optimizer_a, schedule)
    for _ in range(5):  # the next update is the one after the mid-epoch change
        a.step()
    state = a.state_dict()
    assert state == {"version": SCHEDULER_VERSION, "dataset_size": 1000, "last_epoch": 5, "epoch": 1, "position": 800}
    # B: other optimizer kind and lr, another sampler seed, elsewhere on the clock
    sampler_b = DynamicBatchSampler(1000, schedule, seed=5, shuffle=False)
    sampler_b.set_epoch(3)
    optimizer_b = make_optimizer("adam", lr=3.0)
    b = BatchSizeScheduler(sampler_b, optimizer_b, schedule)
    b.load_state_dict(state)
    assert b.state_dict() == state
    assert b.get_last_lr() == a.get_last_lr() == [0.05, 0.05]
    assert b.get_last_batch_size() == a.get_last_batch_size() == 200
    assert [g["lr"] for g in optimizer_b.param_groups] == [0.05, 0.05]
    assert [g["betas"][0] for g in optimizer_b.param_groups] == [0.9, 0.9]
    for _ in range(4):
        a.step()
        b.step()
        assert (b.state_dict(), b.get_last_lr()) == (a.state_dict(), a.get_last_lr())


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dataset_size": 999}, r"the state is for dataset_size=999, but the schedule has dataset_size=1000"),
        ({"version": 0}, r"scheduler state version should be 1, but got version=0"),
        ({"position": 300}, r"position=300 is not where this schedule cuts a batch of epoch 0 \(valid: 0, 400, 800, 1000\)"),
        ({"last_epoch": -1}, r"last_epoch should be an integer >= 0, but got last_epoch=-1"),
    ],
)
def test_bad_state(change, match):
    schedule = mid_epoch_schedule()
    scheduler = BatchSizeScheduler(DynamicBatchSampler(1000, schedule), make_optimizer("sgd"), schedule)
    with pytest.raises(ValueError, match=match):
        scheduler.load_state_dict({**scheduler.state_dict(), **change})


def test_bad_arguments():
    schedule = mid_epoch_schedule()
    sampler = DynamicBatchSampler(1000, schedule)
    with pytest.raises(TypeError, match=r"sampler_or_loader should be a DynamicBatchSampler, .* but got list"):
        BatchSizeScheduler([], make_optimizer("sgd"), schedule)
    with pytest.raises(TypeError, match=r"optimizer should be a torch.optim.Optimizer, but got str"):
        BatchSizeScheduler(sampler, "sgd", schedule)
    with pytest.raises(TypeError, match=r"schedule should be a growbatch.Schedule, but got int"):
        BatchSizeScheduler(sampler, make_optimizer("sgd"), 400)
    adagrad = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(TypeError, match=r"Adagrad has no momentum or betas to set; pass set_momentum=False"):
        BatchSizeScheduler(sampler, adagrad, schedule)
    BatchSizeScheduler(sampler, adagrad, schedule, set_momentum=False)
    with pytest.raises(ValueError, match=r"the schedule has batch_size=800 at epoch 1.5, but the sampler cuts 400"):
        BatchSizeScheduler(DynamicBatchSampler(1000, 400), make_optimizer("sgd"), schedule)
    other = Schedule((Phase(0, 1, 0.1, 400),), dataset_size=999)
    with pytest.raises(ValueError, match=r"the schedule is for dataset_size=999, but the sampler has dataset_size=1000"):
        BatchSizeScheduler(sampler, make_optimizer("sgd"), other)


def test_a_constant_batch_sampler_with_an_lr_decay_schedule():
    schedule = step_schedule("decay", lr=0.1, batch_size=250, epochs=3, milestones=[2], factor=10, dataset_size=1000,
                             max_batch_size=250)
    optimizer = make_optimizer("sgd")
    scheduler = BatchSizeScheduler(DynamicBatchSampler(1000, 250), optimizer, schedule)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs == [0.1] * 8 + [pytest.approx(0.01)] * 4


def test_docstring_examples():
    assert doctest.testmod(growbatch.batching.scheduler).failed == 0
