"""Bytes counted, not estimated: every global access of a host run of the unmodified kernels against the minimum.

The host shim logs each load and store the kernel text makes (``SJR_ON_LOAD``/``SJR_ON_STORE``). For every
mode of ``docs/cuda_backend.md`` (float32/bfloat16 x training forward / backward / inference forward x fresh /
carried state x ``saved_state`` fp32/fp16, plus ``store_v_seq``, expanded gradients and ``grad_v0``) one call
must be exactly one launch, its distinct bytes read and written must equal ``traffic.forward_bytes`` /
``backward_bytes``, no byte may be written twice, only broadcast inputs (decay, stride-0 gradients) may be read
more than once, and every access must fall inside a tensor of the call. During the call torch may only
allocate (no fill, no copy) and, for a decay gradient, reduce the partial sums.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sj_resnet.neuron.backends.cupy import contract, traffic
from sj_resnet.neuron.params import DecayFireParams

pytestmark = pytest.mark.cuda_cpu
DOC = Path(__file__).resolve().parents[2] / "docs" / "cuda_backend.md"
V_TH = 0.5
SHAPE = (4, 2, 8, 16, 16)  # T = 4, n = 4096 neurons per step (the table of docs/cuda_backend.md)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class OpLog(TorchDispatchMode):
    """The aten ops torch runs inside a block (what a GPU would launch besides our kernel)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


ALLOCATIONS = {"empty_strided", "empty", "new_empty", "new_empty_strided"}


def _extent(t: torch.Tensor) -> int:
    """Bytes between a tensor's first element and one past its last (its footprint in memory)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True))) * t.element_size()


def per_buffer(log: torch.Tensor, buffers: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """``{name: {read, write, unique_read, unique_write}}`` of an access log over named ``(address, bytes)``
    ranges; asserts that every access lies inside one of them."""
    addr, size, store = log[:, 0], log[:, 1], log[:, 2].bool()
    owner = torch.full_like(addr, -1)
    names = list(buffers)
    for i, name in enumerate(names):
        lo, nbytes = buffers[name]
        inside = (addr >= lo) & (addr + size <= lo + nbytes)
        assert not bool((inside & (owner >= 0)).any()), f"buffer {name} overlaps another"
        owner[inside] = i
    assert bool((owner >= 0).all()), f"{int((owner < 0).sum())} accesses outside every tensor of the call"
    out = {}
    for i, name in enumerate(names):
        row = {}
        for kind, mask in (("read", ~store), ("write", store)):
            sel = (owner == i) & mask
            row[kind] = int(size[sel].sum())
            if row[kind]:
                a, s = addr[sel], size[sel]
                bytes_touched = (a.repeat_interleave(s) + torch.cat([torch.arange(int(k)) for k in s.tolist()]))
                row[f"unique_{kind}"] = int(bytes_touched.unique().numel())
            else:
                row[f"unique_{kind}"] = 0
        out[name] = row
    return out


def _range(t: torch.Tensor | None) -> tuple[int, int] | None:
    return None if t is None else (t.data_ptr(), _extent(t))


def check_launch(host_kernels, n_before: int, buffers: dict, expected: traffic.Traffic, broadcast: set[str]) -> dict:
    """One launch happened; its counted bytes equal ``expected``; the re-read rule holds. Returns the counts."""
    assert len(host_kernels.launches) == n_before + 1, "exactly one kernel launch per call"
    counts = per_buffer(host_kernels.traffic, {k: v for k, v in buffers.items() if v is not None})
    read = sum(c["unique_read"] for c in counts.values())
    write = sum(c["unique_write"] for c in counts.values())
    for name, c in counts.items():
        assert c["write"] == c["unique_write"], f"{name}: a byte written twice"
        assert not (c["read"] and c["write"]), f"{name}: read and written"
        if name not in broadcast:
            assert c["read"] == c["unique_read"], f"{name}: a byte read twice"
    assert (read, write) == (expected.read, expected.write), (counts, expected)
    return counts


def _params(store_v_seq=False, saved_state="fp32", sid=2, detach=False) -> DecayFireParams:
    return DecayFireParams(v_threshold=V_TH, surrogate_id=sid, alpha=2.0, detach_reset=detach,
                           store_v_seq=store_v_seq, saved_state=saved_state)


# Step layouts besides NCHW: (shape as stored, permutation to [T, N, C, *]). n = 4096 (C = 8) or 3072 (C = 6: the
# vectors of 4 neurons span two pixels' channels).
LAYOUTS = {
    "nchw": (SHAPE, (0, 1, 2, 3, 4)),
    "channels_last": ((4, 2, 16, 16, 8), (0, 1, 4, 2, 3)),
    "channels_last_c6": ((4, 2, 16, 16, 6), (0, 1, 4, 2, 3)),
    "channels_last_3d": ((4, 2, 4, 8, 8, 8), (0, 1, 5, 2, 3, 4)),
}


def _inputs(dtype, carried: bool, per_channel: bool, seed: int = 0, layout: str = "nchw"):
    """``x`` in ``layout``; a carried ``v0`` in the same step layout (so the call copies nothing)."""
    gen = torch.Generator().manual_seed(seed)
    stored, perm = LAYOUTS[layout]
    x = (torch.randn(stored, generator=gen) * 0.6 + 0.3).to(dtype).permute(perm)
    v0 = None
    if carried:
        v0 = torch.empty_like(x[0], dtype=torch.float32).copy_(torch.randn(x.shape[1:], generator=gen) * 0.2)
    decay = torch.rand(x.shape[2], generator=gen) * 0.8 + 0.1 if per_channel else torch.tensor(0.25)
    return x, v0, decay


def forward_case(host_kernels, dtype, carried, saved_state, needs_grad, store_v_seq=False, per_channel=False,
                 layout="nchw"):
    """Run one forward and check it; returns ``(counts, expected, outputs)``."""
    x, v0, decay = _inputs(dtype, carried, per_channel, layout=layout)
    p = _params(store_v_seq, saved_state)
    n_before = len(host_kernels.launches)
    with OpLog() as ops:
        spike, v_out, saved = contract.run_forward(x, v0, decay, p, needs_grad, host_kernels)
    assert set(ops.ops) <= ALLOCATIONS, f"torch work besides allocation: {ops.ops}"
    assert (saved is None) == (not needs_grad)
    T, n = x.shape[0], math.prod(x.shape[1:])
    saved_size = 0 if saved is None else saved.element_size()
    expected = traffic.forward_bytes(T=T, n=n, x_size=x.element_size(), state_size=4, saved_size=saved_size,
                                     v0=carried, store_v_seq=store_v_seq, channels=decay.numel())
    buffers = {"x": _range(x), "v0": _range(v0), "decay": _range(decay), "spike": _range(spike),
               "saved": _range(saved), "v_out": _range(v_out)}
    counts = check_launch(host_kernels, n_before, buffers, expected, broadcast={"decay"})
    return counts, expected, (x, v0, decay, spike, v_out, saved)


def backward_case(host_kernels, dtype, carried, saved_state, *, grad_spike="dense", grad_v="none",
                  need_grad_v0=None, need_grad_decay=None, store_v_seq=False, per_channel=None, layout="nchw"):
    """Train forward + one backward; check the backward launch; returns ``(counts, expected)``.

    ``grad_spike``/``grad_v``: ``"dense"``, ``"none"`` or ``"expanded"`` (a stride-0 ones tensor, as from
    ``s.sum().backward()``). Defaults: a carried state wants ``grad_v0`` and has a learned per-channel decay.
    """
    need_grad_v0 = carried if need_grad_v0 is None else need_grad_v0
    need_grad_decay = carried if need_grad_decay is None else need_grad_decay
    per_channel = need_grad_decay if per_channel is None else per_channel
    _, _, (x, v0, decay, spike, v_out, saved) = forward_case(
        host_kernels, dtype, carried, saved_state, True, store_v_seq, per_channel, layout)
    gen = torch.Generator().manual_seed(1)

    def grad(kind, like):
        if kind == "dense":  # in the output's layout (read in place)
            return torch.empty_like(like).copy_(torch.randn(like.shape, generator=gen))
        if kind == "expanded":
            return torch.ones((), dtype=like.dtype).expand(like.shape)
        return None

    gs, gv = grad(grad_spike, spike), grad(grad_v, v_out)
    p = _params(store_v_seq, saved_state)
    n_before = len(host_kernels.launches)
    with OpLog() as ops:
        gx, gv0, gd = contract.run_backward(gs, gv, saved, v0, decay, p, need_grad_v0, need_grad_decay, host_kernels)
    allowed = ALLOCATIONS | ({"sum", "view", "reshape", "_unsafe_view"} if need_grad_decay else set())
    assert set(ops.ops) <= allowed, f"torch work besides allocation and the decay reduction: {ops.ops}"
    assert (gv0 is None) == (not need_grad_v0) and (gd is None) == (not need_grad_decay)
    plan = host_kernels.launches[-1]
    vec = int(plan.name.split("<", 1)[1].split(",")[1])
    T, n = x.shape[0], math.prod(x.shape[1:])
    channel_stride = x.stride(2)
    elems = {"dense": T * n, "expanded": 1, "none": 0}
    gv_elems = {"dense": T * n if store_v_seq else n, "expanded": 1, "none": 0}[grad_v]
    expected = traffic.backward_bytes(
        T=T, n=n, grad_size=gx.element_size(), state_size=4, saved_size=saved.element_size(),
        grad_spike_elems=elems[grad_spike], grad_v_elems=gv_elems, grad_v0=need_grad_v0, decay_grad=need_grad_decay,
        v0=carried, vec=vec, channels=decay.numel(), channel_stride=channel_stride)
    partial = plan.arg("decay_partial")
    n_partial = traffic.decay_partials(n, vec, channel_stride, decay.numel())
    buffers = {"grad_spike": _range(gs), "grad_v": _range(gv), "saved": _range(saved), "v0": _range(v0),
               "decay": _range(decay), "grad_x": _range(gx), "grad_v0": _range(gv0),
               "partial": (partial, n_partial * 4) if partial else None}
    counts = check_launch(host_kernels, n_before, buffers, expected, broadcast={"decay", "grad_spike", "grad_v"})
    if not carried or not need_grad_decay:
        assert counts.get("v0", {"read": 0})["read"] == 0
    return counts, expected, plan


# The mode matrix of docs/cuda_backend.md: (dtype, phase, state, saved_state) -> one row.
MODES = [
    (d, phase, state, saved)
    for d in DTYPES
    for phase in ("train-fwd", "bwd", "infer-fwd")
    for state in ("fresh", "carried")
    for saved in (("fp32",) if phase == "infer-fwd" else ("fp32", "fp16"))
]


def run_mode(host_kernels, dname: str, phase: str, state: str, saved: str) -> traffic.Traffic:
    dtype, carried = DTYPES[dname], state == "carried"
    if phase == "bwd":
        _, expected, _ = backward_case(host_kernels, dtype, carried, saved)
    else:
        _, expected, _ = forward_case(host_kernels, dtype, carried, saved, phase == "train-fwd")
    return expected


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_counted_bytes_equal_the_minimum(host_kernels, mode):
    run_mode(host_kernels, *mode)


@pytest.mark.parametrize(
    "case",
    [
        dict(store_v_seq=True, grad_v="dense"),
        dict(grad_spike="expanded"),
        dict(grad_spike="expanded", grad_v="expanded"),
        dict(grad_spike="none", grad_v="dense"),
        dict(grad_v="dense", need_grad_v0=True),
        dict(store_v_seq=True, grad_v="expanded", per_channel=True, need_grad_decay=True),
    ],
    ids=["vseq", "expanded-spike-grad", "expanded-both", "no-spike-grad", "grad-v-last+grad-v0", "vseq-expanded"],
)
@pytest.mark.parametrize("dname", list(DTYPES))
def test_counted_bytes_of_gradient_variants(host_kernels, dname, case):
    backward_case(host_kernels, DTYPES[dname], True, "fp32", **case)


def test_inference_store_v_seq_counts(host_kernels):
    forward_case(host_kernels, torch.bfloat16, True, "fp32", False, store_v_seq=True, per_channel=True)


# Per-channel decay with channels innermost (channel stride 1): the vector path, each lane reading its own
# channel's decay, and (decay gradient) one partial sum per neuron. (layout, dtype, phase, state, saved) -> a row
# of the second table of docs/cuda_backend.md. Carried backward = v0, grad_v0 and the decay gradient; fresh
# backward = the decay gradient only (a learned decay after reset_net).
CL_MODES = [
    (layout, d, phase, state, saved)
    for layout in ("channels_last", "channels_last_c6", "channels_last_3d")
    for d in DTYPES
    for phase in ("train-fwd", "bwd", "infer-fwd")
    for state in ("fresh", "carried")
    for saved in (("fp32",) if phase == "infer-fwd" else ("fp32", "fp16"))
]


def run_cl_mode(host_kernels, layout: str, dname: str, phase: str, state: str, saved: str) -> traffic.Traffic:
    dtype, carried = DTYPES[dname], state == "carried"
    if phase == "bwd":
        _, expected, plan = backward_case(host_kernels, dtype, carried, saved, need_grad_decay=True,
                                          per_channel=True, layout=layout)
    else:
        _, expected, _ = forward_case(host_kernels, dtype, carried, saved, phase == "train-fwd", per_channel=True,
                                      layout=layout)
        plan = host_kernels.launches[-1]
    assert plan.arg("channel_stride") == 1 and plan.arg("channels") > 1
    assert ", 4, " in plan.name, f"{plan.name}: per-channel decay on {layout} must take the vector path"
    return expected


@pytest.mark.parametrize("mode", CL_MODES, ids=["-".join(m) for m in CL_MODES])
def test_counted_bytes_channels_last_per_channel(host_kernels, mode):
    run_cl_mode(host_kernels, *mode)


_ROW = (r"\s*(fp32|bf16)\s*\|\s*(train-fwd|bwd|infer-fwd)\s*\|\s*(fresh|carried)\s*\|\s*(fp32|fp16|–)\s*\|"
        + r"\s*([\d ]+)\s*\|" * 4)


def doc_rows(layout: str | None = None) -> dict[tuple[str, ...], tuple[int, int]]:
    """``{(dtype, phase, state, saved): (read, write)}`` parsed from the byte table of docs/cuda_backend.md, or with
    ``layout`` the rows of the table whose first column is that layout, keyed ``(layout, dtype, ...)``; each row's
    minimum must equal its counted numbers."""
    rows = {}
    head = r"\|" + (rf"\s*({layout})\s*\|" if layout else "")
    for line in DOC.read_text().splitlines():
        m = re.match(head + _ROW, line)
        if m:
            *key, read, write, counted_read, counted_write = m.groups()
            nums = [int(v.replace(" ", "")) for v in (read, write, counted_read, counted_write)]
            assert nums[:2] == nums[2:], line
            key[-1] = "fp32" if key[-1] == "–" else key[-1]
            rows[tuple(key)] = (nums[0], nums[1])
    return rows


def test_docs_channels_last_table_states_the_counted_numbers(host_kernels):
    """The channels_last (C = 8) rows of the second table: every mode, the counted numbers."""
    rows = doc_rows("channels_last")
    modes = [m for m in CL_MODES if m[0] == "channels_last"]
    assert set(rows) == set(modes)
    for mode in modes:
        expected = run_cl_mode(host_kernels, *mode)
        assert rows[mode] == (expected.read, expected.write), mode


def test_docs_table_states_the_counted_numbers(host_kernels):
    """The table in docs/cuda_backend.md lists every mode, and its numbers are the counted ones."""
    rows = doc_rows()
    assert set(rows) == set(MODES)
    for mode in MODES:
        expected = run_mode(host_kernels, *mode)
        assert rows[mode] == (expected.read, expected.write), mode


def test_the_byte_check_can_fail(host_kernels):
    """A term left out of the expectation (a carried v0 counted as fresh) and an access outside the listed tensors
    are both reported: the equality above is not vacuous."""
    x, v0, decay = _inputs(torch.float32, True, False)
    n_before = len(host_kernels.launches)
    spike, v_out, saved = contract.run_forward(x, v0, decay, _params(), True, host_kernels)
    T, n = SHAPE[0], math.prod(SHAPE[1:])
    fresh = traffic.forward_bytes(T=T, n=n, x_size=4, state_size=4, saved_size=4, v0=False, store_v_seq=False)
    buffers = {"x": _range(x), "v0": _range(v0), "decay": _range(decay), "spike": _range(spike),
               "saved": _range(saved), "v_out": _range(v_out)}
    with pytest.raises(AssertionError):
        check_launch(host_kernels, n_before, buffers, fresh, broadcast={"decay"})
    with pytest.raises(AssertionError, match="outside every tensor"):
        per_buffer(host_kernels.traffic, {k: v for k, v in buffers.items() if k != "v0"})
