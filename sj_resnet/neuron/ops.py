"""``decay_fire_multi_step``: the one functional entry point of the neuron.

It checks the inputs, picks a backend, and calls the fused op ``torch.ops.sj_resnet.decay_fire``
(registered with ``torch.library`` together with a fake implementation and its autograd formula, so
``torch.compile(fullgraph=True)`` traces it as one node) or the reference implementation.

Backends: ``'reference'`` (plain autograd, any surrogate), ``'torch'`` (fused, CPU and CUDA),
``'cupy'`` (CUDA kernels), ``'auto'`` (``cupy`` for CUDA tensors when CuPy is importable, else
``torch``; on the CPU under ``torch.compile``, ``reference``, which inductor fuses; a surrogate without a
fused kernel falls back to ``reference`` with a one-time warning).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from . import backends, surrogates
from .reference import decay_fire_reference, state_dtype_for

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_warned_fallback: set[str] = set()

# --------------------------------------------------------------------------------------------------
# The custom op (forward + backward), its fake implementations and its autograd formula.
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("sj_resnet::decay_fire", mutates_args=())
def _decay_fire(
    x_seq: Tensor,
    v0: Tensor,
    decay: Tensor,
    v_threshold: float,
    surrogate_id: int,
    alpha: float,
    detach_reset: bool,
    store_v_seq: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused forward: ``(spike_seq, v_out, h_seq)``; ``v_out`` is ``v_seq`` if ``store_v_seq`` else ``v_last``."""
    return backends.get_backend(backend).forward(x_seq, v0, decay, v_threshold, store_v_seq)


@_decay_fire.register_fake
def _decay_fire_fake(x_seq, v0, decay, v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, backend):
    h_seq = x_seq.new_empty(x_seq.shape, dtype=v0.dtype)
    v_out = h_seq.new_empty(x_seq.shape if store_v_seq else x_seq.shape[1:])
    return x_seq.new_empty(x_seq.shape), v_out, h_seq


@torch.library.custom_op("sj_resnet::decay_fire_backward", mutates_args=())
def _decay_fire_backward(
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
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused BPTT: ``(grad_x, grad_v0, grad_decay)``."""
    return backends.get_backend(backend).backward(
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
    )


@_decay_fire_backward.register_fake
def _decay_fire_backward_fake(grad_spike, grad_v_out, h_seq, v0, decay, *args):
    return grad_spike.new_empty(grad_spike.shape), v0.new_empty(v0.shape), decay.new_empty(decay.shape)


def _setup_context(ctx, inputs, output):
    """Save what BPTT needs: ``h_seq``; ``v0`` only when decay needs a gradient (it enters ``v[-1]``).

    A constant decay is kept on ``ctx`` rather than saved: it is a 0-d tensor this module created.
    """
    x_seq, v0, decay, v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, backend = inputs
    if decay.requires_grad:
        ctx.save_for_backward(output[2], v0, decay)
    else:
        ctx.save_for_backward(output[2])
        ctx.constant_decay = decay
    ctx.params = (v_threshold, surrogate_id, alpha, detach_reset, store_v_seq)
    ctx.backend = backend


def _run_backward(ctx, grad_spike, grad_v_out, backward_fn):
    saved = ctx.saved_tensors
    h_seq = saved[0]
    # Without a decay gradient the backends never read v0's values; h_seq[0] stands in for its shape.
    v0, decay = (saved[1], saved[2]) if len(saved) == 3 else (h_seq[0], ctx.constant_decay)
    v_threshold, surrogate_id, alpha, detach_reset, store_v_seq = ctx.params
    if grad_spike is None:
        grad_spike = torch.zeros_like(h_seq)
    if grad_v_out is None:
        grad_v_out = torch.zeros_like(h_seq if store_v_seq else h_seq[0])
    needs = ctx.needs_input_grad
    grad_x, grad_v0, grad_decay = backward_fn(
        grad_spike, grad_v_out, h_seq, v0, decay, v_threshold, surrogate_id, alpha,
        detach_reset, store_v_seq, needs[2] and len(saved) == 3,
    )  # fmt: skip
    return (
        grad_x if needs[0] else None,
        grad_v0 if needs[1] else None,
        grad_decay if needs[2] else None,
        None, None, None, None, None, None,
    )  # fmt: skip


def _backward(ctx, grad_spike, grad_v_out, _grad_h_seq):
    def call_op(*args):
        return _decay_fire_backward(*args, ctx.backend)

    return _run_backward(ctx, grad_spike, grad_v_out, call_op)


_decay_fire.register_autograd(_backward, setup_context=_setup_context)


class _DecayFireFunction(torch.autograd.Function):
    """The same forward/backward as the custom op, without the dispatcher's Python overhead.

    Eager calls use this (about 1 ms less per layer and step of training on small tensors); traced calls
    (``torch.compile``) use the custom op so the graph sees one opaque node with a fake implementation.
    """

    @staticmethod
    def forward(ctx, x_seq, v0, decay, v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, backend):
        ctx.set_materialize_grads(False)  # no zero-filled full-size grads for unused outputs (h_seq, v_last)
        output = backends.get_backend(backend).forward(x_seq, v0, decay, v_threshold, store_v_seq)
        inputs = (x_seq, v0, decay, v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, backend)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2])
        return output

    @staticmethod
    def backward(ctx, grad_spike, grad_v_out, _grad_h_seq):
        return _run_backward(ctx, grad_spike, grad_v_out, backends.get_backend(ctx.backend).backward)


def _fused(*args) -> tuple[Tensor, Tensor, Tensor]:
    """Call the fused op: the custom op while tracing/compiling, the autograd.Function in eager mode."""
    if torch.compiler.is_compiling():
        return _decay_fire(*args)
    return _DecayFireFunction.apply(*args)


# --------------------------------------------------------------------------------------------------
# Input checks and backend choice.
# --------------------------------------------------------------------------------------------------


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_decay(decay) -> float:
    """Accept an int or float decay in (0, 1]; return it as a float."""
    d = _check_number(decay, "decay")
    if not 0.0 < d <= 1.0:
        raise ValueError(f"decay must be in (0, 1] (1.0 is a non-leaky IF neuron), got {d}")
    return d


def _check_x(x_seq: Tensor) -> None:
    if not isinstance(x_seq, Tensor):
        raise TypeError(f"x_seq must be a torch.Tensor, got {type(x_seq).__name__}")
    if x_seq.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"x_seq must be floating point (float16/bfloat16/float32/float64), got {x_seq.dtype}; "
            "convert it first, e.g. x.float()"
        )
    if x_seq.dim() < 2:
        raise ValueError(
            f"x_seq must have shape [T, N, *] (at least 2 dims), got shape {tuple(x_seq.shape)}; "
            "for a single step use x.unsqueeze(0) or a node with step_mode='s'"
        )
    if x_seq.shape[0] < 1:
        raise ValueError("x_seq has T = 0 time steps; it needs at least one")


def _check_decay_tensor(decay: Tensor, x_seq: Tensor) -> None:
    if not decay.is_floating_point():
        raise TypeError(f"a decay tensor must be floating point, got {decay.dtype}")
    if decay.dim() > 1:
        raise ValueError(f"a decay tensor must be 0-d (per layer) or [C] (per channel), got {tuple(decay.shape)}")
    if decay.dim() == 1 and (x_seq.dim() < 3 or x_seq.shape[2] != decay.shape[0]):
        raise ValueError(
            f"per-channel decay has {decay.shape[0]} channels but x_seq {tuple(x_seq.shape)} is not "
            f"[T, N, {decay.shape[0]}, *] (channels are dim 2 of the sequence, dim 1 of one step)"
        )
    if decay.device != x_seq.device:
        raise ValueError(f"decay is on {decay.device} but x_seq is on {x_seq.device}; move them together")


def check_state(v0: Tensor, x_seq: Tensor) -> None:
    """Raise if the state ``v0`` does not match one step of ``x_seq`` (a shape change mid-sequence)."""
    if tuple(v0.shape) != tuple(x_seq.shape[1:]):
        raise ValueError(
            f"the neuron state has shape {tuple(v0.shape)} but this input step has shape "
            f"{tuple(x_seq.shape[1:])}: the batch or feature shape changed in the middle of a sequence. "
            "Call spikingjelly.activation_based.functional.reset_net(net) before each new batch."
        )
    if v0.device != x_seq.device:
        raise ValueError(f"the neuron state is on {v0.device} but the input is on {x_seq.device}; call reset_net(net)")


@functools.cache
def _cupy_ok() -> bool:
    return backends.cupy_available()


def resolve_backend(backend: str, x_seq: Tensor, fused_ok: bool, surrogate_name: str) -> str:
    """The concrete backend for this call (see the module docstring for the rules)."""
    if backend not in backends.ALL_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {backends.ALL_BACKENDS}")
    if backend == "reference":
        return backend
    if not fused_ok:
        if backend != "auto":
            raise ValueError(
                f"backend={backend!r} has no kernel for surrogate {surrogate_name}; supported: "
                f"{', '.join(s.name for s in surrogates.SURROGATES)} (with spiking=True). "
                "Use backend='reference' or backend='auto' (falls back to the reference)."
            )
        if surrogate_name not in _warned_fallback:
            _warned_fallback.add(surrogate_name)
            warnings.warn(
                f"surrogate {surrogate_name} has no fused kernel; using the (slower) reference backend",
                RuntimeWarning,
                stacklevel=4,
            )
        return "reference"
    if backend == "auto":
        if x_seq.is_cuda:
            return "cupy" if _cupy_ok() else "torch"
        # Under torch.compile on the CPU, inductor fuses the reference loop into one C++ kernel, which
        # measured 2.9x faster than the opaque fused op (docs/benchmarks.md, neurons_compiled).
        return "reference" if torch.compiler.is_compiling() else "torch"
    if backend == "cupy" and not x_seq.is_cuda:
        raise ValueError(
            f"backend='cupy' needs CUDA tensors, got a tensor on {x_seq.device}; "
            "move the model and data to a GPU (.cuda()) or use backend='torch' (or 'auto')"
        )
    return backend


def decay_fire_multi_step(
    x_seq: Tensor,
    v0: Tensor | None = None,
    decay: float | Tensor = 0.25,
    v_threshold: float = 0.5,
    surrogate_function: torch.nn.Module | None = None,
    detach_reset: bool = False,
    store_v_seq: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run the decay-and-fire neuron over a sequence.

    ``h[t] = decay*v[t-1] + x[t]``, ``o[t] = H(h[t] - v_threshold)``, ``v[t] = h[t]*(1 - o[t])``.

    Args:
        x_seq: ``[T, N, *]`` float16/bfloat16/float32/float64.
        v0: ``[N, *]`` initial (post-reset) potential; ``None`` means zeros. Cast to the state dtype
            (float32, float64 for float64 inputs).
        decay: float in (0, 1], or a 0-d / ``[C]`` tensor (per channel, channel = dim 2 of ``x_seq``).
        v_threshold: firing threshold; a spike fires at ``h >= v_threshold``.
        surrogate_function: a SpikingJelly surrogate module; default ``surrogate.Rect(alpha=1.0)``.
        detach_reset: stop the gradient through the reset term ``(1 - o)``.
        store_v_seq: also return the post-reset potentials of every step.
        backend: ``'auto'``, ``'torch'``, ``'cupy'`` or ``'reference'``.

    Returns:
        ``(spike_seq [T, N, *] in x's dtype, v_last [N, *], v_seq [T, N, *] or None)``.
    """
    _check_x(x_seq)
    if surrogate_function is None:
        from spikingjelly.activation_based import surrogate

        surrogate_function = surrogate.Rect(alpha=1.0)
    sdt = state_dtype_for(x_seq.dtype)
    if v0 is None:
        v0 = torch.zeros(x_seq.shape[1:], dtype=sdt, device=x_seq.device)
    else:
        check_state(v0, x_seq)
        v0 = v0.to(sdt)
    v_threshold = _check_number(v_threshold, "v_threshold")
    if isinstance(decay, Tensor):
        _check_decay_tensor(decay, x_seq)
    else:
        decay = check_decay(decay)

    found = surrogates.lookup(surrogate_function)
    name = type(surrogate_function).__name__
    chosen = resolve_backend(backend, x_seq, found is not None, name)
    if chosen == "reference":
        spike_seq, v_last, v_seq = decay_fire_reference(
            x_seq, v0, decay, v_threshold, surrogate_function, bool(detach_reset)
        )
        return spike_seq, v_last, (v_seq if store_v_seq else None)

    sid, alpha = found
    decay_t = decay.to(sdt) if isinstance(decay, Tensor) else torch.full((), decay, dtype=sdt, device=x_seq.device)
    spike_seq, v_out, _ = _fused(
        x_seq, v0, decay_t, v_threshold, sid, alpha, bool(detach_reset), bool(store_v_seq), chosen
    )
    if store_v_seq:
        return spike_seq, v_out[-1], v_out
    return spike_seq, v_out, None
