"""What users read: the report in a real browser, the terminal under a pseudo-terminal, metrics.csv and TensorBoard."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from growbatch.cli import main
from growbatch.training.metrics import read_records

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "2", "--batch-size", "8", "--micro-batch-size", "64", "--train-size", "400"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """compare on 400 digits, 2 epochs, with --tensorboard, run once for the module."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'growbatch[tensorboard]')")
    out = tmp_path_factory.mktemp("logs") / "out"
    assert main(["run", "--out", str(out), *SMALL, "--no-progress", "--tensorboard"]) == 0
    return out


@pytest.mark.slow
def test_metrics_csv_equals_metrics_jsonl(small_run: Path) -> None:
    for run_dir in sorted(p for p in small_run.iterdir() if p.is_dir()):
        records = read_records(run_dir / "metrics.jsonl")
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(records) == 2
        assert [{k: json.loads(v) for k, v in row.items()} for row in rows] == records


@pytest.mark.slow
def test_tensorboard_events_read_back_with_tensorboards_reader(small_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = small_run / "increase-momentum-seed0"
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    records = read_records(run_dir / "metrics.jsonl")
    assert {"train_loss", "test_acc", "lr", "batch_size", "updates"} <= set(events.Tags()["scalars"])
    for key in ("test_acc", "train_loss", "batch_size"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)


def test_tensorboard_missing_is_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from growbatch.training import runfiles

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"--tensorboard needs the tensorboard package.*pip install"):
        runfiles._tensorboard_writer(Path("unused"), purge_step=0)


@pytest.mark.slow
def test_report_loads_every_figure_in_headless_chromium(small_run: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (CI installs it: apt-get install chromium)")
    page = (small_run / "report.html").read_text()
    probe = ("<script>addEventListener('load', () => document.body.setAttribute('data-widths', "
             "[...document.images].map(i => i.complete ? i.naturalWidth : 0).join(',')))</script>")
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,3400",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    widths = [int(w) for w in re.search(r'data-widths="([\d,]*)"', dom).group(1).split(",")]
    assert len(widths) == 5 and all(w > 500 for w in widths), widths  # every figure decoded, none broken
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", (small_run / "report.html").as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000  # a page, not a blank


@pytest.mark.slow
def test_terminal_shows_bars_kept_lines_and_a_final_table(tmp_path: Path) -> None:
    """Under a pseudo-terminal: bars with lr, batch size and loss; a kept line per epoch; the runs and the report."""
    out = tmp_path / "out"
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-m", "growbatch", "run", "--out", str(out), *SMALL],
                               stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 0
    os.close(controller)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    assert re.search(r"decay-momentum-seed0 epoch 1/2.*lr=0\.1 batch=8 loss=\d+\.\d{4}", text)  # the bar
    screen = [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]  # what stays once each line is redrawn
    for name in ("decay", "hybrid", "increase"):
        for epoch in (1, 2):
            assert any(line.startswith(f"[{name}-momentum-seed0] epoch {epoch}/2 lr=") and "test_acc=" in line
                       for line in screen), (name, epoch)
    summary = json.loads((out / "summary.json").read_text())
    assert any(line.split()[:2] == ["run", "final"] for line in screen)
    for row in summary["runs"]:
        assert any(line.split()[:3] == [row["name"], f"{100 * row['final_test_acc']:.2f}", f"{row['updates']:,}"]
                   for line in screen), row["name"]
    assert [line for line in screen if line.strip()][-1] == str(out / "report.html")  # the report's path, last


def test_run_help_shows_every_default_and_report_has_a_description(capsys: pytest.CaptureFixture) -> None:
    from growbatch.cli.main import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    for action in subparsers["run"]._actions:
        if action.dest != "help":
            assert "default" in action.help, action.dest
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 0.9)", "(default: 5.0)", "(default: auto)", "(default: 0.0005)", "(default: compare)",
                  "(default: 0)", "epochs per run; milestones are rescaled to it (default per data set)"):
        assert shown in text
    assert main(["report", "--help"]) == 0
    assert "Rebuild RUN_DIR/report.html" in capsys.readouterr().out


def test_runs_table_lines_up_the_final_numbers() -> None:
    from growbatch.cli.progress import runs_table

    table = runs_table([{"name": "decay-momentum-seed0", "final_test_acc": 0.98034, "updates": 2172, "wall_s": 87.24},
                        {"name": "increase-momentum-seed0", "final_test_acc": 0.9887, "updates": 838, "wall_s": 9.0}])
    assert table.splitlines() == [
        "run                      final test acc %  updates  wall s",
        "decay-momentum-seed0                98.03    2,172    87.2",
        "increase-momentum-seed0             98.87      838     9.0",
    ]
