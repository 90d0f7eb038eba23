"""Runs that survive crashes and bad input (issue 7), end to end.

A run killed with SIGKILL (mid-epoch, during a checkpoint write, at an epoch's end), stopped by
SIGTERM/SIGINT or failing on a full disk resumes to the same metrics and weights, bit for bit, as
one that never stopped; every bad input gets one line on stderr, a non-zero status and leaves
earlier results as they were. docs/reliability.md lists each case with the test that proves it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from growbatch.training.checkpoint import TEST_PAUSE_ENV
from growbatch.cli import main
from growbatch.data import load_dataset
from growbatch.training.distributed import DistInfo
from growbatch.training.experiments import ExperimentConfig, run_configs
from growbatch.training.metrics import read_records
from growbatch.training.rundir import LOCK_NAME
from growbatch.training.runfiles import train_run
from growbatch.training.task import ClassificationTask
from growbatch.training.trainer import Interrupted, StopFlag

# the same tiny experiment everywhere: compare on digits, 2 epochs, fixed micro-batches
RUN = ["run", "--epochs", "2", "--batch-size", "32", "--micro-batch-size", "64", "--no-progress"]
# subprocesses use one thread, like the reference: sums over other thread counts may round differently
# (and on 2 busy cores one thread is the faster)
THREADS = ["--workers", "1"]
NAMES = ("decay-momentum-seed0", "hybrid-momentum-seed0", "increase-momentum-seed0")
DECAY = NAMES[0]
UPDATES_EPOCH_0 = -(-1442 // 32)  # decay keeps batch 32 in epoch 0: 46 updates, the last one partial
TIMING_FIELDS = ("wall_s", "allreduce_s", "size_search_s")  # the only fields that may differ between identical runs
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


# -- helpers --------------------------------------------------------------------------------

def _start(out: Path, *extra: str, env: dict | None = None, preexec_fn: Callable | None = None,
           args: list[str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "growbatch", *(args or [*RUN, *THREADS, "--out", str(out), *extra])]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def _wait_until(process: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Poll ``condition`` every 10 ms while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def _updates_in(run_dir: Path) -> int | None:
    try:
        return _checkpoint(run_dir)["counters"]["updates"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def _writing_checkpoint_after(run_dir: Path, updates: int) -> Callable[[], bool]:
    """True while the run writes the checkpoint that follows the one taken after ``updates`` updates."""
    def condition() -> bool:
        tmp = run_dir / "checkpoint.pt.tmp"
        try:
            started = tmp.stat().st_size > 0
        except FileNotFoundError:
            return False
        return started and _updates_in(run_dir) == updates
    return condition


def _records(run_dir: Path) -> list[dict]:
    """The complete lines of a run's metrics (a run may be appending one as we read)."""
    path = run_dir / "metrics.jsonl"
    return read_records(path) if path.exists() else []


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _assert_identical(out: Path, reference: Path) -> None:
    """Every run's metrics (but wall times), weights and optimizer state equal the reference's, bit for bit."""
    for name in NAMES:
        got, expected = _records(out / name), _records(reference / name)
        assert len(got) == 2 and _without_timing(got) == _without_timing(expected), name
        a, b = _checkpoint(out / name), _checkpoint(reference / name)
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
        momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
        assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True)), name
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    strip = ("wall_s", "allreduce_s", "size_search_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in summary_a["runs"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in summary_b["runs"]]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("growbatch: error: "), err
    return err.strip()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed one must equal (a subprocess, like them)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    code, err = _finish(_start(out))
    assert code == 0, err
    return out


@pytest.fixture
def unfinished(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference whose decay run lacks its last epoch, so --resume loads its checkpoint."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    metrics = out / DECAY / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
    return out


# -- SIGKILL at several points --------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_mid_epoch_and_during_checkpoint_writes_then_resume_is_identical(reference: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    decay, hybrid = out / DECAY, out / NAMES[1]
    every = ["--checkpoint-every", "10"]
    pause = {TEST_PAUSE_ENV: "0.5"}  # NOTE [test-pause]: each checkpoint write stops half-way for 0.5 s

    # 1. during the second checkpoint write of epoch 0 (update 20): the one after update 10 stays
    first = _start(out, *every, env=pause)
    _wait_until(first, _writing_checkpoint_after(decay, 10), "the checkpoint write after update 10")
    first.send_signal(signal.SIGKILL)
    assert _finish(first)[0] == -signal.SIGKILL
    assert (decay / "checkpoint.pt.tmp").stat().st_size > 0  # the torn write is there ...
    assert _updates_in(decay) == 10  # ... and the previous checkpoint intact
    lock = json.loads((out / LOCK_NAME).read_text())
    assert lock["pid"] == first.pid  # a dead process's lock: the resume must take it over

    # 2. during the checkpoint write at the end of epoch 0 (update 46), before its metrics line
    second = _start(out, *every, "--resume", env=pause)
    _wait_until(second, _writing_checkpoint_after(decay, 40), "the checkpoint write at the end of epoch 0")
    second.send_signal(signal.SIGKILL)
    assert _finish(second)[0] == -signal.SIGKILL
    assert _updates_in(decay) == 40 and _records(decay) == []  # metrics never run ahead of the checkpoint

    # 3. mid-epoch in a later run, between checkpoints (wherever the kill lands)
    third = _start(out, *every, "--resume")
    _wait_until(third, lambda: _updates_in(hybrid) is not None, "the first checkpoint of the hybrid run")
    third.send_signal(signal.SIGKILL)
    assert _finish(third)[0] == -signal.SIGKILL
    assert len(_records(decay)) == 2 and len(_records(hybrid)) < 2
    saved = _checkpoint(hybrid)
    assert saved["counters"]["updates"] % 10 == 0 and 0 < saved["loader"]["position"] < 1442  # mid-epoch

    code, err = _finish(_start(out, *every, "--resume"))
    assert code == 0, err
    assert not (out / LOCK_NAME).exists() and not list(out.glob("*/*.tmp"))
    _assert_identical(out, reference)


# -- SIGTERM, SIGINT, a full disk -----------------------------------------------------------

def _file_size_limit(limit: int) -> Callable[[], None]:
    """For preexec_fn: files may not grow past ``limit`` bytes (a full disk, as the writer sees it)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_sigterm_sigint_and_a_full_disk_then_resume_is_identical(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    decay = out / DECAY

    run = _start(out, "--checkpoint-every", "10")
    _wait_until(run, lambda: _updates_in(decay) is not None, "the first checkpoint")
    run.send_signal(signal.SIGTERM)
    code, err = _finish(run)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err
    match = re.fullmatch(r"growbatch: run decay-momentum-seed0 stopped by SIGTERM after update (\d+) in epoch 1/2; "
                         r"checkpoint written to (\S+); resume with: (growbatch run .*--resume)",
                         err.strip().splitlines()[-1])
    assert match, err
    assert _updates_in(decay) == int(match[1]) and match[2] == str(decay / "checkpoint.pt")
    assert not (out / LOCK_NAME).exists()

    # the printed command resumes; SIGINT (Ctrl-C) stops it the same way once epoch 0 is done
    resume_args = shlex.split(match[3])[1:]
    assert "--resume" in resume_args and "--force" not in resume_args
    run = _start(out, args=resume_args)
    _wait_until(run, lambda: len(_records(decay)) >= 1, "the end of epoch 0")
    run.send_signal(signal.SIGINT)
    code, err = _finish(run)
    assert code == 128 + signal.SIGINT and "stopped by SIGINT after update" in err.splitlines()[-1], err

    # a disk that fills up: the write fails, one line, status 1, every checkpoint as it was, no lock left
    checkpoints = {p: p.read_bytes() for p in out.glob("*/checkpoint.pt")}
    code, err = _finish(_start(out, "--resume", preexec_fn=_file_size_limit(100_000)))
    line = _one_error_line(err)
    assert code == 1 and re.fullmatch(r"growbatch: error: File too large: \S+/checkpoint.pt.tmp", line), err
    assert {p: p.read_bytes() for p in out.glob("*/checkpoint.pt")} == checkpoints
    assert not list(out.glob("*/*.tmp")) and not (out / LOCK_NAME).exists()

    code, err = _finish(_start(out, args=resume_args))
    assert code == 0, err
    _assert_identical(out, reference)


# -- torn metrics line ----------------------------------------------------------------------

def test_torn_metrics_line_is_dropped_on_resume_and_the_run_is_identical(tmp_path: Path) -> None:
    """In process: stop after epoch 0 (as a kill would), tear the metrics file, resume."""
    dataset = load_dataset("digits")
    config = run_configs(ExperimentConfig(epochs=2, batch_size=64, micro_batch_size=64), dataset.train_size)[2]
    whole = list(train_run(config, ClassificationTask(dataset), tmp_path / "whole", info=CPU))

    run_dir = tmp_path / "torn"
    epochs = train_run(config, ClassificationTask(dataset), run_dir, info=CPU)
    next(epochs)
    epochs.close()  # gone after epoch 0: checkpoint and metrics line written
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "updates": 5')  # killed mid-write
    resumed = list(train_run(config, ClassificationTask(dataset), run_dir, info=CPU, resume=True))

    assert _without_timing(resumed) == _without_timing(whole)
    assert _without_timing(_records(run_dir)) == _without_timing(whole)  # the torn line is gone
    a, b = _checkpoint(run_dir)["model"], _checkpoint(tmp_path / "whole")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_report_refuses_a_corrupt_metrics_line_that_is_not_the_last(reference: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    metrics = out / DECAY / "metrics.jsonl"
    metrics.write_text("{not json\n" + metrics.read_text())
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.endswith("metrics.jsonl: line 1 is not valid JSON; the metrics file is corrupt")


# -- divergence guard -----------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint_every", [[], ["--checkpoint-every", "1"]], ids=["per-epoch", "every-update"])
def test_divergence_stops_with_the_update_lr_and_batch_and_keeps_a_good_checkpoint(
        checkpoint_every: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([*RUN, "--out", str(out), "--lr", "1e6", *checkpoint_every]) == 1
    line = _one_error_line(capsys.readouterr().err)
    checkpoint = out / DECAY / "checkpoint.pt"
    if not checkpoint_every:  # the loss goes NaN before any checkpoint is due
        match = re.fullmatch(r"growbatch: error: run decay-momentum-seed0: the training loss became (nan|inf) at "
                             r"update (\d+) in epoch 1/2 \(lr=1e\+06, batch_size=32\); no checkpoint had been "
                             r"written yet; lower the learning rate \(--lr\) and start over with --force", line)
        assert match and not checkpoint.exists(), line
    else:  # weights go inf one update before the loss does; that update's checkpoint is not written
        match = re.fullmatch(r"growbatch: error: run decay-momentum-seed0: the (weights|optimizer state) \(\S+\) "
                             r"became inf or NaN by update (\d+) in epoch 1/2 \(lr=1e\+06, batch_size=32\); the last "
                             rf"good checkpoint {re.escape(str(checkpoint))} is kept; lower the learning rate "
                             r"\(--lr\) and start over with --force", line)
        assert match, line
        saved = _checkpoint(out / DECAY)
        assert saved["counters"]["updates"] == int(match[2]) - 1
        tensors = [*saved["model"].values(), *(v for s in saved["optimizer"]["state"].values() for v in s.values())]
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert _records(out / DECAY) == [] and not (out / LOCK_NAME).exists()


# -- the lock -------------------------------------------------------------------------------

def test_a_live_lock_refuses_even_force_and_a_dead_holders_lock_is_taken_over(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = _snapshot(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from growbatch.training.rundir import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(300)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for flag in ("--resume", "--force"):
            capsys.readouterr()
            assert main([*RUN, "--out", str(out), flag]) == 2
            line = _one_error_line(capsys.readouterr().err)
            assert f"{out} is in use by another growbatch run (pid {holder.pid} on {socket.gethostname()})" in line
        during = _snapshot(out)
        assert json.loads(during.pop(LOCK_NAME))["pid"] == holder.pid and during == before
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).exists()  # SIGKILL left it behind
    assert main([*RUN, "--out", str(out), "--resume"]) == 0  # finished runs: nothing to train, report rebuilt
    assert not (out / LOCK_NAME).exists()
    assert {k: v for k, v in _snapshot(out).items() if k.endswith(".jsonl") or k.endswith(".pt")} == \
        {k: v for k, v in before.items() if k.endswith(".jsonl") or k.endswith(".pt")}


# -- bad run directories: one line, non-zero status, nothing destroyed ---------------------

def _foreign_checkpoint(tmp_path: Path, **changes) -> Path:
    """A real checkpoint of a run with other settings: one update, then a stop."""
    dataset = load_dataset("digits")
    config = run_configs(ExperimentConfig(epochs=2, batch_size=32, micro_batch_size=64, **changes),
                         dataset.train_size)[0]
    with pytest.raises(Interrupted):
        list(train_run(config, ClassificationTask(dataset), tmp_path / "foreign", info=CPU, stop=StopFlag(True)))
    return tmp_path / "foreign" / "checkpoint.pt"


def _edit_checkpoint(path: Path, edit: Callable[[dict], None]) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _replace_checkpoint(out: Path, tmp_path: Path, **changes) -> None:
    shutil.copy(_foreign_checkpoint(tmp_path, **changes), out / DECAY / "checkpoint.pt")


def _flip_a_weight(path: Path) -> None:
    """One bit of the first conv weight, in place: the file still loads as a zip and as a torch file."""
    weight = torch.load(path, weights_only=True)["model"]["features.0.weight"]
    data = bytearray(path.read_bytes())
    offset = data.find(weight.numpy().tobytes())
    assert offset > 0
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CHECKPOINT = f"{DECAY}/checkpoint.pt"
BAD_RUN_DIRS = {
    "checkpoint-of-another-model": (
        lambda out, tmp: _replace_checkpoint(out, tmp, model="mnist-cnn"), [],
        rf"checkpoint \S+/{CHECKPOINT} was written with model='mnist-cnn', but this run has model='cnn'; use the "
        r"original settings, or --force to start over"),
    "checkpoint-of-another-optimizer": (
        lambda out, tmp: _replace_checkpoint(out, tmp, optimizers=("nesterov",)), [],
        r"was written with optimizer='nesterov', but this run has optimizer='momentum'"),
    "checkpoint-of-another-seed": (
        lambda out, tmp: _replace_checkpoint(out, tmp, seeds=(1,)), [],
        r"was written with seed=1, but this run has seed=0"),
    "checkpoint-of-another-schedule": (
        lambda out, tmp: _replace_checkpoint(out, tmp, lr=0.2), [],
        r"was written with schedule.phases\[0\].lr=0.2, but this run has schedule.phases\[0\].lr=0.1"),
    "checkpoint-truncated": (
        lambda out, tmp: _truncate(out / CHECKPOINT), [],
        rf"checkpoint \S+/{CHECKPOINT} is corrupt or truncated \(BadZipFile: not a whole zip archive\); delete it "
        r"to start over, or use --force"),
    "checkpoint-garbage": (
        lambda out, tmp: (out / CHECKPOINT).write_bytes(b"\x00garbage" * 100), [], r"is corrupt or truncated"),
    "checkpoint-empty": (
        lambda out, tmp: (out / CHECKPOINT).write_bytes(b""), [], r"is corrupt or truncated"),
    "checkpoint-bit-flipped": (
        lambda out, tmp: _flip_a_weight(out / CHECKPOINT), [],
        rf"checkpoint \S+/{CHECKPOINT} is corrupt: \S+/data/\d+ fails its CRC-32 check; delete it to start over"),
    "checkpoint-not-a-dict": (
        lambda out, tmp: torch.save([1, 2, 3], out / CHECKPOINT), [],
        rf"{CHECKPOINT} is not a growbatch checkpoint \(it holds a list\); delete it to start over, or use --force"),
    "checkpoint-other-version": (
        lambda out, tmp: _edit_checkpoint(out / CHECKPOINT, lambda s: s.update(version=99)), [],
        r"has version 99, expected 2 \(written by another growbatch version\); resume with that version"),
    "checkpoint-weights-edited": (
        lambda out, tmp: _edit_checkpoint(out / CHECKPOINT, lambda s: s["model"].popitem()), [],
        rf"checkpoint \S+/{CHECKPOINT} does not fit run {DECAY} \(RuntimeError: Error\(s\) in loading state_dict "
        r"for DigitsCNN: Missing key\(s\) .*\); delete it to start this run over, or use --force"),
    "checkpoint-sampler-edited": (
        lambda out, tmp: _edit_checkpoint(out / CHECKPOINT, lambda s: s["loader"].update(position=7)), [],
        rf"does not fit run {DECAY} \(ValueError: .*position"),
    "checkpoint-counters-missing": (
        lambda out, tmp: _edit_checkpoint(out / CHECKPOINT, lambda s: s.pop("counters")), [],
        rf"does not fit run {DECAY} \(KeyError: 'counters'\)"),
    "metrics-corrupt-line": (
        lambda out, tmp: (out / DECAY / "metrics.jsonl").write_text("{not json\n"), [],
        r"metrics.jsonl: line 1 is not valid JSON; the metrics file is corrupt"),
    "manifest-corrupt": (
        lambda out, tmp: (out / "experiment.json").write_text('{"experiment": "comp'), [],
        r"has an unreadable experiment.json \(not a JSON object\), so its results cannot be matched"),
    "resume-with-other-flags": (
        lambda out, tmp: None, ["--lr", "0.2"], r"holds another experiment \(differs in: lr\)"),
    "resume-and-force": (
        lambda out, tmp: None, ["--force"],
        r"--resume continues the runs in --out and --force starts them over; pass one of them"),
}


@pytest.mark.parametrize("name", BAD_RUN_DIRS)
def test_a_bad_run_directory_gets_one_line_and_is_left_as_it_was(name: str, unfinished: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    damage, flags, message = BAD_RUN_DIRS[name]
    damage(unfinished, tmp_path)
    before = _snapshot(unfinished)
    capsys.readouterr()
    assert main([*RUN, "--out", str(unfinished), "--resume", *flags]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(message, line), line
    assert _snapshot(unfinished) == before  # nothing rewritten, no lock or .tmp left


@pytest.mark.parametrize(("flags", "message"), [
    (["--checkpoint-every", "0"], "argument --checkpoint-every: expected a positive integer, got 0"),
    (["--checkpoint-every", "often"], "argument --checkpoint-every: expected a positive integer, got 'often'"),
    (["--lr", "nan"], "lr should be a finite number, but got lr=nan"),
    (["--lr", "inf"], "lr should be a finite number, but got lr=inf"),
    (["--lr", "-1"], "lr should be a positive number, but got lr=-1"),
    (["--momentum", "1.5"], "momentum should be in [0, 1), but got momentum=1.5"),
    (["--factor", "0"], "factor should be a number greater than 1"),
    (["--weight-decay", "-1"], "weight_decay should be >= 0, but got weight_decay=-1.0"),
    (["--resume", "--force"], "--resume continues the runs in --out and --force starts them over; pass one of them"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_run_flags_get_one_line_and_create_nothing(flags: list[str], message: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main([*RUN, "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("mine")
    capsys.readouterr()
    assert main([*RUN, "--out", str(tmp_path / "file")]) == 2
    assert _one_error_line(capsys.readouterr().err).endswith("exists and is not a directory; choose another path")
    assert main([*RUN, "--out", str(tmp_path / "file" / "out")]) == 1
    assert _one_error_line(capsys.readouterr().err) == f"growbatch: error: Not a directory: {tmp_path / 'file' / 'out'}"
    assert (tmp_path / "file").read_text() == "mine"


def _honour_file_permissions() -> None:
    """For preexec_fn: drop root's power to write anywhere (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; root keeps only the bounding set on exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_output_directory(reference: Path) -> None:
    """A read-only --out (results to resume, or a parent a new --out cannot be made in): one line, status 1."""
    base = Path(tempfile.mkdtemp())  # not under pytest's tmp_path, whose mode a test must not change
    try:
        out = base / "out"
        shutil.copytree(reference, out)
        before = _snapshot(out)
        for path in [out, *out.iterdir()]:
            if path.is_dir():
                path.chmod(0o555)
        try:
            code, err = _finish(_start(out, "--resume", preexec_fn=_honour_file_permissions))
        except subprocess.SubprocessError as error:
            pytest.skip(f"cannot drop root's file-permission override here ({error})")
        assert code == 1 and re.fullmatch(rf"growbatch: error: Permission denied: {re.escape(str(out))}/\.growbatch"
                                          r"\.lock", _one_error_line(err)), err
        code, err = _finish(_start(out / "new", preexec_fn=_honour_file_permissions))
        assert code == 1 and _one_error_line(err) == f"growbatch: error: Permission denied: {out / 'new'}", err
        assert _snapshot(out) == before
    finally:
        for path in base.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base)


# -- bad data files -------------------------------------------------------------------------

def _mnist_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), "y_train": np.arange(40) % 10,
            "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), "y_test": np.arange(20) % 10}


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx(root: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    import gzip

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        data = _idx(arrays[key])
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return raw


BAD_DATA = {
    "npz-truncated": (lambda root, a: (np.savez_compressed(root / "mnist.npz", **a), _truncate(root / "mnist.npz")),
                      r"mnist.npz is corrupt or truncated: the zip/npy format or checksum check failed"),
    "npz-bit-flipped": (lambda root, a: (np.savez(root / "mnist.npz", **a), _flip_a_stored_byte(root / "mnist.npz")),
                        r"mnist.npz is corrupt or truncated: .*Bad CRC-32"),
    "npz-missing-array": (lambda root, a: np.savez(root / "mnist.npz", x_train=a["x_train"], y_train=a["y_train"]),
                          r"mnist.npz lacks the arrays x_test, y_test"),
    "npz-labels-out-of-range": (lambda root, a: np.savez(root / "mnist.npz", **{**a, "y_test": a["y_test"] + 5}),
                                r"y_test in \S+mnist.npz has labels in 5..14, but this data set has classes 0..9"),
    "npz-wrong-image-size": (lambda root, a: np.savez(root / "mnist.npz", **{**a, "x_train": a["x_train"][:, :14]}),
                             r"x_train in \S+mnist.npz has shape \(40, 14, 28\)"),
    "idx-gz-truncated": (lambda root, a: _truncate(_write_idx(root, a, gz=True) / "train-images-idx3-ubyte.gz"),
                         r"train-images-idx3-ubyte.gz is corrupt or truncated: the gzip checksum/format check failed"),
    "idx-raw-truncated": (lambda root, a: _truncate(_write_idx(root, a, gz=False) / "t10k-images-idx3-ubyte"),
                          r"t10k-images-idx3-ubyte has the wrong size for its IDX header"),
    "idx-wrong-file": (lambda root, a: (_write_idx(root, a, gz=False) / "train-labels-idx1-ubyte").write_bytes(
                           _idx(a["x_train"])),
                       r"train-labels-idx1-ubyte holds type 0x08 with 3 dimensions"),
}


def _flip_a_stored_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    offset = data.find(b"x_test.npy") - 200  # inside y_train's stored (uncompressed) values
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", BAD_DATA)
def test_a_bad_data_file_gets_one_line_naming_it(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write, message = BAD_DATA[name]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write(data_dir, _mnist_arrays())
    capsys.readouterr()
    assert main([*RUN, "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(message, line) and str(data_dir) in line, line
    assert not (tmp_path / "out").exists()
