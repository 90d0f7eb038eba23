"""Issue 14's framework table, Lightning row: 4,000 MNIST samples, 3 epochs, batch 32 -> 128 -> 400; prints JSON.

Counts updates and samples against the plan with num_workers 0 and 2, and resumes from the step-60
checkpoint (the issue's case) comparing the final weights with the uninterrupted run.
Run: .venv/bin/python bench/lightning_mnist.py [path/to/mnist.npz]
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from growbatch import Phase, Schedule
from growbatch.integrations.lightning import GrowBatch

N = 4000
SCHEDULE = Schedule((Phase(0, 1, 0.05, 32), Phase(1, 2, 0.05, 128), Phase(2, 3, 0.05, 400)), dataset_size=N,
                    name="mnist-32-128-400")


def mnist(path: Path) -> TensorDataset:
    with np.load(path) as f:
        x, y = f["x_train"][:N], f["y_train"][:N]
    return TensorDataset(torch.tensor(x, dtype=torch.float32).flatten(1) / 255, torch.tensor(y, dtype=torch.long))


class Net(pl.LightningModule):
    def __init__(self, growbatch: GrowBatch, data: TensorDataset, num_workers: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        self.growbatch, self.data, self.num_workers, self.samples = growbatch, data, num_workers, 0

    def training_step(self, batch, batch_idx):
        self.samples += len(batch[1])
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def train_dataloader(self):
        return self.growbatch.train_dataloader(self.data, num_workers=self.num_workers,
                                               persistent_workers=self.num_workers > 0)

    def configure_optimizers(self):
        return self.growbatch.configure_optimizers(torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9))


class Crash(RuntimeError):
    pass


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash


def fit(data, num_workers, directory, ckpt_path=None, stop_at=None):
    growbatch = GrowBatch(SCHEDULE, seed=0)
    model = Net(growbatch, data, num_workers)
    callbacks = [growbatch, pl.callbacks.ModelCheckpoint(dirpath=directory, every_n_train_steps=60, save_top_k=-1,
                                                         filename="{step}")]
    if stop_at:
        callbacks.append(StopAt(stop_at))
    trainer = pl.Trainer(max_epochs=SCHEDULE.epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    try:
        trainer.fit(model, ckpt_path=ckpt_path)
    except Crash:
        pass
    return trainer, model


def main() -> None:
    warnings.filterwarnings("ignore")
    data = mnist(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mnist.npz"))
    plan = SCHEDULE.plan()
    rows = {"planned_updates": plan.total_updates, "planned_samples": plan.total_samples}
    with tempfile.TemporaryDirectory() as tmp:
        finals = {}
        for workers in (0, 2):
            trainer, model = fit(data, workers, Path(tmp) / f"w{workers}")
            rows[f"workers{workers}"] = {"updates": trainer.global_step, "samples": model.samples}
            finals[workers] = [p.detach().clone() for p in model.parameters()]
        directory = Path(tmp) / "resume"
        fit(data, 2, directory, stop_at=60)
        trainer, model = fit(data, 2, directory, ckpt_path=str(directory / "step=60.ckpt"))
        same = all(torch.equal(a, b) for a, b in zip(finals[2], model.parameters()))
        rows["resume_step60_workers2"] = {"updates": trainer.global_step, "samples_after_resume": model.samples,
                                          "final_weights_equal_uninterrupted": same}
        rows["workers0_and_2_same_weights"] = all(torch.equal(a, b) for a, b in zip(finals[0], finals[2]))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
