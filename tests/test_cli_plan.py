"""The growbatch command: plan, presets and noise print what the library computes; bad input is one line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from growbatch.schedule.builders import step_schedule
from growbatch.cli import build_parser, main
from growbatch.schedule.planner import convert_lr_schedule, format_table
from growbatch.schedule.presets import get_preset, preset_names

CUSTOM = ["--lr", "0.1", "--batch-size", "128", "--epochs", "200", "--dataset-size", "50000"]


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- plan ------------------------------------------------------------------------------
def test_plan_preset_table(capsys):
    status, out, err = run(capsys, "plan", "cifar10-wrn-increase")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "cifar10-wrn-increase: N = 50,000 samples, 200 epochs, last partial batch kept"
    assert lines[1].split() == ["start", "epoch", "end", "epoch", "lr", "momentum", "batch", "size", "noise",
                                "scale", "g", "updates", "samples"]
    assert lines[3].split() == ["0", "60", "0.1", "0.9", "128", "389.6", "23,460", "3,000,000"]
    assert lines[6].split() == ["160", "200", "0.032", "0.9", "5,120", "2.805", "400", "2,000,000"]
    assert lines[7].split() == ["total", f"{60 * 391 + 60 * 79 + 40 * 16 + 40 * 10:,}", "10,000,000"]


@pytest.mark.parametrize("name", preset_names())
def test_plan_preset_json_is_the_library_plan(capsys, name):
    status, out, _ = run(capsys, "plan", name, "--json")
    assert status == 0
    assert json.loads(out) == get_preset(name).schedule().plan().to_dict()


@pytest.mark.parametrize(
    "flag, name, expected",
    [
        ("--drop-last", "cifar10-wrn-decay", 200 * 390),
        ("--no-drop-last", "cifar10-wrn-decay", 200 * 391),
        ("--no-drop-last", "imagenet-irv2-decay", 90 * 157),
        ("--drop-last", "imagenet-irv2-decay", 90 * 156),
    ],
)
def test_plan_drop_last_overrides_the_preset(capsys, flag, name, expected):
    status, out, _ = run(capsys, "plan", name, flag, "--json")
    assert status == 0
    data = json.loads(out)
    assert data["total_updates"] == expected
    assert data["drop_last"] == (flag == "--drop-last")


@pytest.mark.parametrize("mode", ["decay", "hybrid", "increase"])
def test_plan_custom_step_schedule(capsys, mode):
    status, out, _ = run(capsys, "plan", *CUSTOM, "--momentum", "0.9", "--milestones", "60,120,160",
                         "--factor", "5", "--mode", mode, "--max-batch-size", "5120", "--json")
    assert status == 0
    expected = step_schedule(mode, lr=0.1, batch_size=128, epochs=200, milestones=(60, 120, 160), factor=5,
                             dataset_size=50_000, momentum=0.9, max_batch_size=5120, name=f"custom-{mode}")
    assert json.loads(out) == expected.plan().to_dict()
    # the same numbers as the preset
    preset = get_preset(f"cifar10-wrn-{mode}").schedule().plan().to_dict()
    assert json.loads(out)["phases"] == preset["phases"]


def test_plan_custom_defaults_and_exact(capsys):
    # momentum 0.9, factor 5, increase, cap N/10 = 5000 by default; --exact from N/B - 1
    status, out, _ = run(capsys, "plan", *CUSTOM, "--milestones", "60,120,160", "--exact", "--drop-last", "--json")
    assert status == 0
    expected = step_schedule("increase", lr=0.1, batch_size=128, epochs=200, milestones=(60, 120, 160), factor=5,
                             dataset_size=50_000, momentum=0.9, exact=True, drop_last=True, name="custom-increase")
    data = json.loads(out)
    assert data == expected.plan().to_dict()
    # each batch from the one before: N / (1 + (N/B - 1)/5), then the cap
    assert [p["batch_size"] for p in data["phases"]] == [128, 634, round(50_000 / (1 + (50_000 / 634 - 1) / 5)), 5000]


@pytest.mark.parametrize("kind, extra", [("cosine", []), ("multistep", ["--milestones", "60,120,160"])])
def test_plan_converted_lr_schedule(capsys, kind, extra):
    status, out, _ = run(capsys, "plan", *CUSTOM, "--lr-schedule", kind, *extra, "--batch-size-multiple", "32",
                         "--max-batch-size", "5120", "--json")
    assert status == 0
    conversion = convert_lr_schedule(kind, lr=0.1, batch_size=128, epochs=200, dataset_size=50_000, momentum=0.9,
                                     milestones=(60, 120, 160) if extra else (), factor=5, max_batch_size=5120,
                                     batch_size_multiple=32)
    data = json.loads(out)
    assert data.pop("max_noise_error") == conversion.max_noise_error
    assert data == conversion.schedule.plan().to_dict()
    assert all(p["batch_size"] % 32 == 0 for p in data["phases"])


def test_plan_converted_table_reports_the_rounding_error(capsys):
    status, out, _ = run(capsys, "plan", *CUSTOM, "--lr-schedule", "cosine", "--batch-size-multiple", "64",
                         "--max-batch-size", "5120")
    conversion = convert_lr_schedule("cosine", lr=0.1, batch_size=128, epochs=200, dataset_size=50_000,
                                     momentum=0.9, max_batch_size=5120, batch_size_multiple=64)
    assert status == 0
    assert out.splitlines()[-1] == (f"largest noise-scale error from rounding batch sizes: "
                                    f"{conversion.max_noise_error:.3%}")
    assert conversion.max_noise_error > 0


def test_plan_compare(capsys):
    names = ["cifar10-wrn-decay", "cifar10-wrn-hybrid", "cifar10-wrn-increase"]
    status, out, _ = run(capsys, "plan", "--compare", *names)
    assert status == 0
    rows = out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == names
    assert rows[0].split()[-3:] == [f"{200 * 391:,}", "10,000,000", "1.000"]
    assert rows[1].split()[-3:] == [f"{60 * 391 + 140 * 79:,}", "10,000,000", f"{34_520 / 78_200:.3f}"]
    assert rows[2].split()[-3:] == [f"{29_240:,}", "10,000,000", f"{29_240 / 78_200:.3f}"]
    assert "128 -> 640 -> 3,200 -> 5,120" in rows[2]

    status, out, _ = run(capsys, "plan", "--compare", *names, "--json")
    data = json.loads(out)
    assert [p["name"] for p in data["plans"]] == names
    assert data["update_ratios"] == pytest.approx([1.0, 34_520 / 78_200, 29_240 / 78_200])


# -- presets and noise ------------------------------------------------------------------
def test_presets_lists_every_name_on_one_line(capsys):
    status, out, _ = run(capsys, "presets")
    assert status == 0
    rows = out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == preset_names()
    assert "B 128->640 at 60" in rows[1]


def test_noise(capsys):
    status, out, _ = run(capsys, "noise", "--lr", "0.1", "--batch-size", "128", "--dataset-size", "50000",
                         "--momentum", "0.9")
    assert status == 0
    lines = out.splitlines()
    assert lines[1].endswith("= 389.625")
    assert lines[2].endswith("= 390.625")
    assert lines[3].endswith("= 1")
    assert lines[4] == "batch size that divides g by 5 at this lr: 633.5 exact, 640.0 by the B << N rule"
    assert any(line.split()[-4:] == ["0.101", "0.98", "640", "389.625"] for line in lines)

    status, out, _ = run(capsys, "noise", "--lr", "0.1", "--batch-size", "100", "--dataset-size", "1000", "--json")
    data = json.loads(out)
    assert data["noise_scale"] == pytest.approx(0.1 * 9)
    assert data["noise_scale_approx"] == pytest.approx(0.1 * 10)
    assert data["momentum"] == 0.0


# -- bad input: one line on stderr, exit 2, no traceback ------------------------------
@pytest.mark.parametrize(
    "argv, match",
    [
        (["plan", "cifar10-wrn"], r"unknown preset 'cifar10-wrn'; valid presets: cifar10-wrn-decay, .*imagenet-irv2-momentum-0.975$"),
        (["plan", "--compare", "cifar10-wrn-decay", "nope"], r"unknown preset 'nope'; valid presets: "),
        (["plan", *CUSTOM, "--milestones", "60,160,120"], r"milestones should be strictly increasing, but got milestones=\[60, 160, 120\]"),
        (["plan", *CUSTOM, "--milestones", "60", "--factor", "1"], r"factor should be a number greater than 1 .*but got factor=1.0"),
        (["plan", *CUSTOM, "--lr-schedule", "multistep", "--milestones", "60", "--factor", "0.5"],
         r"factor should be a number greater than 1"),
        (["plan", *CUSTOM[2:], "--lr", "0"], r"lr should be a positive number, but got lr=0"),
        (["plan", *CUSTOM[2:], "--lr", "-0.1"], r"lr should be a positive number, but got lr=-0.1"),
        (["plan", *CUSTOM[:2], *CUSTOM[4:], "--batch-size", "0"], r"batch_size should be a positive integer value, but got batch_size=0"),
        (["plan", *CUSTOM[:2], *CUSTOM[4:], "--batch-size", "60000"],
         r"batch_size should be at most the data set size 50000, but got batch_size=60000"),
        (["plan", *CUSTOM, "--max-batch-size", "60000"],
         r"max_batch_size should be at most the data set size 50000, but got max_batch_size=60000"),
        (["plan", *CUSTOM, "--momentum", "1"], r"momentum should be in \[0, 1\), but got momentum=1"),
        (["plan", *CUSTOM, "--momentum", "-0.1"], r"momentum should be in \[0, 1\), but got momentum=-0.1"),
        (["plan", "--lr", "0.1"], r"a custom schedule needs --batch-size, --epochs, --dataset-size; or name a preset"),
        (["plan"], r"a custom schedule needs --lr, --batch-size, --epochs, --dataset-size"),
        (["plan", "cifar10-wrn-decay", "--lr", "0.2"], r"a preset is a complete schedule, but got --lr as well"),
        (["plan", "cifar10-wrn-decay", "--compare", "cifar10-wrn-hybrid"],
         r"--compare takes preset names only, but also got cifar10-wrn-decay"),
        (["plan", *CUSTOM, "--mode", "decay", "--lr-schedule", "cosine"], r"--mode decay and --lr-schedule cosine cannot be combined"),
        (["plan", *CUSTOM, "--batch-size-multiple", "8"], r"--batch-size-multiple only applies with --lr-schedule"),
        (["noise", "--lr", "0.1", "--batch-size", "128", "--dataset-size", "100"],
         r"batch_size should be at most the data set size 100, but got batch_size=128"),
        (["noise", "--lr", "0.1", "--batch-size", "128", "--dataset-size", "50000", "--momentum", "1.5"],
         r"momentum should be in \[0, 1\), but got momentum=1.5"),
        (["noise", "--lr", "0", "--batch-size", "128", "--dataset-size", "50000"], r"lr should be a positive number, but got lr=0"),
        # argparse's own errors, in the same one-line form
        (["plan", *CUSTOM, "--milestones", "60,x"], r"argument --milestones: expected comma-separated epochs"),
        (["plan", *CUSTOM, "--mode", "grow"], r"argument --mode: invalid choice: 'grow'"),
        (["noise", "--lr", "0.1"], r"the following arguments are required: --batch-size, --dataset-size"),
        (["fly"], r"argument COMMAND: invalid choice: 'fly'"),
        ([], r"the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(capsys, argv, match):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("growbatch: error: ")
    assert "Traceback" not in err
    assert re.search(match, err.strip()), err


def test_help_exits_0(capsys):
    status, out, _ = run(capsys, "plan", "--help")
    assert status == 0
    assert "--lr-schedule" in out and "--compare" in out


def test_subcommands_are_registered_with_a_handler():
    parser = build_parser()
    for argv in (["plan", "cifar10-wrn-decay"], ["presets"], ["noise", "--lr", "1", "--batch-size", "1", "--dataset-size", "2"]):
        args = parser.parse_args(argv)
        assert args.command == argv[0] and callable(args.handler)


def test_format_table_align_error():
    with pytest.raises(ValueError, match=r"align should be one letter l or r per column \(2\), but got align='lx'"):
        format_table(("a", "b"), [("1", "2")], align="lx")


# -- as a process: `python -m growbatch` and the console script --------------------------
def test_python_dash_m_plan_and_error():
    ok = subprocess.run([sys.executable, "-m", "growbatch", "plan", "cifar10-wrn-hybrid", "--json"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total_updates"] == 60 * 391 + 140 * 79

    bad = subprocess.run([sys.executable, "-m", "growbatch", "plan", *CUSTOM, "--factor", "1", "--milestones", "60"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.startswith("growbatch: error: factor should be a number greater than 1")
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_console_script():
    script = Path(sys.executable).parent / "growbatch"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}; install the package with pip install -e .")
    result = subprocess.run([str(script), "plan", "nope"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("growbatch: error: unknown preset 'nope'; valid presets: cifar10-wrn-decay")
    assert "Traceback" not in result.stderr


def test_drop_last_flag_on_a_custom_schedule_changes_the_counts(capsys):
    kept = json.loads(run(capsys, "plan", *CUSTOM, "--json")[1])
    dropped = json.loads(run(capsys, "plan", *CUSTOM, "--drop-last", "--json")[1])
    assert kept["total_updates"] == 200 * 391 and dropped["total_updates"] == 200 * 390
