"""The host build of the kernels under -fsanitize=address,undefined: no out-of-bounds access, no UB.

The library is loaded into a child Python with libasan preloaded (ASan must come first in the process);
a planted one-past-the-end launch must be caught, so a silent sanitizer cannot pass this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kernel_host
import pytest

from sj_resnet.neuron.backends.cupy import launch_plans

pytestmark = pytest.mark.cuda_cpu
DRIVER = Path(__file__).resolve().parent / "sanitize_driver.py"
SANITIZED_DTYPES = ("float32", "float16")
SANITIZED_SURROGATES = (0, 2, 7)  # Rect, ATan, Erf (the driver runs these)


def _runtime(name: str) -> str | None:
    try:
        out = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="module")
def asan_lib(kernel_build_dir) -> Path:
    if _runtime("libasan.so") is None:
        kernel_host.missing_tool("g++ has no AddressSanitizer runtime (libasan)")
    names = [
        n for n in launch_plans.all_name_expressions(SANITIZED_DTYPES)
        if "forward" in n or int(n.split("<")[1].split(",")[2]) in SANITIZED_SURROGATES
    ]
    return kernel_host.build_host_library(names, kernel_build_dir / "asan", sanitize=True)


def _run(lib: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["LD_PRELOAD"] = _runtime("libasan.so")
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(DRIVER), str(lib), *extra], capture_output=True, text=True,
                          env=env, timeout=600)


def test_kernels_clean_under_asan_ubsan(asan_lib):
    proc = _run(asan_lib)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "sanitized backward runs: 288" in proc.stdout
    assert "vector-path launches: 0" not in proc.stdout
    assert "runtime error" not in proc.stderr  # UBSan


def test_planted_overflow_is_caught(asan_lib):
    proc = _run(asan_lib, "--plant")
    assert proc.returncode != 0
    assert "heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
