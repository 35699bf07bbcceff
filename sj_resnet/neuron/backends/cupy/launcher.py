"""CuPy launcher: compiles ``decay_fire.cu`` with NVRTC on first use and launches on PyTorch's stream.

Modules are cached per ``(device, instantiation group)``; a group is one forward (dtype, store_v_seq) or one
backward (dtype, surrogate, detach_reset, store_v_seq), each holding its scalar and vector kernel. CuPy also
keeps the compiled binary on disk (``~/.cupy/kernel_cache``); the source hash is one of the options, so an
edited header invalidates it. A launch runs under a device guard for the tensor's device (torch's and
CuPy's), on ``torch.cuda.current_stream(device)``, with raw pointers: no host synchronisation, no copies.

Importing this module imports CuPy; ``backends/cupy/__init__.py`` turns a failure into an install hint.
"""

from __future__ import annotations

import threading

import cupy
import numpy as np
import torch

from . import kernels
from .kernels import Launch

_NUMPY_OF_KIND = {"ptr": np.uint64, "f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64}
_modules: dict[tuple[int, tuple[str, ...]], cupy.RawModule] = {}
_functions: dict[tuple[int, str], object] = {}
_lock = threading.Lock()


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
                    code=kernels.read_source(),
                    options=kernels.compile_options(),
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


def launch(plan: Launch, device: torch.device) -> None:
    """Launch ``plan`` on ``device`` (a CUDA device) on PyTorch's current stream of that device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    args = tuple(_NUMPY_OF_KIND[kind](value) for kind, value in plan.args)
    with torch.cuda.device(index), cupy.cuda.Device(index):
        fn = _function(index, plan)
        with _external_stream(index):
            fn((plan.grid,), (plan.block,), args)
