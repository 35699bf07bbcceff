"""The bytes a fused decay-and-fire kernel must move: the one formula behind the byte tests and the rooflines.

Per launch, with ``T`` steps of ``n`` neurons, ``e`` the input element size, ``s`` the state element size
(4, or 8 for float64), ``k`` the saved-state element size (``s`` for ``saved_state="fp32"``, 2 for ``"fp16"``,
0 in inference) and ``C`` the decay values (1 per layer)::

    forward   read   T*n*e (x)  + n*s (v0, carried state only)                       + C*s (decay)
              write  T*n*e (spikes) + T*n*k (saved) + T*n*s (v_seq) or n*s (v_last)
    backward  read   T*n*k (saved) + G_s*e (grad_spike) + G_v*s (grad_v_seq / grad_v_last)
                     + n*s (v0: carried state and decay gradient only)             + C*s (decay)
              write  T*n*e' (grad_x) + n*s (grad_v0, when needed) + P*s (decay partial sums, when needed)

``G_s``/``G_v`` are the distinct gradient elements: ``T*n`` (or ``n`` for ``grad_v_last``) for a full
gradient, 0 when absent, 1 per step or 1 in all for an expanded (stride-0) one. ``e'`` is ``grad_x``'s
element size (``e``; ``s`` when there is no spike gradient). ``P`` (``decay_partials``) is ``ceil(n/V)``, one
per thread, when the ``V`` neurons of a thread share one channel (per-layer decay, or a channel stride that is a
multiple of ``V``: NCHW), else ``n``, one per neuron (per-channel decay with channels innermost, e.g.
``channels_last``: the lanes of a vector are different channels); ``V`` is the neurons per thread
(``launch_plans.choose_vec``). Every term is a distinct tensor element touched once: ``tests/kernels`` count
the kernels' accesses in a host run and assert equality with these functions, and
``benchmarks/gpu/kernel_bench.py`` / ``benchmarks/neurons.py`` divide them by time for the roofline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Traffic:
    """Bytes read and written by one launch."""

    read: int
    write: int

    @property
    def total(self) -> int:
        return self.read + self.write


def forward_bytes(
    *, T: int, n: int, x_size: int, state_size: int, saved_size: int, v0: bool, store_v_seq: bool, channels: int = 1
) -> Traffic:
    """Forward: ``saved_size`` 0 (inference), ``state_size`` (h) or 2 (float16 ``h - v_th``); ``v0`` False is the
    zero state (fresh after ``reset_net``, not read)."""
    read = T * n * x_size + (n * state_size if v0 else 0) + channels * state_size
    write = T * n * x_size + T * n * saved_size + (T * n if store_v_seq else n) * state_size
    return Traffic(read, write)


def decay_partials(n: int, vec: int, channel_stride: int = 1, channels: int = 1) -> int:
    """How many decay-gradient partial sums a backward launch writes (the kernel's ``lanes_share_channel``)."""
    if vec == 1 or channels == 1 or channel_stride % vec == 0:
        return math.ceil(n / vec)
    return n


def backward_bytes(
    *,
    T: int,
    n: int,
    grad_size: int,
    state_size: int,
    saved_size: int,
    grad_spike_elems: int,
    grad_v_elems: int,
    grad_v0: bool,
    decay_grad: bool,
    v0: bool,
    vec: int = 1,
    channels: int = 1,
    channel_stride: int = 1,
) -> Traffic:
    """Backward: ``grad_size`` is the element size of ``grad_spike`` and ``grad_x``; ``*_elems`` the distinct
    incoming gradient elements (see the module docstring); ``v0`` is read only with ``decay_grad``."""
    read = (
        T * n * saved_size
        + grad_spike_elems * grad_size
        + grad_v_elems * state_size
        + (n * state_size if (v0 and decay_grad) else 0)
        + channels * state_size
    )
    partials = decay_partials(n, vec, channel_stride, channels) * state_size if decay_grad else 0
    write = T * n * grad_size + (n * state_size if grad_v0 else 0) + partials
    return Traffic(read, write)


def training_step_bytes(T: int, n: int, x_size: int, state_size: int = 4, saved_size: int = 4) -> Traffic:
    """Forward + backward of one ordinary training call (fresh state after ``reset_net``, ``v_last`` only, the loss
    through the spikes, constant decay, no ``grad_v0``): the roofline of the benchmarks."""
    f = forward_bytes(T=T, n=n, x_size=x_size, state_size=state_size, saved_size=saved_size, v0=False,
                      store_v_seq=False)
    b = backward_bytes(T=T, n=n, grad_size=x_size, state_size=state_size, saved_size=saved_size,
                       grad_spike_elems=T * n, grad_v_elems=0, grad_v0=False, decay_grad=False, v0=False)
    return Traffic(f.read + b.read, f.write + b.write)
