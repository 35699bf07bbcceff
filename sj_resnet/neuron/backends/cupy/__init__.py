"""The ``cupy`` backend: fused CUDA kernels for the decay-and-fire neuron, compiled by NVRTC through CuPy.

The backend contract (``backends/__init__.py``), natively::

    forward(x_seq, v0 | None, decay, p: DecayFireParams, needs_grad) -> (spike_seq, v_out, saved | None)
    backward(grad_spike | None, grad_v_out | None, saved, v0 | None, decay, p, need_grad_v0, need_grad_decay)
        -> (grad_x, grad_v0 | None, grad_decay | None)

Inputs are CUDA tensors of dtype float32/float16/bfloat16 (state float32) or float64 (state float64) in any
dense layout. One kernel launch per call; ``None`` is a null pointer, never a zero tensor. See
``docs/cuda_backend.md`` (kernels: ``decay_fire.cu``, ``surrogates.cuh``; plans: ``launch_plans.py``; the torch
side: ``contract.py``; the byte formula: ``traffic.py``; CuPy: ``launcher.py``).

This package imports without CuPy (CI has none): ``forward``/``backward`` raise ``ImportError`` with the
install command when CuPy is missing, ``ValueError`` for CPU tensors, ``TypeError`` for other dtypes.
``probe(device)`` says whether the backend works on a device (compile + a tiny launch, cached); ``usable``
is what the op's backend choice calls.
"""

from __future__ import annotations

import threading
import warnings
from types import ModuleType

import torch
from torch import Tensor

from ...params import DecayFireParams
from .contract import Launcher, kernel_dtype, run_backward, run_forward

__all__ = ["forward", "backward", "load_launcher", "probe", "run_probe", "usable"]

INSTALL_HINT = (
    'pip install "sj-resnet[cuda12]" (CUDA 12.x) or pip install "sj-resnet[cuda13]" (CUDA 13.x), '
    "matching the CUDA version of your PyTorch build (torch.version.cuda)"
)


def load_launcher() -> ModuleType:
    """The CuPy launcher module; ``ImportError`` naming the extra to install when CuPy is missing."""
    try:
        from . import launcher
    except ImportError as exc:
        raise ImportError(
            f"backend='cupy' needs CuPy, which could not be imported ({exc}). Install it with: {INSTALL_HINT}; "
            "or use backend='torch' / backend='auto'"
        ) from exc
    return launcher


def _check_cuda(t: Tensor, what: str) -> None:
    kernel_dtype(t.dtype)
    if not t.is_cuda:
        raise ValueError(
            f"backend='cupy' needs CUDA tensors, got {what} on {t.device}; move the model and data to a GPU "
            "(.cuda()) or use backend='torch' (or 'auto')"
        )


def forward(
    x_seq: Tensor, v0: Tensor | None, decay: Tensor, p: DecayFireParams, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fused forward on the GPU: ``(spike_seq, v_seq if p.store_v_seq else v_last, saved or None)``."""
    _check_cuda(x_seq, "x_seq")
    return run_forward(x_seq, v0, decay, p, needs_grad, load_launcher())


def backward(
    grad_spike: Tensor | None,
    grad_v_out: Tensor | None,
    saved: Tensor,
    v0: Tensor | None,
    decay: Tensor,
    p: DecayFireParams,
    need_grad_v0: bool,
    need_grad_decay: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Fused BPTT on the GPU: ``(grad_x, grad_v0 or None, grad_decay or None)`` (``contract.run_backward``)."""
    _check_cuda(saved if grad_spike is None else grad_spike, "grad_spike")
    return run_backward(grad_spike, grad_v_out, saved, v0, decay, p, need_grad_v0, need_grad_decay, load_launcher())


# --------------------------------------------------------------------------------------------------
# Does the backend work on this device? (compile + a tiny launch, once per device)
# --------------------------------------------------------------------------------------------------

_PROBE_PARAMS = DecayFireParams(v_threshold=0.5, surrogate_id=0, alpha=1.0, detach_reset=False, store_v_seq=False)
_probe_results: dict[str, str | None] = {}
_warned: set[str] = set()
_probe_lock = threading.Lock()


def run_probe(device: torch.device, launcher: Launcher) -> str | None:
    """Run one tiny forward (T=3, 8 neurons, float32) with ``launcher`` on ``device`` and check its spikes and
    ``v_last`` against plain torch. Returns None when it works, else the reason (never raises)."""
    try:
        x = torch.tensor([[0.25, 0.5, 0.75, 1.0] * 2, [0.25] * 8, [0.5, 0.0, -0.5, 0.25] * 2])
        v = torch.zeros(8)
        want_s = []
        for t in range(3):
            h = 0.5 * v + x[t]
            s = (h >= 0.5).float()
            want_s.append(s)
            v = h * (1 - s)
        decay = torch.tensor(0.5, device=device)
        spike, v_last, _ = run_forward(x.to(device), None, decay, _PROBE_PARAMS, False, launcher)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not (torch.equal(spike.cpu(), torch.stack(want_s)) and torch.equal(v_last.cpu(), v)):
            return "the probe launch returned wrong values (a broken CUDA/CuPy stack?)"
    except Exception as exc:  # any failure of the stack is the answer, not an error of the caller
        return f"{type(exc).__name__}: {exc}"
    return None


def probe(device: torch.device | str) -> str | None:
    """None when the ``cupy`` backend compiles and launches on ``device``, else the reason; cached per device."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"backend='cupy' needs a CUDA device, got {device}"
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    with _probe_lock:
        if key not in _probe_results:
            try:
                launcher = load_launcher()
            except ImportError as exc:
                _probe_results[key] = str(exc)
            else:
                _probe_results[key] = run_probe(device, launcher)
        return _probe_results[key]


def usable(device: torch.device | str, explicit: bool = False) -> bool:
    """What the op's backend choice calls: True when ``probe(device)`` passed. Otherwise ``explicit``
    (``backend='cupy'``) raises ``RuntimeError`` with the reason, and ``'auto'`` warns once per device and
    returns False (the caller uses ``torch``)."""
    reason = probe(device)
    if reason is None:
        return True
    if explicit:
        raise RuntimeError(f"backend='cupy' cannot run on {device}: {reason}")
    if str(device) not in _warned:
        _warned.add(str(device))
        warnings.warn(f"backend='auto': the cupy backend does not work on {device} ({reason}); using 'torch'",
                      RuntimeWarning, stacklevel=3)
    return False
