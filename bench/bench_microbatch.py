"""Micro-batching: training throughput and peak memory at logical batches 128 to 16,000; prints JSON.

For the MNIST CNN and WRN-16-4 (plain batch norm, so every micro-batch size is allowed): the
throughput (samples/s over whole updates: zero_grad, forward + backward, SGD step) of
- naive: the whole logical batch in one pass, where it fits in memory and time;
- growbatch: ``MicroBatcher(micro_batch_size="auto")``, after its first update (which measures);
- the reference, "best fixed": the best one-pass throughput at any batch size, over a sweep of
  small sizes and the naive runs.
Every configuration runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own.

WRN-16-4 trains at about 60 samples/s on a 2-core CPU, so an update of 3,200 or 16,000 would take
1-5 minutes: there growbatch computes a share of 320 samples of the logical batch (weighted
as part of the whole batch, ``global_batch_size=L``), which does the same work per sample as the
whole update, and naive is not run (its memory need is estimated instead).

Run: ``python bench/bench_microbatch.py [--model mnist-cnn|wrn-16-4|all]`` (~3 min per model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from bench_loader import cpu_model
from growbatch import MicroBatcher
from growbatch.batching.microbatch_size import available_memory_bytes, estimate_training_memory
from growbatch.models import build_model

LOGICAL = (128, 640, 3200, 16_000)
# shapes; the fixed sizes measured besides the logical batches (one pass each); timed updates per
# logical batch; samples computed per update where the whole logical batch would take too long
MODELS = {
    "mnist-cnn": {"in_channels": 1, "image_size": 28, "sweep": (16, 32, 64, 256, 512, 1024, 2048),
                  "updates": {128: 8, 640: 4, 3200: 2, 16_000: 1}, "share": {}},
    "wrn-16-4": {"in_channels": 3, "image_size": 32, "sweep": (16, 32, 64),
                 "updates": {128: 2, 640: 1, 3200: 1, 16_000: 1}, "share": {3200: 320, 16_000: 320}},
}
SWEEP_UPDATES = 3  # timed one-pass updates per fixed size (after a warm-up)
NAIVE_TIME_LIMIT = 60.0  # s: a naive update expected to take longer (fixed-sweep rate) is not run
NAIVE_MEMORY_SHARE = 0.5  # a naive update whose estimated memory exceeds this share of free RAM is not run


def setup(name: str, batch: int, seed: int = 0, uint8: bool = False):
    spec = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(name, in_channels=spec["in_channels"], num_classes=10, image_size=spec["image_size"])
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, spec["in_channels"], spec["image_size"], spec["image_size"])
    if uint8:  # as growbatch's own loop holds a logical batch: raw pixels, normalised per micro-batch
        inputs = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    else:
        inputs = torch.randn(shape, generator=generator)
    targets = torch.randint(10, (batch,), generator=generator)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), inputs, targets


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def timed(update, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        update()
        seconds.append(time.perf_counter() - started)
    return seconds


def run_one_pass(name: str, batch: int, updates: int) -> dict:
    """The whole batch in one forward + backward per update: samples/s (median of ``updates`` after a warm-up)."""
    model, optimizer, inputs, targets = setup(name, batch)

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    warm_up = 1 if updates > 1 else 0  # a single update of a huge batch is timed cold (it takes 10-30 s)
    seconds = timed(update, updates + warm_up)[warm_up:]
    return {"samples_per_s": batch / statistics.median(seconds), "peak_rss_mb": peak_rss_mb()}


def normalize_uint8(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().mul_(1 / 255).sub_(0.5)


def run_growbatch(name: str, logical: int, micro_batch_size: int | str = "auto", share: int | None = None,
                  uint8: bool = False) -> dict:
    model, optimizer, inputs, targets = setup(name, logical, uint8=uint8)
    share = share or MODELS[name]["share"].get(logical, logical)
    micro = MicroBatcher(model, F.cross_entropy, micro_batch_size=micro_batch_size,
                         transform=normalize_uint8 if uint8 else None)
    results = []

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        results.append(micro.backward(inputs[:share], targets[:share], global_batch_size=logical))
        optimizer.step()

    # with "auto": the first updates train at candidate sizes while they are timed (NOTE [online timing])
    searching = timed(update, 1)
    while (search := micro.size_search(inputs)) is not None and search.candidate(share) is not None:
        searching += timed(update, 1)
    first_s = sum(searching)
    seconds = timed(update, MODELS[name]["updates"].get(logical, 1))
    return {
        "samples_per_s": share / statistics.median(seconds), "searching_s": first_s,
        "updates_while_searching": len(searching),
        "update_s": statistics.median(seconds), "samples_per_update": share,
        "micro_batch_size": results[-1].micro_batch_size, "micro_batches": results[-1].micro_batches,
        "measured_samples_per_s": micro.measured_throughput(inputs),
        "memory_limit": search.memory_limit if search else None,
        "estimated_bytes_per_sample": search.memory_estimate.per_sample_bytes if search else None,
        "logical_batch_mb": inputs.numel() * inputs.element_size() / 2**20, "peak_rss_mb": peak_rss_mb(),
    }


def run_estimate(name: str) -> dict:
    model, _, inputs, targets = setup(name, 16)
    estimate = estimate_training_memory(model, F.cross_entropy, inputs, targets)
    return {"per_sample_bytes": estimate.per_sample_bytes, "fixed_bytes": estimate.fixed_bytes,
            "available_bytes": available_memory_bytes(torch.device("cpu"))}


def in_subprocess(kind: str, **arguments) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps({"kind": kind, **arguments})]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "measured_samples_per_s" in result:
        result["measured_samples_per_s"] = {int(k): v for k, v in result["measured_samples_per_s"].items()}
    return result


def bench_memory(name: str, chosen: int, auto_peak_mb: float | None = None) -> dict:
    """Peak RSS at logical batch 16,000 micro-batched at ``chosen`` (float32 and uint8 logical batch) vs one pass at ``chosen``."""
    at_micro = in_subprocess("one_pass", name=name, batch=chosen, updates=2)
    memory = {"chosen_micro_batch_size": chosen, "peak_rss_mb_one_pass_at_chosen": at_micro["peak_rss_mb"],
              "peak_rss_mb_logical_16000_auto_incl_measuring": auto_peak_mb}
    # the whole logical batch is in memory, and computing 4 of its micro-batches peaks as high as all of them
    for label, uint8 in (("float32", False), ("uint8", True)):
        at_logical = in_subprocess("growbatch", name=name, logical=LOGICAL[-1], micro_batch_size=chosen,
                                   share=4 * chosen, uint8=uint8)
        memory[label] = {
            "peak_rss_mb_logical_16000_micro_batched": at_logical["peak_rss_mb"],
            "logical_batch_tensor_mb": at_logical["logical_batch_mb"],
            "ratio": at_logical["peak_rss_mb"] / at_micro["peak_rss_mb"],
            "ratio_without_the_batch_tensor":
                (at_logical["peak_rss_mb"] - at_logical["logical_batch_mb"]) / at_micro["peak_rss_mb"],
        }
    return memory


def bench_model(name: str) -> dict:
    started = time.perf_counter()
    spec = MODELS[name]
    one_pass = {size: in_subprocess("one_pass", name=name, batch=size, updates=SWEEP_UPDATES) for size in spec["sweep"]}
    estimate = in_subprocess("estimate", name=name)
    rows = []
    for logical in LOGICAL:
        row = {"logical_batch": logical, "growbatch": in_subprocess("growbatch", name=name, logical=logical)}
        need = estimate["fixed_bytes"] + logical * estimate["per_sample_bytes"]
        rates = {size: result["samples_per_s"] for size, result in one_pass.items()}
        expected_s = logical / max(rate for size, rate in rates.items() if size <= logical)
        row["naive_estimated_gb"] = need / 1e9
        if need > NAIVE_MEMORY_SHARE * estimate["available_bytes"] or expected_s > NAIVE_TIME_LIMIT:
            row["naive"] = {"skipped": f"needs ~{need / 1e9:.1f} GB (estimate) and ~{expected_s:.0f} s per update"}
        else:
            row["naive"] = one_pass[logical] = in_subprocess(
                "one_pass", name=name, batch=logical, updates=spec["updates"][logical])
        rows.append(row)
        print(json.dumps({"model": name, **row}), file=sys.stderr, flush=True)
    # the reference: the best one-pass throughput at any fixed batch size (the sweep and the naive runs)
    rates = {size: result["samples_per_s"] for size, result in sorted(one_pass.items())}
    best_size = max(rates, key=rates.get)
    for row in rows:
        row["growbatch_pct_of_best_fixed"] = 100 * row["growbatch"]["samples_per_s"] / rates[best_size]
        if "samples_per_s" in row["naive"]:
            row["naive_pct_of_best_fixed"] = 100 * row["naive"]["samples_per_s"] / rates[best_size]
    memory = bench_memory(name, rows[-1]["growbatch"]["micro_batch_size"], rows[-1]["growbatch"]["peak_rss_mb"])
    return {"one_pass_samples_per_s": rates, "best_fixed": {"batch_size": best_size, "samples_per_s": rates[best_size]},
            "memory_estimate": estimate, "rows": rows, "memory_16000": memory,
            "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--memory-only", type=int, metavar="MICRO", default=None,
                        help="only the peak-memory comparison at logical 16,000, at this micro-batch size")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config = json.loads(args.worker)
        kind = config.pop("kind")
        worker = {"one_pass": run_one_pass, "growbatch": run_growbatch, "estimate": run_estimate}[kind]
        print(json.dumps(worker(**config)))
        return
    names = list(MODELS) if args.model == "all" else [args.model]
    if args.memory_only:
        print(json.dumps({name: bench_memory(name, args.memory_only) for name in names}, indent=2))
        return
    result = {
        "benchmark": "micro_batching_throughput_and_memory",
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg()},
        "models": {name: bench_model(name) for name in names},
    }
    result["machine"]["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
