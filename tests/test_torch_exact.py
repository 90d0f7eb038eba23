"""The library API keeps torch's contracts: each test here is a silent problem of issue 14, now fixed or loud."""

from __future__ import annotations

import functools
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LRScheduler, StepLR
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from growbatch import BatchSizeScheduler, DynamicBatchSampler, MicroBatcher, Phase, Schedule
from growbatch.schedule.builders import from_lr_function, from_lr_scheduler


def two_phases(n: int = 1000, momentum: float | None = None) -> Schedule:
    # batch 40 for an epoch and a half, then 100: 25 + 13 + 5 + 10 updates over three epochs
    return Schedule((Phase(0, 1.5, 0.1, 40, momentum), Phase(1.5, 3, 0.1, 100, momentum)), dataset_size=n)


def dataset(n: int = 1000) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def sgd(lr: float = 0.1, momentum: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=momentum)


def train(loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: BatchSizeScheduler, updates: int) -> list[int]:
    """``updates`` optimizer/scheduler steps over ``loader`` (as many passes as needed); the samples seen, in order."""
    seen: list[int] = []
    done = 0
    while done < updates:
        for (batch,) in loader:
            assert len(batch) == scheduler.get_last_batch_size()
            seen.extend(batch.tolist())
            optimizer.step()
            scheduler.step()
            done += 1
            if done == updates:
                break
    return seen


# -- BatchSizeScheduler is an LRScheduler ---------------------------------------------------------

def test_the_scheduler_is_a_torch_lr_scheduler_with_its_api():
    schedule, optimizer = two_phases(), sgd()
    scheduler = BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), optimizer, schedule)
    assert isinstance(scheduler, LRScheduler)
    assert scheduler.base_lrs == [0.1] and scheduler.get_last_lr() == [0.1] and scheduler.last_epoch == 0
    with pytest.raises(TypeError, match=r"step\(\) takes no epoch \(it counts updates\), but got epoch=3"):
        scheduler.step(3)


def test_step_before_the_optimizer_step_warns_as_torch_does():
    schedule, optimizer = two_phases(), sgd()
    scheduler = BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), optimizer, schedule)
    with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
        scheduler.step()


def test_the_right_order_draws_no_warning():
    schedule, optimizer = two_phases(), sgd()
    scheduler = BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), optimizer, schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(30):
            optimizer.step()
            scheduler.step()


def test_a_second_lr_scheduler_on_the_same_optimizer_warns():
    schedule, optimizer = two_phases(), sgd()
    StepLR(optimizer, step_size=1, gamma=0.5)  # built first: the optimizer's groups carry its initial_lr
    with pytest.warns(UserWarning, match=r"another LR scheduler was built on this SGD .* pass set_lr=False"):
        BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), optimizer, schedule)

    optimizer = sgd()
    ours = BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), optimizer, schedule)
    theirs = StepLR(optimizer, step_size=1, gamma=0.5)  # built after: found when it has changed the lr
    optimizer.step()
    theirs.step()
    with pytest.warns(UserWarning, match=r"lr changed from \[0.1\] to \[0.05\] .* second LR scheduler"):
        ours.step()


# -- lr and momentum: the optimizer's unless the schedule states them ---------------------------------

def test_a_converted_schedule_keeps_adamw_beta1():
    conversion = from_lr_scheduler(lambda opt: StepLR(opt, step_size=2, gamma=0.2), lr=1e-3, batch_size=40,
                                   epochs=4, dataset_size=1000, max_batch_size=1000)
    assert all(p.momentum is None for p in conversion.schedule.phases)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 0.999))
    sampler = DynamicBatchSampler(dataset(), conversion.schedule)
    scheduler = BatchSizeScheduler(sampler, optimizer, conversion.schedule)
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert from_lr_function(lambda t: 0.1, batch_size=40, epochs=1, dataset_size=1000).schedule.phases[0].momentum is None


def test_a_stated_momentum_that_replaces_the_optimizers_warns():
    schedule = two_phases(momentum=0.9)
    with pytest.warns(UserWarning, match=r"the schedule sets momentum=0.9, replacing SGD's momentum=0"):
        BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), sgd(momentum=0.0), schedule)
    adam = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.1, betas=(0.8, 0.99))
    with pytest.warns(UserWarning, match=r"replacing Adam's betas\[0\]=0.8"):
        BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), adam, schedule)
    adagrad = torch.optim.Adagrad([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match=r"Adagrad has no momentum or betas to set; .* momentum=None"):
        BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), adagrad, schedule)
    BatchSizeScheduler(DynamicBatchSampler(dataset(), two_phases()), adagrad, two_phases())  # None: nothing to set


def test_an_lr_that_replaces_the_optimizers_warns():
    schedule = two_phases()
    with pytest.warns(UserWarning, match=r"the schedule sets lr=0.1, replacing the lr=0.01 SGD was built with"):
        BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), sgd(lr=0.01), schedule)
    optimizer = sgd(lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BatchSizeScheduler(DynamicBatchSampler(dataset(), schedule), optimizer, schedule, set_lr=False)
    assert optimizer.param_groups[0]["lr"] == 0.01


def test_momentum_is_stated_in_every_phase_or_none():
    with pytest.raises(ValueError, match=r"momentum should be given in every phase or in none"):
        Schedule((Phase(0, 1, 0.1, 40, 0.9), Phase(1, 2, 0.1, 80)), dataset_size=1000)


# -- DynamicBatchSampler is a BatchSampler that follows what training consumed ---------------------------

def test_the_sampler_is_a_torch_batch_sampler_and_takes_the_dataset():
    sampler = DynamicBatchSampler(dataset(1000), two_phases())
    assert isinstance(sampler, BatchSampler) and sampler.dataset_size == 1000
    with pytest.raises(TypeError, match=r"dataset should be a data set with a length or its number of samples"):
        DynamicBatchSampler(iter(range(3)), 2)


@pytest.mark.parametrize("size", [1200, 800])
def test_a_length_that_is_not_the_datasets_is_refused(size):
    sampler = DynamicBatchSampler(size, Schedule((Phase(0, 1, 0.1, 100),), dataset_size=size))
    loader = DataLoader(dataset(1000), batch_sampler=sampler)
    with pytest.raises(ValueError, match=rf"data set has 1000 samples, but the DynamicBatchSampler was built for "
                                         rf"dataset_size={size}"):
        next(iter(loader))
    with pytest.raises(ValueError, match=rf"data set has 1000 samples, but its DynamicBatchSampler .*={size}"):
        BatchSizeScheduler(loader, sgd(), sampler.schedule)


def test_a_sampler_given_as_sampler_with_a_batch_size_is_refused():
    loader = DataLoader(dataset(), sampler=DynamicBatchSampler(1000, two_phases()), batch_size=10)
    with pytest.raises(TypeError, match=r"sampler of a BatchSampler with batch_size=10, .* pass it as "
                                        r"DataLoader\(dataset, batch_sampler=sampler\)"):
        next(iter(loader))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_abandoned_pass_loses_nothing(num_workers):
    schedule, optimizer = two_phases(momentum=0.0), sgd()
    sampler = DynamicBatchSampler(1000, schedule, seed=3)
    loader = DataLoader(dataset(), batch_sampler=sampler, num_workers=num_workers)
    scheduler = BatchSizeScheduler(loader, optimizer, schedule)
    next(iter(loader))  # a peek, as frameworks do: nothing trained on it
    first = train(loader, optimizer, scheduler, 25)
    assert sorted(first) == list(range(1000)) and len(first) == 1000  # all of epoch 0, once
    assert (scheduler.epoch, scheduler.position) == (1, 0) and sampler.state_dict()["position"] == 1000
    # epoch 1 left after 5 batches, with workers prefetching: the next pass starts at 200, where training stands
    train(loader, optimizer, scheduler, 5)
    rest = train(loader, optimizer, scheduler, 13)
    reference = DynamicBatchSampler(1000, schedule, seed=3)
    reference.set_epoch(1)
    assert rest == [i for batch in reference for i in batch][200:]
    assert scheduler.last_epoch == 25 + 5 + 13 and (scheduler.epoch, scheduler.position) == (2, 0)


def test_state_dict_under_workers_is_the_consumed_position():
    schedule, optimizer = Schedule((Phase(0, 1, 0.1, 10, 0.0),), dataset_size=1000), sgd()
    sampler = DynamicBatchSampler(1000, schedule)
    loader = DataLoader(dataset(), batch_sampler=sampler, num_workers=2, prefetch_factor=2)
    scheduler = BatchSizeScheduler(loader, optimizer, schedule)
    for index, _ in enumerate(loader):
        optimizer.step()
        scheduler.step()
        if index == 4:
            break
    assert sampler.position > 50  # cut ahead by the workers
    assert sampler.state_dict()["position"] == 50 and sampler.state_dict()["last_global_batch_size"] == 10


def test_set_epoch_keeps_the_position_of_the_epoch_in_progress_and_refuses_another():
    schedule, optimizer = two_phases(), sgd()
    sampler = DynamicBatchSampler(dataset(), schedule)
    scheduler = BatchSizeScheduler(sampler, optimizer, schedule)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    sampler.set_epoch(0)  # Lightning calls it before every pass, a resumed one too
    assert sum(len(batch) for batch in sampler) == 1000 - 120
    with pytest.raises(RuntimeError, match=r"set_epoch\(2\) would move the sampler away from its "
                                           r"BatchSizeScheduler, which stands at epoch 0, position 120"):
        sampler.set_epoch(2)


def test_loading_the_schedulers_state_moves_the_sampler():
    schedule = two_phases()
    sampler = DynamicBatchSampler(dataset(), schedule)
    scheduler = BatchSizeScheduler(sampler, sgd(), schedule)
    scheduler.load_state_dict({**scheduler.state_dict(), "last_epoch": 30, "epoch": 1, "position": 200})
    # from 200, batches of 40 are cut up to 520 (past epoch 1.5, position 500), then of 100
    assert [len(batch) for batch in sampler] == [40] * 8 + [100] * 4 + [80]
    assert sampler.state_dict()["position"] == 200  # nothing consumed yet


def _rank_and_world_size(rank: int, world_size: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29611))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        sampler = DynamicBatchSampler(10, 4, shuffle=False)
        torch.save((sampler.rank, sampler.world_size, next(iter(sampler))), f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_rank_and_world_size_come_from_torch_distributed(tmp_path):
    mp.spawn(_rank_and_world_size, args=(2, str(tmp_path / "out")), nprocs=2)
    assert torch.load(tmp_path / "out.0") == (0, 2, [0, 1])
    assert torch.load(tmp_path / "out.1") == (1, 2, [2, 3])


# -- MicroBatcher: any batch structure, a mean loss, a matching global batch ---------------------------

class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 2)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(features * mask)


def dict_loss(model: nn.Module, batch: dict, targets: None) -> tuple[torch.Tensor, dict]:
    outputs = model(batch["x"]["features"], batch["x"]["mask"])
    return F.cross_entropy(outputs, batch["labels"]), {}


def test_dict_batches_split_into_micro_batches_give_the_whole_batchs_gradient():
    torch.manual_seed(1)
    batch = {"x": {"features": torch.randn(10, 3), "mask": torch.ones(10, 3)}, "labels": torch.randint(2, (10,)),
             "name": "digits"}
    whole, split = DictModel(), DictModel()
    dict_loss(whole, batch, None)[0].backward()
    result = MicroBatcher(split, loss=dict_loss, micro_batch_size=4).backward(batch, None, global_batch_size=10)
    assert (result.samples, result.micro_batches) == (10, 3)
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_tuple_inputs_are_split_too():
    model = nn.Bilinear(3, 3, 2)
    inputs, targets = (torch.randn(6, 3), torch.randn(6, 3)), torch.randint(2, (6,))
    micro = MicroBatcher(model, loss=lambda m, x, y: (F.cross_entropy(m(*x), y), {}), micro_batch_size=4)
    assert micro.backward(inputs, targets, global_batch_size=6).micro_batches == 2
    with pytest.raises(ValueError, match=r"same first dimension \(samples\), but got inputs\[0\]: 6, inputs\[1\]: 5"):
        micro.backward((inputs[0], inputs[1][:5]), targets, global_batch_size=6)


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(reduction="sum"), functools.partial(F.cross_entropy, reduction="sum")])
def test_a_summed_loss_is_refused(loss_fn):
    with pytest.raises(ValueError, match=r"reduction='mean'\), but got reduction='sum'"):
        MicroBatcher(nn.Linear(3, 2), loss_fn, micro_batch_size=4)


def test_a_loss_that_is_not_a_scalar_is_refused():
    micro = MicroBatcher(nn.Linear(3, 2), lambda outputs, targets: F.cross_entropy(outputs, targets, reduction="none"),
                         micro_batch_size=4)
    with pytest.raises(ValueError, match=r"a 0-dimensional tensor, but got \(4,\); use reduction='mean'"):
        micro.backward(torch.randn(4, 3), torch.randint(2, (4,)), global_batch_size=4)


def test_a_global_batch_size_that_does_not_fit_the_share_warns():
    micro = MicroBatcher(nn.Linear(3, 2), F.cross_entropy, micro_batch_size=4)
    with pytest.warns(UserWarning, match=r"global_batch_size=40 over world_size=1 gives shares of 40 to 40 samples, "
                                         r"but this share has 8"):
        micro.backward(torch.randn(8, 3), torch.randint(2, (8,)), global_batch_size=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        micro.backward(torch.randn(5, 3), torch.randint(2, (5,)), global_batch_size=9, world_size=2)
