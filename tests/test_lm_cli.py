"""growbatch run lm / plan lm from the command line: bad input is one line, exit status 2, and nothing in --out is
touched (docs/reliability.md); a tiny run end to end writes the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from growbatch.cli import main

TINY = ["run", "lm", "--tokens", "2048", "--epochs", "2", "--seq-len", "16", "--batch-size", "4",
        "--max-batch-size", "16", "--micro-batch-size", "4", "--no-progress", "--workers", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("for i in range(10):\n    print(i * i)\n" * 200)
    return path


@pytest.fixture
def finished(tmp_path: Path, corpus: Path) -> Path:
    """An lm experiment with results, which the bad commands below must leave as it is."""
    out = tmp_path / "out"
    assert main([*TINY, "--text-file", str(corpus), "--schedules", "decay,converted", "--out", str(out)]) == 0
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_tiny_lm_experiment_writes_tokens_and_the_report(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["decay-adamw-seed0", "converted-adamw-seed0"]
    assert all(r["tokens"] == 2048 for r in summary["runs"])  # 2048 // (2 * 16) = 64 sequences per epoch
    for name in ("report.html", "report.md", "val_loss_tokens.png", "val_loss_updates.png", "schedules.png"):
        assert (finished / name).stat().st_size > 0
    assert "Δ vs decay" in (finished / "report.md").read_text()


def test_resume_on_another_corpus_is_refused(finished: Path, corpus: Path, capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(finished)
    corpus.write_text(corpus.read_text() + "# one more line\n")
    assert main([*TINY, "--text-file", str(corpus), "--schedules", "decay,converted", "--out", str(finished),
                 "--resume"]) == 2
    assert "differs in: corpus_sha256" in capsys.readouterr().err
    assert _snapshot(finished) == before


def _bad(tmp_path: Path, corpus: Path) -> list[tuple[list[str], str]]:
    empty, binary, small = tmp_path / "empty.txt", tmp_path / "x.bin", tmp_path / "small.txt"
    empty.write_bytes(b"")
    binary.write_bytes(bytes(range(256)))
    small.write_text("x = 1\n" * 20)  # 120 bytes: a validation split of 6
    text = ["--text-file", str(corpus)]
    return [
        (["--text-file", str(tmp_path / "missing.txt")], "does not exist"),
        (["--text-file", str(empty)], "is empty"),
        (["--text-file", str(binary)], "binary file"),
        (["--text-file", str(small)], "--seq-len 16 is longer than the validation split"),
        ([*text, "--seq-len", "100000"], "--tokens 2048 is less than one sequence"),
        ([*text, "--batch-schedule", "0:4,1k"], "TOKENS:BATCH pairs"),
        ([*text, "--batch-schedule", "0:8,1k:4"], "should increase in tokens and in batch size"),
        ([*text, "--rampup-batch-size", "4 4"], "START INCREMENT SAMPLES"),
        ([*text, "--batch-schedule", "0:4,4k:8"], "a step at 4,000 tokens, but each run trains 2,048"),
        ([*text, "--model", "wrn-16-4"], "--model wrn-16-4 is an image model"),
        (["--dataset", "mnist"], "trains a language model on text"),
    ]


def test_bad_input_is_one_line_exit_2_and_leaves_results_alone(finished: Path, tmp_path: Path, corpus: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(finished)
    for extra, match in _bad(tmp_path, corpus):
        capsys.readouterr()
        assert main([*TINY, *extra, "--out", str(finished), "--force"]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("growbatch: error: ") and match in err, (extra, err)
        assert "Traceback" not in err
    assert _snapshot(finished) == before


@pytest.mark.parametrize("argv, match", [
    (["run", "--model", "gpt-tiny", "--epochs", "1"], "--model gpt-tiny is a language model"),
    (["run", "--dataset", "python-stdlib"], "is text, for growbatch run lm"),
    (["run", "--seq-len", "64"], "--seq-len applies to growbatch run lm only"),
    (["run", "--text-file", "x.txt"], "--text-file is a corpus for growbatch run lm"),
    (["plan", "lm", "--milestones", "3"], "--milestones apply to image schedules only"),
    (["plan", "lm", "--batch-schedule", "0:16,2M:8"], "should increase"),
    (["plan", "--lr-schedule", "wsd", "--lr", "0.1", "--batch-size", "8", "--epochs", "2", "--dataset-size", "80"],
     "wsd is an lm schedule"),
])
def test_a_text_model_or_setting_with_an_image_task_is_refused(argv: list[str], match: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err


def test_plan_lm_prints_tokens_and_updates_for_every_schedule(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "lm", "--tokens", "8M", "--batch-schedule", "0:16,2M:32,6M:64", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["schedules"]}
    assert list(rows) == ["decay-adamw", "converted-adamw", "seesaw-adamw", "rampup-adamw", "steps-adamw"]
    tokens = 8_000_000 // (8 * 128) * 8 * 128  # whole sequences per epoch
    assert {r["tokens"] for r in rows.values()} == {tokens}
    per_epoch = tokens // 128 // 8  # 7,812 sequences
    assert rows["decay-adamw"]["updates"] == 8 * -(-per_epoch // 16)  # a short last batch in every epoch
    # steps: 16 sequences until token 2M, 32 until 6M, then 64 (a point rounded up to a whole sequence), cut per epoch
    at_2m, at_6m = -(-2_000_000 // 128), -(-6_000_000 // 128)
    updates = 0
    for epoch in range(8):
        position = 0
        while position < per_epoch:
            clock = epoch * per_epoch + position
            position += 16 if clock < at_2m else 32 if clock < at_6m else 64
            updates += 1
    assert rows["steps-adamw"]["updates"] == updates
