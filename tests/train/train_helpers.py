"""Helpers for the training-CLI tests: in-process CLI calls (fast) and subprocess runs (signals, torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# A tiny, fast configuration: width 4, T 2, a few batches per epoch.
TINY = ["--width", "4", "--T", "2", "--threads", "1", "--no-tensorboard", "--no-plot"]


def cli(*args: str) -> int:
    """Run ``sj-resnet ARGS`` in this process; returns the exit status."""
    from sj_resnet.cli import main

    return main([str(a) for a in args])


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_module(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m ARGS`` in a fresh interpreter, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", *[str(a) for a in args]], cwd=cwd or REPO, env=subprocess_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
