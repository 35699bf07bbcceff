"""The torch side of the ``cupy`` backend: checks, allocation, vector-path choice, launch plans, reductions.

``run_forward`` / ``run_backward`` implement the backend contract given a ``launch(plan, device)`` function.
On a GPU that is ``launcher.launch`` (CuPy); the CPU tests pass a function that runs the same kernel text
compiled for the host, so everything here is exercised in CI without a GPU.

Geometry: ``x_seq`` is ``[T, N, *]`` with ``n = N * prod(*)`` neurons per step; for per-channel decay
(``decay`` of shape ``[C]``, channel = dim 2 of ``x_seq``) ``inner = prod(x_seq.shape[3:])``.
The decay gradient comes back from the kernel as one partial sum per thread (``V`` neurons of one channel);
here it is summed (per layer) or viewed as ``[N, C, inner / V]`` and summed over dims 0 and 2 (per channel).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import kernels
from .kernels import Launch

LaunchFn = Callable[[Launch, torch.device], None]


def kernel_dtype(dtype: torch.dtype) -> str:
    """The kernel table's name of ``dtype``; ``TypeError`` for dtypes without a kernel."""
    name = str(dtype).removeprefix("torch.")
    if name not in kernels.DTYPES:
        raise TypeError(
            f"backend='cupy' has kernels for float32/float16/bfloat16/float64 inputs, got {dtype}; "
            "convert the input (e.g. x.float()) or use backend='torch'"
        )
    return name


def _state_dtype(dt: str) -> torch.dtype:
    return torch.float64 if kernels.DTYPES[dt].state_ctype == "double" else torch.float32


def _expect(t: Tensor, dtype: torch.dtype, what: str) -> None:
    if t.dtype != dtype:
        raise TypeError(f"backend='cupy': {what} must be {dtype} (the state dtype), got {t.dtype}")


def _geometry(x_shape: torch.Size, decay: Tensor) -> tuple[int, int, int, int]:
    """``(T, n, inner, channels)`` of a ``[T, N, *]`` sequence and a 0-d / ``[C]`` decay."""
    T = x_shape[0]
    n = math.prod(x_shape[1:])
    channels = decay.numel() if decay.dim() == 1 else 1
    if decay.dim() > 1 or (decay.dim() == 1 and (len(x_shape) < 3 or x_shape[2] != channels)):
        raise ValueError(f"decay of shape {tuple(decay.shape)} does not fit x_seq of shape {tuple(x_shape)}")
    inner = math.prod(x_shape[3:]) if channels > 1 else 1
    return T, n, inner, channels


def _ptrs(*tensors: Tensor) -> list[tuple[int, int]]:
    return [(t.data_ptr(), t.element_size()) for t in tensors]


def run_forward(
    x_seq: Tensor, v0: Tensor, decay: Tensor, v_threshold: float, store_v_seq: bool, launch: LaunchFn
) -> tuple[Tensor, Tensor, Tensor]:
    """The contract's ``forward``: ``(spike_seq, v_seq or v_last, h_seq)``; see ``backends/torch_fused.py``."""
    dt = kernel_dtype(x_seq.dtype)
    sdt = _state_dtype(dt)
    _expect(v0, sdt, "v0")
    _expect(decay, sdt, "decay")
    if tuple(v0.shape) != tuple(x_seq.shape[1:]):
        raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected one step of x_seq: {tuple(x_seq.shape[1:])}")
    T, n, inner, channels = _geometry(x_seq.shape, decay)
    x = x_seq.contiguous()
    v0c = v0.contiguous()
    dc = decay.contiguous()
    dev = x.device
    spike = torch.empty(x.shape, dtype=x.dtype, device=dev)
    h_seq = torch.empty(x.shape, dtype=sdt, device=dev)
    v_out = torch.empty(x.shape if store_v_seq else x.shape[1:], dtype=sdt, device=dev)
    if n == 0 or T == 0:
        return spike, v_out, h_seq
    vec = kernels.choose_vec(dt, n, inner, channels, _ptrs(x, v0c, spike, h_seq, v_out))
    plan = kernels.forward_launch(
        dt,
        vec,
        store_v_seq,
        x=x.data_ptr(),
        v0=v0c.data_ptr(),
        decay=dc.data_ptr(),
        spike=spike.data_ptr(),
        h_seq=h_seq.data_ptr(),
        v_out=v_out.data_ptr(),
        v_threshold=v_threshold,
        n=n,
        T=T,
        inner=inner,
        channels=channels,
    )
    launch(plan, dev)
    return spike, v_out, h_seq


def run_backward(
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
    launch: LaunchFn,
) -> tuple[Tensor, Tensor, Tensor]:
    """The contract's ``backward``: ``(grad_x in grad_spike's dtype, grad_v0, grad_decay shaped like decay)``."""
    dt = kernel_dtype(grad_spike.dtype)
    sdt = _state_dtype(dt)
    for t, what in ((grad_v_out, "grad_v_out"), (h_seq, "h_seq"), (v0, "v0"), (decay, "decay")):
        _expect(t, sdt, what)
    if surrogate_id not in kernels.SURROGATE_IDS:
        raise ValueError(f"unknown surrogate id {surrogate_id}; the kernels know {kernels.SURROGATE_IDS}")
    if grad_spike.shape != h_seq.shape:
        raise ValueError(f"grad_spike {tuple(grad_spike.shape)} and h_seq {tuple(h_seq.shape)} differ in shape")
    expected_gv = h_seq.shape if store_v_seq else h_seq.shape[1:]
    if grad_v_out.shape != expected_gv:
        raise ValueError(f"grad_v_out has shape {tuple(grad_v_out.shape)}, expected {tuple(expected_gv)}")
    T, n, inner, channels = _geometry(h_seq.shape, decay)
    gs = grad_spike.contiguous()
    gv = grad_v_out.contiguous()
    h = h_seq.contiguous()
    v0c = v0.contiguous()
    dc = decay.contiguous()
    dev = h.device
    grad_x = torch.empty(gs.shape, dtype=gs.dtype, device=dev)
    grad_v0 = torch.empty(v0c.shape, dtype=sdt, device=dev)
    if n == 0 or T == 0:
        return grad_x, grad_v0.zero_(), torch.zeros_like(decay)
    vec = kernels.choose_vec(dt, n, inner, channels, _ptrs(gs, gv, h, v0c, grad_x, grad_v0))
    partial = torch.empty(math.ceil(n / vec), dtype=sdt, device=dev) if need_decay_grad else None
    plan = kernels.backward_launch(
        dt,
        vec,
        int(surrogate_id),
        bool(detach_reset),
        bool(store_v_seq),
        grad_spike=gs.data_ptr(),
        grad_v=gv.data_ptr(),
        h_seq=h.data_ptr(),
        v0=v0c.data_ptr(),
        decay=dc.data_ptr(),
        grad_x=grad_x.data_ptr(),
        grad_v0=grad_v0.data_ptr(),
        decay_partial=0 if partial is None else partial.data_ptr(),
        v_threshold=v_threshold,
        alpha=alpha,
        n=n,
        T=T,
        inner=inner,
        channels=channels,
    )
    launch(plan, dev)
    if partial is None:
        grad_decay = torch.zeros_like(decay)
    elif channels > 1:
        grad_decay = partial.view(h.shape[1], channels, inner // vec).sum(dim=(0, 2))
    else:
        grad_decay = partial.sum().reshape(decay.shape)
    return grad_x, grad_v0, grad_decay
