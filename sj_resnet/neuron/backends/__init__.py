"""Fused backends of the decay-and-fire neuron, all implementing one contract.

A backend is a module with two functions (see ``torch_fused.py`` for the reference docstrings)::

    forward(x_seq[T, N, *], v0[N, *], decay[] | [C], v_threshold, store_v_seq)
        -> spike_seq[T, N, *] (x's dtype), v_out (v_seq[T, N, *] or v_last[N, *]), h_seq[T, N, *]
    backward(grad_spike, grad_v_out, h_seq, v0, decay, v_threshold, surrogate_id, alpha,
             detach_reset, store_v_seq, need_decay_grad) -> grad_x, grad_v0, grad_decay

``v0``, ``decay``, ``h_seq`` and ``v_out`` are in the state dtype (float32, or float64 for float64 inputs).
Nothing outside this package knows how a backend works; ``ops.py`` picks one by name. Adding a backend
is one module here, one entry in ``FUSED_BACKENDS``, and one line in the parametrised backend tests.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FUSED_BACKENDS = ("torch", "cupy")
ALL_BACKENDS = ("auto", "reference", *FUSED_BACKENDS)
_MODULES = {"torch": ".torch_fused", "cupy": ".cupy"}


def get_backend(name: str) -> ModuleType:
    """The module implementing fused backend ``name`` (imported on first use)."""
    if name not in _MODULES:
        raise ValueError(f"unknown fused backend {name!r}; choose one of {FUSED_BACKENDS}")
    return importlib.import_module(_MODULES[name], __name__)


def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device (the ``cupy`` backend can run)."""
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    import torch

    return torch.cuda.is_available()
