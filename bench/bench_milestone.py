"""Milestone cost: step times around a batch change 128 -> 640 with num_workers=2; prints JSON.

Compares growbatch's one persistent DataLoader (batch_sampler=DynamicBatchSampler) with what
people do today: re-create the DataLoader at the milestone, or set a batch size on a sampler
that prefetching workers have already read past. Counts the batches of the old size that
arrive after the change. Run: ``python bench/bench_milestone.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from bench_loader import PerSampleDataset, cpu_model
from growbatch import DynamicBatchSampler, Phase, Schedule

N = 12_800  # samples: 100 batches of 128 per epoch
OLD, NEW = 128, 640  # global batch before and after the milestone
WORKERS = 2
WINDOW = (5, 8)  # steps recorded before and after the change


class SettableBatchSampler(Sampler[list[int]]):
    """A shuffled batch sampler whose ``batch_size`` a training loop may set at a milestone."""

    def __init__(self, dataset_size: int, batch_size: int) -> None:
        self.dataset_size, self.batch_size, self.epoch = dataset_size, batch_size, 0

    def __len__(self) -> int:
        return -(-self.dataset_size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        self.epoch += 1
        start = 0
        while start < self.dataset_size:
            size = self.batch_size  # read when the batch is cut, which is before it is consumed
            yield order[start:start + size]
            start += size


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    """A small, fixed-cost step (a linear model) so the loader's behaviour shows in the step time."""
    inputs, targets = batch
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs.flatten(1)), targets).backward()
    optimizer.step()


def run(batches_per_epoch: Callable[[int], Iterator], milestone: tuple[int, int],
        on_change: Callable[[], None] | None = None) -> dict:
    """Two epochs; the change is due at (epoch, position). Times every step, counts stale batches."""
    torch.manual_seed(0)
    model = nn.Linear(3 * 32 * 32, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    records = []  # (epoch, position, batch size, step ms)
    changed = False
    last = time.perf_counter()
    for epoch in range(2):
        position = 0
        for batch in batches_per_epoch(epoch):
            due = (epoch, position) >= milestone
            if due and not changed and on_change is not None:
                on_change()
            changed = changed or due
            train_step(model, optimizer, batch)
            now = time.perf_counter()
            records.append((epoch, position, len(batch[1]), (now - last) * 1000))
            last = now
            position += len(batch[1])
    first = next(i for i, r in enumerate(records) if (r[0], r[1]) >= milestone)
    after = records[first:first + WINDOW[1]]
    before = records[first - WINDOW[0]:first]
    steady_new = statistics.median(r[3] for r in records[first + 3:first + 13])
    # N is a multiple of both sizes, so any batch of the old size after the milestone is stale
    return {
        "stale_batches": sum(1 for r in records[first:] if r[0] == milestone[0] and r[2] == OLD),
        "step_ms_before": [round(r[3], 1) for r in before],
        "step_ms_after": [round(r[3], 1) for r in after],
        "sizes_after": [r[2] for r in after],
        "first_step_after_ms": round(after[0][3], 1),
        "steady_step_ms_new_size": round(steady_new, 1),
    }


def growbatch_scenario(dataset, milestone_epoch: float) -> dict:
    schedule = Schedule((Phase(0, milestone_epoch, 0.1, OLD), Phase(milestone_epoch, 2, 0.1, NEW)), N)
    sampler = DynamicBatchSampler(N, schedule, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=WORKERS, persistent_workers=True)
    milestone = (int(milestone_epoch), round(milestone_epoch % 1 * N))  # (epoch, position), the sample clock
    return run(lambda epoch: iter(loader), milestone)


def recreate_scenario(dataset) -> dict:
    """The usual fix at an epoch-boundary milestone: a new DataLoader (new workers) with the new batch size."""
    def epoch_batches(epoch: int):
        return iter(DataLoader(dataset, batch_size=OLD if epoch == 0 else NEW, shuffle=True, num_workers=WORKERS))
    return run(epoch_batches, (1, 0))


def recreate_mid_epoch_scenario(dataset) -> dict:
    """Re-created mid-epoch: new workers, and the shuffle restarts, so samples repeat within the epoch."""
    seen: list[int] = []

    class Indexed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return N

        def __getitem__(self, index: int):
            inputs, target = dataset[index]
            return inputs, target, index

    def epoch_batches(epoch: int):
        if epoch == 1:
            for inputs, targets, _ in DataLoader(Indexed(), batch_size=NEW, shuffle=True, num_workers=WORKERS):
                yield inputs, targets
            return
        position = 0
        for inputs, targets, indices in DataLoader(Indexed(), batch_size=OLD, shuffle=True, num_workers=WORKERS):
            seen.extend(indices.tolist())
            yield inputs, targets
            position += len(targets)
            if position >= N // 2:
                break
        # the milestone: a fresh loader with a fresh shuffle for the rest of the epoch
        for inputs, targets, indices in DataLoader(Indexed(), batch_size=NEW, shuffle=True, num_workers=WORKERS):
            if position >= N:
                break
            seen.extend(indices.tolist())
            yield inputs, targets
            position += len(targets)

    result = run(epoch_batches, (0, N // 2))
    result["samples_seen_twice"] = len(seen) - len(set(seen))
    return result


def setter_scenario(dataset) -> dict:
    """One persistent DataLoader; the loop sets batch_size when the milestone is reached mid-epoch."""
    sampler = SettableBatchSampler(N, OLD)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=WORKERS, persistent_workers=True)
    return run(lambda epoch: iter(loader), (0, N // 2), on_change=lambda: setattr(sampler, "batch_size", NEW))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario; medians are reported")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=generator)
    dataset = PerSampleDataset(inputs, torch.randint(0, 10, (N,), generator=generator), augment=True)
    scenarios = {
        "growbatch_epoch_boundary": lambda: growbatch_scenario(dataset, 1),
        "recreate_dataloader_epoch_boundary": lambda: recreate_scenario(dataset),
        "growbatch_mid_epoch": lambda: growbatch_scenario(dataset, 0.5),
        "recreate_dataloader_mid_epoch": lambda: recreate_mid_epoch_scenario(dataset),
        "setter_on_persistent_dataloader_mid_epoch": lambda: setter_scenario(dataset),
    }
    results = {}
    for name, scenario in scenarios.items():
        runs = [scenario() for _ in range(args.repeats)]
        summary = {key: statistics.median(r[key] for r in runs) for key, value in runs[0].items()
                   if isinstance(value, (int, float))}
        summary["example_run"] = {key: runs[0][key] for key in ("step_ms_before", "step_ms_after", "sizes_after")}
        results[name] = summary
        print(json.dumps({name: summary}), flush=True)
    print(json.dumps({
        "benchmark": "milestone_cost",
        "setting": f"N={N} CIFAR-shaped uint8, per-sample crop+flip+normalise, batch {OLD} -> {NEW}, "
                   f"num_workers={WORKERS}, linear model step, medians of {args.repeats} runs",
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
