"""The default run, on a reduced budget: real data, real learning (marker ``slow``; still run in CI)."""

from __future__ import annotations

import json

import pytest
from train_helpers import cli


@pytest.mark.slow
def test_default_digits_recipe_learns(tmp_path):
    """The default recipe with fewer epochs reaches >= 90 % test accuracy on the fixed digits split."""
    run = tmp_path / "run"
    assert cli("train", "--epochs", "8", "--no-tensorboard", "--no-plot", "-o", run) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"] == "resnet18_cifar" and summary["config"]["dataset"] == "digits"
    assert summary["final"]["test_acc1"] >= 0.90, summary["final"]
    assert 0.0 < summary["final"]["train_firing"] < 0.5
