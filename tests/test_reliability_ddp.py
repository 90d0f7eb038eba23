"""The epoch's running train-loss/accuracy tally after a DDP resume (issue 17, item 2): a checkpoint holds the
tally summed over ranks, so the metrics after a resume on 2 processes, or on 1, equal the uninterrupted run's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_distributed import DIGITS_TRAIN, EQUIVALENT, _env, _rank_pid, _records, _torchrun

RUN = "decay-momentum-seed0"
ARGS = [*EQUIVALENT[2:], "--epochs", "1", "--schedules", "decay", "--checkpoint-every", "10"]
METRICS = ("epoch", "updates", "samples", "train_loss", "train_acc", "test_loss", "test_acc")


def _metrics(out: Path) -> list[dict]:
    return [{key: record[key] for key in METRICS} for record in _records(out, RUN)]


def _two(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun(["--out", str(out), *ARGS, "--micro-batch-size", "70", *extra]), env=_env(),
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_train_metrics_after_a_resume_on_two_and_on_one_process_equal_the_uninterrupted_runs(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = _two(reference)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    launcher = subprocess.Popen(_torchrun(["--out", str(killed), *ARGS, "--micro-batch-size", "70"]), env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        checkpoint = killed / RUN / "checkpoint.pt"
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "no checkpoint was written"
        os.kill(_rank_pid(launcher, 1), signal.SIGKILL)  # mid-epoch 0: the tally of updates 1..10 is in it
        launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert not (killed / RUN / "metrics.jsonl").exists() or not _records(killed, RUN)
    one = tmp_path / "one"
    shutil.copytree(killed, one)

    done = _two(killed, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _metrics(killed) == _metrics(reference)  # the same 2 ranks: the same sums, bit for bit

    done = subprocess.run([sys.executable, "-m", "growbatch", "run", "--out", str(one), *ARGS, "--micro-batch-size",
                           "70", "--resume"], env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (resumed,), (expected,) = _metrics(one), _metrics(reference)
    assert (resumed["updates"], resumed["samples"]) == (expected["updates"], DIGITS_TRAIN)
    assert resumed["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)  # one process sums in
    assert resumed["train_acc"] == pytest.approx(expected["train_acc"], abs=1.5 / DIGITS_TRAIN)  # another order
