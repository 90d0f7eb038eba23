"""Threads under load (issue 19, NOTE [threads under load] in training/threads.py): one-epoch training time with
torch's default (one thread per core), with one thread, and with growbatch's default (one per idle core), on an
idle machine and beside a competing load (one process of matrix products per core), the variants interleaved.

    python bench/bench_threads.py [--repeats 3] [--epochs 8]

Each measurement is a ``growbatch run compare --schedules decay`` on digits at batch 16 (many small passes, where
spinning threads hurt most) in a fresh process; its training time is the run's ``wall_s``. Prints JSON and writes
bench/results/threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOAD = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"


def train_seconds(threads: int | None, epochs: int) -> tuple[float, str]:
    """wall_s of one digits decay run (``threads`` None: growbatch's default) and what it printed on stderr."""
    with tempfile.TemporaryDirectory() as out:
        flags = ["--workers", str(threads)] if threads else []
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        done = subprocess.run([sys.executable, "-m", "growbatch", "run", "compare", "--schedules", "decay",
                               "--epochs", str(epochs), "--batch-size", "16", "--micro-batch-size", "16",
                               "--no-progress", "--out", out, *flags], capture_output=True, text=True, env=env,
                              check=True)
        summary = json.loads((Path(out) / "summary.json").read_text())
        return summary["runs"][0]["wall_s"], done.stderr.strip()


def measure(repeats: int, epochs: int, cores: int) -> dict[str, dict]:
    variants = {f"{cores} threads (torch default)": cores, "1 thread": 1, "growbatch default": None}
    times: dict[str, list[float]] = {name: [] for name in variants}
    notes: set[str] = set()
    for _ in range(repeats):  # A B C A B C ...: machine noise falls on every variant
        for name, threads in variants.items():
            seconds, note = train_seconds(threads, epochs)
            times[name].append(seconds)
            notes.update(line for line in note.splitlines() if threads is None and line.startswith("growbatch:"))
    return {name: {"median_s": statistics.median(t), "runs_s": t} for name, t in times.items()} | {
        "growbatch said": sorted(notes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    result = {"cores": cores, "idle": measure(args.repeats, args.epochs, cores)}
    load = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(cores)]
    try:
        result[f"beside {cores} matrix-product processes"] = measure(args.repeats, args.epochs, cores)
    finally:
        for process in load:
            process.kill()
            process.wait()
    print(json.dumps(result, indent=2))
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/threads.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
