"""Fused backends of the decay-and-fire neuron, all implementing one contract.

A backend is a module with two functions (``torch_fused.py`` holds the reference docstrings); everything that is
not a tensor travels in one frozen, keyword-only ``DecayFireParams`` (``params.py``)::

    forward(x_seq[T, N, *], v0[N, *] | None, decay[] | [C], p: DecayFireParams, needs_grad: bool)
        -> spike_seq[T, N, *] (x's dtype and layout),
           v_out (v_seq[T, N, *] if p.store_v_seq else v_last[N, *]),
           saved (None unless needs_grad: h_seq in the state dtype, or h_seq - v_th as float16 when
                  p.saved_state == "fp16")
    backward(grad_spike | None, grad_v_out | None, saved, v0 | None, decay, p,
             need_grad_v0: bool, need_grad_decay: bool)
        -> grad_x (grad_spike's dtype; the state dtype when grad_spike is None),
           grad_v0 | None, grad_decay (shaped like decay) | None

``decay`` is a tensor in the state dtype (float32, or float64 for float64 inputs), so ``decay.dtype`` *is* the
state dtype; ``v0`` and ``v_out`` are in it too. ``None`` is never materialised by a backend that supports it
natively: ``v0 is None`` is the zero state (fresh after ``reset_net``), an absent gradient is ``None``, and
an unneeded ``grad_v0`` / ``grad_decay`` is neither computed nor returned. Nothing outside this package knows
how a backend works; ``ops.py`` picks one by name and is the only caller. Adding a backend is one module here,
one entry in ``choices.FUSED_BACKENDS`` (the torch-free list the CLI shows), and one line in the parametrised
backend tests.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..choices import BACKENDS, FUSED_BACKENDS

__all__ = ["BACKENDS", "FUSED_BACKENDS", "cupy_available", "get_backend"]

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
