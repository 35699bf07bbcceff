"""``SJR_REQUIRE_GPU=1`` turns the skip of a gpu test into a failure (run here, where every gpu test skips)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.cuda_cpu
REPO = Path(__file__).resolve().parents[2]
ONE_TEST = "tests/gpu/test_cupy_gpu.py::test_device_guard_keeps_current_device"
TWO_GPUS = "tests/gpu/test_cupy_gpu.py::test_device_guard_on_second_gpu"


def _pytest(env_value: str | None, *tests: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SJR_REQUIRE_GPU"}
    if env_value is not None:
        env["SJR_REQUIRE_GPU"] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or gpu2",
                           *tests], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine runs the gpu tests for real")
def test_require_gpu_turns_skips_into_failures():
    plain = _pytest(None, ONE_TEST, TWO_GPUS)
    assert plain.returncode == 0 and "2 skipped" in plain.stdout, plain.stdout[-2000:]
    required = _pytest("1", ONE_TEST, TWO_GPUS)
    assert required.returncode == 1, required.stdout[-2000:]
    assert "1 skipped, 1 error" in required.stdout, required.stdout[-2000:]  # setup skip -> error; gpu2 skips
    assert "SJR_REQUIRE_GPU=1 requires every gpu test to run" in required.stdout
    assert "no CUDA device" in required.stdout
