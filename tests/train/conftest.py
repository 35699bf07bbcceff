"""Fixtures of the training-CLI tests (helpers live in train_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every training test runs on one torch thread (``one_torch_thread`` in tests/conftest.py)."""
