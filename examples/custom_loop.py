"""growbatch in your own training loop: a batch-size schedule, in-place batch changes, micro-batching.

A standard torch DataLoader takes growbatch's DynamicBatchSampler as its batch_sampler, so the
batch grows without re-creating the loader (workers and shuffle state are kept); the
BatchSizeScheduler sets lr and momentum per update; MicroBatcher splits each logical batch into
micro-batches that fit in memory and accumulates the exact gradient of the whole batch.

    python examples/custom_loop.py [--epochs 6]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from growbatch import BatchSizeScheduler, DynamicBatchSampler, MicroBatcher, step_schedule
from growbatch.data import load_dataset
from growbatch.models import build_model


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_dataset("digits")  # embedded: 1,442 training and 355 test images, 8x8
    x_train = (data.x_train.float() / 255 - 0.5) / 0.5
    x_test = (data.x_test.float() / 255 - 0.5) / 0.5
    train_set = TensorDataset(x_train, data.y_train)

    # decay schedule: lr /5 at 1/3 and 2/3 of training -> the same noise scale by batch x5
    schedule = step_schedule("increase", lr=0.05, batch_size=16, epochs=args.epochs,
                             milestones=[args.epochs / 3, 2 * args.epochs / 3], factor=5,
                             dataset_size=len(train_set), momentum=0.9)
    sampler = DynamicBatchSampler(len(train_set), schedule, seed=0)
    loader = DataLoader(train_set, batch_sampler=sampler)  # built once; the batch grows in place

    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = BatchSizeScheduler(sampler, optimizer, schedule)
    micro = MicroBatcher(model, nn.functional.cross_entropy, micro_batch_size=64)

    updates = 0
    for epoch in range(args.epochs):
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            micro.backward(inputs, targets, global_batch_size=len(targets))
            optimizer.step()
            scheduler.step()  # after optimizer.step(), once per update
            updates += 1
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == data.y_test).float().mean().item()
        model.train()
        print(f"epoch {epoch + 1}: batch {schedule.batch_size_at(epoch):4d}  lr {schedule.lr_at(epoch):.3g}  "
              f"updates {updates:5d}  test accuracy {accuracy:.4f}")
    planned = schedule.plan().total_updates
    assert updates == planned, (updates, planned)
    return accuracy


if __name__ == "__main__":
    main()
