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
    Per step: ``h = x + v*decay``; ``o = (h >= v_th)`` written as a float; ``v = h - h*o`` -- three
    single-pass ops into preallocated buffers. (``torch.where``/``masked_fill`` are 10x slower on the CPU.)
    """
    T = x_seq.shape[0]
    d = _decay_view(decay, x_seq.dim() - 1)
    h_seq = torch.empty(x_seq.shape, dtype=v0.dtype, device=x_seq.device)
    spikes = torch.empty_like(h_seq)  # in the state dtype; cast once at the end for fp16/bf16 inputs
    v_seq = torch.empty_like(h_seq) if store_v_seq else None
    buffers = (torch.empty_like(v0), torch.empty_like(v0))
    v = v0
    for t in range(T):
        h, o = h_seq[t], spikes[t]
        torch.addcmul(x_seq[t], v, d, out=h)
        torch.ge(h, v_threshold, out=o)
        v = v_seq[t] if v_seq is not None else buffers[t % 2]
        torch.addcmul(h, h, o, value=-1.0, out=v)
    return spikes.to(x_seq.dtype), (v_seq if v_seq is not None else v), h_seq


def _surrogate_grad(surrogate_id: int, h_seq: Tensor, v_threshold: float, alpha: float) -> Tensor:
    """``sg(h - v_th)`` as a new tensor; Rect (the default) takes an in-place path."""
    x = h_seq - v_threshold
    if surrogate_id == 0:
        inside = x.abs_().lt_(0.5 / alpha)
        return inside if alpha == 1.0 else inside.mul_(alpha)
    return surrogate_grad(surrogate_id, x, alpha)


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
    d = _decay_view(decay, h_seq.dim() - 1)
    keep = torch.lt(h_seq, v_threshold, out=torch.empty_like(h_seq))  # 1 - o[t], as a float
    grad_decay = torch.zeros_like(decay)
    if need_decay_grad:  # needs v[t-1] = h[t-1] * (1 - o[t-1]) before `keep` is reused below
        v_prev = torch.empty_like(h_seq)
        v_prev[0] = v0
        torch.mul(h_seq[:-1], keep[:-1], out=v_prev[1:])
    sg = _surrogate_grad(surrogate_id, h_seq, v_threshold, alpha)
    # a = dv/dh = (1 - o) - h * sg  (just 1 - o with detach_reset); `keep` becomes `a`
    a = keep if detach_reset else keep.addcmul_(h_seq, sg, value=-1.0)
    # gh = dL/dh: its local part gs * sg (+ a * gv where v is an output), in sg's storage
    gh = sg.mul_(grad_spike)
    if store_v_seq:
        gh.addcmul_(a, grad_v_out)
    else:
        gh[T - 1].addcmul_(a[T - 1], grad_v_out)
    if decay.dim() == 0 and decay.device.type == "cpu":  # a Python scalar: no extra pass, no sync
        dv = float(decay)
        for t in range(T - 2, -1, -1):
            gh[t].addcmul_(a[t], gh[t + 1], value=dv)
    else:
        a.mul_(d)
        for t in range(T - 2, -1, -1):
            gh[t].addcmul_(a[t], gh[t + 1])
    grad_v0 = gh[0] * d
    if need_decay_grad:
        prod = v_prev.mul_(gh)
        if decay.dim() == 1:
            grad_decay = prod.sum(dim=[i for i in range(prod.dim()) if i != 2])
        else:
            grad_decay = prod.sum()
    return gh.to(grad_spike.dtype), grad_v0, grad_decay
