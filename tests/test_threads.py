"""The thread count of a run (NOTE [threads under load] in training/threads.py): one per idle core, the user's
--workers, and a resume on the checkpoint's count."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from growbatch.data import load_dataset
from growbatch.training import threads
from growbatch.training.distributed import DistInfo
from growbatch.training.experiments import ExperimentConfig, run_configs
from growbatch.training.task import ClassificationTask
from growbatch.training.trainer import Trainer


@pytest.fixture
def keep_threads():
    """Leave torch's thread count and the module's choice as they were."""
    before, automatic, cores = torch.get_num_threads(), threads._automatic, threads._cores
    yield
    torch.set_num_threads(before)
    threads._automatic, threads._cores = automatic, cores
    threads._before.clear()


@pytest.mark.parametrize(("cores", "idle", "expected"), [
    (2, 1.95, 2), (2, 1.8, 2), (2, 1.7, 1), (2, 1.0, 1), (2, 0.0, 1), (16, 3.8, 4), (4, 9.0, 4)])
def test_one_thread_per_core_that_is_at_least_three_quarters_idle(cores: int, idle: float, expected: int) -> None:
    assert threads.threads_for(cores, idle) == expected


def _stat(path: Path, idle: int, busy: int) -> None:
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\n"
                    "intr 0\n")


def _choose_automatically(monkeypatch, cores: int, idle: float) -> str | None:
    """growbatch's own choice (no --workers, no OMP_NUM_THREADS) among ``cores`` threads with ``idle`` cores idle."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "idle_cores", lambda: idle)
    torch.set_num_threads(cores)
    return threads.choose_threads(None)


def _digits_trainer(epochs: int) -> Trainer:
    dataset = load_dataset("digits")
    run = run_configs(ExperimentConfig(epochs=epochs, batch_size=32, schedules=("decay",)), dataset.train_size)[0]
    return Trainer(run, ClassificationTask(dataset), DistInfo())


def test_idle_cores_from_proc_stat_and_none_where_it_is_unreadable(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, idle=100, busy=100)
    assert threads._cpu_times(str(stat)) == (100, 200, 2)
    assert threads.idle_cores(0.0, str(stat)) is None  # no time passed between the readings
    assert threads.idle_cores(0.0, str(tmp_path / "missing")) is None
    measured = threads.idle_cores(0.1)
    assert measured is not None and 0.0 <= measured <= os.cpu_count()


def test_busy_cores_give_fewer_threads_and_a_line_that_says_so(keep_threads, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        torch.set_num_threads(os.cpu_count() or 1)
        note = threads.choose_threads(None)
    finally:
        for process in spin:
            process.kill()
            process.wait()
    if (os.cpu_count() or 1) > 1:
        assert torch.get_num_threads() == 1 and threads.follows_checkpoint()
        assert note.startswith("growbatch: other work leaves") and note.endswith("(--workers N chooses)")


def test_workers_and_omp_num_threads_are_the_users_choice(keep_threads, monkeypatch) -> None:
    assert threads.choose_threads(1) is None and torch.get_num_threads() == 1 and not threads.follows_checkpoint()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    assert threads.choose_threads(None) is None and torch.get_num_threads() == 2 and not threads.follows_checkpoint()


def test_a_resume_takes_the_checkpoints_count_where_growbatch_chose_it(keep_threads) -> None:
    dataset = load_dataset("digits")
    run = run_configs(ExperimentConfig(epochs=1, batch_size=32, micro_batch_size=64, schedules=("decay",)),
                      dataset.train_size)[0]
    task, cpu = ClassificationTask(dataset), DistInfo(0, 1, 0, torch.device("cpu"))
    torch.set_num_threads(1)
    saved = Trainer(run, task, cpu).state_dict()
    assert saved["threads"] == 1
    torch.set_num_threads(2)
    threads._automatic = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the resume keeps the checkpoint's count
        Trainer(run, task, cpu).load_state_dict(saved)
    assert torch.get_num_threads() == 1


def test_a_command_run_in_process_leaves_the_thread_count_as_it_was(keep_threads, tmp_path: Path) -> None:
    from growbatch.cli import main
    torch.set_num_threads(2)
    assert main(["run", "--epochs", "1", "--schedules", "decay", "--workers", "1", "--no-progress",
                 "--out", str(tmp_path / "out")]) == 0
    assert torch.get_num_threads() == 2 and not threads.follows_checkpoint()


def test_a_chosen_count_is_chosen_again_when_the_machine_changes(keep_threads, monkeypatch) -> None:
    """NOTE [watch]: the Trainer calls rechoose_threads when training changes speed; only growbatch's own choice
    moves, within the count it chose among, and a line says so when it changes."""
    assert _choose_automatically(monkeypatch, 4, idle=4.0) is None and torch.get_num_threads() == 4  # idle: all four
    line = threads.rechoose_threads(idle=0.3)  # other work took the cores
    assert torch.get_num_threads() == 1
    assert line == ("training changed speed 1.5x and other work now leaves 0.3 cores idle: training with 1 thread "
                    "instead of 4 (--workers N fixes the count)")
    assert threads.rechoose_threads(idle=0.5) is None and torch.get_num_threads() == 1  # no change, no line
    assert threads.rechoose_threads(idle=9.0).endswith("training with 4 threads instead of 1 (--workers N fixes the "
                                                       "count)")  # the work ended: back to the count chosen among
    threads.restore_threads()
    assert threads.choose_threads(2) is None  # the user's count is never moved
    assert threads.rechoose_threads(idle=0.0) is None and torch.get_num_threads() == 2


def test_the_trainer_chooses_the_threads_again_when_auto_sees_the_speed_change(keep_threads, monkeypatch) -> None:
    _choose_automatically(monkeypatch, 2, idle=2.0)
    trainer = _digits_trainer(epochs=1)
    assert trainer.micro.on_speed_change is not None
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.2)
    with pytest.warns(UserWarning, match=r"run decay-momentum-seed0: training changed speed 1.5x and other work now "
                                         r"leaves 0.2 cores idle: training with 1 thread instead of 2"):
        trainer.micro.on_speed_change()
    assert torch.get_num_threads() == 1


def test_a_lowered_count_rises_again_where_cores_sat_idle_over_an_epoch(keep_threads, monkeypatch, tmp_path) -> None:
    _choose_automatically(monkeypatch, 2, idle=0.2)  # busy as the run starts: 1 thread of 2
    assert torch.get_num_threads() == 1
    stat = tmp_path / "stat"
    _stat(stat, idle=0, busy=0)
    assert threads.more_threads_if_idle(str(stat)) is None  # the first reading
    _stat(stat, idle=10, busy=190)  # 2 cores x 100 jiffies: 0.1 core idle while the run trained on one
    assert threads.more_threads_if_idle(str(stat)) is None and torch.get_num_threads() == 1
    _stat(stat, idle=100, busy=300)  # the next 200 jiffies: 0.9 core idle, the other work ended
    assert threads.more_threads_if_idle(str(stat)) == ("other work left 0.9 cores idle over the last epoch: training "
                                                       "with 2 threads instead of 1 (--workers N fixes the count)")
    assert torch.get_num_threads() == 2
    _stat(stat, idle=300, busy=300)
    assert threads.more_threads_if_idle(str(stat)) is None  # already at the count chosen among
    threads.restore_threads()
    threads.choose_threads(1)  # the user's count stays, however idle the machine
    _stat(stat, idle=500, busy=300)
    assert threads.more_threads_if_idle(str(stat)) is None and torch.get_num_threads() == 1


def test_the_trainer_takes_idle_cores_at_an_epochs_end_and_times_the_sizes_again(keep_threads, monkeypatch) -> None:
    _choose_automatically(monkeypatch, 2, idle=0.2)
    # 1.8 cores idle over the first epoch (the run's own slack counts too), then 2 threads
    readings = iter([(0, 0, 2), (180, 200, 2), (380, 400, 2)])
    monkeypatch.setattr(threads, "_cpu_times", lambda stat: next(readings))
    trainer = _digits_trainer(epochs=2)
    with pytest.warns(UserWarning, match=r"run decay-momentum-seed0: other work left 1.8 cores idle over the last "
                                         r"epoch: training with 2 threads instead of 1"):
        records = list(trainer.epochs(lambda: None))
    assert len(records) == 2 and torch.get_num_threads() == 2
    assert trainer.micro.size_retimings == 1 and trainer.state_dict()["threads"] == 2  # what a resume takes
