"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after: small steps on 2 shared cores run several times faster
    without a second OpenMP thread spinning against other processes (NOTE [threads under load])."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
