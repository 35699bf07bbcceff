"""The spec: the STBP decay-and-fire neuron in plain torch autograd.

Every fused backend is tested against this file. It is deliberately a plain loop over time.

Math (one neuron, time steps ``t = 0 .. T-1``, state ``v[-1] = v0``)::

    h[t] = decay * v[t-1] + x[t]          # charge (pre-reset membrane potential)
    o[t] = H(h[t] - v_threshold)          # fire; H(0) = 1, like SpikingJelly's heaviside
    v[t] = h[t] * (1 - o[t])              # hard reset to 0 (post-reset potential)

so ``u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]`` with ``u = h``. In backward, ``H`` is replaced by
the SpikingJelly surrogate module's derivative, and the reset term ``(1 - o[t])`` carries gradient
unless ``detach_reset`` is set.

Shapes: ``x_seq`` is ``[T, N, *]``; ``v0`` is ``[N, *]``; ``decay`` is a float, a 0-d tensor, or a
``[C]`` tensor applied per channel (channel = dim 2 of ``x_seq``, dim 1 of ``[N, C, ...]``).
The state is kept in float32 for float16/bfloat16 inputs (float64 stays float64); spikes come back in
``x_seq``'s dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The membrane-state dtype used for inputs of ``dtype``: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def broadcast_decay(decay: float | Tensor, x_seq: Tensor) -> float | Tensor:
    """Shape ``decay`` so it broadcasts against one step ``[N, *]`` of ``x_seq`` (per channel on dim 1)."""
    if isinstance(decay, Tensor) and decay.dim() == 1:
        return decay.view(-1, *([1] * (x_seq.dim() - 3)))
    return decay


def decay_fire_reference(
    x_seq: Tensor,
    v0: Tensor | None,
    decay: float | Tensor,
    v_threshold: float,
    surrogate_function: torch.nn.Module,
    detach_reset: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the neuron over ``T`` steps with plain autograd.

    Returns ``(spike_seq [T, N, *] in x's dtype, v_last [N, *], v_seq [T, N, *])`` where ``v_seq`` holds
    the post-reset potential of every step (state dtype). ``v0=None`` is the zero state.
    """
    sdt = state_dtype_for(x_seq.dtype)
    decay = broadcast_decay(decay, x_seq)
    if isinstance(decay, Tensor):
        decay = decay.to(sdt)
    v = torch.zeros(x_seq.shape[1:], dtype=sdt, device=x_seq.device) if v0 is None else v0.to(sdt)
    spikes, vs = [], []
    for t in range(x_seq.shape[0]):
        h = decay * v + x_seq[t].to(sdt)
        o = surrogate_function(h - v_threshold)
        reset = o.detach() if detach_reset else o
        v = h * (1.0 - reset)
        spikes.append(o)
        vs.append(v)
    return torch.stack(spikes).to(x_seq.dtype), v, torch.stack(vs)
