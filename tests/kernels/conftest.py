"""Session fixtures of the CPU-side CUDA checks: one build directory, one host build of every kernel.

Set ``SJR_KERNEL_BUILD_DIR`` to keep builds between pytest runs (they are keyed by a hash of the sources
and flags); by default they go to pytest's per-session temporary directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import kernel_host
import pytest

from sj_resnet.neuron.backends.cupy import launch_plans

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:  # ``benchmarks.gpu`` (test_gpu_check_dry) is importable under plain ``pytest`` too
    sys.path.insert(0, _REPO)


@pytest.fixture(scope="session")
def kernel_build_dir(tmp_path_factory) -> Path:
    env = os.environ.get("SJR_KERNEL_BUILD_DIR")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("sjr_kernels")


@pytest.fixture(scope="session")
def host_kernels(kernel_build_dir) -> kernel_host.HostKernels:
    """Every shipped instantiation compiled for the host (g++ + host_shim.cuh)."""
    if shutil.which("g++") is None:
        kernel_host.missing_tool("g++ not found: the host-shim kernel tests need a host C++ compiler")
    names = launch_plans.all_name_expressions()
    lib = kernel_host.build_host_library(names, kernel_build_dir)
    return kernel_host.HostKernels(lib, names)
