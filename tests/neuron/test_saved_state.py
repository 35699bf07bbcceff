"""``saved_state='fp16'``: backward from ``d = h - V_th`` saved as float16 instead of ``h`` in the state dtype.

What must hold (``docs/neuron.md``): spikes and potentials bit-identical to the fp32 path; the spike read back
from the sign bit, ``-0`` included; exactly half the saved bytes; the gradients within the stated bound of
the fp32-state gradients, for every surrogate, with and without ``detach_reset``, per-layer and per-channel decay.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_resnet import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step
from sj_resnet.neuron.backends import torch_fused
from sj_resnet.neuron.params import DecayFireParams
from sj_resnet.neuron.surrogates import SURROGATES
from sj_resnet.neuron.testing import critical_offsets_for, sample_inputs

V_TH = 0.5
SHAPE = (6, 3, 4, 5)  # [T, N, C, L]


def _grads(x, v0, decay, sg, detach_reset, saved_state, gs, gv):
    x = x.detach().clone().requires_grad_()
    v0 = v0.detach().clone().requires_grad_()
    decay = decay.detach().clone().requires_grad_()
    spikes, v_last, _ = decay_fire_multi_step(x, v0, decay, V_TH, sg, detach_reset, False, "torch", saved_state)
    ((spikes * gs).sum() + (v_last * gv).sum()).backward()
    return spikes, v_last, x.grad, v0.grad, decay.grad


def test_spikes_and_potentials_bit_identical_with_continuous_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 6, 7, generator=g) * 0.7 + 0.2  # no margin: values near the threshold included
    decay = torch.rand(6, generator=g) * 0.9 + 0.05
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        xd = x.to(dtype).requires_grad_()
        a = decay_fire_multi_step(xd, None, decay.to(dtype), V_TH, None, False, True, "torch", "fp32")
        b = decay_fire_multi_step(xd, None, decay.to(dtype), V_TH, None, False, True, "torch", "fp16")
        for u, w in zip(a, b, strict=True):
            assert torch.equal(u, w)


def test_spike_from_the_sign_bit_including_negative_zero():
    """h one ulp below V_th: h - V_th = -2^-25 rounds to -0.0 in float16; the neuron did not fire, and backward
    must see (1 - o) = 1 there (``d >= 0`` would wrongly say it fired)."""
    below = torch.nextafter(torch.tensor(V_TH), torch.tensor(0.0))
    x = torch.stack([below, torch.tensor(V_TH), torch.tensor(0.2)]).view(3, 1)  # T=3, one neuron: h = x[0] first
    x = x.expand(3, 3).clone()
    x[0, 1], x[0, 2] = V_TH, 0.2  # neuron 1 fires at equality, neuron 2 stays below
    p = DecayFireParams(v_threshold=V_TH, surrogate_id=0, alpha=1.0, detach_reset=True, store_v_seq=False,
                        saved_state="fp16")  # fmt: skip
    spikes, _, d = torch_fused.forward(x, None, torch.tensor(0.25), p, True)
    assert d.dtype == torch.float16 and torch.signbit(d[0, 0]) and d[0, 0] == 0
    assert spikes[0].tolist() == [0.0, 1.0, 0.0]
    # detach_reset, Rect: gh[0] = gs*sg + (1 - o) * decay * gh[1]; only the reset factor differs between fired/not
    gs = torch.zeros_like(x)
    gs[1] = 1.0
    gx16 = torch_fused.backward(gs, None, d, None, torch.tensor(0.25), p, False, False)[0]
    p32 = DecayFireParams(v_threshold=V_TH, surrogate_id=0, alpha=1.0, detach_reset=True, store_v_seq=False)
    _, _, h = torch_fused.forward(x, None, torch.tensor(0.25), p32, True)
    gx32 = torch_fused.backward(gs, None, h, None, torch.tensor(0.25), p32, False, False)[0]
    assert gx16[0, 0] != 0  # not fired: the gradient flows through v[0] into h[1]
    torch.testing.assert_close(gx16, gx32, atol=0, rtol=0)


def test_saved_bytes_are_exactly_half():
    x = sample_inputs((4, 8, 16, 9), seed=1).requires_grad_()
    counted = {}
    for kind in ("fp32", "fp16"):
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            decay_fire_multi_step(x, decay=0.3, backend="torch", saved_state=kind)
        counted[kind] = sum(t.numel() * t.element_size() for t in saved)
    assert counted["fp32"] == 4 * x.numel()
    assert counted["fp16"] * 2 == counted["fp32"]


def _bound(x, v0, decay, spec, alpha, detach_reset, gs, gv):
    """Elementwise bound on |grad(fp16 state) - grad(fp32 state)| from docs/neuron.md, in float64.

    delta[t] = 2^-11 |z| + 2^-25 + 2^-24 |h| bounds |h_hat - h| (float16 rounding of z = h - V_th, its subnormal
    spacing, and the float32 sum V_th + d); then |d sg| <= slope * delta, |d a| <= (|h| + delta) slope delta +
    peak delta (0 with detach_reset), and the error of gh runs through the same linear recurrence as gh.
    """
    x, v0, gs, gv = (t.double() for t in (x, v0, gs, gv))
    d = decay.double().view(-1, *([1] * (x.dim() - 3))) if decay.dim() == 1 else decay.double()
    T = x.shape[0]
    hs, v = [], v0
    for t in range(T):
        h = d * v + x[t]
        hs.append(h)
        v = h * (h < V_TH)
    peak, slope = spec.peak(alpha), spec.slope(alpha)
    e_next, g_next, grad_x_bound, acc = None, None, [None] * T, torch.zeros_like(v0)
    for t in range(T - 1, -1, -1):
        h = hs[t]
        z = h - V_TH
        delta = 2.0**-11 * z.abs() + 2.0**-25 + 2.0**-24 * h.abs()
        sg = spec.grad(z, alpha)
        a = (h < V_TH).double() - (0 if detach_reset else h * sg)
        d_sg = slope * delta
        d_a = torch.zeros_like(h) if detach_reset else (h.abs() + delta) * slope * delta + peak * delta
        carry = (gv if t == T - 1 else 0) + (d * g_next if g_next is not None else 0)
        g = gs[t] * sg + a * carry
        e = gs[t].abs() * d_sg + d_a * torch.as_tensor(carry).abs()
        if e_next is not None:
            e = e + (a.abs() + d_a) * d * e_next
        grad_x_bound[t] = e
        v_prev = hs[t - 1] * (hs[t - 1] < V_TH) if t > 0 else v0
        dv_prev = (2.0**-11 * (hs[t - 1] - V_TH).abs() + 2.0**-25 + 2.0**-24 * hs[t - 1].abs()) if t > 0 else 0
        acc = acc + e * v_prev.abs() + (g.abs() + e) * dv_prev
        e_next, g_next = e, g
    return torch.stack(grad_x_bound), d * e_next, acc


@pytest.mark.parametrize("spec", SURROGATES, ids=lambda s: s.name)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
def test_gradient_error_within_the_documented_bound(spec, detach_reset, per_channel):
    alpha = 1.7
    sg = spec.sj_class(alpha=alpha)
    g = torch.Generator().manual_seed(spec.sid + 10 * detach_reset)
    decay = torch.tensor([0.2, 0.5, 0.8, 1.0]) if per_channel else torch.tensor(0.6)
    v0 = torch.rand(SHAPE[1:], generator=g) * 0.4
    x = sample_inputs(SHAPE, decay=decay, v0=v0, critical_offsets=critical_offsets_for(sg), std=1.2, seed=spec.sid)
    gs, gv = torch.randn(SHAPE, generator=g), torch.randn(SHAPE[1:], generator=g)
    s32, v32, *grads32 = _grads(x, v0, decay, sg, detach_reset, "fp32", gs, gv)
    s16, v16, *grads16 = _grads(x, v0, decay, sg, detach_reset, "fp16", gs, gv)
    assert torch.equal(s16, s32) and torch.equal(v16, v32)
    bx, bv0, bacc = _bound(x, v0, decay, spec, alpha, detach_reset, gs, gv)
    bdecay = bacc.sum(dim=[i for i in range(bacc.dim()) if i != 1]) if per_channel else bacc.sum()
    slack = 1e-5  # float32 arithmetic of the two paths (they round different intermediates)
    for name, got, ref, bound in zip(("x", "v0", "decay"), grads16, grads32, (bx, bv0, bdecay), strict=True):
        err = (got.double() - ref.double()).abs()
        excess = err - bound - slack * (1 + ref.double().abs())
        assert (excess <= 0).all(), f"grad_{name}: error {err.max():.3g} exceeds the bound by {excess.max():.3g}"
        assert torch.isfinite(got).all()
    if spec.name == "Rect" and detach_reset:  # sg and (1 - o) depend on h only through exact comparisons
        assert (bx == 0).all() and torch.equal(grads16[0], grads32[0]) and torch.equal(grads16[1], grads32[1])
    else:
        assert (bx > 0).any()


def test_huge_potentials_saturate_instead_of_inf():
    """|h - V_th| > 65504 saves +-65504 (not inf): no NaN gradient from inf * 0 in (1 - o) - h * sg."""
    x = torch.tensor([[1e6, -1e6, 0.2]], requires_grad=True).expand(2, 3).clone().detach().requires_grad_()
    spikes, _, _ = decay_fire_multi_step(x, None, 0.5, V_TH, surrogate.ATan(), False, False, "torch", "fp16")
    spikes.sum().backward()
    assert torch.isfinite(x.grad).all()
    ref = x.detach().clone().requires_grad_()
    decay_fire_multi_step(ref, None, 0.5, V_TH, surrogate.ATan(), False, False, "torch", "fp32")[0].sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset-grad", "detach"])
@pytest.mark.parametrize("spec", SURROGATES, ids=lambda s: s.name)
def test_saturation_keeps_spikes_exact_and_gradients_finite(spec, detach_reset, dtype):
    """|h - V_th| around 6e4, 7e4, 1e6 and 3e38: the saved d is +-65504 beyond float16's range (the clamp acts),
    spikes and potentials equal the fp32-state path, every gradient is finite, and the x / v0 gradients equal the
    fp32-state ones up to the surrogate's tail at 65504 (the decay gradient, sum gh * v[t-1] with |v| up to 3e38,
    is not comparable there: only finite)."""
    g = torch.Generator().manual_seed(9)
    mags = torch.tensor([6e4, 7e4, 1e6, 3e38, 0.25, 0.75], dtype=torch.float64)
    n = 60
    sign = torch.where(torch.rand(4, n, generator=g) < 0.5, -1.0, 1.0).double()
    x = (mags[torch.arange(n) % 6] * sign + V_TH).to(dtype)  # [T=4, n]
    v0 = torch.where(torch.arange(n) % 2 == 0, 7e4, -1e6).float()
    decay = torch.tensor(0.0625)  # |h| <= 3e38 / (1 - decay) < 3.4e38: finite
    p = DecayFireParams(v_threshold=V_TH, surrogate_id=spec.sid, alpha=float(spec.sj_class().alpha),
                        detach_reset=detach_reset, store_v_seq=False, saved_state="fp16")
    _, _, d = torch_fused.forward(x, v0, decay, p, True)
    h = torch_fused.forward(x, v0, decay, dataclasses.replace(p, saved_state="fp32"), True)[2]
    assert torch.isfinite(h).all() and (h - V_TH).abs().max() > 1e38
    beyond = (h - V_TH).abs() > 65504
    assert beyond.any() and torch.equal(d.float().abs()[beyond], torch.full_like(h[beyond], 65504))
    gs, gv = torch.randn(x.shape, generator=g), torch.randn(n, generator=g)
    s32, v32, *grads32 = _grads(x, v0, decay, spec.sj_class(), detach_reset, "fp32", gs.to(dtype), gv)
    s16, v16, *grads16 = _grads(x, v0, decay, spec.sj_class(), detach_reset, "fp16", gs.to(dtype), gv)
    assert torch.equal(s16, s32) and torch.equal(v16, v32)
    for name, got, ref in zip(("x", "v0", "decay"), grads16, grads32, strict=True):
        assert torch.isfinite(got).all(), f"grad_{name} not finite"
        if name != "decay":
            rtol = 1e-2 if dtype == torch.bfloat16 else 1e-3
            torch.testing.assert_close(got.float(), ref.float(), atol=1e-3, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes(dtype):
    x = sample_inputs((4, 2, 3, 5), dtype=dtype, seed=3)
    out = {}
    for kind in ("fp32", "fp16"):
        xg = x.clone().requires_grad_()
        spikes, v_last, _ = decay_fire_multi_step(xg, None, 0.3, V_TH, surrogate.Sigmoid(), backend="torch",
                                                  saved_state=kind)  # fmt: skip
        (spikes.float().sum() + v_last.sum()).backward()
        out[kind] = (spikes, v_last, xg.grad)
    assert torch.equal(out["fp16"][0], out["fp32"][0]) and torch.equal(out["fp16"][1], out["fp32"][1])
    assert out["fp16"][2].dtype == dtype
    torch.testing.assert_close(out["fp16"][2], out["fp32"][2], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("node_cls", [DecayFireNode, ParametricDecayFireNode])
def test_nodes_take_saved_state(node_cls):
    node = node_cls(step_mode="m", backend="torch", saved_state="fp16")
    assert "saved_state='fp16'" in repr(node)
    x = sample_inputs((4, 2, 3), seed=5).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = node(x)
    full = [t for t in saved if t.shape == x.shape]
    assert len(full) == 1 and full[0].dtype == torch.float16
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match=r"saved_state must be one of \('fp32', 'fp16'\)"):
        node_cls(saved_state="bf16")


@pytest.mark.parametrize("spec", SURROGATES, ids=lambda s: s.name)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_surrogate_peak_and_slope_constants(spec, alpha):
    """``peak`` and ``slope`` (used by the bound above) are the max of sg and of |sg'| on a fine grid."""
    x = torch.linspace(-6, 6, 240001, dtype=torch.float64)
    sg = spec.grad(x, alpha)
    assert math.isclose(sg.max().item(), spec.peak(alpha), rel_tol=1e-6)
    slope = (sg.diff() / x.diff()).abs()
    if spec.name == "Rect":
        jumps = (sg.diff() != 0)
        assert jumps.sum() == 2 and slope[~jumps].max() == 0 == spec.slope(alpha)
    else:
        assert math.isclose(slope.max().item(), spec.slope(alpha), rel_tol=1e-3)
