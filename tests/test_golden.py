"""The training core's numbers do not move: `growbatch run compare` on digits, metrics equal to the last bit.

The reference is the code of main before the training-core redesign (commit 7276295), taken from this
clone's history and run here, on the same machine: a file recorded elsewhere cannot serve, since CPUs of
other kinds (AVX-512 or not, AMX, other cache sizes) pick other kernels and round differently.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REDESIGN = "7276295"
# one thread: the same kernels and reduction order in both runs, whatever the core count
COMMAND = ["run", "compare", "--epochs", "3", "--micro-batch-size", "32", "--seeds", "0", "--workers", "1",
           "--no-progress"]
RUNS = ("decay-momentum-seed0", "hybrid-momentum-seed0", "increase-momentum-seed0")
ADDED_SINCE = {"gradient_noise_scale", "size_search_s"}  # fields the metrics lines gained after the redesign


def _old_source(into: Path) -> Path:
    """Unpack src/ of the pre-redesign commit from git; skip (with the reason) where the clone lacks it."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_REDESIGN, "src"], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"commit {BEFORE_REDESIGN} is not in this clone's history (a shallow clone?): "
                    f"{done.stderr.decode().strip()[:200]}")
    tarfile.open(fileobj=io.BytesIO(done.stdout)).extractall(into, filter="data")
    return into / "src"


def _metrics(out: Path, pythonpath: str | None) -> list[dict]:
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    done = subprocess.run([sys.executable, "-m", "growbatch", *COMMAND, "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    records = []
    for name in RUNS:
        for line in (out / name / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            record.pop("wall_s")
            records.append({"run": name, **record})
    return records


def test_compare_on_digits_gives_the_pre_redesign_metrics_bit_for_bit(tmp_path: Path) -> None:
    old_src = _old_source(tmp_path / "old")
    expected = _metrics(tmp_path / "before", str(old_src))
    got = _metrics(tmp_path / "after", None)
    assert len(got) == len(expected) == 9
    assert not any(ADDED_SINCE & set(old) for old in expected)  # the reference really ran the old code
    for new, old in zip(got, expected):
        assert list(new)[:len(old)] == list(old)  # the same fields in the same order, new ones after them
        assert {key: new[key] for key in old} == old  # floats compared exactly
        assert set(new) - set(old) <= ADDED_SINCE
