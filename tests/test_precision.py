"""--precision fp32|bf16: bf16 really runs under autocast, fp32 stays the float32 run, both recorded and matched."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from growbatch.cli import main
from growbatch.data import load_dataset
from growbatch.training import ClassificationTask, DistInfo, RunSettings, Trainer, train_run
from growbatch.training.checkpoint import check_compatible
from growbatch.training.experiments import ExperimentConfig, run_configs
from growbatch.training.precision import cpu_bf16_note, cpu_flags
from growbatch.training.task import autocast_dtype, evaluation_autocast

RUN = "decay-momentum-seed0"
SMALL = ["--schedules", "decay", "--epochs", "2", "--batch-size", "32", "--micro-batch-size", "64",
         "--workers", "1", "--no-progress"]


def _records(out: Path) -> list[dict]:
    lines = (out / RUN / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "size_search_s")} for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small digits run three ways: flag left out, --precision fp32, --precision bf16."""
    root = tmp_path_factory.mktemp("precision")
    outs = {"default": root / "default", "fp32": root / "fp32", "bf16": root / "bf16"}
    for name, out in outs.items():
        flag = [] if name == "default" else ["--precision", name]
        assert main(["run", *SMALL, *flag, "--out", str(out)]) == 0
    return outs


def test_the_default_is_fp32_and_gives_the_same_numbers_as_asking_for_it(runs: dict[str, Path]) -> None:
    assert ExperimentConfig().precision == "fp32" and RunSettings().precision == "fp32"
    assert _records(runs["default"]) == _records(runs["fp32"])  # every float, exactly


def test_bf16_trains_close_to_fp32_but_not_identically(runs: dict[str, Path]) -> None:
    fp32, bf16 = _records(runs["fp32"]), _records(runs["bf16"])
    assert [r["updates"] for r in bf16] == [r["updates"] for r in fp32]  # the same schedule
    for a, b in zip(fp32, bf16):
        assert a["train_loss"] != b["train_loss"] and a["test_loss"] != b["test_loss"]  # autocast was on
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.25)
        assert abs(b["test_acc"] - a["test_acc"]) < 0.05
    assert bf16[-1]["train_loss"] < bf16[0]["train_loss"] and bf16[-1]["test_acc"] > 0.8  # it learns


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_config_json_and_the_manifest_record_the_precision(runs: dict[str, Path], precision: str) -> None:
    assert json.loads((runs[precision] / RUN / "config.json").read_text())["precision"] == precision
    assert json.loads((runs[precision] / "experiment.json").read_text())["precision"] == precision


def test_bf16_runs_training_and_evaluation_forward_passes_in_bfloat16() -> None:
    dataset = load_dataset("digits")
    config = ExperimentConfig(precision="bf16", epochs=1, schedules=("decay",), micro_batch_size=64)
    run = run_configs(config, dataset.train_size)[0]
    trainer = Trainer(run, ClassificationTask(dataset), DistInfo())
    seen: list[torch.dtype] = []
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    inputs, targets = next(iter(trainer.loader))
    trainer.train_update(inputs, targets)
    assert trainer.micro.autocast_dtype is torch.bfloat16 and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trainer.model.parameters())
    seen.clear()
    trainer.task.evaluate(trainer.model, run, trainer.info)
    assert seen and set(seen) == {torch.bfloat16}


def test_fp32_runs_no_autocast() -> None:
    run = run_configs(ExperimentConfig(epochs=1), 1442)[0]
    assert autocast_dtype(run.settings.precision) is None
    assert not evaluation_autocast(run, torch.device("cpu"))._enabled


def test_a_checkpoint_continues_only_with_its_own_precision(tmp_path: Path) -> None:
    """bf16 and fp32 round differently, so continuing a checkpoint in the other would give neither run."""
    dataset = load_dataset("digits").subset(200)
    task = ClassificationTask(dataset)
    fp32 = run_configs(ExperimentConfig(epochs=1, schedules=("decay",), micro_batch_size=64), dataset.train_size)[0]
    assert len(list(train_run(fp32, task, tmp_path / "run", info=DistInfo()))) == 1
    bf16 = dataclasses.replace(fp32, settings=dataclasses.replace(fp32.settings, precision="bf16"))
    with pytest.raises(ValueError, match=r"checkpoint \S+/checkpoint.pt was written with precision='fp32', but this "
                                         r"run has precision='bf16'; use the original settings, or --force"):
        list(train_run(bf16, task, tmp_path / "run", info=DistInfo(), resume=True))
    check_compatible(fp32.to_dict(), fp32.to_dict(), tmp_path / "run" / "checkpoint.pt")  # its own: accepted


def test_the_cli_refuses_to_resume_an_experiment_in_another_precision(runs: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, "-m", "growbatch", "run", *SMALL, "--precision", "bf16", "--resume",
                           "--out", str(runs["fp32"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "holds another experiment (differs in: precision)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("experiment", [[], ["lm"]])
def test_a_bad_precision_is_one_line_naming_it_and_the_valid_ones(experiment: list[str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "growbatch", "run", *experiment, "--precision", "fp16", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "argument --precision: invalid choice: 'fp16' (choose from 'fp32', 'bf16')" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("build", [lambda: RunSettings(precision="fp16"), lambda: ExperimentConfig(precision="half"),
                                   lambda: autocast_dtype("bfloat16")])
def test_a_bad_precision_is_refused_by_the_library(build) -> None:
    with pytest.raises(ValueError, match=r"unknown precision '\w+'; valid: fp32, bf16"):
        build()


def test_help_says_what_precision_does_and_its_default() -> None:
    done = subprocess.run([sys.executable, "-m", "growbatch", "run", "--help"], capture_output=True, text=True,
                          timeout=60)
    text = " ".join(done.stdout.split())
    assert "--precision {fp32,bf16}" in text and "torch.autocast to bfloat16" in text and "(default: fp32)" in text


CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\n{key}\t\t: fpu sse2 avx2 {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("vendor, key, extra, warned", [
    ("GenuineIntel", "flags", "avx512f avx512bw avx512_vnni", True),  # the Xeon of bench/README.md section 8
    ("AuthenticAMD", "flags", "avx512f avx512_bf16", False),  # Zen 4
    ("GenuineIntel", "flags", "avx512f amx_tile amx_bf16", False),  # Sapphire Rapids
    ("", "Features", "fp asimd bf16", False),  # Arm with the BF16 extension
    ("", "Features", "fp asimd", True),
])
def test_bf16_on_a_cpu_without_bfloat16_instructions_is_warned_of(tmp_path: Path, vendor: str, key: str,
                                                                  extra: str, warned: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor=vendor, key=key, extra=extra))
    note = cpu_bf16_note("bf16", torch.device("cpu"), cpuinfo)
    assert (note is not None) == warned
    if warned:
        assert note.count("\n") == 0 and "--precision bf16 on a CPU without bfloat16 instructions" in note
        assert "avx512_bf16, amx_bf16, bf16" in note and "--precision fp32 is likely faster here" in note


def test_no_bf16_warning_for_fp32_a_gpu_or_an_unreadable_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor="GenuineIntel", key="flags", extra="avx512f"))
    assert cpu_bf16_note("bf16", torch.device("cpu"), cpuinfo) is not None
    assert cpu_bf16_note("fp32", torch.device("cpu"), cpuinfo) is None
    assert cpu_bf16_note("bf16", torch.device("cuda"), cpuinfo) is None
    assert cpu_bf16_note("bf16", torch.device("cpu"), tmp_path / "absent") is None
    assert cpu_flags(tmp_path / "absent") is None


def test_the_run_prints_the_bf16_warning_once_where_the_cpu_lacks_bfloat16(runs: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    expected = cpu_bf16_note("bf16", torch.device("cpu"))  # this machine's own answer
    done = subprocess.run([sys.executable, "-m", "growbatch", "run", *SMALL, "--epochs", "1", "--precision", "bf16",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if expected is None:
        assert "without bfloat16 instructions" not in done.stderr
    else:
        assert done.stderr.count(expected) == 1
