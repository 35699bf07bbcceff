"""``--eval-every K``: evaluation after every K-th and the last epoch; the other rows leave the test columns empty."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from train_helpers import TINY, cli

from sj_resnet.train.checkpoint import read
from sj_resnet.train.config import ConfigError, resolve
from sj_resnet.train.trainer import evaluates_after


def test_evaluates_every_kth_and_the_last_epoch():
    assert [e for e in range(1, 8) if evaluates_after(e, 7, 3)] == [3, 6, 7]
    assert [e for e in range(1, 5) if evaluates_after(e, 4, 1)] == [1, 2, 3, 4]
    assert [e for e in range(1, 4) if evaluates_after(e, 3, 10)] == [3]
    with pytest.raises(ConfigError, match="--eval-every"):
        resolve({"eval_every": 0})


def test_run_with_eval_every_two(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "3", "--limit-train-batches", "3", "--eval-every", "2",
               "--plot", "-o", run) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    assert "not evaluated" in lines[0] and "acc@1" in lines[1] and "acc@1" in lines[2]
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["test_acc1"] == "" for r in rows] == [True, False, False]
    assert rows[0]["train_loss"] != ""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["epoch"] == 3 and summary["final"]["test_acc1"] is not None
    assert summary["best_epoch"] in (2, 3)
    assert read(run / "best.pt", require_training_state=False)["epoch"] == summary["best_epoch"]
    assert (run / "curves.png").stat().st_size > 0


def test_evaluating_less_often_does_not_change_training(tmp_path):
    """Evaluation draws nothing from the RNG the augmentation uses: the training columns are equal bit for bit."""
    rows = {}
    for k in (1, 2):
        run = tmp_path / f"k{k}"
        assert cli("train", *TINY, "--epochs", "3", "--limit-train-batches", "3", "--eval-every", str(k),
                   "--max-rotate", "10", "-o", run) == 0
        with open(run / "metrics.csv", newline="") as f:
            rows[k] = [(r["train_loss"], r["train_acc"], r["grad_norm"]) for r in csv.DictReader(f)]
        summary = json.loads((run / "summary.json").read_text())
        rows[k].append(summary["final"]["test_acc1"])
    assert rows[1] == rows[2]


def test_optimizers_use_the_fused_implementation_on_the_cpu():
    from sj_resnet.train.schedule import build_optimizer

    w = torch.nn.Parameter(torch.randn(4, 3))
    for opt in ("sgd", "adam", "adamw"):
        assert build_optimizer([w], resolve({"opt": opt, "lr": 0.1})).defaults["fused"] is True
    # the same update as the per-parameter loop, up to rounding
    a, b = (torch.nn.Parameter(torch.ones(5, 5)) for _ in range(2))
    fused = build_optimizer([a], resolve({"opt": "adamw", "lr": 0.1, "wd": 0.05}))
    loop = torch.optim.AdamW([b], lr=0.1, weight_decay=0.05, foreach=False)
    for step in range(3):
        g = torch.randn(5, 5, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        loop.step()
    torch.testing.assert_close(a, b)
