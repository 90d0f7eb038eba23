"""growbatch.batching.allocator: freed large blocks stay in the process (checked through RSS, in fresh processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys, torch
from growbatch.batching.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tune" else False

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

before = rss_mb()
block = torch.ones(200 * 2**20 // 4)  # 200 MB, written
del block
print(applied, round(rss_mb() - before))
"""


def _child(mode: str, env: dict | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env)
    applied, kept = out.stdout.split()
    return applied == "True", int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_tuning_keeps_a_freed_200_mb_block_and_the_default_returns_it() -> None:
    applied, kept = _child("tune")
    assert applied and kept >= 190  # the pages stay for the next batch
    applied, returned = _child("default")
    assert not applied and returned < 20  # glibc unmapped the block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_the_environment_switch_and_users_own_settings_win() -> None:
    import os

    for extra in ({"GROWBATCH_MALLOC_TUNING": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        applied, kept = _child("tune", {**os.environ, **extra})
        assert not applied and kept < 20


def test_a_tensor_loader_on_the_cpu_turns_it_on() -> None:
    code = ("import torch, growbatch.batching.allocator as a; from growbatch import TensorLoader;"
            "TensorLoader(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2);"
            "print(a._applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")
