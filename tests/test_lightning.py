"""growbatch.integrations.lightning against the real PyTorch Lightning, on sklearn's digits (1,797 samples)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

pl = pytest.importorskip("pytorch_lightning", reason="pytorch-lightning is not installed: pip install growbatch[lightning]")

from growbatch import Phase, Schedule  # noqa: E402
from growbatch.integrations.lightning import GrowBatch  # noqa: E402

N = 1797
# 3 epochs: batch 32, then 128 from epoch 1.5, then 400 from epoch 2: 57 + 29 + 8 + 5 updates
SCHEDULE = Schedule((Phase(0, 1.5, 0.05, 32), Phase(1.5, 2, 0.05, 128), Phase(2, 3, 0.05, 400)), dataset_size=N,
                    name="digits-growing")
PLANNED_UPDATES = 57 + (29 + 7) + 5  # ceil(1797/32); 29 of 32 to 928 >= 899 (epoch 1.5), then 6 of 128 and 101; ceil(1797/400)


def digits() -> TensorDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    return TensorDataset(torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target))


class Classifier(pl.LightningModule):
    """A small MLP trained with momentum SGD; it records every batch size it trains on."""

    def __init__(self, growbatch: GrowBatch, num_workers: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.growbatch, self.num_workers = growbatch, num_workers
        self.batch_sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.batch_sizes.append(len(inputs))
        return F.cross_entropy(self.net(inputs), targets)

    def train_dataloader(self):
        return self.growbatch.train_dataloader(digits(), num_workers=self.num_workers,
                                               persistent_workers=self.num_workers > 0)

    def configure_optimizers(self):
        return self.growbatch.configure_optimizers(torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9))


def fit(tmp_path: Path, *, num_workers: int = 0, ckpt_path: str | None = None, every: int | None = None,
        stop_at: int | None = None, **trainer_kwargs) -> tuple[pl.Trainer, Classifier]:
    growbatch = GrowBatch(SCHEDULE, seed=0)
    model = Classifier(growbatch, num_workers)
    callbacks: list[pl.Callback] = [growbatch]
    if every is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1,
                                                      filename="{step}"))
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    trainer = pl.Trainer(max_epochs=SCHEDULE.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=every is not None,
                         num_sanity_val_steps=0, callbacks=callbacks, **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*(does not have many workers|num_workers|resuming from a checkpoint).*")
        trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


class Crash(RuntimeError):
    pass


class StopAt(pl.Callback):
    """Kill the run after update ``step`` and its checkpoint (Lightning saves after every callback's
    on_train_batch_end): an exception as the next batch starts, as a crash would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"killed after update {self.step}")


def expected_batch_sizes() -> list[int]:
    return [size for epoch in range(SCHEDULE.epochs) for size in SCHEDULE.batch_sizes(epoch)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_trains_the_planned_updates_and_samples(tmp_path, num_workers):
    trainer, model = fit(tmp_path, num_workers=num_workers)
    plan = SCHEDULE.plan()
    assert trainer.global_step == plan.total_updates == PLANNED_UPDATES
    assert model.batch_sizes == expected_batch_sizes() and sum(model.batch_sizes) == plan.total_samples == 3 * N
    assert model.growbatch.lr_scheduler(trainer.optimizers[0]).last_epoch == PLANNED_UPDATES


def test_lightning_resumed_from_its_checkpoints_ends_as_an_uninterrupted_run(tmp_path):
    _, reference = fit(tmp_path / "whole")
    final = [p.detach().clone() for p in reference.parameters()]
    # killed mid-epoch 0, at epoch 0's last update, in epoch 1 after the change to 128 (57 + 29 = 86)
    for stop in (20, 57, 90):
        directory = tmp_path / f"stop{stop}"
        with pytest.raises(Crash):
            fit(directory, every=1, stop_at=stop)
        trainer, model = fit(directory, ckpt_path=str(directory / f"step={stop}.ckpt"))
        assert trainer.global_step == PLANNED_UPDATES
        assert model.batch_sizes == expected_batch_sizes()[stop:]  # the rest, never a batch of an old size
        for a, b in zip(final, model.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lightning_refuses_what_would_change_the_schedule(tmp_path):
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=2\); drop it"):
        fit(tmp_path, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match=r"the schedule spans 3 epochs, but got Trainer\(max_epochs=3, max_steps=10\)"):
        fit(tmp_path, max_steps=10)
    with pytest.raises(TypeError, match=r"train_dataloader\(\) sets batch_size, shuffle from the schedule"):
        GrowBatch(SCHEDULE).train_dataloader(digits(), batch_size=32, shuffle=True)


def test_lightning_refuses_a_checkpoint_of_another_schedule(tmp_path):
    fit(tmp_path, every=10)
    other = GrowBatch(Schedule((Phase(0, 3, 0.05, 64),), dataset_size=N), seed=0)
    with pytest.raises(ValueError, match=r"the checkpoint was trained on schedule 'digits-growing' with seed=0"):
        other.load_state_dict(torch.load(tmp_path / "step=10.ckpt", weights_only=False)["callbacks"]["GrowBatch"])


def test_lightning_example_in_the_docs_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "docs" / "lightning.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, "docs/lightning.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["trainer"].global_step == namespace["schedule"].plan().total_updates


class RecordPerRank(pl.Callback):
    """Each rank writes its update count and batch sizes (ddp_spawn returns only rank 0's model)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        torch.save((trainer.global_step, pl_module.batch_sizes), self.directory / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow  # two processes through Lightning's launcher
def test_lightning_ddp_two_processes_split_every_global_batch(tmp_path):
    growbatch = GrowBatch(SCHEDULE, seed=0)
    trainer = pl.Trainer(max_epochs=SCHEDULE.epochs, accelerator="cpu", devices=2, strategy="ddp_spawn",
                         use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         callbacks=[growbatch, RecordPerRank(tmp_path)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*(does not have many workers|num_workers).*")
        trainer.fit(Classifier(growbatch))
    (steps0, sizes0), (steps1, sizes1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert steps0 == steps1 == PLANNED_UPDATES
    assert [a + b for a, b in zip(sizes0, sizes1)] == expected_batch_sizes()  # each global batch, split in two
