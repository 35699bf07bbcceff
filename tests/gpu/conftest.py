"""GPU tests: collected everywhere, skipped unless a CUDA device and CuPy are both present."""

from __future__ import annotations

import pytest
import torch

from sj_resnet.neuron.backends import cupy_available


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and cupy_available():
        return
    reason = "needs a CUDA GPU and CuPy (pip install \"sj-resnet[cuda12]\" or \"sj-resnet[cuda13]\")"
    skip = pytest.mark.skip(reason=reason)
    here = str(config.rootpath / "tests" / "gpu")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)
