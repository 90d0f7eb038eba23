"""The gradient noise scale measured in your own loop: GradientNoiseScale fed by MicroBatcher.

B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) is the batch size past which a larger batch stops
paying off; growing the batch as training lowers the noise should track it. This trains the digits
CNN with a fixed batch and prints the measured B_simple each epoch, from the micro-batches' gradients
(no extra forward or backward pass).

    python examples/noise_scale.py [--epochs 4]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from growbatch import DynamicBatchSampler, MicroBatcher
from growbatch.batching.noise_scale import GradientNoiseScale
from growbatch.data import load_dataset
from growbatch.models import build_model


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_dataset("digits")
    train_set = TensorDataset((data.x_train.float() / 255 - 0.5) / 0.5, data.y_train)
    loader = DataLoader(train_set, batch_sampler=DynamicBatchSampler(len(train_set), 64, seed=0))
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    noise_scale = GradientNoiseScale(model)  # hooks on the parameters: one dot product per micro-batch
    micro = MicroBatcher(model, nn.functional.cross_entropy, micro_batch_size=16, noise_scale=noise_scale)

    measured = []
    for epoch in range(args.epochs):
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            micro.backward(inputs, targets, global_batch_size=len(targets))
            optimizer.step()
        measured.append(noise_scale.value)
        print(f"epoch {epoch + 1}: batch 64, measured noise scale B_simple = {noise_scale.value:.1f} samples")
    return measured


if __name__ == "__main__":
    main()
