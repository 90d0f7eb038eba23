"""Loader throughput (samples/s): TensorLoader against a per-sample Dataset in a DataLoader; prints JSON.

Epochs (the median of 3) of CIFAR-10-shaped uint8 data (50,000 x 3 x 32 x 32), with and without crop(4)+flip, always
normalised, at batch 128 and 3,200; then the TensorLoader's time per batch against a training
step of an MNIST-sized CNN. Run: ``python bench/bench_loader.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from growbatch import TensorLoader

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10 channel statistics
PADDING = 4  # pixels, as in the paper's CIFAR-10 runs
EPOCHS = 3  # passes per loader; the median is reported


class PerSampleDataset(Dataset):
    """The usual path: one sample at a time, crop+flip+normalise in __getitem__ (as torchvision transforms)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, augment: bool) -> None:
        self.inputs, self.targets, self.augment = inputs, targets, augment
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.inputs[index]
        if self.augment:
            padded = F.pad(image, (PADDING,) * 4)
            top, left = torch.randint(0, 2 * PADDING + 1, (2,)).tolist()
            image = padded[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                image = image.flip(2)
        return (image.float() / 255 - self.mean) / self.std, self.targets[index]


def samples_per_s(batches, total: int, epochs: int = EPOCHS) -> float:
    """The median over ``epochs`` passes (single passes on this shared machine vary by up to 2x)."""
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        for inputs, _ in batches:
            inputs.sum()  # touch the batch, as a model would
        rates.append(total / (time.perf_counter() - started))
    return statistics.median(rates)


def tensor_loader(inputs, targets, batch_size: int, augment: bool) -> TensorLoader:
    return TensorLoader(inputs, targets, batch_size, mean=MEAN, std=STD, crop_padding=PADDING if augment else 0,
                        flip=augment, seed=0)


class MnistCnn(nn.Module):
    """The classic MNIST CNN (two 5x5 convolutions, two linear layers), ~1.7M parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 5, padding=2), nn.Conv2d(32, 64, 5, padding=2)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 512), nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def mnist_comparison(batch_size: int, repeats: int) -> dict:
    """ms per batch of TensorLoader (MNIST-shaped, normalised) against ms per CNN training step."""
    inputs = torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8)
    targets = torch.randint(0, 10, (60_000,))
    loader = TensorLoader(inputs, targets, batch_size, mean=[0.1307], std=[0.3081])
    started = time.perf_counter()
    batches = [batch for batch, _ in zip(loader, range(repeats * 4))]
    loader_ms = (time.perf_counter() - started) * 1000 / len(batches)
    model = MnistCnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = batches[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    step_ms = (time.perf_counter() - started) * 1000 / repeats
    return {"batch_size": batch_size, "loader_ms_per_batch": round(loader_ms, 3), "cnn_step_ms": round(step_ms, 2),
            "loader_share_of_step": round(loader_ms / step_ms, 4)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 samples instead of 50,000")
    args = parser.parse_args()
    n = 10_000 if args.quick else 50_000
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, (n,), generator=generator)
    rows = []
    for augment in (True, False):
        for batch_size in (128, 3200):
            row = {"augment": augment, "batch_size": batch_size}
            row["tensor_loader"] = round(samples_per_s(tensor_loader(inputs, targets, batch_size, augment), n))
            for workers in (0, 2):
                loader = DataLoader(PerSampleDataset(inputs, targets, augment), batch_size=batch_size, shuffle=True,
                                    num_workers=workers)
                row[f"dataloader_workers_{workers}"] = round(samples_per_s(loader, n))
            best = max(row["dataloader_workers_0"], row["dataloader_workers_2"])
            row["speedup_vs_best_dataloader"] = round(row["tensor_loader"] / best, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "benchmark": "loader_throughput_samples_per_s",
        "dataset": f"{n} x 3 x 32 x 32 uint8, normalised; augment = random crop (padding {PADDING}) + flip",
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "throughput": rows,
        "mnist_cnn": [mnist_comparison(b, repeats) for b, repeats in ((128, 20), (3200, 3))],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
