"""``decay_fire_multi_step``: the one functional entry point of the neuron.

It checks the inputs, picks a backend, and calls the fused op ``torch.ops.sj_resnet.decay_fire``
(registered with ``torch.library`` together with a fake implementation and its autograd formula, so
``torch.compile(fullgraph=True)`` traces it as one node) or the reference implementation.

Backends: ``'reference'`` (plain autograd, any surrogate), ``'torch'`` (fused, CPU and CUDA),
``'cupy'`` (CUDA kernels), ``'auto'`` (``cupy`` for CUDA tensors when its probe passes on that device, else
``torch``; on the CPU under ``torch.compile``, ``reference``, which inductor fuses; under ``torch.func``
transforms, ``reference``; a surrogate without a fused kernel falls back to ``reference`` with a one-time
warning).

What the fused path refuses instead of computing wrongly: ``torch.func`` transforms with an explicit fused
backend, and second-order gradients (``create_graph=True``) through its hand-written backward; both errors
name ``backend='reference'``. When no gradient can flow (``no_grad``/``inference_mode``, or nothing requires
grad) the backend runs without an autograd node and saves nothing.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from . import backends, surrogates
from .choices import BACKENDS, DECAY_HIGH, DECAY_LOW, DECAY_RANGE, SAVED_STATES, decay_in_range
from .params import DecayFireParams
from .reference import decay_fire_reference, state_dtype_for

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_warned_fallback: set[str] = set()

# --------------------------------------------------------------------------------------------------
# The custom ops (forward + backward), their fake implementations and the autograd formula. Custom ops take
# primitives: this is the one place where DecayFireParams is spelled out positionally (params.py).
# --------------------------------------------------------------------------------------------------

DOUBLE_BACKWARD_ERROR = (
    "second-order gradients (create_graph=True, torch.autograd.grad of a gradient) are not supported by the "
    "fused {backend!r} neuron backend, whose backward is hand-written; build the neurons with "
    "backend='reference' (plain autograd) for higher-order derivatives"
)


@torch.library.custom_op("sj_resnet::decay_fire", mutates_args=())
def _decay_fire(
    x_seq: Tensor,
    v0: Tensor | None,
    decay: Tensor,
    v_threshold: float,
    surrogate_id: int,
    alpha: float,
    detach_reset: bool,
    store_v_seq: bool,
    saved_state: str,
    needs_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused forward: ``(spike_seq, v_out, saved)``; ``saved`` is an empty tensor unless ``needs_grad``."""
    p = DecayFireParams.from_primitives(v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, saved_state)
    spike_seq, v_out, saved = backends.get_backend(backend).forward(x_seq, v0, decay, p, needs_grad)
    return spike_seq, v_out, (saved if saved is not None else decay.new_empty(0))


@_decay_fire.register_fake
def _decay_fire_fake(x_seq, v0, decay, v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, saved_state,
                     needs_grad, backend):  # fmt: skip
    sdt = decay.dtype
    v_out = torch.empty_like(x_seq, dtype=sdt) if store_v_seq else torch.empty_like(x_seq[0], dtype=sdt)
    saved = decay.new_empty(0)
    if needs_grad:
        saved = torch.empty_like(x_seq, dtype=sdt if saved_state == "fp32" else torch.float16)
    return torch.empty_like(x_seq), v_out, saved


@torch.library.custom_op("sj_resnet::decay_fire_backward", mutates_args=())
def _decay_fire_backward(
    grad_spike: Tensor | None,
    grad_v_out: Tensor | None,
    saved: Tensor,
    v0: Tensor | None,
    decay: Tensor,
    v_threshold: float,
    surrogate_id: int,
    alpha: float,
    detach_reset: bool,
    store_v_seq: bool,
    saved_state: str,
    need_grad_v0: bool,
    need_grad_decay: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused BPTT: ``(grad_x, grad_v0, grad_decay)``; an unneeded gradient comes back as an empty tensor."""
    p = DecayFireParams.from_primitives(v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, saved_state)
    grad_x, grad_v0, grad_decay = backends.get_backend(backend).backward(
        grad_spike, grad_v_out, saved, v0, decay, p, need_grad_v0, need_grad_decay
    )
    grad_v0 = grad_v0 if grad_v0 is not None else decay.new_empty(0)
    return grad_x, grad_v0, (grad_decay if grad_decay is not None else decay.new_empty(0))


@_decay_fire_backward.register_fake
def _decay_fire_backward_fake(grad_spike, grad_v_out, saved, v0, decay, *args):
    need_grad_v0, need_grad_decay = args[-3], args[-2]
    grad_x = torch.empty_like(saved, dtype=grad_spike.dtype if grad_spike is not None else decay.dtype)
    grad_v0 = torch.empty_like(saved[0], dtype=decay.dtype) if need_grad_v0 else decay.new_empty(0)
    return grad_x, grad_v0, (torch.empty_like(decay) if need_grad_decay else decay.new_empty(0))


def _setup_context(ctx, inputs, output):
    """Save what BPTT needs: ``saved`` (h or h - V_th); ``v0`` only when decay needs a gradient (it enters ``v[-1]``).

    A decay that needs no gradient is kept on ``ctx`` rather than saved (usually a 0-d tensor this module made).
    """
    x_seq, v0, decay, v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, saved_state, _, backend = inputs
    if decay.requires_grad:
        ctx.save_for_backward(output[2], v0, decay)
    else:
        ctx.save_for_backward(output[2])
        ctx.constant_decay = decay
    ctx.params = DecayFireParams.from_primitives(
        v_threshold, surrogate_id, alpha, detach_reset, store_v_seq, saved_state
    )
    ctx.backend = backend
    ctx.x_dtype = x_seq.dtype


def _run_backward(ctx, grad_spike, grad_v_out, backward_fn):
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(DOUBLE_BACKWARD_ERROR.format(backend=ctx.backend))
    n_inputs = 11
    if grad_spike is None and grad_v_out is None:
        return (None,) * n_inputs
    saved = ctx.saved_tensors
    v0, decay = (saved[1], saved[2]) if len(saved) == 3 else (None, ctx.constant_decay)
    needs = ctx.needs_input_grad
    grad_x, grad_v0, grad_decay = backward_fn(
        grad_spike, grad_v_out, saved[0], v0, decay, ctx.params, needs[1], needs[2]
    )
    if grad_x.dtype != ctx.x_dtype:  # only when grad_spike is None and x is float16/bfloat16
        grad_x = grad_x.to(ctx.x_dtype)
    return (
        grad_x if needs[0] else None,
        grad_v0 if needs[1] else None,
        grad_decay if needs[2] else None,
        *([None] * (n_inputs - 3)),
    )


def _backward(ctx, grad_spike, grad_v_out, _grad_saved):
    def call_op(grad_spike, grad_v_out, saved, v0, decay, p, need_grad_v0, need_grad_decay):
        return _decay_fire_backward(
            grad_spike, grad_v_out, saved, v0, decay, *p.to_primitives(), need_grad_v0, need_grad_decay, ctx.backend
        )

    return _run_backward(ctx, grad_spike, grad_v_out, call_op)


_decay_fire.register_autograd(_backward, setup_context=_setup_context)


class _DecayFireFunction(torch.autograd.Function):
    """The same forward/backward as the custom op, without the dispatcher's Python overhead.

    Eager calls that need a gradient use this (about 1 ms less per layer and step of training on small tensors);
    traced calls (``torch.compile``) use the custom op so the graph sees one opaque node with a fake
    implementation; calls that need no gradient call the backend directly (no autograd node, no saved state).
    """

    @staticmethod
    def forward(ctx, x_seq, v0, decay, p: DecayFireParams, backend: str):
        ctx.set_materialize_grads(False)  # no zero-filled full-size grads for unused outputs (saved, v_out)
        output = backends.get_backend(backend).forward(x_seq, v0, decay, p, True)
        inputs = (x_seq, v0, decay, *p.to_primitives(), True, backend)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2])
        return output

    @staticmethod
    def backward(ctx, grad_spike, grad_v_out, _grad_saved):
        grads = _run_backward(ctx, grad_spike, grad_v_out, backends.get_backend(ctx.backend).backward)
        return (*grads[:3], None, None)


def _fused(x_seq, v0, decay, p: DecayFireParams, backend: str, needs_grad: bool) -> tuple[Tensor, Tensor]:
    """Call the fused op: the custom op while tracing/compiling, else the autograd.Function or (no grad) the backend."""
    if torch.compiler.is_compiling():
        spike_seq, v_out, _ = _decay_fire(x_seq, v0, decay, *p.to_primitives(), needs_grad, backend)
    elif needs_grad:
        spike_seq, v_out, _ = _DecayFireFunction.apply(x_seq, v0, decay, p, backend)
    else:
        spike_seq, v_out, _ = backends.get_backend(backend).forward(x_seq, v0, decay, p, False)
    return spike_seq, v_out


# --------------------------------------------------------------------------------------------------
# Input checks and backend choice.
# --------------------------------------------------------------------------------------------------


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_threshold(v_threshold) -> float:
    """Accept a finite int or float threshold; return it as a float."""
    v = _check_number(v_threshold, "v_threshold")
    if not math.isfinite(v):
        raise ValueError(f"v_threshold must be finite, got {v} (a NaN/inf threshold never or always fires)")
    return v


def check_decay(decay) -> float:
    """Accept an int or float decay in ``choices.DECAY_RANGE`` (0, 1]; return it as a float."""
    d = _check_number(decay, "decay")
    if not decay_in_range(d):
        raise ValueError(f"decay must be in {DECAY_RANGE} (1.0 is a non-leaky IF neuron), got {d}")
    return d


def check_saved_state(saved_state) -> str:
    """Accept one of ``choices.SAVED_STATES``."""
    if saved_state not in SAVED_STATES:
        raise ValueError(
            f"saved_state must be one of {SAVED_STATES} ('fp16' saves h - v_threshold as float16 for backward: "
            f"half the bytes, spikes unchanged), got {saved_state!r}"
        )
    return saved_state


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


def _check_decay_tensor(decay: Tensor, x_seq: Tensor, check_values: bool) -> None:
    """Shape, dtype and device of a tensor decay; its values in (0, 1] when ``check_values``.

    The value check reads the (tiny, 0-d or ``[C]``) tensor on the host: free on the CPU, one synchronisation
    for a CUDA tensor. The nodes skip it: their float decay is checked at construction and the parametric
    node's ``sigmoid(w)`` lies in (0, 1] by construction.
    """
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
    if check_values and not torch.compiler.is_compiling() and not _is_functorch_wrapped(decay):
        with torch.no_grad():
            bad = ~((decay > DECAY_LOW) & (decay <= DECAY_HIGH))  # NaN compares False: refused too
            if bool(bad.any()):
                first = decay.detach().reshape(-1)[bad.reshape(-1)][0].item()
                raise ValueError(
                    f"decay must be in {DECAY_RANGE} (1.0 is a non-leaky IF neuron), got a tensor holding {first}"
                )


def check_state(v0: Tensor, x_seq: Tensor) -> None:
    """Raise if the state ``v0`` is not a tensor matching one step of ``x_seq`` (a shape change mid-sequence)."""
    if not isinstance(v0, Tensor):
        raise TypeError(
            f"v0 must be a tensor shaped like one input step {tuple(x_seq.shape[1:])} or None (the zero state), "
            f"got {type(v0).__name__}; for a constant start use torch.full(x_seq.shape[1:], value)"
        )
    if tuple(v0.shape) != tuple(x_seq.shape[1:]):
        raise ValueError(
            f"the neuron state has shape {tuple(v0.shape)} but this input step has shape "
            f"{tuple(x_seq.shape[1:])}: the batch or feature shape changed in the middle of a sequence. "
            "Call spikingjelly.activation_based.functional.reset_net(net) before each new batch."
        )
    if v0.device != x_seq.device:
        raise ValueError(f"the neuron state is on {v0.device} but the input is on {x_seq.device}; call reset_net(net)")


def _is_functorch_wrapped(t) -> bool:
    """True for a tensor seen inside a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ...)."""
    return isinstance(t, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t)


def resolve_backend(backend: str, x_seq: Tensor, fused_ok: bool, surrogate_name: str, under_func: bool = False) -> str:
    """The concrete backend for this call (see the module docstring for the rules)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "reference":
        return backend
    if under_func:
        if backend != "auto":
            raise ValueError(
                f"backend={backend!r} does not support torch.func transforms (grad, jacrev, vjp, vmap, ...): its "
                "backward is hand-written; use backend='reference' (or 'auto', which picks it under torch.func)"
            )
        return "reference"
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
            return "cupy" if backends.get_backend("cupy").usable(x_seq.device) else "torch"
        # Under torch.compile on the CPU, inductor fuses the reference loop into one C++ kernel, which
        # measured 2.9x faster than the opaque fused op (docs/benchmarks.md, neurons_compiled).
        return "reference" if torch.compiler.is_compiling() else "torch"
    if backend == "cupy" and not x_seq.is_cuda:
        raise ValueError(
            f"backend='cupy' needs CUDA tensors, got a tensor on {x_seq.device}; "
            "move the model and data to a GPU (.cuda()) or use backend='torch' (or 'auto')"
        )
    if backend == "cupy":
        backends.get_backend("cupy").usable(x_seq.device, explicit=True)  # raises with the probe's reason
    return backend


def decay_fire_multi_step(
    x_seq: Tensor,
    v0: Tensor | None = None,
    decay: float | Tensor = 0.25,
    v_threshold: float = 0.5,
    surrogate_function: torch.nn.Module | str | None = None,
    detach_reset: bool = False,
    store_v_seq: bool = False,
    backend: str = "auto",
    saved_state: str = "fp32",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run the decay-and-fire neuron over a sequence.

    ``h[t] = decay*v[t-1] + x[t]``, ``o[t] = H(h[t] - v_threshold)``, ``v[t] = h[t]*(1 - o[t])``.

    Args:
        x_seq: ``[T, N, *]`` float16/bfloat16/float32/float64, any memory layout (read in place).
        v0: ``[N, *]`` initial (post-reset) potential; ``None`` means the zero state (never materialised).
            Cast to the state dtype (float32, float64 for float64 inputs).
        decay: float in (0, 1], or a 0-d / ``[C]`` tensor with values in (0, 1] (per channel, channel = dim 2 of
            ``x_seq``).
        v_threshold: finite firing threshold; a spike fires at ``h >= v_threshold``.
        surrogate_function: a SpikingJelly surrogate module, or a name ``'atan'`` / ``'atan:2.0'`` (see
            ``surrogates.from_name``); default ``surrogate.Rect(alpha=1.0)``.
        detach_reset: stop the gradient through the reset term ``(1 - o)``.
        store_v_seq: also return the post-reset potentials of every step.
        backend: ``'auto'``, ``'torch'``, ``'cupy'`` or ``'reference'``.
        saved_state: what a fused backend saves for backward: ``'fp32'`` (``h`` in the state dtype) or ``'fp16'``
            (``h - v_threshold`` as float16: half the bytes, identical spikes, gradients within the bound in
            ``docs/neuron.md``). The reference backend ignores it.

    Returns:
        ``(spike_seq [T, N, *] in x's dtype and layout, v_last [N, *], v_seq [T, N, *] or None)``.
    """
    return run(x_seq, v0, decay, v_threshold, surrogate_function, detach_reset, store_v_seq, backend, saved_state)


def run(
    x_seq: Tensor,
    v0: Tensor | None,
    decay: float | Tensor,
    v_threshold: float,
    surrogate_function: torch.nn.Module | str | None,
    detach_reset: bool,
    store_v_seq: bool,
    backend: str,
    saved_state: str,
    check_decay_values: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``decay_fire_multi_step`` for the nodes, which may skip the per-call decay value check (see above)."""
    _check_x(x_seq)
    if surrogate_function is None:
        from spikingjelly.activation_based import surrogate

        surrogate_function = surrogate.Rect(alpha=1.0)
    elif isinstance(surrogate_function, str):
        surrogate_function = surrogates.from_name(surrogate_function)
    sdt = state_dtype_for(x_seq.dtype)
    if v0 is not None:
        check_state(v0, x_seq)
        v0 = v0.to(sdt)
    v_threshold = check_threshold(v_threshold)
    saved_state = check_saved_state(saved_state)
    if isinstance(decay, Tensor):
        _check_decay_tensor(decay, x_seq, check_decay_values)
    else:
        decay = check_decay(decay)

    found = surrogates.lookup(surrogate_function)
    name = type(surrogate_function).__name__
    under_func = not torch.compiler.is_compiling() and any(_is_functorch_wrapped(t) for t in (x_seq, v0, decay))
    chosen = resolve_backend(backend, x_seq, found is not None, name, under_func)
    if chosen == "reference":
        spike_seq, v_last, v_seq = decay_fire_reference(
            x_seq, v0, decay, v_threshold, surrogate_function, bool(detach_reset)
        )
        return spike_seq, v_last, (v_seq if store_v_seq else None)

    sid, alpha = found
    decay_t = decay.to(sdt) if isinstance(decay, Tensor) else torch.full((), decay, dtype=sdt, device=x_seq.device)
    p = DecayFireParams(
        v_threshold=v_threshold,
        surrogate_id=sid,
        alpha=alpha,
        detach_reset=bool(detach_reset),
        store_v_seq=bool(store_v_seq),
        saved_state=saved_state,
    )
    needs_grad = torch.is_grad_enabled() and (
        x_seq.requires_grad or (v0 is not None and v0.requires_grad) or decay_t.requires_grad
    )
    spike_seq, v_out = _fused(x_seq, v0, decay_t, p, chosen, needs_grad)
    if store_v_seq:
        return spike_seq, v_out[-1], v_out
    return spike_seq, v_out, None
