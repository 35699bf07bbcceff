"""Every fused backend against the reference spec (``sj_resnet/neuron/reference.py``).

Adding a backend = one entry in ``FUSED`` below. Inputs come from ``sample_inputs``, which keeps every
membrane value a margin away from the threshold (and Rect's box edges), so spikes must match exactly.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_resnet.neuron import decay_fire_multi_step
from sj_resnet.neuron.backends import cupy_available, torch_fused
from sj_resnet.neuron.testing import critical_offsets_for, sample_inputs

FUSED = [pytest.param("torch", "cpu", id="torch-cpu")]
if torch.cuda.is_available():
    FUSED.append(pytest.param("torch", "cuda", id="torch-cuda", marks=pytest.mark.gpu))
    if cupy_available():
        FUSED.append(pytest.param("cupy", "cuda", id="cupy-cuda", marks=pytest.mark.gpu))

SURROGATES = {
    "Rect": lambda: surrogate.Rect(alpha=1.0),
    "Rect2": lambda: surrogate.Rect(alpha=2.0),
    "Sigmoid": lambda: surrogate.Sigmoid(),
    "ATan": lambda: surrogate.ATan(),
    "PiecewiseQuadratic": lambda: surrogate.PiecewiseQuadratic(),
    "PiecewiseExp": lambda: surrogate.PiecewiseExp(),
    "SoftSign": lambda: surrogate.SoftSign(),
    "SuperSpike": lambda: surrogate.SuperSpike(),
    "Erf": lambda: surrogate.Erf(),
}


@pytest.fixture(params=["whole", "steps"])
def backward_path(request, monkeypatch):
    """The torch backend's two backward paths: whole-sequence ops (small sequences) or step by step (large)."""
    monkeypatch.setattr(torch_fused, "WHOLE_MAX_ELEMS", 1 << 40 if request.param == "whole" else 0)
    return request.param


SHAPE = (5, 3, 4, 7)  # [T, N, C, L]: 84 neurons per step, not a multiple of any block size


def make_decay(kind: str, dtype: torch.dtype, device: str):
    if kind == "float":
        return 0.3
    if kind == "layer":
        return torch.tensor(0.45, dtype=dtype, device=device)
    return torch.tensor([0.2, 0.5, 0.8, 1.0], dtype=dtype, device=device)


def run(backend, x, v0, decay, sg, detach_reset, store_v_seq, cotangents):
    """Forward + backward; returns outputs and gradients w.r.t. x, v0 and (tensor) decay."""
    x = x.detach().clone().requires_grad_()
    v0 = v0.detach().clone().requires_grad_()
    if isinstance(decay, torch.Tensor):
        decay = decay.detach().clone().requires_grad_()
    spikes, v_last, v_seq = decay_fire_multi_step(x, v0, decay, 0.5, sg, detach_reset, store_v_seq, backend)
    gs, gv, gvs = cotangents
    loss = (spikes * gs).sum() + (v_last * gv).sum()
    if store_v_seq:
        loss = loss + (v_seq * gvs).sum()
    loss.backward()
    grad_decay = decay.grad if isinstance(decay, torch.Tensor) else None
    return spikes, v_last, v_seq, x.grad, v0.grad, grad_decay


def compare(backend, device, dtype, sg_name, detach_reset, store_v_seq, decay_kind, v0_kind, atol, rtol):
    sg = SURROGATES[sg_name]()
    state = torch.float64 if dtype == torch.float64 else torch.float32
    decay = make_decay(decay_kind, state, "cpu")
    g = torch.Generator().manual_seed(7)
    v0 = torch.zeros(SHAPE[1:]) if v0_kind == "zero" else torch.rand(SHAPE[1:], generator=g) * 0.4
    x = sample_inputs(SHAPE, decay=decay, v0=v0, dtype=dtype, critical_offsets=critical_offsets_for(sg), seed=3)
    cot = (torch.randn(SHAPE, generator=g), torch.randn(SHAPE[1:], generator=g), torch.randn(SHAPE, generator=g))
    cot = tuple(c.to(state) for c in cot)
    ref = run("reference", x, v0.to(state), decay, sg, detach_reset, store_v_seq, cot)

    def to_dev(t):
        return t.to(device) if isinstance(t, torch.Tensor) else t

    got = run(backend, to_dev(x), to_dev(v0.to(state)), to_dev(decay), sg, detach_reset, store_v_seq,
              tuple(to_dev(c) for c in cot))
    names = ["spikes", "v_last", "v_seq", "grad_x", "grad_v0", "grad_decay"]
    for name, r, o in zip(names, ref, got, strict=True):
        if r is None:
            assert o is None, name
            continue
        o = o.cpu()
        assert o.dtype == r.dtype, name
        if name == "spikes":
            assert torch.equal(o, r), "spikes differ from the reference"
        else:
            torch.testing.assert_close(o, r, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("sg_name", list(SURROGATES))
@pytest.mark.parametrize(
    "detach_reset,store_v_seq,decay_kind,v0_kind",
    list(itertools.product([False, True], [False, True], ["float", "layer", "channel"], ["zero", "nonzero"])),
)
@pytest.mark.usefixtures("backward_path")
def test_fp32_matches_reference(backend, device, sg_name, detach_reset, store_v_seq, decay_kind, v0_kind):
    compare(backend, device, torch.float32, sg_name, detach_reset, store_v_seq, decay_kind, v0_kind, 1e-5, 1e-5)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("sg_name", ["Rect", "ATan", "Sigmoid"])
@pytest.mark.parametrize("decay_kind", ["float", "channel"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.usefixtures("backward_path")
def test_fp64_matches_reference_exactly(backend, device, sg_name, decay_kind, detach_reset):
    compare(backend, device, torch.float64, sg_name, detach_reset, True, decay_kind, "nonzero", 1e-12, 1e-12)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sg_name", ["Rect", "ATan", "Erf"])
@pytest.mark.parametrize("store_v_seq", [False, True])
@pytest.mark.usefixtures("backward_path")
def test_half_inputs_keep_fp32_state(backend, device, dtype, sg_name, store_v_seq):
    """fp16/bf16 in, fp32 state: spikes exact; grad_x is rounded once to the input dtype."""
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    compare(backend, device, dtype, sg_name, False, store_v_seq, "layer", "nonzero", tol, tol)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("decay_kind", ["layer", "channel"])
@pytest.mark.parametrize("store_v_seq", [False, True])
@pytest.mark.usefixtures("backward_path")
def test_gradcheck_float64(backend, device, decay_kind, store_v_seq):
    """Finite differences vs the fused backward, float64, w.r.t. x, v0 and decay.

    Spikes are a step function (true derivative 0) while backward uses the surrogate on purpose, so the
    numerically checkable outputs are the potentials with ``detach_reset=True``; the surrogate path is
    covered by the exact float64 comparison with the reference above.
    """
    g = torch.Generator().manual_seed(11)
    # decay < 1 so that the finite-difference steps stay inside (0, 1]
    decay = make_decay(decay_kind, torch.float64, device).clamp(max=0.95).requires_grad_()
    v0 = (torch.rand(SHAPE[1:], generator=g, dtype=torch.float64) * 0.4).to(device).requires_grad_()
    x = sample_inputs(SHAPE, decay=decay, v0=v0, dtype=torch.float64, margin=1e-3, seed=5).to(device)
    x.requires_grad_()

    def f(x, v0, decay):
        _, v_last, v_seq = decay_fire_multi_step(x, v0, decay, 0.5, surrogate.Rect(), True, store_v_seq, backend)
        return v_seq if store_v_seq else v_last

    assert torch.autograd.gradcheck(f, (x, v0, decay), eps=1e-6, atol=1e-7)


def test_reference_hand_computed():
    """The spec on a case worked out by hand: fires at equality, resets to 0, leaks by `decay`."""
    x = torch.tensor([[0.4], [0.4], [0.4], [0.1]])
    spikes, v_last, v_seq = decay_fire_multi_step(x, None, 0.25, 0.5, None, backend="reference", store_v_seq=True)
    # h0 = 0.4; h1 = 0.25*0.4 + 0.4 = 0.5 -> spike (h >= V_th), v = 0; h2 = 0.4; h3 = 0.1 + 0.1 = 0.2
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(v_seq.flatten(), torch.tensor([0.4, 0.0, 0.4, 0.2]))
    torch.testing.assert_close(v_last, torch.tensor([0.2]))


@pytest.mark.parametrize("backend,device", FUSED)
def test_inference_mode_and_no_grad(backend, device):
    x = sample_inputs((4, 2, 9), seed=1).to(device)
    ref, _, _ = decay_fire_multi_step(x.cpu(), backend="reference")
    with torch.no_grad():
        a, _, _ = decay_fire_multi_step(x, backend=backend)
    with torch.inference_mode():
        b, _, _ = decay_fire_multi_step(x, backend=backend)
    assert torch.equal(a.cpu(), ref) and torch.equal(b.cpu(), ref)


@pytest.mark.parametrize("backend,device", FUSED)
def test_non_contiguous_input(backend, device):
    base = sample_inputs((3, 6, 4), seed=2).to(device)
    x = base.transpose(1, 2)  # [T, 4, 6], non-contiguous
    ref, vr, _ = decay_fire_multi_step(x.cpu().contiguous(), backend="reference")
    got, vg, _ = decay_fire_multi_step(x, backend=backend)
    assert torch.equal(got.cpu(), ref)
    torch.testing.assert_close(vg.cpu(), vr)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("learnable_decay", [False, True])
def test_saves_only_the_membrane(backend, device, learnable_decay):
    """Backward keeps h_seq only (+ v0 and decay when decay is learned): no copy of x, no spikes."""
    x = sample_inputs((4, 8, 16), seed=4).to(device).requires_grad_()
    decay = torch.tensor(0.3, device=device, requires_grad=True) if learnable_decay else 0.3
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        decay_fire_multi_step(x, decay=decay, backend=backend)
    assert saved[0].shape == x.shape and saved[0].dtype == torch.float32
    extra = 1 if learnable_decay else 0  # the decay; the fresh zero state (v0=None) is not a tensor to save
    assert sum(t.numel() for t in saved) == x.numel() + extra


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference"), *FUSED])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_fires_at_equality(backend, device, dtype):
    """Dyadic values make h hit V_th exactly: H(0) = 1, like SpikingJelly's heaviside."""
    x = torch.tensor([[0.25, 0.5], [0.4375, 0.0], [0.5, 0.25]], dtype=dtype, device=device)
    spikes, v_last, _ = decay_fire_multi_step(x, None, 0.25, 0.5, None, backend=backend)
    # column 0: h = 0.25, 0.0625 + 0.4375 = 0.5 (fires), 0.5 (fires); column 1: 0.5 (fires), 0, 0.25
    assert spikes.cpu().tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    assert v_last.cpu().tolist() == [0.0, 0.25]


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.usefixtures("backward_path")
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("decay_kind", ["layer", "channel"])
def test_non_contiguous_backward(backend, device, layout, decay_kind):
    """Gradients of a channels_last / transposed input, with an expanded (stride-0) spike gradient and a
    v_seq gradient, match the reference's; grad_x keeps the input's strides."""
    T, N, C, H, W = 3, 5, 4, 3, 2
    g = torch.Generator().manual_seed(9)
    flat = sample_inputs((T * N, C, H, W), seed=6)
    if layout == "channels_last":
        x = flat.contiguous(memory_format=torch.channels_last).view(T, N, C, H, W)
    else:
        x = flat.reshape(T, N, C, H, W).transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous()
    decay = make_decay(decay_kind, torch.float32, "cpu")
    v0 = torch.rand((N, C, H, W), generator=g) * 0.4
    gs = torch.randn((1, N, C, H, W), generator=g).expand(T, N, C, H, W)
    gvs = torch.randn((T, N, C, H, W), generator=g)
    grads = []
    for b, dev in (("reference", "cpu"), (backend, device)):
        xr = x.detach().to(dev).requires_grad_()
        vr = v0.to(dev).requires_grad_()
        dr = decay.to(dev).requires_grad_()
        spikes, _, v_seq = decay_fire_multi_step(xr, vr, dr, 0.5, surrogate.ATan(), False, True, b)
        torch.autograd.backward([spikes, v_seq], [gs.to(dev), gvs.to(dev)])
        grads.append((xr.grad.cpu(), vr.grad.cpu(), dr.grad.cpu()))
        if b != "reference" and dev == "cpu":
            assert xr.grad.stride() == xr.stride()
    for r, o in zip(*grads, strict=True):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("numel,whole", [(1 << 10, True), ((1 << 20) + 1, False)])
def test_backward_path_follows_the_size(monkeypatch, numel, whole):
    """Sequences up to ``WHOLE_MAX_ELEMS`` run the whole-sequence backward, larger ones the step loop."""
    calls = []
    real = torch_fused._backward_whole
    monkeypatch.setattr(torch_fused, "_backward_whole", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(torch_fused, "WHOLE_MAX_ELEMS", 1 << 20)
    x = torch.randn(numel).view(1, 1, numel).expand(2, 1, numel).contiguous().requires_grad_()
    spikes, _, _ = decay_fire_multi_step(x, backend="torch")
    spikes.sum().backward()
    assert bool(calls) == whole
