"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, the previous count restored after it. The tiny tensors of the
    model, training and benchmark tests gain nothing from threads, and on a busy 2-core machine OpenMP's waiting
    made each small conv ~100x slower (measured 30 ms vs 0.15 ms). Directories opt in with an autouse fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
