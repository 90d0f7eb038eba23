"""DDP through torchrun (gloo, 2 CPU processes): the same run as one process, empty shares, a killed rank, resume."""

from __future__ import annotations

import doctest
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import growbatch.training.distributed
from growbatch.training.distributed import TIMEOUT_ENV, from_main, setup, unaligned_batch_sizes

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
RUNS = ("decay-momentum-seed0", "hybrid-momentum-seed0", "increase-momentum-seed0")
# digits (N = 1442 = 14 * 103): every global batch (14, 70, 140 and the epochs' last ones) splits over
# 2 ranks into multiples of the ghost batch 7 (NOTE [ghost alignment]); one forward pass per update on
# each rank, as in one process (micro-batch 70 per rank, 140 alone), so BN running statistics match too.
# A small lr keeps float rounding (a different summation order) from growing into visible differences.
EQUIVALENT = ["--epochs", "2", "--batch-size", "14", "--ghost-batch-size", "7", "--max-batch-size", "140",
              "--lr", "0.005", "--no-progress", "--device", "cpu"]
DIGITS_TRAIN, DIGITS_TEST = 1442, 355


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _torchrun(args: list[str], nproc: int = 2) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "-m", "growbatch", "run", *args]


def _records(out: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("ddp")
    one, two = base / "one", base / "two"
    subprocess.run([sys.executable, "-m", "growbatch", "run", "--out", str(one), *EQUIVALENT,
                    "--micro-batch-size", "140"], env=_env(), check=True, capture_output=True, timeout=120)
    done = subprocess.run(_torchrun(["--out", str(two), *EQUIVALENT, "--micro-batch-size", "70"]), env=_env(),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return one, two, done.stdout + done.stderr


@pytest.mark.parametrize("run", RUNS)
def test_two_processes_equal_one_with_the_same_global_batch_and_ghost_bn(one_and_two_processes, run: str) -> None:
    one, two, _ = one_and_two_processes
    single, double = _records(one, run), _records(two, run)
    assert len(single) == len(double) == 2
    for a, b in zip(single, double):
        assert (a["updates"], a["samples"], a["batch_size"], a["lr"]) == (b["updates"], b["samples"],
                                                                          b["batch_size"], b["lr"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1.5 / DIGITS_TRAIN)
        # evaluation is sharded 177 + 178 and summed: exact totals, so the same accuracy up to rounding
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=1.5 / DIGITS_TEST)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
    # one all-reduce per update (the digits CNN fits one bucket); none in one process
    assert [r["allreduces"] for r in double] == [r["updates"] for r in double]
    assert all(r["allreduce_s"] > 0 for r in double) and all(r["allreduces"] == 0 for r in single)


def test_two_processes_write_once_from_rank_0(one_and_two_processes) -> None:
    one, two, output = one_and_two_processes
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and [row["name"] for row in summary["runs"]] == list(RUNS)
    assert json.loads((two / RUNS[0] / "config.json").read_text())["world_size"] == 2
    # the same files, except the noise-scale figure: two ranks' shares measure B_simple for free (each rank's
    # gradient is a small batch), one process with one micro-batch per update has nothing to compare
    assert sorted(p.name for p in two.iterdir()) == sorted([p.name for p in one.iterdir()] + ["noise_scale.png"])
    assert all(r["gradient_noise_scale"] is None for r in _records(one, RUNS[0]))
    assert _records(two, RUNS[0])[-1]["gradient_noise_scale"] > 0
    assert not list(two.rglob("*.tmp")) and not (two / ".growbatch.lock").exists()
    # one line per epoch and one report path: nothing printed twice
    lines = output.splitlines()
    assert sum(line.startswith(f"[{RUNS[0]}] epoch 1/2") for line in lines) == 1
    assert sum(line.endswith("report.html") for line in lines) == 1
    assert "UserWarning" not in output  # aligned: no ghost-split warning


def test_an_empty_share_joins_the_all_reduce_instead_of_hanging(tmp_path: Path) -> None:
    """1442 = 11 * 131 + 1: each epoch's last global batch has one sample, so rank 1's share is empty."""
    out = tmp_path / "out"
    done = subprocess.run(_torchrun(["--out", str(out), "--epochs", "1", "--batch-size", "11", "--max-batch-size", "11",
                                     "--micro-batch-size", "11", "--no-progress", "--device", "cpu"]),
                          env=_env(**{TIMEOUT_ENV: "20"}), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in RUNS:
        (record,) = _records(out, run)
        assert record["updates"] == 131 + 1 == record["allreduces"] and record["samples"] == DIGITS_TRAIN
        assert record["train_loss"] == record["train_loss"]  # finite, not NaN from an empty batch
    # shares 6 + 5 cut the ghost batches of 11: said once per run, by rank 0 only
    assert done.stderr.count("ghost batch norm differs from one process's") == len(RUNS)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (its children carry their rank in the environment)."""
    for _ in range(200):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under torchrun pid {launcher.pid}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_a_killed_rank_ends_the_job_with_an_error_and_resume_finishes_on_one_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--out", str(out), *EQUIVALENT, "--micro-batch-size", "70", "--checkpoint-every", "10"]
    launcher = subprocess.Popen(_torchrun(args), env=_env(**{TIMEOUT_ENV: "30"}), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        checkpoint = out / RUNS[0] / "checkpoint.pt"
        deadline = time.monotonic() + 90
        while not checkpoint.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "no checkpoint was written"
        os.kill(_rank_pid(launcher, 1), signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0
    assert elapsed < 60
    print(f"job ended {elapsed:.1f} s after rank 1 was killed")
    assert "growbatch: error: rank 0 lost the other processes: a rank died or hung" in stderr
    assert "--resume" in stderr and "Signal 9 (SIGKILL)" in stderr  # ours, then torchrun's summary

    # continue on one process: the checkpoint is rank-independent (the global clock)
    done = subprocess.run([sys.executable, "-m", "growbatch", "run", *args, "--resume"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = {run: _records(out, run) for run in RUNS}
    for run, records in reference.items():
        assert [r["epoch"] for r in records] == [0, 1]
        assert [r["samples"] for r in records] == [DIGITS_TRAIN, 2 * DIGITS_TRAIN]
    decay = reference[RUNS[0]]
    assert decay[-1]["updates"] == 2 * 103
    # all-reduces of the two-process part are kept (restored from the checkpoint), none added after
    assert 10 <= decay[-1]["allreduces"] < decay[-1]["updates"]


def test_from_main_without_a_process_group_calls_once() -> None:
    calls = []
    assert from_main(lambda: calls.append(1) or "value") == "value" and calls == [1]
    with pytest.raises(ValueError, match="boom"):
        from_main(lambda: (_ for _ in ()).throw(ValueError("boom")))


@pytest.mark.parametrize(("sizes", "ghost", "world", "expected"), [
    ([14, 70, 140, 42], 7, 2, []),
    ([14, 70, 140, 42], 7, 4, [14, 42, 70]),  # 14 over 4: shares 4, 4, 3, 3
    ([128, 256, 1, 3], 64, 2, [3]),  # one sample: rank 1's share is empty, no ghost is cut
    ([512, 100], 128, 4, [100]),
    ([5, 6], 1, 3, []),
])
def test_unaligned_batch_sizes(sizes: list[int], ghost: int, world: int, expected: list[int]) -> None:
    assert unaligned_batch_sizes(sizes, ghost, world) == expected


def test_distributed_doctests() -> None:
    assert doctest.testmod(growbatch.training.distributed).failed == 0


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_timeout_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=rf"GROWBATCH_DIST_TIMEOUT should be a positive number of seconds, "
                                         rf"but got GROWBATCH_DIST_TIMEOUT='{value}'"):
        setup("cpu")
