"""GPU tests: collected everywhere, skipped unless a CUDA device and a working CuPy stack are both present.

``SJR_REQUIRE_GPU=1`` (set by ``benchmarks/gpu_check.sh``) turns every skip of a ``gpu``-marked test, in this
directory or anywhere else in the run, into a failure naming the skip reason: a GPU check cannot pass by
skipping. Tests that need more than one GPU carry the ``gpu2`` marker instead and may still skip.
"""

from __future__ import annotations

import os

import pytest
import torch

REQUIRE_ENV = "SJR_REQUIRE_GPU"


def _gpu_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from sj_resnet.neuron.backends import cupy as cupy_backend

    return cupy_backend.probe(torch.device("cuda", torch.cuda.current_device()))


class RequireGpu:
    """Reports a skipped ``gpu`` test as failed (registered as a plugin, so it sees every test of the run)."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.skipped and item.get_closest_marker("gpu") and not item.get_closest_marker("gpu2"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid} was skipped ({reason}) but {REQUIRE_ENV}=1 requires every gpu test to run"


def pytest_configure(config):
    if os.environ.get(REQUIRE_ENV) == "1" and not config.pluginmanager.has_plugin("sjr-require-gpu"):
        config.pluginmanager.register(RequireGpu(), "sjr-require-gpu")


def pytest_collection_modifyitems(config, items):
    reason = _gpu_missing()
    if reason is None:
        return
    skip = pytest.mark.skip(
        reason=f"needs a CUDA GPU and a working CuPy ({reason}); "
        'pip install "sj-resnet[cuda12]" or "sj-resnet[cuda13]"'
    )
    here = str(config.rootpath / "tests" / "gpu")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)
