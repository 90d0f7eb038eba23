"""`growbatch run` and `growbatch report` end to end: every output file and field, planner counts, bad input."""

from __future__ import annotations

import base64
import json
import time
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from growbatch.training.checkpoint import load_checkpoint
from growbatch.cli import main
from growbatch.data import load_dataset
from growbatch.training.experiments import ExperimentConfig, run_configs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "3", "--batch-size", "32", "--micro-batch-size", "64", "--no-progress"]
SUMMARY_RUN_KEYS = {"name", "schedule", "optimizer", "seed", "epochs", "final_test_acc", "best_test_acc",
                    "updates", "samples", "wall_s"}
# every metrics line of the image task, in this order
METRIC_KEYS = ("epoch", "updates", "samples", "wall_s", "lr", "batch_size", "momentum", "train_loss", "train_acc",
               "test_loss", "test_acc", "allreduces", "allreduce_s", "micro_batch_size", "gradient_noise_scale",
               "size_search_s")
REPORT_FILES = ("report.html", "report.md", "schedules.png", "train_loss.png", "test_acc_epochs.png",
                "test_acc_updates.png", "wall_time.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """compare on digits, 3 epochs, 2 seeds (a band in the figures), run once for the module."""
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["run", "--out", str(out), "--seeds", "0,1", *TINY])
    assert code == 0
    return out, "compare"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_run_writes_every_output_file(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    names = ["decay-momentum-seed0", "decay-momentum-seed1", "hybrid-momentum-seed0", "hybrid-momentum-seed1",
             "increase-momentum-seed0", "increase-momentum-seed1"]
    for name in names:
        for file in ("metrics.jsonl", "config.json", "checkpoint.pt"):
            assert (out / name / file).is_file(), f"{name}/{file}"
    for file in ("summary.json", "experiment.json", *REPORT_FILES):
        assert (out / file).is_file(), file
    for png in (p for p in REPORT_FILES if p.endswith(".png")):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / ".growbatch.lock").exists()  # released at the end


def test_summary_fields(tiny_run: tuple[Path, str]) -> None:
    out, experiment = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == experiment and summary["dataset"] == "digits" and summary["model"] == "cnn"
    assert len(summary["runs"]) == 6
    for row in summary["runs"]:
        assert SUMMARY_RUN_KEYS <= set(row)
        records = [json.loads(line) for line in (out / row["name"] / "metrics.jsonl").read_text().splitlines()]
        assert row["epochs"] == 3 == len(records)
        assert row["final_test_acc"] == records[-1]["test_acc"]
        assert row["best_test_acc"] == max(r["test_acc"] for r in records)
        assert row["updates"] == records[-1]["updates"] and row["samples"] == 3 * 1442
        assert row["wall_s"] == records[-1]["wall_s"] > 0
        assert row["name"] == f"{row['schedule']}-{row['optimizer']}-seed{row['seed']}"


def test_metrics_lines_have_every_field_and_count_exactly(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    for path in out.glob("*/metrics.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["epoch"] for r in records] == [0, 1, 2]
        for number, record in enumerate(records, start=1):
            assert tuple(record) == METRIC_KEYS
            assert record["samples"] == number * 1442
            assert 0.0 <= record["test_acc"] <= 1.0 and np.isfinite(record["train_loss"])
        assert [r["updates"] for r in records] == sorted(r["updates"] for r in records)
        assert [r["wall_s"] for r in records] == sorted(r["wall_s"] for r in records)
        # --micro-batch-size 64: the largest micro-batch of an epoch is 64, or its largest batch below that
        assert all(r["micro_batch_size"] == 64 for r in records if r["batch_size"] >= 64)
        assert all(32 <= r["micro_batch_size"] <= 64 for r in records)


def test_the_checkpoint_keeps_the_micro_batch_measurements(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--epochs", "1", "--batch-size", "32", "--no-progress"]) == 0
    checkpoints = sorted(out.glob("*/checkpoint.pt"))
    assert len(checkpoints) == 3  # decay, hybrid, increase
    for path in checkpoints:
        micro = load_checkpoint(path)["micro"]
        assert micro["version"] == 1 and micro["micro_batch_size"] == "auto"
        [search] = micro["searches"]  # one input signature: the uint8 digits
        assert search["shape"] == [1, 8, 8] and search["dtype"] == "uint8" and search["device"] == "cpu"
        assert search["search"]["throughput"]  # sizes timed during the run, restored by --resume


def test_updates_equal_the_planners_count(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    config = ExperimentConfig(epochs=3, batch_size=32, micro_batch_size=64, seeds=(0, 1))
    for run in run_configs(config, 1442):
        records = [json.loads(line) for line in (out / run.name / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["updates"] == run.schedule.plan().total_updates
        # and epoch by epoch: the updates that cut epoch e's samples, as the sampler cuts them
        for record in records:
            assert record["updates"] == _updates_through(run.schedule, record["epoch"])


def _updates_through(schedule, last_epoch: int) -> int:
    """Brute force: cut every epoch with Schedule.next_batch_size, counting batches."""
    count = 0
    for epoch in range(last_epoch + 1):
        position = 0
        while position < schedule.dataset_size:
            position += schedule.next_batch_size(epoch, position)
            count += 1
    return count


def test_config_json_records_settings_version_and_commit(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    config = json.loads((out / "increase-momentum-seed1" / "config.json").read_text())
    assert config["seed"] == 1 and config["optimizer"] == "momentum" and config["model"] == "cnn"
    assert config["schedule"]["name"] == "increase" and config["ghost_batch_size"] == 32
    assert config["micro_batch_size"] == 64 and config["growbatch_version"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert config["git_commit"] == (commit or None)


def test_report_is_self_contained_with_tables(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    html = (out / "report.html").read_text()
    images = re.findall(r"<img[^>]+src=['\"]([^'\"]+)['\"]", html)
    # the five figures, and the measured noise scale where one was measured (batches of two micro-batches)
    measured = any(json.loads(line)["gradient_noise_scale"] for line in (out / "increase-momentum-seed0" /
                                                                          "metrics.jsonl").read_text().splitlines())
    assert measured and (out / "noise_scale.png").exists()
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["runs"]:
        assert row["name"] in html and f"{row['updates']:,}" in html


def test_report_command_rebuilds_from_metrics_and_ignores_a_torn_line(tiny_run: tuple[Path, str], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    out, _ = tiny_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    for file in REPORT_FILES:
        (copy / file).unlink()
    for checkpoint in copy.glob("*/checkpoint.pt"):
        checkpoint.unlink()  # the report needs the metrics alone
    with open(copy / "decay-momentum-seed0" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "updates": 9')  # killed mid-write
    capsys.readouterr()
    assert main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == str(copy / "report.html")
    for file in REPORT_FILES:
        assert (copy / file).is_file()
    assert "| decay-momentum-seed0 | 3 |" in (copy / "report.md").read_text()


def test_resume_of_a_finished_experiment_trains_nothing(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = tiny_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    before = {k: v for k, v in _snapshot(copy).items() if "/" in k}
    assert main(["run", "--out", str(copy), "--seeds", "0,1", *TINY, "--resume"]) == 0
    after = {k: v for k, v in _snapshot(copy).items() if "/" in k and not k.endswith("config.json")}
    assert after == {k: v for k, v in before.items() if not k.endswith("config.json")}


def test_runs_are_deterministic_on_the_cpu(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = tiny_run
    again = tmp_path / "again"
    assert main(["run", "--out", str(again), "--seeds", "0,1", *TINY]) == 0
    for path in out.glob("*/metrics.jsonl"):
        first = [json.loads(line) for line in path.read_text().splitlines()]
        second = [json.loads(line) for line in (again / path.parent.name / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(first, second, strict=True):
            a.pop("wall_s"), b.pop("wall_s"), a.pop("allreduce_s"), b.pop("allreduce_s")
            assert a == b
    a = torch.load(out / "increase-momentum-seed0" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(again / "increase-momentum-seed0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_paper_5_2_runs_the_four_schedules(tmp_path: Path) -> None:
    out = tmp_path / "p52"
    assert main(["run", "paper-5.2", "--out", str(out), "--epochs", "1", "--micro-batch-size", "64",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["schedule"] for r in summary["runs"]] == ["original", "increase", "increase-lr", "increase-momentum"]
    first = {r["schedule"]: json.loads((out / r["name"] / "metrics.jsonl").read_text().splitlines()[0])
             for r in summary["runs"]}
    b0 = first["original"]["batch_size"]
    assert first["increase-lr"]["batch_size"] == 5 * b0 and first["increase-lr"]["lr"] == pytest.approx(0.5)
    assert first["increase-momentum"]["batch_size"] == 25 * b0
    assert first["increase-momentum"]["momentum"] == pytest.approx(0.98)
    ups = [r["updates"] for r in summary["runs"]]
    assert ups[0] > ups[2] > ups[3]  # each step of §5.2 cuts the updates further


def test_train_size_trains_on_a_subset(tmp_path: Path) -> None:
    out = tmp_path / "subset"
    assert main(["run", "--out", str(out), "--train-size", "400", "--epochs", "1", "--batch-size", "16",
                 "--micro-batch-size", "64", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset_size"] == 400
    assert {r["samples"] for r in summary["runs"]} == {400}
    assert summary["runs"][0]["updates"] == 25  # decay: 400 / 16 per epoch
    assert json.loads((out / "experiment.json").read_text())["train_size"] == 400


def test_defaults_are_the_demo() -> None:
    """`growbatch run` alone: compare on digits, the small CNN with ghost BN, SGD with momentum."""
    config = ExperimentConfig()
    runs = run_configs(config, load_dataset("digits").train_size)
    assert [r.schedule.name for r in runs] == ["decay", "hybrid", "increase"]
    assert {r.model for r in runs} == {"cnn"} and {r.optimizer for r in runs} == {"momentum"}
    b0 = runs[0].schedule.phases[0].batch_size
    assert {r.ghost_batch_size for r in runs} == {b0}
    assert max(p.batch_size for r in runs for p in r.schedule.phases) <= 1442 // 10  # the cap N/10
    assert runs[0].schedule.epochs == 30


# -- bad input: one line, exit 2, nothing in OUT destroyed ----------------------------------

def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "growbatch", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "--dataset", "svhn"], "choose from 'digits', 'mnist', 'fashion-mnist', 'cifar10'"),
    (["run", "--model", "vgg"], "choose from"),
    (["run", "--optimizers", "sgd,rmsprop"], "unknown rmsprop; valid: sgd, momentum, nesterov, adam"),
    (["run", "paper-5.3"], "invalid choice: 'paper-5.3'"),
    (["run", "--epochs", "0"], "expected a positive integer, got 0"),
    (["run", "--epochs", "-3"], "expected a positive integer, got -3"),
    (["run", "--seeds", "a,b"], "expected comma-separated integers"),
    (["run", "--micro-batch-size", "0"], "micro-batch size should be a positive integer or 'auto'"),
    (["run", "--ghost-batch-size", "-1"], "--ghost-batch-size should be a positive integer"),
    (["run", "--batch-size", "5000", "--epochs", "1"], "5000"),
    (["run", "paper-5.2", "--optimizers", "sgd"], "paper-5.2 scales the momentum"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
    (["run", "--train-size", "5"], "train_size should be between 10 (one image per class) and 1442"),
    (["run", "--train-size", "0"], "expected a positive integer, got 0"),
])
def test_bad_flags_get_one_line_and_status_2(args: list[str], expected: str, tmp_path: Path) -> None:
    result = _cli(*args, "--out", str(tmp_path / "out")) if args[0] == "run" else _cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("growbatch: error: ")
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_data_files_name_what_was_looked_for(tmp_path: Path) -> None:
    result = _cli("run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "mnist.npz" in result.stderr and "train-images-idx3-ubyte" in result.stderr
    assert "--download" in result.stderr


def test_corrupt_data_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    result = _cli("run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert str(tmp_path / "mnist.npz") in result.stderr


def test_an_output_dir_with_results_is_never_overwritten(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = tiny_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    before = _snapshot(copy)
    same = _cli("run", "--out", str(copy), "--seeds", "0,1", *TINY)  # the same experiment, no --resume
    assert same.returncode == 2 and "pass --resume to continue it or --force" in same.stderr
    other = _cli("run", "--out", str(copy), "--epochs", "2")  # another experiment
    assert other.returncode == 2 and "holds another experiment (differs in: " in other.stderr
    assert "epochs" in other.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    strange = _cli("run", "--out", str(foreign), *TINY)
    assert strange.returncode == 2 and "holds no growbatch experiment" in strange.stderr
    assert _snapshot(copy) == before and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_the_custom_loop_example_runs_its_schedule() -> None:
    """examples/custom_loop.py (shown in the README) trains and takes the planner's update count."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_loop.py"), "--epochs", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1: batch   16")
    assert float(lines[-1].rsplit(" ", 1)[1]) > 0.9


def test_the_auto_micro_batch_search_is_timed_apart_from_wall_s(tmp_path: Path) -> None:
    """NOTE [honest wall time]: auto's memory estimate (a pass that trains nothing) is size_search_s, not the run's
    wall_s; its timing of sizes is training (NOTE [online timing]) and no part of size_search_s."""
    for flags, name in ((["--micro-batch-size", "auto"], "auto"), (["--micro-batch-size", "128"], "fixed")):
        out = tmp_path / name
        started = time.perf_counter()
        assert main(["run", "--epochs", "1", "--schedules", "decay", "--batch-size", "128", "--workers", "1",
                     "--no-progress", "--out", str(out), *flags]) == 0
        elapsed = time.perf_counter() - started
        record = json.loads((out / "decay-momentum-seed0" / "metrics.jsonl").read_text().splitlines()[0])
        if name == "auto":  # that it is the estimate alone: test_accumulate.py's clocked search_s test
            assert record["size_search_s"] > 0
        else:
            assert record["size_search_s"] == 0.0
        assert 0 < record["wall_s"] and record["wall_s"] + record["size_search_s"] < elapsed
