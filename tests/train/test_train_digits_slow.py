"""The default run as the README promises it (marker ``slow``; still run in CI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import REPO, subprocess_env


@pytest.mark.slow
def test_default_digits_run_keeps_its_promise(tmp_path):
    """``sj-resnet train`` as shipped (seed 0, on 2 threads as on the README's 2-core machine) ends >= 98.5 %.

    A fresh process, so that the command sets its OpenMP wait policy before torch loads, as for a user. The
    trajectory depends on the thread count and the CPU's instruction set; seed 0 on 2 threads was measured at
    98.89 % (AVX-512) and 98.61 % (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), see
    docs/training.md, "Round 3".
    """
    run = tmp_path / "run"
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(
        [sys.executable, "-m", "sj_resnet", "train", "--threads", "2", "--no-tensorboard", "--no-plot", "-o", str(run)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eta:" in done.stdout and "OpenMP wait passive" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"] == "resnet18_cifar" and summary["config"]["dataset"] == "digits"
    assert summary["final"]["test_acc1"] >= 0.985, summary["final"]
    assert 0.0 < summary["final"]["train_firing"] < 0.5
