"""CuPy launcher: compiles ``decay_fire.cu`` with NVRTC on first use and launches on PyTorch's stream.

Modules are cached per ``(device, instantiation group)``; a group is one forward (dtype: every save kind) or
one backward (dtype, surrogate, detach_reset, saved kind), each holding its scalar and vector kernels. CuPy
also keeps the compiled binary on disk (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``); the source hash
is one of the options, so an edited header invalidates it. The ``-I`` directory of ``cuda_fp16.h`` /
``cuda_bf16.h`` is the one matching the NVRTC version CuPy loaded (``launch_plans.pick_include_dir``). A
launch runs under a device guard for the tensor's device (torch's and CuPy's), on
``torch.cuda.current_stream(device)``, with raw pointers: no host synchronisation, no copies.

Importing this module imports CuPy; ``backends/cupy/__init__.py`` turns a failure into an install hint.
"""

from __future__ import annotations

import functools
import threading

import cupy
import numpy as np
import torch

from . import launch_plans
from .launch_plans import Launch

_NUMPY_OF_KIND = {"ptr": np.uint64, "f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64}
_modules: dict[tuple[int, tuple[str, ...]], cupy.RawModule] = {}
_functions: dict[tuple[int, str], object] = {}
_lock = threading.Lock()


@functools.cache
def nvrtc_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the NVRTC CuPy loads, None when CuPy cannot say."""
    try:
        major, minor = cupy.cuda.nvrtc.getVersion()
    except Exception:
        return None
    return int(major), int(minor)


def _function(device_index: int, plan: Launch):
    """The compiled kernel ``plan.name`` on device ``device_index`` (compiled and loaded on first use)."""
    key = (device_index, plan.name)
    fn = _functions.get(key)
    if fn is None:
        with _lock:
            mkey = (device_index, plan.module)
            module = _modules.get(mkey)
            if module is None:
                module = cupy.RawModule(
                    code=launch_plans.read_source(),
                    options=launch_plans.compile_options(nvrtc_version()),
                    name_expressions=list(plan.module),
                )
                _modules[mkey] = module
            fn = module.get_function(plan.name)
            _functions[key] = fn
    return fn


def _external_stream(device_index: int) -> cupy.cuda.ExternalStream:
    ptr = torch.cuda.current_stream(device_index).cuda_stream
    try:
        return cupy.cuda.ExternalStream(ptr, device_index)
    except TypeError:  # CuPy < 12 has no device_id argument
        return cupy.cuda.ExternalStream(ptr)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def launch(plan: Launch, device: torch.device) -> None:
    """Launch ``plan`` on ``device`` (a CUDA device) on PyTorch's current stream of that device."""
    index = _index(device)
    args = tuple(_NUMPY_OF_KIND[kind](value) for kind, value in plan.args)
    with torch.cuda.device(index), cupy.cuda.Device(index):
        fn = _function(index, plan)
        with _external_stream(index):
            fn((plan.grid,), (plan.block,), args)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (the vector-width rule of ``launch_plans.choose_vec``)."""
    return _sm_count(_index(device))
