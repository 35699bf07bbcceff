"""The ``cupy`` backend: fused CUDA kernels for the decay-and-fire neuron, compiled by NVRTC through CuPy.

Same contract as ``backends/torch_fused.py`` (see ``backends/__init__.py``)::

    forward(x_seq[T, N, *], v0[N, *], decay[] | [C], v_threshold, store_v_seq)
        -> spike_seq (x's dtype), v_out (v_seq [T, N, *] or v_last [N, *]), h_seq [T, N, *] (state dtype)
    backward(grad_spike, grad_v_out, h_seq, v0, decay, v_threshold, surrogate_id, alpha,
             detach_reset, store_v_seq, need_decay_grad) -> grad_x, grad_v0, grad_decay

Inputs are CUDA tensors of dtype float32/float16/bfloat16 (state float32) or float64 (state float64).
The kernels (``decay_fire.cu``, ``surrogates.cuh``) run one thread per neuron (or per 4 neurons on the
vectorised path) looping over T, forward and backward; see ``docs/cuda_backend.md``.

This package imports without CuPy (CI has none): ``forward``/``backward`` raise ``ImportError`` with the
install command when CuPy is missing, ``ValueError`` for CPU tensors, ``TypeError`` for other dtypes.
"""

from __future__ import annotations

from types import ModuleType

from torch import Tensor

from .runner import kernel_dtype, run_backward, run_forward

__all__ = ["forward", "backward", "load_launcher"]

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
    x_seq: Tensor, v0: Tensor, decay: Tensor, v_threshold: float, store_v_seq: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused forward on the GPU: ``(spike_seq, v_seq if store_v_seq else v_last, h_seq)``."""
    _check_cuda(x_seq, "x_seq")
    return run_forward(x_seq, v0, decay, v_threshold, store_v_seq, load_launcher().launch)


def backward(
    grad_spike: Tensor,
    grad_v_out: Tensor,
    h_seq: Tensor,
    v0: Tensor,
    decay: Tensor,
    v_threshold: float,
    surrogate_id: int,
    alpha: float,
    detach_reset: bool,
    store_v_seq: bool,
    need_decay_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused BPTT on the GPU: ``(grad_x, grad_v0, grad_decay)`` (see ``runner.run_backward``)."""
    _check_cuda(grad_spike, "grad_spike")
    return run_backward(
        grad_spike,
        grad_v_out,
        h_seq,
        v0,
        decay,
        v_threshold,
        surrogate_id,
        alpha,
        detach_reset,
        store_v_seq,
        need_decay_grad,
        load_launcher().launch,
    )
