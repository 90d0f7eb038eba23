"""bf16 autocast against float32 on this CPU, and what raises the float32 training FLOP/s; prints JSON.

Part ``precision``: training throughput (samples/s over whole updates: zero_grad, forward + backward through
``MicroBatcher``, SGD step) of the MNIST CNN and the CIFAR networks (resnet20; airbench-small, the study's model) with ``autocast_dtype=None``
(``--precision fp32``) and ``torch.bfloat16`` (``--precision bf16``), and float32 in channels_last
(``--channels-last``), the configurations interleaved round by
round (A B C D, A B C D, ...) so that machine noise falls on all of them; with the float32 and bfloat16
``torch.mm`` rates of the same threads.

Part ``flops``: the MNIST CNN's float32 training FLOP/s as a fraction of the float32 matmul rate (as
``bench_flops.py``) for variants of the step: contiguous or channels_last, SGD's per-tensor loop, ``foreach``
or ``fused``, 2 or 1 threads (each against the matmul rate at its own thread count), interleaved likewise;
each variant's weights after a few updates are compared bit for bit with the baseline's (``exact``).

Run: ``python bench/bench_precision.py`` (~1.5 min idle on 2 cores), ``--part precision`` or ``--part flops``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench_flops import step_flops
from bench_loader import cpu_model
from growbatch import MicroBatcher
from growbatch.models import build_model

# model: (input shape, batch, updates timed per round); batches as growbatch run starts them
# resnet20: the earlier CIFAR-10 study's model; airbench-small: the study's model since issue 19
MODELS = {"mnist-cnn": ((1, 28, 28), 128, 8), "resnet20": ((3, 32, 32), 128, 2), "airbench-small": ((3, 32, 32), 128, 4)}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
FLOPS_BATCH = 128
EXACT_UPDATES = 3
WEIGHT_DECAY = 5e-4  # growbatch run's default


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a square ``torch.mm`` in ``dtype``: 2 n^3 over the fastest of ``repeats`` after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return 2 * size ** 3 / min(seconds)


class Trainee:
    """One model, its optimizer and a fixed random batch; ``update()`` runs one training update."""

    def __init__(self, model_name: str, batch: int, *, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool = False, sgd: dict | None = None) -> None:
        shape = MODELS[model_name][0]
        torch.manual_seed(0)
        model = build_model(model_name, in_channels=shape[0], num_classes=10, image_size=shape[1])
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(batch, *shape, generator=generator)
        self.targets = torch.randint(10, (batch,), generator=generator)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            self.inputs = self.inputs.to(memory_format=torch.channels_last)
        self.model, self.batch = model, batch
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=WEIGHT_DECAY,
                                         **(sgd or {}))
        self.micro = MicroBatcher(model, F.cross_entropy, micro_batch_size=batch, autocast_dtype=autocast_dtype)

    def update(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.micro.backward(self.inputs, self.targets, global_batch_size=self.batch)
        self.optimizer.step()

    def seconds(self, updates: int) -> list[float]:
        times = []
        for _ in range(updates):
            started = time.perf_counter()
            self.update()
            times.append(time.perf_counter() - started)
        return times


def interleaved(trainees: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Each configuration's update times, taken round by round in turn (a warm-up update first, not kept)."""
    times: dict[str, list[float]] = {name: [] for name in trainees}
    for name, run in trainees.items():
        run()  # warm-up: first-call allocations, oneDNN primitive creation
    for _ in range(rounds):
        for name, run in trainees.items():
            times[name] += run()
    return times


def precision_part(rounds: int) -> dict:
    trainees, batches = {}, {}
    for model_name, (_, batch, updates) in MODELS.items():
        for precision, dtype in PRECISIONS.items():
            trainee = Trainee(model_name, batch, autocast_dtype=dtype)
            trainees[f"{model_name} {precision}"] = lambda t=trainee, u=updates: t.seconds(u)
            batches[f"{model_name} {precision}"] = batch
        trainee = Trainee(model_name, batch, channels_last=True)  # the fastest float32 layout (flops part)
        trainees[f"{model_name} fp32 channels_last"] = lambda t=trainee, u=updates: t.seconds(u)
    times = interleaved(trainees, rounds)
    rows = []
    for model_name in MODELS:
        fp32, bf16 = (batches[f"{model_name} {p}"] / statistics.median(times[f"{model_name} {p}"]) for p in PRECISIONS)
        rows.append({"model": model_name, "batch_size": batches[f"{model_name} fp32"],
                     "updates_timed": len(times[f"{model_name} fp32"]),
                     "fp32_samples_per_s": round(fp32, 1), "bf16_samples_per_s": round(bf16, 1),
                     "bf16_speedup": round(bf16 / fp32, 3),
                     "fp32_channels_last_samples_per_s": round(
                         batches[f"{model_name} fp32"] / statistics.median(times[f"{model_name} fp32 channels_last"]), 1)})
    return {"matmul_2048_gflop_per_s": {name: round(matmul_rate(dtype or torch.float32) / 1e9, 1)
                                        for name, dtype in PRECISIONS.items()},
            "training": rows}


FLOP_VARIANTS = {  # name: (threads, Trainee keyword arguments)
    "baseline (contiguous, SGD loop, 2 threads)": (2, {}),
    "channels_last": (2, {"channels_last": True}),
    "SGD foreach=True": (2, {"sgd": {"foreach": True}}),
    "SGD fused=True": (2, {"sgd": {"fused": True}}),
    "channels_last + SGD fused=True": (2, {"channels_last": True, "sgd": {"fused": True}}),
    "1 thread": (1, {}),
}


def _weights_after_updates(threads: int, options: dict) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    trainee = Trainee("mnist-cnn", FLOPS_BATCH, **options)
    for _ in range(EXACT_UPDATES):
        trainee.update()
    return [p.detach().clone().contiguous() for p in trainee.model.parameters()]


def flops_part(rounds: int, updates: int = 8) -> dict:
    threads_before = torch.get_num_threads()
    flops_per_sample = step_flops(64) / 64
    ceilings = {}
    for threads in sorted({t for t, _ in FLOP_VARIANTS.values()}):
        torch.set_num_threads(threads)
        ceilings[threads] = matmul_rate(torch.float32)
    reference = _weights_after_updates(*FLOP_VARIANTS["baseline (contiguous, SGD loop, 2 threads)"])
    trainees, exact = {}, {}
    for name, (threads, options) in FLOP_VARIANTS.items():
        weights = _weights_after_updates(threads, options)
        exact[name] = {"exact": all(torch.equal(a, b) for a, b in zip(weights, reference)),
                       "max_abs_weight_difference": max(float((a - b).abs().max()) for a, b in zip(weights, reference))}
        trainee = Trainee("mnist-cnn", FLOPS_BATCH, **options)

        def run(t: Trainee = trainee, n: int = threads) -> list[float]:
            torch.set_num_threads(n)
            return t.seconds(updates)
        trainees[name] = run
    times = interleaved(trainees, rounds)
    torch.set_num_threads(threads_before)
    rows = []
    for name, (threads, _) in FLOP_VARIANTS.items():
        rate = FLOPS_BATCH / statistics.median(times[name])
        rows.append({"variant": name, "threads": threads, "samples_per_s": round(rate, 1),
                     "gflop_per_s": round(rate * flops_per_sample / 1e9, 2),
                     "fraction_of_matmul": round(rate * flops_per_sample / ceilings[threads], 3), **exact[name]})
    return {"batch_size": FLOPS_BATCH, "training_mflop_per_sample": round(flops_per_sample / 1e6, 2),
            "matmul_2048_fp32_gflop_per_s_by_threads": {t: round(c / 1e9, 1) for t, c in ceilings.items()},
            "exact_after_updates": EXACT_UPDATES, "variants": rows}


def time_by_op(updates: int = 5, top: int = 8) -> list[dict]:
    """Where the baseline fp32 update of the MNIST CNN spends its time: the ops with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    trainee = Trainee("mnist-cnn", FLOPS_BATCH)
    trainee.update()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(updates):
            trainee.update()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3),
             "ms_per_update": round(e.self_cpu_time_total / 1e3 / updates, 2)} for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("precision", "flops", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    result = {"benchmark": "precision_and_flops",
              "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg()}}
    if args.part in ("precision", "both"):
        result["precision"] = precision_part(args.rounds)
    if args.part in ("flops", "both"):
        result["flops"] = flops_part(args.rounds)
        result["flops"]["baseline_time_by_op"] = time_by_op()
    result["machine"]["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
