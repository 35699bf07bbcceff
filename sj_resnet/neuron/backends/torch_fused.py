"""The ``torch`` backend: a fused forward and a hand-written BPTT backward in plain tensor ops.

Runs wherever torch runs (CPU and CUDA). Forward is one loop over T with three ops per step
writing into preallocated buffers, and no autograd graph; it returns the pre-reset membrane ``h_seq``, the only
tensor backward needs (spikes are recomputed as ``h >= v_threshold``). Backward vectorises everything that
does not depend on the recurrence over all T at once and runs the recurrence as one fused
multiply-add per step (see ``docs/neuron.md`` for the derivation)::

    sg[t] = surrogate'(h[t] - v_th)
    a[t]  = dv[t]/dh[t] = (1 - o[t]) - h[t] * sg[t]      (just (1 - o[t]) with detach_reset)
    gh[t] = dL/dh[t] = gs[t] * sg[t] + a[t] * (gv[t] + decay * gh[t+1])
    grad_x[t] = gh[t];  grad_v0 = decay * gh[0];  grad_decay = sum_t gh[t] * v[t-1]

Contract (shared by every backend, see ``backends/__init__.py``): ``decay`` is a 0-d or ``[C]`` tensor in
the state dtype, ``v0`` is ``[N, *]`` in the state dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..surrogates import surrogate_grad


def _decay_view(decay: Tensor, ndim_step: int) -> Tensor:
    """Broadcast a 0-d or ``[C]`` decay against one step ``[N, C, *]`` (``ndim_step`` dims)."""
    if decay.dim() == 1:
        return decay.view(-1, *([1] * (ndim_step - 2)))
    return decay


def forward(
    x_seq: Tensor, v0: Tensor, decay: Tensor, v_threshold: float, store_v_seq: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(spike_seq [T,N,*] x.dtype, v_out, h_seq [T,N,*] state dtype)``.

    ``v_out`` is ``v_seq [T,N,*]`` (post-reset potentials) when ``store_v_seq`` else ``v_last [N,*]``.
    """
    T = x_seq.shape[0]
    sdt = v0.dtype
    d = _decay_view(decay, x_seq.dim() - 1)
    h_seq = torch.empty(x_seq.shape, dtype=sdt, device=x_seq.device)
    v_seq = torch.empty_like(h_seq) if store_v_seq else None
    buffers = [torch.empty_like(v0), torch.empty_like(v0)]
    keep = torch.empty(v0.shape, dtype=torch.bool, device=v0.device)
    v = v0
    for t in range(T):
        h = h_seq[t]
        torch.addcmul(x_seq[t], v, d, out=h)
        torch.lt(h, v_threshold, out=keep)
        v = v_seq[t] if v_seq is not None else buffers[t % 2]
        torch.mul(h, keep, out=v)
    spike_seq = torch.ge(h_seq, v_threshold).to(x_seq.dtype)
    return spike_seq, (v_seq if v_seq is not None else v), h_seq


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
    """Returns ``(grad_x in grad_spike's dtype, grad_v0, grad_decay shaped like decay)``."""
    T = h_seq.shape[0]
    sdt = h_seq.dtype
    d = _decay_view(decay, h_seq.dim() - 1)
    sg = surrogate_grad(surrogate_id, h_seq - v_threshold, alpha)
    not_fired = torch.lt(h_seq, v_threshold).to(sdt)
    # a = dv/dh; gh starts as the local term gs * sg (+ a * gv for a stored v_seq).
    a = not_fired if detach_reset else not_fired - h_seq * sg
    gh = sg.mul_(grad_spike)  # reuse sg's storage: sg is not needed after this
    if store_v_seq:
        gh.addcmul_(a, grad_v_out)
    else:
        gh[T - 1].addcmul_(a[T - 1], grad_v_out)
    a_decay = a.mul_(d) if a is not not_fired else a * d
    for t in range(T - 2, -1, -1):
        gh[t].addcmul_(a_decay[t], gh[t + 1])
    grad_v0 = gh[0] * d
    if need_decay_grad:
        v_prev = torch.empty_like(h_seq)
        v_prev[0] = v0
        torch.mul(h_seq[:-1], not_fired[:-1], out=v_prev[1:])
        prod = v_prev.mul_(gh)
        if decay.dim() == 1:
            grad_decay = prod.sum(dim=[i for i in range(prod.dim()) if i != 2])
        else:
            grad_decay = prod.sum()
    else:
        grad_decay = torch.zeros_like(decay)
    return gh.to(grad_spike.dtype), grad_v0, grad_decay
