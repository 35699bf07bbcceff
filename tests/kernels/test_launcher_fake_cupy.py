"""``launcher.py`` against a stand-in CuPy: what it compiles, where and how it launches (no GPU needed).

Checks the calls the real CuPy receives: one ``RawModule`` per cache unit with the shared options (headers chosen
for the NVRTC version CuPy reports) and name expressions, device guards for the tensor's device, the launch inside
an ``ExternalStream`` wrapping PyTorch's current stream of that device, and typed scalar arguments.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

import numpy as np
import pytest
import torch

import sj_resnet.neuron.backends.cupy as cupy_pkg
from sj_resnet.neuron.backends.cupy import launch_plans
from sj_resnet.neuron.backends.cupy.launch_plans import GradIn

pytestmark = pytest.mark.cuda_cpu
LAUNCHER = "sj_resnet.neuron.backends.cupy.launcher"


def _fake_cupy(log: dict) -> types.ModuleType:
    state = {"stream": None, "device": None}

    class Fn:
        def __call__(self, grid, block, args, **kwargs):
            log["launches"].append((grid, block, args, state["stream"], state["device"]))

    class RawModule:
        def __init__(self, code, options, name_expressions):
            log["modules"].append((code, tuple(options), tuple(name_expressions)))

        def get_function(self, name):
            log["functions"].append(name)
            return Fn()

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            self.prev, state["device"] = state["device"], self.index

        def __exit__(self, *exc):
            state["device"] = self.prev

    class ExternalStream:
        def __init__(self, ptr, device_id=-1):
            self.ptr, self.device_id = ptr, device_id

        def __enter__(self):
            self.prev, state["stream"] = state["stream"], (self.ptr, self.device_id)

        def __exit__(self, *exc):
            state["stream"] = self.prev

    fake = types.ModuleType("cupy")
    fake.RawModule = RawModule
    fake.cuda = types.SimpleNamespace(Device=Device, ExternalStream=ExternalStream,
                                      nvrtc=types.SimpleNamespace(getVersion=lambda: (13, 0)))
    return fake


@pytest.fixture
def launcher(monkeypatch):
    log = {"modules": [], "functions": [], "launches": [], "torch_device": []}
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    sys.modules.pop(LAUNCHER, None)

    @contextlib.contextmanager
    def torch_device(index):
        log["torch_device"].append(index)
        yield

    monkeypatch.setattr(torch.cuda, "device", torch_device)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index: types.SimpleNamespace(cuda_stream=7000 + index))
    try:
        yield importlib.import_module(LAUNCHER), log
    finally:  # never leave the stand-in behind for other tests
        sys.modules.pop(LAUNCHER, None)
        if hasattr(cupy_pkg, "launcher"):
            delattr(cupy_pkg, "launcher")


def test_launch_goes_through_cupy_as_documented(launcher):
    mod, log = launcher
    plan = launch_plans.forward_launch(
        "bfloat16", 4, launch_plans.SAVE_HALF, x=4096, v0=0, decay=64, spike=12288, saved=16384, v_out=20480,
        v_threshold=0.5, n=4 * launch_plans.BLOCK + 8, T=3, channel_stride=1, channels=1, v_every_step=True,
    )
    mod.launch(plan, torch.device("cuda", 1))
    mod.launch(plan, torch.device("cuda", 1))
    options = launch_plans.compile_options((13, 0))  # the headers of the NVRTC CuPy reports
    assert log["modules"] == [(launch_plans.read_source(), options, plan.module)]  # compiled once
    assert log["functions"] == [plan.name] and plan.name in plan.module
    assert log["torch_device"] == [1, 1]
    (grid, block, args, stream, device), _ = log["launches"]
    assert grid == (2,) and block == (launch_plans.BLOCK,)
    assert stream == (7001, 1) and device == 1  # PyTorch's stream of cuda:1, under CuPy's guard for cuda:1
    assert [type(a) for a in args] == [np.uint64] * 6 + [np.float32, np.int64, np.int32, np.int64, np.int32, np.int32]
    assert int(args[0]) == 4096 and int(args[1]) == 0 and float(args[6]) == 0.5  # v0 = nullptr: zero state

    back = launch_plans.backward_launch(
        "float64", 1, 3, True, False, grad_spike=GradIn(1, 0, 0), grad_v=GradIn(), gv_every_step=False, saved=3,
        v0=0, decay=5, grad_x=6, grad_v0=0, decay_partial=0, v_threshold=1.0, alpha=2.0, n=10, T=2,
        channel_stride=1, channels=1,
    )
    mod.launch(back, torch.device("cuda", 0))
    assert len(log["modules"]) == 2 and log["modules"][1][2] == back.module
    args = log["launches"][-1][2]
    assert [type(a) for a in args[13:15]] == [np.float64, np.float64]  # float64 kernels take double scalars
    assert [int(args[back.arg_names.index(k)]) for k in ("grad_v", "grad_v0", "decay_partial", "gs_nstride")] == [
        0, 0, 0, 0]  # absent gradient, unneeded grad_v0 and decay gradient: null pointers; an expanded grad_spike
