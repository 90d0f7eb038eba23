"""The training core's numbers do not move: `growbatch run compare` on digits, metrics equal to the last bit.

tests/golden/compare-digits-epochs3-micro32.jsonl was recorded on main before the training-core
redesign (commit 7276295) with the command below; every metrics field but the wall time must match.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "compare-digits-epochs3-micro32.jsonl"
# one thread: float reductions split over threads differently on machines with other core counts
COMMAND = ["run", "compare", "--epochs", "3", "--micro-batch-size", "32", "--seeds", "0", "--workers", "1",
           "--no-progress"]
ADDED_SINCE = {"gradient_noise_scale"}  # fields the metrics lines gained after the recording


def test_compare_on_digits_gives_the_recorded_metrics_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "growbatch", *COMMAND, "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    got = []
    for name in dict.fromkeys(row["run"] for row in expected):
        for line in (out / name / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            record.pop("wall_s")
            got.append({"run": name, **record})
    assert len(got) == len(expected) == 9
    for new, old in zip(got, expected):
        assert list(new)[:len(old)] == list(old)  # the same fields in the same order, new ones after them
        assert {key: new[key] for key in old} == old  # floats compared exactly
        assert set(new) - set(old) <= ADDED_SINCE
