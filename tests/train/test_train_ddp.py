"""DDP on CPU: torchrun (standalone rendezvous), 2 processes, gloo, FakeData."""

from __future__ import annotations

import csv
import json

from train_helpers import run_module


def test_torchrun_two_cpu_processes(tmp_path):
    run = tmp_path / "run"
    proc = run_module(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "sj_resnet", "train", "--dataset", "fake", "--fake-size", "64", "--width", "8", "--T", "2",
        "--batch-size", "8", "--epochs", "5", "--opt", "adam", "--lr", "5e-3",
        "--no-tensorboard", "--no-plot", "-o", run,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    # rank-0 logging only: one header and one line per epoch
    assert proc.stdout.count("sj-resnet train  ->") == 1
    assert proc.stdout.count("epoch   1/5") == 1
    assert "batch 8 x 2 process(es), 5 epochs x 4 steps" in proc.stdout  # 64 samples / (8 x 2) per step
    assert "replicas in sync across 2 processes: yes" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    with open(run / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
