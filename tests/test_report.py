"""The report from fabricated run directories (no training): what it shows and what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from growbatch.report import aggregate, build_report, figure_captions, load_runs

MANIFEST = {"dataset": "digits", "micro_batch_size": "auto", "experiment": "compare", "model": "cnn",
            "optimizers": ["momentum"], "epochs": 3, "seeds": [0, 1], "batch_size": None, "lr": None,
            "momentum": 0.9, "max_batch_size": None, "factor": 5.0, "ghost_batch_size": None}


def _write_run(out: Path, schedule: str, seed: int, batch_sizes: list[int], accuracies: list[float]) -> None:
    run_dir = out / f"{schedule}-momentum-seed{seed}"
    run_dir.mkdir(parents=True)
    phases = [{"start_epoch": float(e), "end_epoch": float(e + 1), "lr": 0.1, "batch_size": b, "momentum": 0.9}
              for e, b in enumerate(batch_sizes)]
    config = {"name": run_dir.name, "optimizer": "momentum", "seed": seed, "ghost_batch_size": 8,
              "dataset": "digits", "model": "cnn", "schedule": {"name": schedule, "phases": phases}}
    (run_dir / "config.json").write_text(json.dumps(config))
    updates = 0
    lines = []
    for epoch, (batch, accuracy) in enumerate(zip(batch_sizes, accuracies)):
        updates += 400 // batch
        lines.append(json.dumps({"epoch": epoch, "updates": updates, "samples": 400 * (epoch + 1),
                                 "wall_s": 1.0 + epoch, "lr": 0.1, "batch_size": batch, "train_loss": 1.0 / (epoch + 1),
                                 "test_acc": accuracy, "allreduces": 0, "micro_batch_size": 32}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fabricated(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    for seed, shift in ((0, 0.0), (1, 0.01)):
        _write_run(out, "decay", seed, [8, 8, 8], [0.7 + shift, 0.9 + shift, 0.95 + shift])
        _write_run(out, "increase", seed, [8, 40, 144], [0.7 + shift, 0.92 + shift, 0.97 + 2 * shift])
    (out / "experiment.json").write_text(json.dumps(MANIFEST))
    return out


def test_differences_against_the_reference_are_paired_by_seed(fabricated: Path) -> None:
    rows = {row["schedule"]: row for row in aggregate(load_runs(fabricated))}
    assert rows["decay"]["final_test_acc_delta"] == 0.0
    # seed 0: 0.97 - 0.95, seed 1: 0.99 - 0.96
    assert rows["increase"]["final_test_acc_delta"] == pytest.approx((0.02 + 0.03) / 2)
    assert rows["increase"]["updates_ratio"] == pytest.approx((50 + 10 + 2) / (3 * 50))


def test_the_report_prints_the_values_used_and_no_empty_columns(fabricated: Path) -> None:
    page = build_report(fabricated).read_text()
    settings = page.split("Settings used: ", 1)[1].split("</p>", 1)[0]
    assert "None" not in settings.replace("train_size=None", "")
    for used in ("batch_size=8", "lr=0.1", "max_batch_size=144", "ghost_batch_size=8", "micro_batch_size=auto (32)"):
        assert used in settings
    assert "all-reduces" not in page  # zeros on one process carry nothing
    assert "Δ vs reference (pp)" in page and "+2.50 ± 0.71" in page
    assert page.count("<img ") == 5 and "the paper&#x27;s Figure 2" in page


def test_one_seed_shows_no_spread(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_run(out, "decay", 0, [8, 8], [0.8, 0.9])
    _write_run(out, "increase", 0, [8, 40], [0.8, 0.91])
    page = build_report(out).read_text()
    assert "±" not in page.split("<h2>Runs</h2>")[0].split("</p>", 1)[1] and "+1.00" in page


def test_captions_name_the_paper_figure_for_each_experiment() -> None:
    assert "Figure 5" in figure_captions("paper-5.2")["test_acc_updates.png"]
    assert "Figures 3 and 4" in figure_captions("compare")["test_acc_epochs.png"]
    assert "micro-batch measurement" in figure_captions("compare")["wall_time.png"]
