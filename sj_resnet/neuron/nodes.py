"""SpikingJelly nodes around ``decay_fire_multi_step``: they hold the state, the op does the math.

``DecayFireNode`` and ``ParametricDecayFireNode`` subclass ``spikingjelly.activation_based.neuron.BaseNode``,
so ``functional.reset_net``, ``set_step_mode``, ``detach_net``, ``store_v_seq`` and both step modes behave
as SpikingJelly users expect, and either class can be passed as ``spiking_neuron=`` to SpikingJelly's
ResNets. State convention: ``self.v`` is the post-reset potential ``v[t]`` after the last step, kept in
float32 (float64 for float64 inputs) whatever the input dtype, so AMP does not round the membrane.

Differences from SpikingJelly's ``BaseNode`` on purpose: a batch/feature shape change in the middle of a
sequence raises (SpikingJelly silently restarts the state), ints are accepted for float arguments, and the fresh
state after ``reset_net`` (the float ``0.0`` SpikingJelly stores) is passed to the op as ``None``: no zero tensor
is allocated, filled or read.
"""

from __future__ import annotations

import math
import operator

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import Tensor, nn

from . import ops, surrogates
from .choices import BACKENDS
from .ops import check_decay, check_saved_state, check_state, check_threshold
from .reference import state_dtype_for


class DecayFireNode(neuron.BaseNode):
    """STBP decay-and-fire neuron: ``h = decay*v + x``, ``o = H(h - V_th)``, ``v = h*(1 - o)``.

    Args:
        decay: leak factor in (0, 1] (``decay = 1 - 1/tau`` of SpikingJelly's ``LIFNode`` with
            ``decay_input=False, v_reset=0``).
        v_threshold: firing threshold (spike at ``h >= v_threshold``).
        surrogate_function: SpikingJelly surrogate module, or a name such as ``'atan'`` / ``'atan:2.0'``
            (``surrogates.from_name``); default ``surrogate.Rect(alpha=1.0)``, STBP's rectangle of width 1 and
            height 1.
        detach_reset: stop the gradient through the reset term.
        step_mode: ``'s'`` (input ``[N, *]``) or ``'m'`` (input ``[T, N, *]``).
        backend: ``'auto'``, ``'torch'``, ``'cupy'`` or ``'reference'`` (see ``sj_resnet.neuron.ops``).
        store_v_seq: keep ``self.v_seq`` (post-reset potentials of every step).
        saved_state: ``'fp32'`` (default) or ``'fp16'``: what the fused backends save for backward (see
            ``decay_fire_multi_step``; ``'fp16'`` halves the neuron's saved bytes, spikes unchanged).
    """

    def __init__(
        self,
        decay: float = 0.25,
        v_threshold: float = 0.5,
        surrogate_function: nn.Module | None = None,
        detach_reset: bool = False,
        step_mode: str = "s",
        backend: str = "auto",
        store_v_seq: bool = False,
        saved_state: str = "fp32",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if surrogate_function is None:
            surrogate_function = surrogate.Rect(alpha=1.0)
        elif isinstance(surrogate_function, str):
            surrogate_function = surrogates.from_name(surrogate_function)
        super().__init__(
            v_threshold=check_threshold(v_threshold),
            v_reset=0.0,
            surrogate_function=surrogate_function,
            detach_reset=bool(detach_reset),
            step_mode=step_mode,
            store_v_seq=store_v_seq,
        )
        self._set_decay(decay)
        self.backend = backend
        self.saved_state = check_saved_state(saved_state)

    def _set_decay(self, decay) -> None:
        self.decay = check_decay(decay)

    def decay_value(self) -> float | Tensor:
        """The decay the op uses: a float here, ``sigmoid(w)`` (a tensor) for the parametric node."""
        return self.decay

    def extra_repr(self) -> str:
        return f"decay={self.decay}, " + super().extra_repr() + self._backend_repr()

    def _backend_repr(self) -> str:
        extra = f", saved_state={self.saved_state!r}" if self.saved_state != "fp32" else ""
        return f", backend={self.backend!r}{extra}"

    def materialize_states(self, inputs, states, step_mode):
        """``v`` as the op takes it: ``None`` for the fresh zero state, else a tensor shaped like one input step
        in the state dtype; raise on a shape change."""
        x_seq = inputs[0] if step_mode == "m" else inputs[0].unsqueeze(0)
        if x_seq.dim() < 2:
            raise ValueError(
                f"expected [T, N, *] input in step_mode='m' or [N, *] in step_mode='s', got {tuple(inputs[0].shape)}"
            )
        sdt = state_dtype_for(x_seq.dtype) if x_seq.is_floating_point() else torch.float32
        v = states[0]
        if not isinstance(v, Tensor):
            v = None if float(v) == 0.0 else torch.full(x_seq.shape[1:], float(v), dtype=sdt, device=x_seq.device)
        else:
            check_state(v, x_seq)
            v = v.to(dtype=sdt)
        return (v, *states[1:])

    def _run(self, x_seq: Tensor, v: Tensor | None, store_v_seq: bool):
        # a float decay is checked on every call anyway; a tensor one (sigmoid(w)) is in (0, 1] by construction,
        # so its values are not read back (no host sync on CUDA)
        return ops.run(
            x_seq,
            v,
            self.decay_value(),
            self.v_threshold,
            self.surrogate_function,
            self.detach_reset,
            store_v_seq,
            self.backend,
            self.saved_state,
            check_decay_values=False,
        )

    def single_step_functional_forward(self, inputs, states, **kwargs):
        spike_seq, v_last, _ = self._run(inputs[0].unsqueeze(0), states[0], False)
        return (spike_seq[0],), (v_last, *states[1:])

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        spike_seq, v_last, _ = self._run(inputs[0], states[0], False)
        return (spike_seq,), (v_last, *states[1:])

    def multi_step_forward(self, x_seq: Tensor, *args, **kwargs) -> Tensor:
        if not self.store_v_seq:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        states = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
        spike_seq, v_last, v_seq = self._run(x_seq, states[0], True)
        self._memories["v"] = v_last
        self.v_seq = v_seq
        return spike_seq


class ParametricDecayFireNode(DecayFireNode):
    """Decay-and-fire neuron with a learnable decay ``sigmoid(w)`` kept in (0, 1).

    ``num_channels=None`` learns one decay for the layer; ``num_channels=C`` learns one per channel
    (dim 1 of a step ``[N, C, *]``). ``init_decay`` must be in (0, 1). Other arguments as ``DecayFireNode``.
    """

    def __init__(self, init_decay: float = 0.25, num_channels: int | None = None, **kwargs) -> None:
        if "decay" in kwargs:
            raise TypeError(
                "ParametricDecayFireNode learns its decay: pass init_decay=... (the starting value in (0, 1)), "
                "not decay=...; use DecayFireNode(decay=...) for a fixed decay"
            )
        self._init = (check_decay(init_decay), _check_num_channels(num_channels))
        super().__init__(decay=init_decay, **kwargs)

    def _set_decay(self, decay) -> None:
        d, num_channels = self._init
        if d >= 1.0:
            raise ValueError("init_decay must be in (0, 1) for the parametric node (sigmoid never reaches 1)")
        shape = () if num_channels is None else (num_channels,)
        self.w = nn.Parameter(torch.full(shape, math.log(d / (1.0 - d))))

    @property
    def decay(self) -> Tensor:
        """The current decay ``sigmoid(w)`` (0-d or ``[C]``), differentiable."""
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        shape = "per layer" if self.w.dim() == 0 else f"per channel ({self.w.shape[0]})"
        return f"learnable decay {shape}, " + neuron.BaseNode.extra_repr(self) + self._backend_repr()


def _check_num_channels(num_channels) -> int | None:
    """``None`` or a positive integer (anything with ``__index__``, not a bool)."""
    if num_channels is None:
        return None
    try:
        c = None if isinstance(num_channels, bool) else operator.index(num_channels)
    except TypeError:
        c = None
    if c is None or c < 1:
        raise ValueError(
            f"num_channels must be a positive int (one decay per channel) or None (one per layer), got {num_channels!r}"
        )
    return c
