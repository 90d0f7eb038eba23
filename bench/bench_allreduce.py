"""Communication saved by growing the batch: all-reduces and their time for decay vs increase on 2 ranks.

Runs ``growbatch run compare`` under ``torchrun --nproc-per-node 2`` (gloo, CPU) and reads the
all-reduce count and seconds every run records in its metrics (DDP's gradient all-reduces, one per
bucket per update). Writes bench/results/allreduce.json and allreduce.png; prints the JSON.
Run: ``python bench/bench_allreduce.py [--epochs 30] [--out DIR]`` (digits, ~1-2 min per 10 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TORCHRUN = Path(sys.executable).with_name("torchrun")
SCHEDULES = ("decay", "hybrid", "increase")


def run_compare(out: Path, epochs: int, extra: list[str]) -> float:
    """Train compare with 2 ranks into ``out``; returns the wall time in s."""
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "growbatch", "run", "compare",
               "--out", str(out), "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--force", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    return time.perf_counter() - started


def summarise(out: Path) -> dict:
    rows = {row["schedule"]: row for row in json.loads((out / "summary.json").read_text())["runs"]}
    result = {name: {key: rows[name][key] for key in ("updates", "allreduces", "allreduce_s", "wall_s",
                                                       "final_test_acc")} for name in SCHEDULES}
    decay, increase = result["decay"], result["increase"]
    result["ratio_decay_over_increase"] = {
        "allreduces": decay["allreduces"] / increase["allreduces"],
        "allreduce_s": decay["allreduce_s"] / increase["allreduce_s"],
    }
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, key, label in ((axes[0], "allreduces", "all-reduces"), (axes[1], "allreduce_s", "time in all-reduce (s)")):
        axis.bar(SCHEDULES, [result[name][key] for name in SCHEDULES], color=["tab:blue", "tab:orange", "tab:green"])
        axis.set_ylabel(label)
    fig.suptitle("2 ranks (gloo, CPU), digits, compare")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("extra", nargs="*", help="more growbatch run flags, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "compare"
        wall = run_compare(out, args.epochs, args.extra)
        result = {"world_size": 2, "backend": "gloo", "dataset": "digits", "epochs": args.epochs,
                  "job_wall_s": round(wall, 1), **summarise(out)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allreduce.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "allreduce.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
