"""Shared fixtures for the model tests: tiny models (width 4-8, small images) keep the suite CPU-friendly."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(model)
    return model(x)


@pytest.fixture
def run():
    """``run(model, x)``: one forward from a fresh neuron state (what a training loop does per batch)."""
    return _run


@pytest.fixture(autouse=True)
def _seed_and_one_thread(one_torch_thread):
    """Fixed seed; one intra-op thread (``one_torch_thread`` in tests/conftest.py)."""
    torch.manual_seed(0)
