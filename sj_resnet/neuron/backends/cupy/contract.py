"""The backend contract over a kernel launcher: checks, layouts, allocation, launch plans, the decay reduction.

``run_forward`` / ``run_backward`` implement ``forward`` / ``backward`` of the contract (``backends/__init__.py``)
given a ``launcher``: an object with ``launch(plan, device)`` and ``sm_count(device)``. On a GPU that is the
CuPy ``launcher`` module; the CPU tests pass one that runs the same kernel text compiled for the host, so
everything here is exercised without a GPU.

Layouts: a sequence ``[T, N, C, *]`` whose every step is one dense non-overlapping block (contiguous,
``channels_last``, ``channels_last_3d``, any permutation of the step's dims) is used in place; every output
is allocated with the input's strides, so it keeps the input's memory format. Anything else (a step that is not
dense, e.g. a transposed view across T) is copied once with ``.contiguous()``. Per-channel decay reads channel
``(i / stride_C) % C`` of a step's element ``i`` (per lane of a vector, so ``channels_last`` takes the vector
path too). Incoming gradients are read in place when their step
layout matches (any step stride, including 0 for a gradient expanded over T) or when a step is one expanded
value (stride 0, e.g. the ones of ``s.sum().backward()``); other layouts are copied once into the input's.
``None`` (zero state, absent gradient, unneeded ``grad_v0``/``grad_decay``) is a null pointer: no allocation,
no fill, no access.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from ...params import DecayFireParams
from . import launch_plans, traffic
from .launch_plans import GradIn, Launch


class Launcher(Protocol):
    """What the contract needs from a kernel launcher."""

    def launch(self, plan: Launch, device: torch.device) -> None: ...

    def sm_count(self, device: torch.device) -> int: ...


def kernel_dtype(dtype: torch.dtype) -> str:
    """The kernel table's name of ``dtype``; ``TypeError`` for dtypes without a kernel."""
    name = str(dtype).removeprefix("torch.")
    if name not in launch_plans.DTYPES:
        raise TypeError(
            f"backend='cupy' has kernels for float32/float16/bfloat16/float64 inputs, got {dtype}; "
            "convert the input (e.g. x.float()) or use backend='torch'"
        )
    return name


def state_dtype(dt: str) -> torch.dtype:
    """The state dtype of kernel dtype ``dt`` (float32, float64 for float64)."""
    return torch.float64 if launch_plans.DTYPES[dt].state_ctype == "double" else torch.float32


def _expect(t: Tensor, dtype: torch.dtype, what: str) -> None:
    if t.dtype != dtype:
        raise TypeError(f"backend='cupy': {what} must be {dtype}, got {t.dtype}")


def is_dense(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True when a tensor of ``shape``/``strides`` covers a dense block without overlap (any dim order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(shape, strides, strict=True) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def in_kernel_layout(x: Tensor) -> Tensor:
    """``x`` itself when every step is one dense block ``n`` elements apart, else one ``.contiguous()`` copy."""
    n = math.prod(x.shape[1:])
    if (x.shape[0] == 1 or x.stride(0) == n) and is_dense(tuple(x.shape[1:]), x.stride()[1:]):
        return x
    return x.contiguous()


def _same_step_layout(t: Tensor, step_strides: tuple[int, ...], first: int) -> bool:
    return all(sz == 1 or st == ref for sz, st, ref in zip(t.shape[first:], t.stride()[first:], step_strides,
                                                         strict=True))


def _seq_strides(ref: Tensor) -> tuple[int, ...]:
    return (math.prod(ref.shape[1:]), *ref.stride()[1:])


def _empty_seq(ref: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_strided(ref.shape, _seq_strides(ref), dtype=dtype, device=ref.device)


def _empty_step(ref: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_strided(ref.shape[1:], ref.stride()[1:], dtype=dtype, device=ref.device)


def _step_in_layout(t: Tensor, ref: Tensor) -> Tensor:
    """A ``[N, *]`` state tensor in ``ref``'s step layout (itself when it already is)."""
    if _same_step_layout(t, ref.stride()[1:], 0):
        return t
    return _empty_step(ref, t.dtype).copy_(t)


def _grad_in(g: Tensor | None, ref: Tensor, seq: bool) -> tuple[GradIn, Tensor | None]:
    """How the kernel reads an incoming gradient (``[T, *step]`` if ``seq`` else ``[*step]``), and the tensor to
    read (``g``, or a copy in ``ref``'s layout when its layout fits neither addressing)."""
    if g is None:
        return GradIn(), None
    first = 1 if seq else 0
    tstride = g.stride(0) if (seq and g.shape[0] > 1) else 0
    if all(sz == 1 or st == 0 for sz, st in zip(g.shape[first:], g.stride()[first:], strict=True)):
        return GradIn(g.data_ptr(), tstride, 0), g
    if _same_step_layout(g, ref.stride()[1:], first):
        return GradIn(g.data_ptr(), tstride, 1), g
    copy = (_empty_seq(ref, g.dtype) if seq else _empty_step(ref, g.dtype)).copy_(g)
    n = math.prod(ref.shape[1:])
    return GradIn(copy.data_ptr(), n if seq else 0, 1), copy


def _geometry(x: Tensor, decay: Tensor) -> tuple[int, int, int, int]:
    """``(T, n, channel_stride, channels)`` of a sequence in kernel layout and a 0-d / ``[C]`` decay."""
    T = x.shape[0]
    n = math.prod(x.shape[1:])
    channels = decay.numel() if decay.dim() == 1 else 1
    if decay.dim() > 1 or (decay.dim() == 1 and channels > 1 and (x.dim() < 3 or x.shape[2] != channels)):
        raise ValueError(f"decay of shape {tuple(decay.shape)} does not fit x_seq of shape {tuple(x.shape)}")
    if channels == 1:
        return T, n, 1, 1
    return T, n, x.stride(2), channels


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _aligned_ptrs(*tensors: Tensor | None) -> list[tuple[int, int]]:
    return [(t.data_ptr(), t.element_size()) for t in tensors if t is not None]


def run_forward(
    x_seq: Tensor, v0: Tensor | None, decay: Tensor, p: DecayFireParams, needs_grad: bool, launcher: Launcher
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The contract's ``forward``: ``(spike_seq, v_seq or v_last, saved or None)``, outputs in ``x_seq``'s layout.

    One launch; ``needs_grad=False`` saves nothing (spikes and ``v_last``/``v_seq`` only), ``v0=None`` is read
    as zeros without a tensor.
    """
    dt = kernel_dtype(x_seq.dtype)
    sdt = state_dtype(dt)
    _expect(decay, sdt, "decay (the state dtype)")
    if v0 is not None:
        _expect(v0, sdt, "v0 (the state dtype)")
        if tuple(v0.shape) != tuple(x_seq.shape[1:]):
            raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected one step of x_seq: {tuple(x_seq.shape[1:])}")
    x = in_kernel_layout(x_seq)
    T, n, cs, channels = _geometry(x, decay)
    v0k = None if v0 is None else _step_in_layout(v0, x)
    dc = decay.contiguous()
    save = launch_plans.SAVE_OF_STATE_KIND[p.saved_state] if needs_grad else launch_plans.SAVE_NONE
    spike = _empty_seq(x, x.dtype)
    saved = None
    if save != launch_plans.SAVE_NONE:
        saved = _empty_seq(x, torch.float16 if save == launch_plans.SAVE_HALF else sdt)
    v_out = _empty_seq(x, sdt) if p.store_v_seq else _empty_step(x, sdt)
    if n == 0 or T == 0:
        return spike, v_out, saved
    vec = launch_plans.choose_vec(dt, n, _aligned_ptrs(x, v0k, spike, saved, v_out),
                                  launcher.sm_count(x.device))
    plan = launch_plans.forward_launch(
        dt, vec, save, x=x.data_ptr(), v0=_ptr(v0k), decay=dc.data_ptr(), spike=spike.data_ptr(),
        saved=_ptr(saved), v_out=v_out.data_ptr(), v_threshold=p.v_threshold, n=n, T=T, channel_stride=cs,
        channels=channels, v_every_step=p.store_v_seq,
    )  # fmt: skip
    launcher.launch(plan, x.device)
    return spike, v_out, saved


def run_backward(
    grad_spike: Tensor | None,
    grad_v_out: Tensor | None,
    saved: Tensor,
    v0: Tensor | None,
    decay: Tensor,
    p: DecayFireParams,
    need_grad_v0: bool,
    need_grad_decay: bool,
    launcher: Launcher,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The contract's ``backward``: ``(grad_x, grad_v0 or None, grad_decay shaped like decay or None)``.

    ``grad_x`` is in ``grad_spike``'s dtype (the state dtype when ``grad_spike`` is None) and ``saved``'s
    layout. One launch, plus one torch reduction of the per-thread partial sums when ``need_grad_decay``.
    """
    sdt = decay.dtype
    dt = kernel_dtype(grad_spike.dtype if grad_spike is not None else sdt)
    if state_dtype(dt) != sdt:
        raise TypeError(f"backend='cupy': decay must be {state_dtype(dt)} (the state dtype), got {sdt}")
    half = p.saved_state == "fp16"
    _expect(saved, torch.float16 if half else sdt, f"saved (saved_state={p.saved_state!r})")
    if p.surrogate_id not in launch_plans.SURROGATE_IDS:
        raise ValueError(f"unknown surrogate id {p.surrogate_id}; the kernels know {launch_plans.SURROGATE_IDS}")
    if grad_spike is not None and grad_spike.shape != saved.shape:
        raise ValueError(f"grad_spike {tuple(grad_spike.shape)} and saved {tuple(saved.shape)} differ in shape")
    expected_gv = saved.shape if p.store_v_seq else saved.shape[1:]
    if grad_v_out is not None:
        _expect(grad_v_out, sdt, "grad_v_out (the state dtype)")
        if grad_v_out.shape != expected_gv:
            raise ValueError(f"grad_v_out has shape {tuple(grad_v_out.shape)}, expected {tuple(expected_gv)}")
    h = in_kernel_layout(saved)
    T, n, cs, channels = _geometry(h, decay)
    gs, gs_t = _grad_in(grad_spike, h, True)
    gv, gv_t = _grad_in(grad_v_out, h, p.store_v_seq)
    read_v0 = v0 is not None and need_grad_decay
    v0k = _step_in_layout(v0, h) if read_v0 else None
    dc = decay.contiguous()
    grad_x = _empty_seq(h, sdt if grad_spike is None else grad_spike.dtype)
    grad_v0 = _empty_step(h, sdt) if need_grad_v0 else None
    if n == 0 or T == 0:
        return grad_x, grad_v0, (torch.zeros_like(decay) if need_grad_decay else None)
    pointers = _aligned_ptrs(h, v0k, grad_x, grad_v0)
    for g, t in ((gs, gs_t), (gv, gv_t)):
        if t is not None and g.nstride:
            pointers += [(g.ptr, t.element_size()), (g.ptr + g.tstride * t.element_size(), t.element_size())]
    vec = launch_plans.choose_vec(dt, n, pointers, launcher.sm_count(h.device))
    n_partial = traffic.decay_partials(n, vec, cs, channels)
    partial = torch.empty(n_partial, dtype=sdt, device=h.device) if need_grad_decay else None
    plan = launch_plans.backward_launch(
        dt, vec, p.surrogate_id, p.detach_reset, half, grad_spike=gs, grad_v=gv, gv_every_step=p.store_v_seq,
        saved=h.data_ptr(), v0=_ptr(v0k), decay=dc.data_ptr(), grad_x=grad_x.data_ptr(), grad_v0=_ptr(grad_v0),
        decay_partial=_ptr(partial), v_threshold=p.v_threshold, alpha=p.alpha, n=n, T=T, channel_stride=cs,
        channels=channels,
    )  # fmt: skip
    launcher.launch(plan, h.device)
    grad_decay = None
    if partial is not None:
        if channels > 1:  # partial i covers n // n_partial consecutive neurons, all in one channel
            grad_decay = partial.view(n // (cs * channels), channels, cs * n_partial // n).sum(dim=(0, 2))
        else:
            grad_decay = partial.sum().reshape(decay.shape)
    return grad_x, grad_v0, grad_decay
