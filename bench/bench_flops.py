"""Training FLOP/s of the MNIST CNN against the float32 matrix-multiply rate of the same machine; prints JSON.

FLOPs per sample are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one training step
(forward and backward of the convolutions and matrix multiplies; batch norm, ReLU, pooling and the
loss are not counted, so the fraction is a slight underestimate). The step is timed at several batch
sizes, and over a logical batch of 3,200 with ``MicroBatcher(micro_batch_size="auto")``; the matmul
rate is the best of square float32 ``torch.mm`` products.

Run: ``python bench/bench_flops.py`` (~20 s).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench_loader import cpu_model
from growbatch import MicroBatcher
from growbatch.models import build_model

BATCH_SIZES = (32, 64, 128, 256)
LOGICAL_BATCH = 3200  # also timed as growbatch trains it: micro_batch_size="auto"
MATMUL_SIZES = (512, 1024, 2048)


def matmul_flops_per_s(size: int, repeats: int = 5) -> float:
    """2 n^3 FLOPs per product; the fastest of ``repeats`` after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return 2 * size ** 3 / min(seconds)


def training_step(batch_size: int):
    torch.manual_seed(0)
    model = build_model("mnist-cnn", in_channels=1, num_classes=10, image_size=28)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, 1, 28, 28, generator=generator)
    targets = torch.randint(10, (batch_size,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    return step


def micro_batched_rate(logical: int, updates: int = 2) -> tuple[float, int]:
    """Samples/s of updates over a logical batch with MicroBatcher("auto"), after its first (measuring) update."""
    torch.manual_seed(0)
    model = build_model("mnist-cnn", in_channels=1, num_classes=10, image_size=28)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(logical, 1, 28, 28, generator=generator)
    targets = torch.randint(10, (logical,), generator=generator)
    micro = MicroBatcher(model, F.cross_entropy)
    seconds, result = [], None
    for _ in range(updates + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        result = micro.backward(inputs, targets, global_batch_size=logical)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return logical / statistics.median(seconds[1:]), result.micro_batch_size


def step_flops(batch_size: int) -> int:
    counter = FlopCounterMode(display=False)
    step = training_step(batch_size)
    with counter:
        step()
    return counter.get_total_flops()


def training_rate(batch_size: int, repeats: int = 5) -> float:
    """Samples/s of training steps: the median of ``repeats`` after a warm-up."""
    step = training_step(batch_size)
    step()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return batch_size / statistics.median(seconds)


def main() -> None:
    flops_per_sample = step_flops(64) / 64
    assert abs(step_flops(32) / 32 - flops_per_sample) < 1e-6 * flops_per_sample  # linear in the batch
    matmul = {size: matmul_flops_per_s(size) for size in MATMUL_SIZES}
    peak = max(matmul.values())
    rows = []
    for batch_size in BATCH_SIZES:
        samples_per_s = training_rate(batch_size)
        rows.append({"batch_size": batch_size, "samples_per_s": round(samples_per_s, 1),
                     "gflop_per_s": round(samples_per_s * flops_per_sample / 1e9, 2),
                     "fraction_of_matmul": round(samples_per_s * flops_per_sample / peak, 3)})
    samples_per_s, micro_batch_size = micro_batched_rate(LOGICAL_BATCH)
    rows.append({"batch_size": LOGICAL_BATCH, "micro_batch_size": micro_batch_size,
                 "samples_per_s": round(samples_per_s, 1),
                 "gflop_per_s": round(samples_per_s * flops_per_sample / 1e9, 2),
                 "fraction_of_matmul": round(samples_per_s * flops_per_sample / peak, 3)})
    result = {
        "benchmark": "mnist_cnn_training_flops",
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "training_mflop_per_sample": round(flops_per_sample / 1e6, 2),
        "matmul_gflop_per_s": {size: round(rate / 1e9, 2) for size, rate in matmul.items()},
        "training": rows,
        "best_fraction_of_matmul": max(row["fraction_of_matmul"] for row in rows),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
