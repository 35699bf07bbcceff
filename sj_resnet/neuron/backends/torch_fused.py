"""The ``torch`` backend: a fused forward and a hand-written BPTT backward in plain tensor ops.

Runs wherever torch runs (CPU and CUDA). Forward is one loop over T with three ops per step
writing into preallocated buffers, and no autograd graph; it returns the pre-reset membrane ``h_seq``, the only
tensor backward needs (spikes are recomputed as ``h >= v_threshold``). Backward runs t = T-1..0 once, a
handful of single-pass ops per step into step-sized scratch buffers (see ``docs/neuron.md`` for the
derivation)::

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

from ..reference import broadcast_decay
from ..surrogates import surrogate_grad


def forward(
    x_seq: Tensor, v0: Tensor, decay: Tensor, v_threshold: float, store_v_seq: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(spike_seq [T,N,*] x.dtype, v_out, h_seq [T,N,*] state dtype)``.

    ``v_out`` is ``v_seq [T,N,*]`` (post-reset potentials) when ``store_v_seq`` else ``v_last [N,*]``.
    Per step: ``h = x + v*decay``; ``o = (h >= v_th)`` written as a float; ``v = h - h*o`` -- three
    single-pass ops into preallocated buffers. (``torch.where``/``masked_fill`` are 10x slower on the CPU.)
    """
    T = x_seq.shape[0]
    d = broadcast_decay(decay, x_seq)
    h_seq = torch.empty(x_seq.shape, dtype=v0.dtype, device=x_seq.device)
    spike_seq = torch.empty_like(x_seq)
    # fp16/bf16 input, fp32 state: cast through step-sized buffers (no mixed-dtype ops, no full-size fp32 spikes)
    low = x_seq.dtype != v0.dtype
    x_buf, o_buf = (torch.empty_like(v0), torch.empty_like(v0)) if low else (None, None)
    v_seq = torch.empty_like(h_seq) if store_v_seq else None
    buffers = (torch.empty_like(v0), torch.empty_like(v0))
    v = v0
    for t in range(T):
        h = h_seq[t]
        torch.addcmul(x_buf.copy_(x_seq[t]) if low else x_seq[t], v, d, out=h)
        o = o_buf if low else spike_seq[t]
        torch.ge(h, v_threshold, out=o)
        v = v_seq[t] if v_seq is not None else buffers[t % 2]
        torch.addcmul(h, h, o, value=-1.0, out=v)
        if low:
            spike_seq[t].copy_(o)
    return spike_seq, (v_seq if v_seq is not None else v), h_seq


def _surrogate_grad_into(out: Tensor, surrogate_id: int, h: Tensor, v_threshold: float, alpha: float) -> Tensor:
    """``sg(h - v_th)`` for one step, written into ``out`` (Rect, the default, entirely in place)."""
    torch.sub(h, v_threshold, out=out)
    if surrogate_id == 0:
        out.abs_().lt_(0.5 / alpha)
        return out if alpha == 1.0 else out.mul_(alpha)
    return out.copy_(surrogate_grad(surrogate_id, out, alpha))


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
    """Returns ``(grad_x in grad_spike's dtype, grad_v0, grad_decay shaped like decay)``.

    One pass over t = T-1..0 with step-sized scratch buffers: the only full-size allocation is the
    result. (Full-size temporaries cost a page fault per page on the CPU: above glibc's 32 MiB mmap
    threshold every allocation is fresh memory.)
    """
    T = h_seq.shape[0]
    d = broadcast_decay(decay, h_seq)
    scalar = float(decay) if decay.dim() == 0 and decay.device.type == "cpu" else None  # no sync on CUDA
    # dL/dh[t]: written straight into grad_x for fp32/fp64 grads; for fp16/bf16 grads it lives in two
    # rolling step-sized fp32 buffers and each step is cast into grad_x (no full-size fp32 temporary)
    grad_x = torch.empty(h_seq.shape, dtype=grad_spike.dtype, device=h_seq.device)
    low = grad_spike.dtype != h_seq.dtype
    rolling = (torch.empty_like(h_seq[0]), torch.empty_like(h_seq[0]), torch.empty_like(h_seq[0])) if low else None
    sg, a, tmp = (torch.empty_like(h_seq[0]) for _ in range(3))
    g_next = None
    acc = torch.zeros_like(h_seq[0]) if need_decay_grad else None  # sum_t gh[t] * v[t-1], per neuron
    for t in range(T - 1, -1, -1):
        h = h_seq[t]
        _surrogate_grad_into(sg, surrogate_id, h, v_threshold, alpha)
        torch.lt(h, v_threshold, out=a)  # 1 - o[t]
        if not detach_reset:
            a.addcmul_(h, sg, value=-1.0)  # a = dv[t]/dh[t] = (1 - o) - h * sg
        g = rolling[t % 2] if low else grad_x[t]
        torch.mul(rolling[2].copy_(grad_spike[t]) if low else grad_spike[t], sg, out=g)  # local term gs * sg
        # dL/dv[t] = gv[t] (v_seq output) + decay * gh[t+1]; at t = T-1 the v_last gradient
        if t == T - 1:
            carry = grad_v_out[t] if store_v_seq else grad_v_out
        elif store_v_seq:
            carry = torch.addcmul(grad_v_out[t], g_next, d, out=tmp)
        elif scalar is not None:
            g.addcmul_(a, g_next, value=scalar)
            carry = None
        else:
            carry = torch.mul(g_next, d, out=tmp)
        if carry is not None:
            g.addcmul_(a, carry)
        if acc is not None:
            if t > 0:  # v[t-1] = h[t-1] * (1 - o[t-1])
                torch.lt(h_seq[t - 1], v_threshold, out=tmp).mul_(h_seq[t - 1])
                acc.addcmul_(g, tmp)
            else:
                acc.addcmul_(g, v0)
        if low:
            grad_x[t].copy_(g)
        g_next = g
    grad_v0 = g_next * d
    grad_decay = torch.zeros_like(decay)
    if acc is not None:
        if decay.dim() == 1:
            grad_decay = acc.sum(dim=[i for i in range(acc.dim()) if i != 1])
        else:
            grad_decay = acc.sum().reshape(())
    return grad_x, grad_v0, grad_decay
