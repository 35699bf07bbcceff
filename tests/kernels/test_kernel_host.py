"""The unmodified CUDA kernels, run on the CPU through the host shim, against the reference.

Each case drives ``contract.run_forward`` / ``run_backward`` (the code the GPU path runs) with the host
launcher, so grid computation, vector-path choice, layouts, allocation and the decay-gradient reduction are the
GPU's. Inputs are small dyadic rationals (k/32) and decays are in {1/4, 1/2, 3/4, 1}, so every membrane
potential is exact in float32: spikes and ``h`` must match bit for bit, whatever FMA contraction does.
Shapes leave a partial last block; ``vec`` cases take the vectorised path, ``misaligned`` and ``ragged``
the scalar fallback (each asserted from the launched kernel's name).
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_resnet.neuron.backends.cupy import contract, launch_plans
from sj_resnet.neuron.params import DecayFireParams
from sj_resnet.neuron.reference import decay_fire_reference, state_dtype_for
from sj_resnet.neuron.surrogates import SURROGATES

pytestmark = pytest.mark.cuda_cpu

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
V_TH = 0.5
# [T, N, C, H, W]: n = 2*3*13*28 = 2184 (vector path: 546 threads = 2 full blocks + 34), inner = 364.
SHAPE_VEC = (5, 2, 3, 13, 28)
# n = 3*5*7*11 = 1155: odd, so scalar; 1155 threads = 4 full blocks + 131.
SHAPE_RAGGED = (4, 3, 5, 7, 11)


def params(sid: int = 0, alpha: float = 1.0, detach: bool = False, store_v_seq: bool = False,
           saved_state: str = "fp32") -> DecayFireParams:
    return DecayFireParams(v_threshold=V_TH, surrogate_id=sid, alpha=alpha, detach_reset=detach,
                           store_v_seq=store_v_seq, saved_state=saved_state)


def dyadic(shape, lo, hi, gen, dtype) -> torch.Tensor:
    return (torch.randint(lo, hi, shape, generator=gen).to(torch.float64) / 32).to(dtype)


def _misaligned_like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data pointer is one element past an aligned address."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def make_case(dtype, path, per_channel, carried, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPE_RAGGED if path == "ragged" else SHAPE_VEC
    sdt = state_dtype_for(dtype)
    x = dyadic(shape, -16, 26, gen, dtype)  # x in [-0.5, 0.78]: some steps fire alone, some need charge
    if path == "misaligned":
        x = _misaligned_like(x)
    v0 = dyadic(shape[1:], -8, 16, gen, sdt) if carried else None
    if per_channel:
        choices = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=sdt)
        decay = choices[torch.randint(0, 4, (shape[2],), generator=gen)]
    else:
        decay = torch.tensor(0.75, dtype=sdt)
    return x, v0, decay


def _expected_vec(dtype, path) -> int:
    return launch_plans.DTYPES[contract.kernel_dtype(dtype)].vec if path == "vec" else 1


def launched_vec(name: str) -> int:
    return int(name.split("<", 1)[1].split(",")[1])


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    expected = expected.to(actual.dtype)
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("path", ["vec", "misaligned", "ragged"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("store_v_seq", [False, True], ids=["vlast", "vseq"])
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
def test_kernels_match_reference(host_kernels, dtype, path, per_channel, store_v_seq, carried):
    x, v0, decay = make_case(dtype, path, per_channel, carried, seed=hash((str(dtype), path, per_channel)) % 2**31)
    sdt = decay.dtype
    v0_ref = torch.zeros(x.shape[1:], dtype=sdt) if v0 is None else v0

    # ---- forward: inference, training with h saved, training with float16 h - v_th saved: exact ----
    ref_spike, ref_v_last, ref_v_seq = decay_fire_reference(x, v0_ref, decay, V_TH, surrogate.Rect(), False)
    ref_v_out = ref_v_seq if store_v_seq else ref_v_last
    outs = {}
    for mode, needs_grad, kind in (("infer", False, "fp32"), ("fp32", True, "fp32"), ("fp16", True, "fp16")):
        spike, v_out, saved = contract.run_forward(x, v0, decay, params(store_v_seq=store_v_seq, saved_state=kind),
                                                   needs_grad, host_kernels)
        assert launched_vec(host_kernels.launches[-1].name) == _expected_vec(dtype, path)
        assert spike.dtype == dtype and v_out.dtype == sdt
        assert torch.equal(spike, ref_spike), mode
        assert torch.equal(v_out, ref_v_out), mode
        outs[mode] = saved
    assert outs["infer"] is None
    h_seq, d16 = outs["fp32"], outs["fp16"]
    assert h_seq.dtype == sdt and d16.dtype == torch.float16
    # h is the pre-reset potential: v = h * (1 - o), and the float16 state is h - v_th with the decision in its sign
    assert torch.equal(h_seq * (1 - ref_spike.to(sdt)), ref_v_seq)
    assert torch.equal(torch.signbit(d16), ref_spike == 0)
    assert torch.equal(d16, (h_seq - V_TH).to(torch.float16).abs() * torch.where(ref_spike == 1, 1, -1).half())
    rate = ref_spike.double().mean().item()
    assert 0.05 < rate < 0.95, f"degenerate test input: firing rate {rate}"
    assert bool(((h_seq == V_TH) & (ref_spike == 1)).any())  # equality fires (SpikingJelly's heaviside)

    # ---- backward: every surrogate, detach_reset both ways, against the reference's autograd ----
    gen = torch.Generator().manual_seed(7)
    grad_spike = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(ref_v_out.shape, generator=gen, dtype=torch.float64).to(sdt)
    if path == "misaligned":
        grad_spike = _misaligned_like(grad_spike)
    tol = {torch.float64: 1e-10, torch.float32: 2e-5}.get(dtype, 1e-2)
    h16 = V_TH + d16.to(sdt)  # the state the float16 path reconstructs
    for spec in SURROGATES:
        sg = spec.sj_class()
        alpha = float(sg.alpha)
        for detach in (False, True):
            p = params(spec.sid, alpha, detach, store_v_seq)
            gx, gv0, gd = contract.run_backward(grad_spike, grad_v, h_seq, v0, decay, p, carried, True, host_kernels)
            assert launched_vec(host_kernels.launches[-1].name) == _expected_vec(dtype, path)
            assert gx.dtype == dtype and gd.shape == decay.shape
            assert (gv0 is None) == (not carried)
            xr = x.detach().clone().requires_grad_(True)
            v0r = v0_ref.clone().requires_grad_(True)
            dr = decay.clone().requires_grad_(True)
            s_r, vl_r, vs_r = decay_fire_reference(xr, v0r, dr, V_TH, sg, detach)
            loss = (s_r.to(sdt) * grad_spike.to(sdt)).sum() + ((vs_r if store_v_seq else vl_r) * grad_v).sum()
            ref = torch.autograd.grad(loss, (xr, v0r, dr))
            what = f"{spec.name} detach={detach}"
            close(gx, ref[0], tol, f"grad_x {what}")
            if carried:
                close(gv0, ref[1], tol, f"grad_v0 {what}")
            close(gd, ref[2], tol, f"grad_decay {what}")
            # float16 state: the same arithmetic on h16 (decisions from the sign bit, which agree here)
            p16 = params(spec.sid, alpha, detach, store_v_seq, "fp16")
            a = contract.run_backward(grad_spike, grad_v, d16, v0, decay, p16, carried, True, host_kernels)
            b = contract.run_backward(grad_spike, grad_v, h16, v0, decay, p, carried, True, host_kernels)
            assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]), f"fp16 state {what}"
            assert (a[1] is None and b[1] is None) or torch.equal(a[1], b[1])


def test_fp16_state_decision_is_the_sign_bit(host_kernels):
    """h just below v_th rounds to d = -0 in float16: not fired (a ``d >= 0`` test would say fired)."""
    below = torch.tensor(V_TH, dtype=torch.float32).nextafter(torch.tensor(0.0)).item()
    x = torch.tensor([[below, V_TH, 0.0, 1.0]])
    spike, _, d16 = contract.run_forward(x, None, torch.tensor(0.5), params(saved_state="fp16"), True, host_kernels)
    assert spike.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert torch.signbit(d16).tolist() == [[True, False, True, False]] and d16[0, 0].item() == 0.0
    gs = torch.ones_like(x)
    gv = torch.ones(4)
    p = params(0, 1.0, saved_state="fp16")  # Rect, sg(0) = 1: grad_x = gs*sg + ((1 - o) - h*sg) * gv
    gx, _, _ = contract.run_backward(gs, gv, d16, None, torch.tensor(0.5), p, False, False, host_kernels)
    assert gx[0, 0].item() == 1.0 + (1.0 - V_TH)  # not fired
    assert gx[0, 1].item() == 1.0 + (0.0 - V_TH)  # fired at h == v_th


def test_continuous_inputs_away_from_threshold(host_kernels):
    """Random (non-dyadic) inputs and alphas in float32/bfloat16; neurons that pass within 1e-3 of a decision
    boundary are excluded, the rest must agree with the float64 kernels (no spike may flip)."""
    gen = torch.Generator().manual_seed(11)
    T, shape = 6, (3, 4, 9, 10)
    x64 = torch.randn((T, *shape), generator=gen, dtype=torch.float64) * 0.4 + 0.15
    v0 = torch.randn(shape, generator=gen) * 0.2
    decay = torch.rand(shape[1], generator=gen) * 0.8 + 0.1
    for dtype, tol in ((torch.float32, 2e-4), (torch.bfloat16, 2e-2)):
        x = x64.to(dtype)
        xr = x.double()
        s_ref, _, h_ref = contract.run_forward(xr, v0.double(), decay.double(), params(), True, host_kernels)
        spike, _, h = contract.run_forward(x, v0, decay, params(), True, host_kernels)
        for spec in SURROGATES:
            alpha = 1.7
            boundaries = [V_TH] + ([V_TH - 0.5 / alpha, V_TH + 0.5 / alpha] if spec.name == "Rect" else [])
            boundaries += [V_TH - 1 / alpha, V_TH + 1 / alpha] if spec.name == "PiecewiseQuadratic" else []
            near = torch.zeros(shape, dtype=torch.bool)
            for b in boundaries:
                near |= ((h_ref - b).abs() < 1e-3).any(dim=0)
            keep = ~near
            assert keep.float().mean() > 0.8
            assert torch.equal(spike.double()[:, keep], s_ref[:, keep])
            gs = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            gv = torch.randn(shape, generator=gen, dtype=torch.float64)
            p = params(spec.sid, alpha)
            gx, gv0, _ = contract.run_backward(gs.to(dtype), gv.float(), h, v0, decay, p, True, True, host_kernels)
            ref = contract.run_backward(gs.to(dtype).double(), gv, h_ref, v0.double(), decay.double(), p, True, False,
                                        host_kernels)
            close(gx.double()[:, keep], ref[0][:, keep], tol, f"grad_x {spec.name}")
            close(gv0.double()[keep], ref[1][keep], tol, f"grad_v0 {spec.name}")


def test_surrogate_twin_matches_python_table(host_kernels):
    """``surrogates.cuh`` evaluated on the host equals ``surrogates.py`` (both dtypes, several alphas)."""
    assert host_kernels.num_surrogates() == len(SURROGATES)
    x = torch.linspace(-3.0, 3.0, 6001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.0, 0.25, -0.25, 0.5, -0.5, 1.0, -1.0], dtype=torch.float64)])
    for spec in SURROGATES:
        for alpha in (0.5, 1.0, 1.7, 4.0):
            for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
                xs = x.to(dtype)
                got = host_kernels.surrogate_grad(spec.sid, xs, alpha)
                want = spec.grad(xs, alpha)
                close(got, want, tol, f"{spec.name} alpha={alpha} {dtype}")
