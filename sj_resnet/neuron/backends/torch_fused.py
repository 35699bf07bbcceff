"""The ``torch`` backend: a fused forward and a hand-written BPTT backward in plain tensor ops.

Runs wherever torch runs (CPU and CUDA). Forward is one loop over T with three single-pass ops per step
writing into preallocated buffers, and no autograd graph (CPU inference: one such loop per block of samples,
``sample_blocks``). Backward computes (derivation in ``docs/neuron.md``)::

    sg[t] = surrogate'(h[t] - v_th)
    a[t]  = dv[t]/dh[t] = (1 - o[t]) - h[t] * sg[t]      (just (1 - o[t]) with detach_reset)
    gh[t] = dL/dh[t] = gs[t] * sg[t] + a[t] * (gv[t] + decay * gh[t+1])
    grad_x[t] = gh[t];  grad_v0 = decay * gh[0];  grad_decay = sum_t gh[t] * v[t-1]

in one of two ways. A sequence of at most ``WHOLE_MAX_ELEMS`` neurons x steps with ``saved_state='fp32'`` and a
spike gradient in the state dtype (the CPU training default) computes ``sg``, ``a`` and the local term for all t
at once, in the result and one full-size temporary, and leaves only ``gh[t] += a[t] * decay * gh[t+1]`` to the
loop: few dispatches, which is what small layers pay for. Anything else runs t = T-1..0 once, a handful of
single-pass ops per step into step-sized scratch buffers (no full-size temporary: on the CPU a large one is fresh,
page-faulting memory). Surrogates are evaluated in place (``surrogates.surrogate_grad_``).

Contract (shared by every backend, see ``backends/__init__.py``): ``decay`` is a 0-d or ``[C]`` tensor in the
state dtype (which is therefore ``decay.dtype``); ``v0`` is ``[N, *]`` in the state dtype or ``None`` (the zero
state, never materialised); absent gradients are ``None`` and are neither filled nor read.

Layout: every buffer is ``empty_like`` the input (``torch.preserve_format``), so a dense input in any memory
order (``channels_last`` conv outputs viewed as ``[T, N, C, H, W]``, a transposed sequence) is read in place
and the outputs keep its strides; a per-channel decay broadcasts logically over dim 1 of a step, whatever the
strides; stride-0 (expanded) incoming gradients are read through their views. A non-dense input (a strided
slice) is read in place too, its outputs come back contiguous.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..params import DecayFireParams
from ..reference import broadcast_decay
from ..surrogates import surrogate_grad_

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504: |h - v_th| beyond it is saved as +-65504


def forward(
    x_seq: Tensor, v0: Tensor | None, decay: Tensor, p: DecayFireParams, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns ``(spike_seq [T,N,*] x.dtype, v_out, saved)``.

    ``v_out`` is ``v_seq [T,N,*]`` (post-reset potentials) when ``p.store_v_seq`` else ``v_last [N,*]``, in the
    state dtype. ``saved`` is ``None`` unless ``needs_grad``: then ``h_seq`` in the state dtype
    (``saved_state='fp32'``) or ``d_seq = h_seq - v_th`` as float16 (``'fp16'``).

    Per step: ``h = x + v*decay``; ``o = (h >= v_th)`` written as a float; ``v = h - h*o`` -- three single-pass
    ops (``torch.where``/``masked_fill`` are 10x slower on the CPU). Only ``saved_state='fp32'`` training keeps
    ``h`` apart from ``v``; otherwise ``h`` is computed into the state buffer and reset in place. A zero state
    skips the first charge (``h[0] = x[0]``).
    """
    sdt = decay.dtype
    d = broadcast_decay(decay, x_seq)
    spike_seq = torch.empty_like(x_seq)
    # fp16/bf16 input, fp32 state: cast through step-sized buffers (no mixed-dtype ops, no full-size fp32 spikes)
    low = x_seq.dtype != sdt
    x_buf, o_buf = (torch.empty_like(x_seq[0], dtype=sdt) for _ in range(2)) if low else (None, None)
    h_seq = d_seq = None
    if needs_grad:
        if p.saved_state == "fp32":
            h_seq = torch.empty_like(x_seq, dtype=sdt)
        else:
            d_seq = torch.empty_like(x_seq, dtype=torch.float16)
    v_seq = torch.empty_like(x_seq, dtype=sdt) if p.store_v_seq else None
    state = None if v_seq is not None else torch.empty_like(x_seq[0], dtype=sdt)  # v[t], one rolling buffer
    bufs = (x_seq, v0, spike_seq, h_seq, d_seq, v_seq, state, x_buf, o_buf)
    vth = threshold_operand(p.v_threshold, sdt, x_seq.device)
    blocks = sample_blocks(x_seq, needs_grad)
    if len(blocks) == 1:  # the whole sequence: no slicing
        _steps(*bufs, d, vth)
    else:
        for lo, hi in blocks:
            _steps(*(None if b is None else (b[:, lo:hi] if b.dim() == x_seq.dim() else b[lo:hi]) for b in bufs),
                   d, vth)
    saved = h_seq if h_seq is not None else d_seq
    return spike_seq, (v_seq if v_seq is not None else state), saved


def threshold_operand(v_threshold: float, dtype: torch.dtype, device: torch.device) -> float | Tensor:
    """``V_th`` as the second operand of the comparisons and subtractions: on the CPU a 0-d tensor in the state
    dtype (a Python float costs each op a wrapped-scalar conversion, ~2 us, which dominates small steps), on
    CUDA the float itself (no host-to-device copy). Either way the op computes in the state dtype."""
    if device.type == "cpu":
        return torch.tensor(v_threshold, dtype=dtype)
    return v_threshold


#: neurons per step that one block of samples of the CPU inference loop aims at (1 MiB of float32 per buffer).
BLOCK_ELEMS = 1 << 18


def sample_blocks(x_seq: Tensor, needs_grad: bool, block_elems: int | None = None) -> list[tuple[int, int]]:
    """The sample ranges ``[lo, hi)`` of dim 1 that ``forward`` runs, each through all T steps before the next.

    CPU inference (nothing saved) takes blocks of about ``block_elems`` neurons per step: a block's state, input
    step and spikes stay in the caches across its T steps instead of streaming the whole step through memory three
    times per step. Training (which writes ``h`` for every step anyway) and CUDA tensors run all samples as one
    block, and so does a layout whose dim 1 is not the outermost step dim in memory (a block would not be one
    dense slab). The ops are elementwise, so the result is the same either way. ``block_elems``: ``BLOCK_ELEMS``.
    """
    block_elems = BLOCK_ELEMS if block_elems is None else block_elems
    N = x_seq.shape[1]
    if needs_grad or x_seq.device.type != "cpu" or x_seq.dim() < 3 or N < 2:
        return [(0, N)]
    per_sample = x_seq[0, 0].numel()
    if x_seq.stride(1) < max(x_seq.stride()[2:]) or per_sample * N <= block_elems:
        return [(0, N)]
    k = max(1, block_elems // per_sample)
    return [(lo, min(N, lo + k)) for lo in range(0, N, k)]


def _steps(x_seq, v, spike_seq, h_seq, d_seq, v_seq, state, x_buf, o_buf, d, vth: float | Tensor) -> None:
    """The forward recurrence over all T steps of (a block of samples of) the sequence, into the given views
    (``v`` the initial state or ``None``; the last state ends in ``state`` or ``v_seq[-1]``)."""
    low = x_buf is not None
    # the step views, each list made by one call (fewer dispatches than indexing every step)
    x_seq, spike_seq = x_seq.unbind(0), spike_seq.unbind(0)
    h_seq, d_seq, v_seq = (None if b is None else b.unbind(0) for b in (h_seq, d_seq, v_seq))
    for t in range(len(x_seq)):
        x = x_buf.copy_(x_seq[t]) if low else x_seq[t]
        v_new = v_seq[t] if v_seq is not None else state
        h = h_seq[t] if h_seq is not None else v_new  # h lives in v's buffer unless h_seq is saved
        if v is None:  # zero state: h = x
            if h_seq is not None:
                h.copy_(x)
            else:
                h = x  # read only
        else:
            torch.addcmul(x, v, d, out=h)
        if d_seq is not None:  # rounded once to float16 (its sign is the spike's), saturated instead of +-inf
            torch.sub(h, vth, out=d_seq[t]).clamp_(-FP16_MAX, FP16_MAX)
        o = o_buf if low else spike_seq[t]
        torch.ge(h, vth, out=o)
        torch.addcmul(h, h, o, value=-1.0, out=v_new)
        if low:
            spike_seq[t].copy_(o)
        v = v_new


def _surrogate_grad_into(out: Tensor, surrogate_id: int, z: Tensor, alpha: float) -> Tensor:
    """``sg(z)`` for one step (``z = h - v_th``, already in ``out`` when ``z is out``), written into ``out``."""
    if z is not out:
        out.copy_(z)
    return surrogate_grad_(surrogate_id, out, alpha)


class _SavedState:
    """Reads ``z[t] = h[t] - v_th``, ``h[t]`` and ``1 - o[t]`` back from the saved tensor of either kind."""

    def __init__(self, saved: Tensor, p: DecayFireParams, sdt: torch.dtype) -> None:
        self.saved, self.vth = saved, threshold_operand(p.v_threshold, sdt, saved.device)
        self.fp16 = p.saved_state == "fp16"
        # float16 d: the spike is its sign bit (-0.0 is "below": h - v_th < 0 rounded to -0), read as int16 < 0
        self.bits = saved.view(torch.int16) if self.fp16 else None
        self.h_buf = torch.empty_like(saved[0], dtype=sdt) if self.fp16 else None

    def z_into(self, out: Tensor, t: int) -> Tensor:
        """``h[t] - v_th`` into ``out`` (the float16 ``d`` widened, or ``h - v_th``)."""
        if self.fp16:
            return out.copy_(self.saved[t])
        return torch.sub(self.saved[t], self.vth, out=out)

    def h(self, t: int) -> Tensor:
        """``h[t]``; for float16 ``V_th + d`` widened to the state dtype (valid until the next call)."""
        if not self.fp16:
            return self.saved[t]
        return self.h_buf.copy_(self.saved[t]).add_(self.vth)

    def not_fired_into(self, out: Tensor, t: int) -> Tensor:
        """``1 - o[t]`` as a float into ``out``."""
        if self.fp16:
            return torch.lt(self.bits[t], 0, out=out)
        return torch.lt(self.saved[t], self.vth, out=out)


def backward(
    grad_spike: Tensor | None,
    grad_v_out: Tensor | None,
    saved: Tensor,
    v0: Tensor | None,
    decay: Tensor,
    p: DecayFireParams,
    need_grad_v0: bool,
    need_grad_decay: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Returns ``(grad_x, grad_v0 or None, grad_decay shaped like decay or None)``.

    ``grad_x`` is in ``grad_spike``'s dtype (the state dtype when ``grad_spike`` is ``None``). ``grad_v0`` is
    computed only when ``need_grad_v0`` and ``grad_decay`` only when ``need_grad_decay``. Up to
    ``WHOLE_MAX_ELEMS`` (fp32 saved state, spike gradient in the state dtype): ``_backward_whole``, one full-size
    temporary. Otherwise one pass over t = T-1..0 with step-sized scratch buffers: the only full-size allocation
    is the result. (Full-size temporaries cost a page fault per page on the CPU: above glibc's 32 MiB mmap
    threshold every allocation is fresh memory.)
    """
    T = saved.shape[0]
    sdt = decay.dtype
    d = broadcast_decay(decay, saved)
    scalar = float(decay) if decay.dim() == 0 and decay.device.type == "cpu" else None  # no sync on CUDA
    gdt = grad_spike.dtype if grad_spike is not None else sdt
    if grad_spike is not None and gdt == sdt and p.saved_state == "fp32" and saved.numel() <= WHOLE_MAX_ELEMS:
        return _backward_whole(grad_spike, grad_v_out, saved, v0, decay, d, scalar, p, need_grad_v0, need_grad_decay)
    state = _SavedState(saved, p, sdt)
    grad_x = torch.empty_like(saved, dtype=gdt)

    def step_buffer() -> Tensor:
        return torch.empty_like(saved[0], dtype=sdt)

    # dL/dh[t]: written straight into grad_x for fp32/fp64 grads; for fp16/bf16 grads it lives in two rolling
    # step-sized buffers and each step is cast into grad_x (no full-size fp32 temporary)
    low = gdt != sdt
    rolling = (step_buffer(), step_buffer()) if low else None
    gs_buf = step_buffer() if low and grad_spike is not None else None
    need_sg = grad_spike is not None or not p.detach_reset
    sg, a, tmp = step_buffer() if need_sg else None, step_buffer(), step_buffer()
    g_next = None  # dL/dh[t+1]; None while it is zero
    acc = None  # sum_t gh[t] * v[t-1] per neuron; None while it is zero
    for t in range(T - 1, -1, -1):
        h = None if p.detach_reset else state.h(t)
        if need_sg:
            _surrogate_grad_into(sg, p.surrogate_id, state.z_into(sg, t), p.alpha)
        state.not_fired_into(a, t)  # 1 - o[t]
        if h is not None:
            a.addcmul_(h, sg, value=-1.0)  # a = dv[t]/dh[t] = (1 - o) - h * sg
        g = rolling[t % 2] if low else grad_x[t]
        # dL/dv[t] = gv[t] (v_seq output) + decay * gh[t+1]; at t = T-1 the v_last gradient
        gv = None
        if grad_v_out is not None and (p.store_v_seq or t == T - 1):
            gv = grad_v_out[t] if p.store_v_seq else grad_v_out
        if grad_spike is not None:
            gs = gs_buf.copy_(grad_spike[t]) if low else grad_spike[t]
            torch.mul(gs, sg, out=g)  # local term gs * sg
            if g_next is not None and gv is None and scalar is not None:
                g.addcmul_(a, g_next, value=scalar)
            else:
                carry = _carry(gv, g_next, d, tmp)
                if carry is not None:
                    g.addcmul_(a, carry)
        else:
            carry = _carry(gv, g_next, d, tmp)
            if carry is None:
                g = None
            else:
                torch.mul(a, carry, out=g)
        if g is None:  # nothing reaches h[t]: its gradient is exactly zero
            grad_x[t].zero_()
            g_next = None
            continue
        if need_grad_decay and (t > 0 or v0 is not None):
            if t > 0:  # v[t-1] = h[t-1] * (1 - o[t-1])
                v_prev = state.not_fired_into(tmp, t - 1).mul_(state.h(t - 1))
            else:
                v_prev = v0
            if acc is None:
                acc = torch.mul(g, v_prev)
            else:
                acc.addcmul_(g, v_prev)
        if low:
            grad_x[t].copy_(g)
        g_next = g
    grad_v0 = None
    if need_grad_v0:
        grad_v0 = step_buffer()
        if g_next is None:
            grad_v0.zero_()
        else:
            torch.mul(g_next, d, out=grad_v0)
    grad_decay = _sum_to_decay(acc, decay, 1) if need_grad_decay else None
    return grad_x, grad_v0, grad_decay


def _sum_to_decay(terms: Tensor | None, decay: Tensor, channel_dim: int) -> Tensor:
    """``dL/decay``: the per-neuron terms ``gh[t] * v[t-1]`` (``None`` when all are zero) summed to ``decay``'s
    shape, over everything but ``channel_dim`` for a ``[C]`` decay."""
    if terms is None:
        return torch.zeros_like(decay)
    if decay.dim() == 1:
        return terms.sum(dim=[i for i in range(terms.dim()) if i != channel_dim])
    return terms.sum().reshape(())


#: the largest ``[T, N, *]`` sequence (elements) whose backward runs as whole-sequence ops (``_backward_whole``,
#: one more full-size temporary); a larger one runs step by step through step-sized scratch buffers. Measured on
#: the CPU (1 thread): whole 1.3-1.7x faster up to [4, 16, 64, 16, 16] (1 Mi), 10 % slower at 2 Mi, 35 % at 8 Mi.
WHOLE_MAX_ELEMS = 1 << 20


def _backward_whole(
    gs: Tensor, gv_out: Tensor | None, h: Tensor, v0: Tensor | None, decay: Tensor, d: Tensor,
    scalar: float | None, p: DecayFireParams, need_grad_v0: bool, need_grad_decay: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``backward`` for ``saved_state='fp32'`` with a spike gradient in the state dtype, as whole-``[T, N, *]``
    ops and one ``addcmul_`` per step (few dispatches: small layers are dominated by per-op overhead)::

        grad_x = sg = surrogate'(h - v_th)                 all t, in place in the result
        a      = (1 - o) - h * sg                          all t (1 - o with detach_reset); the one temporary
        grad_x = gs * sg (+ a * gv)                        the local term (+ the v_seq / v_last gradient)
        a     *= decay                                     only for a tensor decay (a scalar rides in addcmul_)
        grad_x[t] += a[t] * decay * grad_x[t+1]            t = T-2..0, the recurrence
        grad_decay = sum_{t>=1} grad_x[t] * v[t-1] (+ grad_x[0] * v0), v[t-1] = h[t-1] (1 - o[t-1]), in ``a``
    """
    T, vth = h.shape[0], threshold_operand(p.v_threshold, decay.dtype, h.device)
    grad_x = torch.sub(h, vth, out=torch.empty_like(h))
    sg = surrogate_grad_(p.surrogate_id, grad_x, p.alpha)
    a = torch.lt(h, vth, out=torch.empty_like(h))
    if not p.detach_reset:
        a.addcmul_(h, sg, value=-1.0)
    grad_x.mul_(gs)
    if gv_out is not None:
        if p.store_v_seq:
            grad_x.addcmul_(a, gv_out)
        else:
            grad_x[T - 1].addcmul_(a[T - 1], gv_out)
    gx, at = grad_x.unbind(0), (a.mul_(d) if scalar is None else a).unbind(0)
    for t in range(T - 2, -1, -1):
        if scalar is None:
            gx[t].addcmul_(at[t], gx[t + 1])
        else:
            gx[t].addcmul_(at[t], gx[t + 1], value=scalar)
    grad_v0 = torch.mul(grad_x[0], d, out=torch.empty_like(h[0])) if need_grad_v0 else None
    grad_decay = None
    if need_grad_decay:
        terms = a  # free now: grad_x[t] * v[t-1] per neuron
        if T > 1:
            torch.lt(h[:-1], vth, out=terms[1:]).mul_(h[:-1]).mul_(grad_x[1:])
        if v0 is None:  # the zero state adds nothing (and is never materialised)
            terms = terms[1:]
        else:
            torch.mul(grad_x[0], v0, out=terms[0])
        grad_decay = _sum_to_decay(terms if terms.shape[0] else None, decay, 2)
    return grad_x, grad_v0, grad_decay


def _carry(gv: Tensor | None, g_next: Tensor | None, d: Tensor, tmp: Tensor) -> Tensor | None:
    """``dL/dv[t] = gv[t] + decay * gh[t+1]`` with either term possibly absent (``None`` when both are)."""
    if g_next is None:
        return gv
    if gv is None:
        return torch.mul(g_next, d, out=tmp)
    return torch.addcmul(gv, g_next, d, out=tmp)
