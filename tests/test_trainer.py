"""The Trainer with a task of a user's own: a linear regression of a few lines, micro-batched, resumed exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from growbatch import DynamicBatchSampler, step_schedule
from growbatch.training.checkpoint import load_checkpoint
from growbatch.training.distributed import DistInfo
from growbatch.training.runfiles import train_run
from growbatch.training.settings import RunConfig, RunSettings
from growbatch.training.task import Task
from growbatch.training.trainer import Interrupted, StopFlag, Trainer

CPU = DistInfo()


class Regression(Task):
    """y = x @ w + noise, fitted by a linear layer: the whole task a user writes."""

    def __init__(self, n: int = 240) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n + 60, 4, generator=generator)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n + 60, 1, generator=generator)
        self.n = n

    @property
    def train_size(self) -> int:
        return self.n

    def build_model(self, config: RunConfig) -> nn.Module:
        return nn.Linear(4, 1)

    def train_loader(self, schedule, config, info) -> DataLoader:
        sampler = DynamicBatchSampler(self.n, schedule, seed=config.seed, rank=info.rank, world_size=info.world_size)
        return DataLoader(TensorDataset(self.x[:self.n], self.y[:self.n]), batch_sampler=sampler)

    def loss(self, model, inputs, targets):
        error = model(inputs) - targets
        return error.pow(2).mean(), {"absolute_error": error.detach().abs().sum()}

    def train_metrics(self, loss_sum, sums, samples):
        return {"train_loss": loss_sum / samples, "train_mae": sums["absolute_error"] / samples}

    def evaluate(self, model, config, info):
        with torch.no_grad():
            return {"test_loss": nn.functional.mse_loss(model(self.x[self.n:]), self.y[self.n:]).item()}


def _config(micro_batch_size: int = 4, checkpoint_every: int | None = None) -> RunConfig:
    schedule = step_schedule("increase", lr=0.02, batch_size=8, epochs=4, milestones=(2,), factor=3,
                             dataset_size=240, momentum=0.9)
    settings = RunSettings(micro_batch_size=micro_batch_size, checkpoint_every=checkpoint_every)
    return RunConfig(name="regression", schedule=schedule, model="linear", optimizer="momentum", settings=settings)


class StopAt:
    """An observer that requests a stop after update ``update`` (as a SIGTERM would)."""

    def __init__(self, stop: StopFlag, update: int) -> None:
        self.stop, self.update = stop, update

    def epoch_started(self, run, epoch, updates_in_epoch) -> None: ...

    def update_done(self, trainer: Trainer) -> None:
        self.stop.requested = trainer.state.updates == self.update

    def epoch_ended(self, run, record) -> None: ...


def test_a_regression_task_trains_through_the_trainer_with_the_planned_updates(tmp_path: Path) -> None:
    config = _config()
    records = list(train_run(config, Regression(), tmp_path / "run", info=CPU))
    assert [r["updates"] for r in records][-1] == config.schedule.plan().total_updates == 2 * 30 + 2 * 10
    assert [r["samples"] for r in records] == [240, 480, 720, 960]
    assert [r["batch_size"] for r in records] == [8, 8, 24, 24]
    assert all(r["micro_batch_size"] == 4 for r in records)  # micro-batched: 2 and 6 passes per update
    assert records[-1]["test_loss"] < 0.05 < records[0]["train_loss"]
    assert set(records[0]) >= {"train_loss", "train_mae", "test_loss"}


@pytest.mark.parametrize("stop_after", [5, 30, 61])  # mid-epoch, at an epoch's end, after the batch grew
def test_a_stopped_regression_run_resumes_bit_identically(stop_after: int, tmp_path: Path) -> None:
    whole = list(train_run(_config(), Regression(), tmp_path / "whole", info=CPU))
    stop = StopFlag()
    with pytest.raises(Interrupted, match=f"after update {stop_after} .*checkpoint written to"):
        list(train_run(_config(), Regression(), tmp_path / "cut", info=CPU, stop=stop,
                       observer=StopAt(stop, stop_after)))
    resumed = list(train_run(_config(), Regression(), tmp_path / "cut", info=CPU, resume=True))

    def timeless(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]
    assert timeless(resumed) == timeless(whole)
    a, b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt"), load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values()))


def test_a_data_loader_with_workers_is_refused_rather_than_checkpointed_ahead_of_the_updates() -> None:
    class Prefetching(Regression):
        def train_loader(self, schedule, config, info) -> DataLoader:
            sampler = DynamicBatchSampler(self.n, schedule, seed=config.seed)
            return DataLoader(TensorDataset(self.x[:self.n], self.y[:self.n]), batch_sampler=sampler, num_workers=2)

    with pytest.raises(ValueError, match="num_workers=2.*prefetch"):
        Trainer(_config(), Prefetching(), CPU)
