"""An lm run under torchrun (2 gloo processes = 1 process) and killed with SIGKILL (the resume is bit-identical)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TORCHRUN = Path(sys.executable).with_name("torchrun")
# batch 8 in micro-batches of 4: two per update in one process, so the noise scale is measured and checkpointed too
ARGS = ["lm", "--tokens", "8192", "--epochs", "2", "--seq-len", "16", "--batch-size", "8", "--max-batch-size", "32",
        "--no-progress", "--device", "cpu"]
TIMING_FIELDS = ("wall_s", "allreduce_s", "allreduces", "size_search_s")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(600)))
    return path


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _command(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "growbatch", "run", *ARGS, "--text-file", str(corpus), "--out", str(out),
            "--workers", "1", *extra]


@pytest.mark.slow
def test_two_processes_train_the_same_updates_and_tokens_as_one(corpus: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    schedules = ["--schedules", "decay,converted"]
    subprocess.run(_command(corpus, one, *schedules, "--micro-batch-size", "8"), env=_env(), check=True,
                   capture_output=True, timeout=300)
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "growbatch", "run", *ARGS,
                           "--text-file", str(corpus), "--out", str(two), *schedules, "--micro-batch-size", "4"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in ("decay-adamw-seed0", "converted-adamw-seed0"):
        single, double = _records(one / run), _records(two / run)
        assert len(single) == len(double) == 2
        for a, b in zip(single, double):
            assert [a[k] for k in ("updates", "samples", "tokens", "batch_size", "lr")] == \
                [b[k] for k in ("updates", "samples", "tokens", "batch_size", "lr")]
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
            assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)  # 128 sequences, sharded 64 + 64
        assert double[-1]["allreduces"] > 0 == single[-1]["allreduces"]


def _checkpoint_updates(run_dir: Path) -> int:
    path = run_dir / "checkpoint.pt"
    try:
        return torch.load(path, weights_only=False)["counters"]["updates"] if path.exists() else 0
    except Exception:  # being renamed into place
        return 0


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_bit_identically(corpus: Path, tmp_path: Path) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    fixed = ["--schedules", "converted", "--micro-batch-size", "4", "--checkpoint-every", "5"]
    subprocess.run(_command(corpus, reference, *fixed), env=_env(), check=True, capture_output=True, timeout=300)
    run = out / "converted-adamw-seed0"
    first = subprocess.Popen(_command(corpus, out, *fixed), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _checkpoint_updates(run) < 10 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first.returncode == -signal.SIGKILL and saved["counters"]["epoch"] == 0  # killed in the first epoch
    assert 0 < saved["loader"]["position"] < 8192 // (2 * 16)
    subprocess.run(_command(corpus, out, *fixed, "--resume"), env=_env(), check=True, capture_output=True,
                   timeout=300)
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]  # noqa: E731
    assert strip(_records(run)) == strip(_records(reference / run.name))
    mine = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    theirs = torch.load(reference / run.name / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
