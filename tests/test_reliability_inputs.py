"""Inputs that used to end in a traceback, a hang or a changed run (issue 17): one line, exit 2, nothing touched.

docs/reliability.md lists each case with its message and the test here that proves it.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from growbatch.batching.microbatch import MicroBatcher
from growbatch.cli import main
from growbatch.data import load_dataset
from growbatch.training.checkpoint import load_checkpoint, save_checkpoint
from growbatch.training.distributed import DistInfo
from growbatch.training.experiments import ExperimentConfig, run_configs
from growbatch.training.rundir import LOCK_NAME, LockError, RunLock
from growbatch.training.task import ClassificationTask
from growbatch.training.trainer import Trainer
from growbatch.schedule.schedule import Phase, Schedule

BIG = str(10**400)  # a number of 401 digits: more than any float or C integer holds
RUN = ["run", "--epochs", "1", "--batch-size", "32", "--micro-batch-size", "64", "--no-progress", "--workers", "1"]
PLAN = ["plan", "--lr", "0.1", "--batch-size", "128", "--dataset-size", "50000", "--epochs", "10"]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("growbatch: error: "), err
    return err.strip()


# -- numbers out of range: bounded where they are parsed (NOTE [bounds] in checks.py) -------------------

BAD_NUMBERS = [
    (["--weight-decay", "nan"], "weight_decay should be a finite number, but got weight_decay=nan"),
    (["--weight-decay", "1e309"], "weight_decay should be a finite number, but got weight_decay=inf"),
    (["--factor", "1e308"], "argument --factor: expected a finite number of at most 1e+06, got 1e308"),
    (["--noise-multiple", "1e300"], "argument --noise-multiple: expected a finite number of at most 1e+06"),
    (["--epochs", BIG], "argument --epochs: expected a positive integer of at most 10**12, got 100000000000...000000"),
    (["--batch-size", BIG], "argument --batch-size: expected a positive integer of at most 10**12"),
    (["--train-size", BIG], "argument --train-size: expected a positive integer of at most 10**12"),
    (["--ghost-batch-size", BIG], "--ghost-batch-size should be a positive integer of at most 10**12"),
    (["--seeds", "18446744073709551616"], "argument --seeds: expected seeds in 0..4294967295 (2**32-1)"),
    (["--seeds", "0,-1"], "argument --seeds: expected seeds in 0..4294967295 (2**32-1), got -1"),
    (["--workers", "1000000000"], "argument --workers: expected a thread count in 1..1024, got 1000000000"),
    (["--lr", "1e308"], "Phase.lr should be a finite number, but got lr=inf"),  # x factor 5 overflows
]


@pytest.mark.parametrize(("flags", "message"), BAD_NUMBERS, ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else "")
def test_numbers_out_of_range_get_one_line_and_create_nothing(flags: list[str], message: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main([*RUN, "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "paper-5.2", "--factor", "1e200"], "argument --factor: expected a finite number of at most 1e+06"),
    (["noise", "--lr", "0.1", "--batch-size", "128", "--dataset-size", BIG],
     "dataset_size should be a positive integer value of at most 10**12"),
    ([*PLAN[:-2], "--epochs", BIG], "epochs should be a positive integer value of at most 10**12"),
    ([*PLAN[:5], "--dataset-size", BIG, *PLAN[7:]], "dataset_size should be a positive integer value of at most 10**12"),
    ([*PLAN, "--milestones", "3", "--factor", "1e308"], "factor should be a number greater than 1 and at most 1e6"),
    ([*PLAN, "--milestones", "3", "--max-batch-size", BIG], "max_batch_size should be a positive integer value of at most"),
], ids=["paper-5.2-factor", "noise-dataset-size", "plan-epochs", "plan-dataset-size", "plan-factor", "plan-max-batch"])
def test_other_commands_bound_their_numbers(argv: list[str], message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main([*argv, *(["--out", str(tmp_path / "out")] if argv[0] == "run" else [])]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# -- plan: closed form per phase (NOTE [closed-form plan] in schedule.py) ----------------------------

def test_plan_of_a_billion_epochs_answers_at_once(capsys: pytest.CaptureFixture) -> None:
    started = time.perf_counter()
    assert main(["plan", "--lr", "0.1", "--batch-size", "128", "--dataset-size", "50000", "--epochs", "1000000000",
                 "--milestones", "300000000.5,600000000", "--json"]) == 0
    assert time.perf_counter() - started < 2
    plan = json.loads(capsys.readouterr().out)
    # 391 updates per epoch at B=128; epoch 300000000 is cut at its middle (25000 samples: 196 batches of 128
    # end at 25088) and then cuts 640s: (50000-25088)/640 -> 38 full + 1 partial
    assert [p["updates"] for p in plan["phases"]] == [300_000_000 * 391 + 196, 39 + 299_999_999 * 79, 400_000_000 * 16]
    assert plan["total_samples"] == 50_000 * 1_000_000_000


def _trained_counts(schedule: Schedule) -> tuple[list[int], list[int]]:
    """The oracle: every batch the sampler cuts, epoch by epoch, counted in the phase that cuts it."""
    updates, samples = [0] * len(schedule.phases), [0] * len(schedule.phases)
    for epoch in range(schedule.epochs):
        position = 0
        for size in schedule.batch_sizes(epoch):
            index = schedule.phase_index_at(epoch, position)
            updates[index] += 1
            samples[index] += size
            position += size
    return updates, samples


def _random_schedule(rng: random.Random) -> Schedule:
    n, epochs = rng.randint(1, 300), rng.randint(1, 12)
    cuts = sorted({round(rng.uniform(0, epochs), rng.choice((0, 1, 2))) for _ in range(rng.randint(0, 4))} - {0, epochs})
    edges = [0, *cuts, epochs]
    phases = tuple(Phase(a, b, 0.1, rng.randint(1, n), 0.9) for a, b in zip(edges, edges[1:]))
    return Schedule(phases, n, drop_last=rng.random() < 0.5)


def test_closed_form_plan_equals_the_batches_cut_on_many_random_schedules() -> None:
    rng = random.Random(17)
    for _ in range(400):
        schedule = _random_schedule(rng)
        plan = schedule.plan()
        assert ([p.updates for p in plan.phases], [p.samples for p in plan.phases]) == _trained_counts(schedule), \
            schedule


# -- the lock: an atomic take-over (NOTE [flock] in rundir.py) -----------------------------------------

def _contend(directory: Path, contenders: int) -> int:
    """Fork ``contenders`` processes that take the lock of ``directory`` at the same moment; how many got it."""
    go_read, go_write = os.pipe()
    result_read, result_write = os.pipe()
    done_read, done_write = os.pipe()
    children = []
    for _ in range(contenders):
        pid = os.fork()
        if pid == 0:  # the child: only os calls and the lock, then _exit whatever happens
            status = 1
            try:
                os.close(go_write), os.close(done_write)
                os.read(go_read, 1)
                lock = RunLock(directory)
                try:
                    lock.acquire()
                except LockError:
                    pass
                os.write(result_write, b"1" if lock.held else b"0")
                os.read(done_read, 1)  # hold it until every contender has tried
                lock.release()
                status = 0
            finally:
                os._exit(status)
        children.append(pid)
    os.close(go_read), os.close(result_write), os.close(done_read)
    os.write(go_write, b"x" * contenders)
    results = b""
    while len(results) < contenders:
        results += os.read(result_read, contenders)
    os.close(done_write)  # the children read EOF and release
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    os.close(go_write), os.close(result_read)
    return results.count(b"1")


@pytest.mark.slow  # 300 x 3 forks: ~15 s on 2 idle cores
def test_a_stale_lock_is_taken_over_by_exactly_one_of_several_processes(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "1"})
    owners = []
    for trial in range(300):
        directory = tmp_path / str(trial)
        directory.mkdir()
        (directory / LOCK_NAME).write_text(stale)
        owners.append(_contend(directory, 3))
        assert not (directory / LOCK_NAME).exists()  # released by its one owner
    assert owners == [1] * 300, f"{sum(n > 1 for n in owners)} of 300 trials had two owners or more"


def test_a_lock_naming_an_absurd_pid_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 10**30, "host": socket.gethostname()}))
    with RunLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


# -- corrupt files: which file, and what to do ------------------------------------------------------

def _arrays(train: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8), "y_train": np.arange(train) % 10,
            "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), "y_test": np.arange(20) % 10}


def _npy_claiming(array: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """``array`` as .npy bytes whose header claims ``shape`` (a consistent zip member, a lying header)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue() + array.tobytes()


def _flip_compression_method(path: Path) -> None:
    """XOR the compression-method field of the first member's central-directory entry with 0xFF."""
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    data[entry + 10] ^= 0xFF
    path.write_bytes(bytes(data))


def _npz_claiming_a_billion_images(path: Path) -> None:
    arrays = _arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            shape = (10**9, 28, 28) if key == "x_train" else array.shape
            archive.writestr(f"{key}.npy", _npy_claiming(array, shape))


BAD_NPZ = {
    "header-claims-1e9-images": (_npz_claiming_a_billion_images,
                                 r"mnist.npz is corrupt: the header of x_train.npy claims shape \(1000000000, 28, 28\) "
                                 r"\(784,000,000,000 bytes\), but the member holds 31,488 bytes; copy the file again"),
    "compression-method-flipped": (lambda path: (np.savez(path, **_arrays()), _flip_compression_method(path)),
                                   r"mnist.npz is corrupt: its member x_train.npy names compression method 255, which "
                                   r"no zip writer uses; copy the file again or delete it and download the data set"),
}


@pytest.mark.parametrize("name", BAD_NPZ)
def test_a_corrupt_npz_gets_one_line_naming_it(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write, message = BAD_NPZ[name]
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "mnist.npz")
    capsys.readouterr()
    assert main([*RUN, "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(message, line) and str(tmp_path / "data" / "mnist.npz") in line, line
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_with_a_flipped_compression_method_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"weights": torch.arange(10.0)})
    _flip_compression_method(path)
    with pytest.raises(ValueError, match=rf"^checkpoint {re.escape(str(path))} is corrupt or truncated "
                                         r"\(NotImplementedError: a member names an unknown compression method\); "
                                         r"delete it to start over, or use --force$"):
        load_checkpoint(path)


def test_a_checkpoint_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    os.mkfifo(path)
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("load_checkpoint blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # opening a FIFO blocks: fail rather than hang
    try:
        with pytest.raises(ValueError, match=rf"^checkpoint {re.escape(str(path))} is not a regular file; delete it "
                                             r"to start over, or use --force$"):
            load_checkpoint(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- growbatch report of a damaged run: the file and the missing field --------------------------------

def _synthetic_run(out: Path) -> Path:
    """A finished one-run experiment as the report reads it: experiment.json, config.json, two metrics lines."""
    run_dir = out / "decay-momentum-seed0"
    run_dir.mkdir(parents=True)
    schedule = Schedule((Phase(0, 2, 0.1, 32, 0.9),), 1442, name="decay")
    (out / "experiment.json").write_text(json.dumps({"experiment": "compare", "dataset": "digits"}))
    (run_dir / "config.json").write_text(json.dumps({"name": run_dir.name, "schedule": schedule.to_dict(),
                                                     "optimizer": "momentum", "seed": 0, "model": "cnn"}))
    records = [{"epoch": e, "updates": 46 * (e + 1), "samples": 1442 * (e + 1), "wall_s": 1.0 + e, "lr": 0.1,
                "batch_size": 32, "momentum": 0.9, "train_loss": 1.0 / (e + 1), "train_acc": 0.5, "test_loss": 1.0,
                "test_acc": 0.6 + 0.1 * e} for e in range(2)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


DAMAGED_RUNS = {
    "config-lacks-schedule": (lambda out, run: _edit_json(run / "config.json", lambda c: c.pop("schedule")),
                              r"decay-momentum-seed0/config.json lacks schedule; the run's config is damaged: restore "
                              r"it, or train the run again \(growbatch run ... --force\)"),
    "config-no-phases": (lambda out, run: _edit_json(run / "config.json", lambda c: c["schedule"].update(phases=[])),
                         r"config.json has no schedule.phases \(a list of one phase or more\)"),
    "config-phase-lacks-lr": (lambda out, run: _edit_json(run / "config.json",
                                                          lambda c: c["schedule"]["phases"][0].pop("lr")),
                              r"config.json lacks schedule.phases\[0\].lr"),
    "config-a-list": (lambda out, run: (run / "config.json").write_text("[1]"),
                      r"config.json holds a list, not a JSON object"),
    "manifest-a-list": (lambda out, run: (out / "experiment.json").write_text("[1]"),
                        r"experiment.json is not a JSON object; the experiment's manifest is damaged: delete it"),
    "metrics-lacks-test-acc": (lambda out, run: (run / "metrics.jsonl").write_text(
                                   "".join(line.replace('"test_acc"', '"test_accuracy"') + "\n"
                                           for line in (run / "metrics.jsonl").read_text().splitlines())),
                               r"decay-momentum-seed0/metrics.jsonl: line 1 lacks test_acc; the metrics file is "
                               r"damaged"),
}


def test_report_of_the_whole_synthetic_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _synthetic_run(tmp_path / "out")
    assert main(["report", str(tmp_path / "out")]) == 0  # so what the damage tests refuse is the damage alone


@pytest.mark.parametrize("name", DAMAGED_RUNS)
def test_report_of_a_damaged_run_names_the_file_and_the_field(name: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    run_dir = _synthetic_run(out)
    damage, message = DAMAGED_RUNS[name]
    damage(out, run_dir)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err))


# -- --out, --resume, the terminal ----------------------------------------------------------------------

@pytest.mark.parametrize(("out", "message"), [
    ("", "--out should name a directory, but got ''; leave it out for runs/EXPERIMENT-DATASET"),
    (" ", "--out should name a directory, but got ' '"),
    ("a\nb", r"--out should not hold a newline or other control character, but got 'a\nb'; choose another"),
], ids=["empty", "blank", "newline"])
def test_an_empty_out_or_one_with_a_newline_is_refused(out: str, message: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*RUN, "--out", out]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no runs/compare-digits, no "a\nb"


def test_resume_into_a_missing_directory_says_it_starts_fresh(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "new"
    capsys.readouterr()
    assert main([*RUN, "--schedules", "decay", "--train-size", "320", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"growbatch: --out {out} holds no experiment to resume; --resume starts it fresh\n" in err
    assert len((out / "decay-momentum-seed0" / "metrics.jsonl").read_text().splitlines()) == 1


def _console_script() -> Path:
    script = Path(sys.executable).parent / "growbatch"
    if not script.exists():
        pytest.skip(f"no growbatch console script next to {sys.executable} (not installed with pip)")
    return script


def test_ctrl_c_while_torch_is_imported_is_one_line_and_130() -> None:
    for delay in (0.3, 0.15, 0.05):  # Python has started; torch is still being imported (about 1 to 3 s)
        # SIGINT back to its default in the child: a shell's background job (as CI may run) ignores it, and
        # Python installs its KeyboardInterrupt handler only where SIGINT is not ignored
        process = subprocess.Popen([str(_console_script()), "presets"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        if process.returncode != 0:  # the signal came before the command was done
            break
    assert (process.returncode, err, out) == (130, "growbatch: interrupted\n", "")


def test_a_closed_pipe_on_stdout_is_quiet() -> None:
    reader, writer = os.pipe()
    os.close(reader)  # like `growbatch presets | true`: whoever read stdout is gone
    try:
        done = subprocess.run([str(_console_script()), "presets"], stdout=writer, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")


# -- a single sample for BatchNorm1d: folded into the micro-batch before it, or refused up front ---------

def test_a_one_sample_micro_batch_joins_the_one_before_and_the_gradient_is_the_whole_batchs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    inputs, targets = torch.randn(65, 4), torch.randint(3, (65,))
    micro = MicroBatcher(model, nn.functional.cross_entropy, micro_batch_size=64)
    result = micro.backward(inputs, targets, global_batch_size=65)  # 64 + 1 would raise in BatchNorm1d
    assert (result.micro_batches, result.micro_batch_size, result.samples) == (1, 65, 65)
    folded = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nn.functional.cross_entropy(model(inputs), targets).backward()  # the oracle: one batch of 65
    assert all(torch.equal(a, p.grad) for a, p in zip(folded, model.parameters()))


def test_a_batch_norm_1d_model_trains_batch_65_in_micro_batches_of_64_as_planned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*RUN, "--model", "mnist-cnn", "--schedules", "decay", "--batch-size", "65", "--ghost-batch-size",
                 "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["runs"][0]
    assert summary["updates"] == summary["planned_updates"] == -(-1442 // 65)
    record = json.loads((out / "decay-momentum-seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["micro_batch_size"] == 65


@pytest.mark.parametrize(("flags", "message"), [
    (["--train-size", "1441", "--batch-size", "32"],
     r"run decay-momentum-seed0 would cut a batch of 1 sample\(s\) \(the last of an epoch: 1441 training samples in "
     r"batches of 32\), but model mnist-cnn has BatchNorm1d, which cannot normalise one sample; choose a --train-size "
     r"or --batch-size that leaves at least 2 samples in each epoch's last batch \(e.g. --train-size 1440\)"),
    (["--train-size", "1441", "--batch-size", "32", "--ghost-batch-size", "16"], r"would cut a batch of 1 sample"),
], ids=["plain-bn", "ghost-bn"])
def test_a_one_sample_last_batch_for_batch_norm_1d_is_refused_before_out_is_touched(
        flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main([*RUN, "--model", "mnist-cnn", "--schedules", "decay", *flags, "--out", str(tmp_path / "out")]) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err))
    assert not (tmp_path / "out").exists()


def test_the_smallest_batch_of_a_schedule_includes_every_epochs_last() -> None:
    schedule = Schedule((Phase(0, 1.5, 0.1, 8, 0.9), Phase(1.5, 3, 0.1, 40, 0.9)), 2001)
    assert schedule.smallest_batch_size() == min(min(schedule.batch_sizes(e)) for e in range(3)) == 1


# -- a refused --force leaves the finished run as it was -------------------------------------------------

def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags", [
    ["--seeds", "18446744073709551616"],
    ["--weight-decay", "nan"],
    ["--factor", "1e308"],
    ["--model", "mnist-cnn", "--train-size", "1441"],  # refused after the lock is taken: released, nothing written
    ["--ghost-batch-size", "100"],  # larger than the micro-batch of 64
], ids=lambda v: " ".join(v))
def test_a_refused_force_leaves_the_finished_run_untouched(flags: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    _synthetic_run(out)
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*RUN, "--out", str(out), "--force", *flags]) == 2
    _one_error_line(capsys.readouterr().err)
    assert _snapshot(out) == before


# -- a resume on another number of threads says so (NOTE [threads] in trainer.py) -------------------------

def test_a_resume_on_another_thread_count_warns_naming_both_counts() -> None:
    dataset = load_dataset("digits")
    config = ExperimentConfig(epochs=1, batch_size=32, micro_batch_size=64, schedules=("decay",))
    run = run_configs(config, dataset.train_size)[0]
    task, cpu = ClassificationTask(dataset), DistInfo(0, 1, 0, torch.device("cpu"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        saved = Trainer(run, task, cpu).state_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Trainer(run, task, cpu).load_state_dict(saved)  # the same count: no warning
        torch.set_num_threads(2)
        with pytest.warns(UserWarning, match=r"run decay-momentum-seed0: the checkpoint was written with 1 CPU "
                                             r"threads, but this resume uses 2; float sums round differently, so the "
                                             r"result is no longer bit-identical to an uninterrupted run \(resume with "
                                             r"--workers 1 to keep it\)"):
            Trainer(run, task, cpu).load_state_dict(saved)
    finally:
        torch.set_num_threads(threads)
