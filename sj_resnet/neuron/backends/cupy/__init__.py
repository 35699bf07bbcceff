"""The ``cupy`` backend: fused CUDA kernels for the decay-and-fire neuron, compiled by NVRTC through CuPy.

Same contract as ``backends/torch_fused.py`` (see ``backends/__init__.py``); ``forward``/``backward`` below
adapt it onto ``runner.run_forward`` / ``run_backward``, which still take the kernels' positional arguments.

Inputs are CUDA tensors of dtype float32/float16/bfloat16 (state float32) or float64 (state float64).
The kernels (``decay_fire.cu``, ``surrogates.cuh``) run one thread per neuron (or per 4 neurons on the
vectorised path) looping over T, forward and backward; see ``docs/cuda_backend.md``.

This package imports without CuPy (CI has none): ``forward``/``backward`` raise ``ImportError`` with the
install command when CuPy is missing, ``ValueError`` for CPU tensors, ``TypeError`` for other dtypes.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from ...params import DecayFireParams
from .runner import LaunchFn, kernel_dtype, run_backward, run_forward

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
    x_seq: Tensor, v0: Tensor | None, decay: Tensor, p: DecayFireParams, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fused forward on the GPU: ``(spike_seq, v_seq if p.store_v_seq else v_last, saved or None)``."""
    _check_cuda(x_seq, "x_seq")
    return forward_with(load_launcher().launch, x_seq, v0, decay, p, needs_grad)


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
    """Fused BPTT on the GPU: ``(grad_x, grad_v0 or None, grad_decay or None)`` (see ``runner.run_backward``)."""
    _check_cuda(saved if grad_spike is None else grad_spike, "grad_spike")
    return backward_with(load_launcher().launch, grad_spike, grad_v_out, saved, v0, decay, p, need_grad_v0,
                         need_grad_decay)  # fmt: skip


def forward_with(
    launch: LaunchFn, x_seq: Tensor, v0: Tensor | None, decay: Tensor, p: DecayFireParams, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``forward`` with a given launcher (the host kernels in the CPU tests).

    Adapter from the typed contract onto ``runner.run_forward`` until the kernels take it natively: a ``None``
    state is materialised as zeros, ``saved_state='fp16'`` is converted from the kernel's ``h_seq``.
    """
    if v0 is None:
        v0 = torch.zeros(x_seq.shape[1:], dtype=decay.dtype, device=x_seq.device)
    spike, v_out, h_seq = run_forward(x_seq, v0, decay, p.v_threshold, p.store_v_seq, launch)
    if not needs_grad:
        return spike, v_out, None
    if p.saved_state == "fp16":
        return spike, v_out, (h_seq - p.v_threshold).clamp_(-65504.0, 65504.0).to(torch.float16)
    return spike, v_out, h_seq


def backward_with(
    launch: LaunchFn,
    grad_spike: Tensor | None,
    grad_v_out: Tensor | None,
    saved: Tensor,
    v0: Tensor | None,
    decay: Tensor,
    p: DecayFireParams,
    need_grad_v0: bool,
    need_grad_decay: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``backward`` with a given launcher.

    Adapter from the typed contract onto ``runner.run_backward``: absent gradients and a ``None`` state are
    materialised as zeros, a float16 ``saved`` is widened back to ``h``.
    """
    sdt = decay.dtype
    h_seq = saved.to(sdt) + p.v_threshold if p.saved_state == "fp16" else saved
    if grad_spike is None:
        grad_spike = torch.zeros(h_seq.shape, dtype=sdt, device=h_seq.device)
    if grad_v_out is None:
        grad_v_out = torch.zeros(h_seq.shape if p.store_v_seq else h_seq.shape[1:], dtype=sdt, device=h_seq.device)
    if v0 is None:
        v0 = torch.zeros(h_seq.shape[1:], dtype=sdt, device=h_seq.device)
    grad_x, grad_v0, grad_decay = run_backward(
        grad_spike,
        grad_v_out,
        h_seq,
        v0,
        decay,
        p.v_threshold,
        p.surrogate_id,
        p.alpha,
        p.detach_reset,
        p.store_v_seq,
        need_grad_decay,
        launch,
    )
    return grad_x, (grad_v0 if need_grad_v0 else None), (grad_decay if need_grad_decay else None)
