"""Overhead of measuring the gradient noise scale: one update's MicroBatcher.backward with and without it.

The MNIST CNN on 28 x 28 inputs, a logical batch of 256 in micro-batches of 64 (four per update), fixed
weights; the two variants alternate (A B A B ...) so machine noise falls on both, and the median of
each is compared. Prints JSON (and writes bench/results/noise_scale.json).
Run: ``python bench/bench_noise_scale.py [--repeats 30] [--micro-batch-size 64] [--batch-size 256]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from growbatch import MicroBatcher
from growbatch.batching.noise_scale import GradientNoiseScale
from growbatch.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--micro-batch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", in_channels=1, num_classes=10, image_size=28)
    inputs, targets = torch.randn(args.batch_size, 1, 28, 28), torch.randint(10, (args.batch_size,))
    gns = GradientNoiseScale(model)
    variants = {
        "plain": MicroBatcher(model, nn.functional.cross_entropy, micro_batch_size=args.micro_batch_size),
        "noise_scale": MicroBatcher(model, nn.functional.cross_entropy, micro_batch_size=args.micro_batch_size,
                                    noise_scale=gns),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 2):  # the first two rounds warm up
        for name, micro in variants.items():
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            micro.backward(inputs, targets, global_batch_size=args.batch_size)
            if repeat >= 2:
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {"model": "mnist-cnn", "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
              "threads": torch.get_num_threads(), "repeats": args.repeats,
              "median_s": median, "overhead": median["noise_scale"] / median["plain"] - 1.0,
              "noise_scale": gns.value}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noise_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
