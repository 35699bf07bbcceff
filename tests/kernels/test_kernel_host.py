"""The unmodified CUDA kernels, run on the CPU through the host shim, against the reference and torch backend.

Each case drives ``runner.run_forward`` / ``run_backward`` (the code the GPU path runs) with the host
launcher, so grid computation, vector-path choice, allocation and the decay-gradient reduction are the
GPU's. Inputs are small dyadic rationals (k/32) and decays are in {1/4, 1/2, 3/4, 1}, so every membrane
potential is exact in float32: spikes and ``h`` must match bit for bit, whatever FMA contraction does.
Shapes leave a partial last block; ``vec`` cases take the vectorised path, ``misaligned`` and ``ragged``
the scalar fallback (each asserted from the launched kernel's name).
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_resnet.neuron.backends import cupy as cupy_backend
from sj_resnet.neuron.backends import torch_fused
from sj_resnet.neuron.backends.cupy import kernels, runner
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


def _params(sid: int = 0, alpha: float = 1.0, detach: bool = False, store_v_seq: bool = False) -> DecayFireParams:
    return DecayFireParams(
        v_threshold=V_TH, surrogate_id=sid, alpha=alpha, detach_reset=detach, store_v_seq=store_v_seq
    )


def _dyadic(shape, lo, hi, gen, dtype) -> torch.Tensor:
    return (torch.randint(lo, hi, shape, generator=gen).to(torch.float64) / 32).to(dtype)


def _misaligned_like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data pointer is one element past an aligned address."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _make_case(dtype, path, per_channel, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPE_RAGGED if path == "ragged" else SHAPE_VEC
    sdt = state_dtype_for(dtype)
    x = _dyadic(shape, -16, 26, gen, dtype)  # x in [-0.5, 0.78]: some steps fire alone, some need charge
    if path == "misaligned":
        x = _misaligned_like(x)
    v0 = _dyadic(shape[1:], -8, 16, gen, sdt)
    if per_channel:
        choices = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=sdt)
        decay = choices[torch.randint(0, 4, (shape[2],), generator=gen)]
    else:
        decay = torch.tensor(0.75, dtype=sdt)
    return x, v0, decay


def _expected_vec(dtype, path) -> int:
    return kernels.DTYPES[runner.kernel_dtype(dtype)].vec if path == "vec" else 1


def _launched_vec(name: str) -> int:
    return int(name.split("<", 1)[1].split(",")[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("path", ["vec", "misaligned", "ragged"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("store_v_seq", [False, True], ids=["vlast", "vseq"])
def test_kernels_match_reference(host_kernels, dtype, path, per_channel, store_v_seq):
    x, v0, decay = _make_case(dtype, path, per_channel, seed=hash((str(dtype), path, per_channel)) % 2**31)
    sdt = v0.dtype

    # ---- forward: exact ----
    spike, v_out, h_seq = runner.run_forward(x, v0, decay, V_TH, store_v_seq, host_kernels.launch)
    assert _launched_vec(host_kernels.launches[-1].name) == _expected_vec(dtype, path)
    ref_spike, ref_v_last, ref_v_seq = decay_fire_reference(x, v0, decay, V_TH, surrogate.Rect(), False)
    ref_h = ref_v_seq.new_empty(ref_v_seq.shape)
    tf_spike, tf_v_out, tf_h = torch_fused.forward(x, v0, decay, _params(store_v_seq=store_v_seq), True)
    ref_h.copy_(tf_h)
    assert spike.dtype == dtype and h_seq.dtype == sdt and v_out.dtype == sdt
    assert torch.equal(spike, ref_spike)
    assert torch.equal(h_seq, tf_h)
    assert torch.equal(v_out, ref_v_seq if store_v_seq else ref_v_last)
    assert torch.equal(v_out, tf_v_out)
    rate = spike.double().mean().item()
    assert 0.05 < rate < 0.95, f"degenerate test input: firing rate {rate}"
    # equality h == v_th fires (SpikingJelly's heaviside): the dyadic inputs hit it
    assert bool(((h_seq == V_TH) & (spike == 1)).any())

    # ---- backward: every surrogate, detach_reset both ways, against the reference's autograd ----
    gen = torch.Generator().manual_seed(7)
    grad_spike = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(v_out.shape, generator=gen, dtype=torch.float64).to(sdt)
    if path == "misaligned":
        grad_spike = _misaligned_like(grad_spike)
    tol = {torch.float64: 1e-10, torch.float32: 2e-5}.get(dtype, 1e-2)
    for spec in SURROGATES:
        sg = spec.sj_class()
        alpha = float(sg.alpha)
        for detach in (False, True):
            gx, gv0, gd = runner.run_backward(
                grad_spike, grad_v, h_seq, v0, decay, V_TH, spec.sid, alpha, detach, store_v_seq, True,
                host_kernels.launch,
            )
            assert _launched_vec(host_kernels.launches[-1].name) == _expected_vec(dtype, path)
            assert gx.dtype == dtype and gv0.dtype == sdt and gd.shape == decay.shape
            xr = x.detach().clone().requires_grad_(True)
            v0r = v0.clone().requires_grad_(True)
            dr = decay.clone().requires_grad_(True)
            s_r, vl_r, vs_r = decay_fire_reference(xr, v0r, dr, V_TH, sg, detach)
            loss = (s_r.to(sdt) * grad_spike.to(sdt)).sum() + ((vs_r if store_v_seq else vl_r) * grad_v).sum()
            ref = torch.autograd.grad(loss, (xr, v0r, dr))
            what = f"{spec.name} detach={detach}"
            _close(gx, ref[0], tol, f"grad_x {what}")
            _close(gv0, ref[1], tol, f"grad_v0 {what}")
            _close(gd, ref[2], tol, f"grad_decay {what}")
            tf = torch_fused.backward(
                grad_spike, grad_v, h_seq, v0, decay, _params(spec.sid, alpha, detach, store_v_seq), True, True
            )
            _close(gx, tf[0], tol, f"grad_x vs torch {what}")
            _close(gd, tf[2], tol, f"grad_decay vs torch {what}")


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    expected = expected.to(actual.dtype)
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
def test_no_decay_grad_and_partial_layout(host_kernels, per_channel):
    """need_decay_grad=False launches with a null partial buffer and returns zeros; True matches torch."""
    x, v0, decay = _make_case(torch.float32, "vec", per_channel, seed=3)
    spike, v_last, h = runner.run_forward(x, v0, decay, V_TH, False, host_kernels.launch)
    gs, gv = torch.randn_like(x), torch.randn_like(v_last)
    _, _, gd = runner.run_backward(gs, gv, h, v0, decay, V_TH, 2, 2.0, False, False, False, host_kernels.launch)
    assert host_kernels.launches[-1].args[7] == ("ptr", 0)  # decay_partial = nullptr
    assert torch.equal(gd, torch.zeros_like(decay))
    gx, gv0, gd = runner.run_backward(gs, gv, h, v0, decay, V_TH, 2, 2.0, False, False, True, host_kernels.launch)
    tf = torch_fused.backward(gs, gv, h, v0, decay, _params(2, 2.0), True, True)
    _close(gd, tf[2], 2e-5, "grad_decay")
    _close(gv0, tf[1], 2e-5, "grad_v0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_continuous_inputs_away_from_threshold(host_kernels, dtype):
    """Random (non-dyadic) inputs and alphas; neurons that pass within 1e-3 of a decision boundary are
    excluded, the rest must agree with the float64 reference (no spike may flip)."""
    gen = torch.Generator().manual_seed(11)
    T, shape = 6, (3, 4, 9, 10)
    x = (torch.randn((T, *shape), generator=gen, dtype=torch.float64) * 0.4 + 0.15).to(dtype)
    v0 = torch.randn(shape, generator=gen) * 0.2
    decay = torch.rand(shape[1], generator=gen) * 0.8 + 0.1
    spike, v_last, h = runner.run_forward(x, v0, decay, V_TH, False, host_kernels.launch)
    x64 = x.double()
    s64, _, vs64 = decay_fire_reference(x64, v0.double(), decay.double(), V_TH, surrogate.Rect(), False)
    h64 = torch_fused.forward(x64, v0.double(), decay.double(), _params(store_v_seq=True), True)[2]
    for spec in SURROGATES:
        alpha = 1.7
        boundaries = [V_TH] + ([V_TH - 0.5 / alpha, V_TH + 0.5 / alpha] if spec.name == "Rect" else [])
        boundaries += [V_TH - 1 / alpha, V_TH + 1 / alpha] if spec.name == "PiecewiseQuadratic" else []
        near = torch.zeros(shape, dtype=torch.bool)
        for b in boundaries:
            near |= ((h64 - b).abs() < 1e-3).any(dim=0)
        keep = ~near
        assert keep.float().mean() > 0.8
        assert torch.equal(spike.double()[:, keep], s64[:, keep])
        gs = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        gv = torch.randn(shape, generator=gen, dtype=torch.float64)
        gx, gv0, _ = runner.run_backward(
            gs.to(dtype), gv.float(), h, v0, decay, V_TH, spec.sid, alpha, False, False, True, host_kernels.launch
        )
        ref = torch_fused.backward(gs.to(dtype).double(), gv, h64, v0.double(), decay.double(),
                                   _params(spec.sid, alpha), True, False)
        tol = 2e-4 if dtype == torch.float32 else 2e-2
        _close(gx.double()[:, keep], ref[0][:, keep], tol, f"grad_x {spec.name}")
        _close(gv0.double()[keep], ref[1][keep], tol, f"grad_v0 {spec.name}")


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
                _close(got, want, tol, f"{spec.name} alpha={alpha} {dtype}")


def test_through_custom_op_and_autograd(host_kernels, monkeypatch):
    """The whole op (torch.library custom op + autograd) with the host kernels standing in for the GPU."""
    import functools
    import types

    from sj_resnet.neuron import backends, ops

    fake = types.SimpleNamespace(  # the cupy backend's contract adapter, launching the host kernels
        forward=functools.partial(cupy_backend.forward_with, host_kernels.launch),
        backward=functools.partial(cupy_backend.backward_with, host_kernels.launch),
    )
    monkeypatch.setattr(backends, "get_backend", lambda name: fake)
    gen = torch.Generator().manual_seed(5)
    x = _dyadic((4, 2, 3, 4, 4), -16, 26, gen, torch.float32).requires_grad_(True)
    decay = torch.tensor([0.25, 0.5, 0.75], requires_grad=True)
    n_before = len(host_kernels.launches)
    s, v_last, v_seq = ops.decay_fire_multi_step(x, None, decay, V_TH, surrogate.ATan(), store_v_seq=True,
                                                 backend="torch")
    (s.sum() + v_seq.square().sum()).backward()
    assert len(host_kernels.launches) == n_before + 2
    xr = x.detach().clone().requires_grad_(True)
    dr = decay.detach().clone().requires_grad_(True)
    sr, _, vsr = decay_fire_reference(xr, torch.zeros(x.shape[1:]), dr, V_TH, surrogate.ATan(), False)
    (sr.sum() + vsr.square().sum()).backward()
    assert torch.equal(s, sr)
    _close(x.grad, xr.grad, 2e-5, "grad_x")
    _close(decay.grad, dr.grad, 2e-5, "grad_decay")
