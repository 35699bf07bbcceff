"""Dense layouts run in place: channels_last / channels_last_3d / any permuted step, outputs keep the layout,
per-channel decay follows the channel stride, expanded gradients are read without being expanded, and only a
non-dense input (or a gradient in a layout of its own) is copied, once. Host runs of the kernels, exact values."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate
from test_kernel_bytes import OpLog
from test_kernel_host import V_TH, close, dyadic, launched_vec, params

from sj_resnet.neuron.backends import torch_fused
from sj_resnet.neuron.backends.cupy import contract
from sj_resnet.neuron.reference import decay_fire_reference
from sj_resnet.neuron.surrogates import SURROGATES

pytestmark = pytest.mark.cuda_cpu
COPIES = {"copy_", "clone", "contiguous", "_to_copy"}


def _layouts():
    g = torch.Generator().manual_seed(3)
    cl = dyadic((3, 2, 6, 5, 8), -16, 26, g, torch.float32).permute(0, 1, 4, 2, 3)  # [T, N, C=8, H, W] NHWC
    cl3d = dyadic((2, 2, 3, 4, 5, 8), -16, 26, g, torch.bfloat16).permute(0, 1, 5, 2, 3, 4)  # NDHWC
    n_inner = dyadic((3, 8, 7, 4), -16, 26, g, torch.float32).permute(0, 3, 1, 2)  # [T, N=4, C=8, L=7], N fastest
    return {"channels_last": cl, "channels_last_3d": cl3d, "batch_innermost": n_inner}


@pytest.mark.parametrize("name", ["channels_last", "channels_last_3d", "batch_innermost"])
@pytest.mark.parametrize("saved_state", ["fp32", "fp16"])
def test_dense_layouts_run_in_place(host_kernels, name, saved_state):
    x = _layouts()[name]
    assert not x.is_contiguous()
    C = x.shape[2]
    decay = torch.tensor([0.25, 0.5, 0.75, 1.0] * (C // 4))
    v0 = (torch.arange(x[0].numel(), dtype=torch.float32).view(x.shape[1:]) % 5) / 8  # contiguous: copied once
    v0_in_layout = torch.empty_like(x[0], dtype=torch.float32).copy_(v0)
    p = params(2, 2.0, saved_state=saved_state)
    with OpLog() as ops:
        spike, v_last, saved = contract.run_forward(x, v0_in_layout, decay, p, True, host_kernels)
    assert not (set(ops.ops) & COPIES), ops.ops
    assert spike.stride() == x.stride() and saved.stride() == x.stride() and v_last.stride() == x[0].stride()
    ref = contract.run_forward(x.contiguous(), v0, decay, p, True, host_kernels)
    assert torch.equal(spike, ref[0]) and torch.equal(v_last, ref[1]) and torch.equal(saved, ref[2])
    with OpLog() as ops:
        again = contract.run_forward(x, v0, decay, p, True, host_kernels)  # a state in another layout
    assert [o for o in ops.ops if o in COPIES] == ["copy_"] and torch.equal(again[0], spike)

    gs = dyadic(x.shape, -8, 8, torch.Generator().manual_seed(4), x.dtype)
    gs_layout = torch.empty_like(x).copy_(gs)
    with OpLog() as ops:
        gx, gv0, gd = contract.run_backward(gs_layout, None, saved, v0_in_layout, decay, p, True, True, host_kernels)
    assert not (set(ops.ops) & COPIES), ops.ops
    assert gx.stride() == x.stride() and gv0.stride() == x[0].stride()
    want = contract.run_backward(gs.contiguous(), None, ref[2], v0, decay, p, True, True, host_kernels)
    assert torch.equal(gx, want[0]) and torch.equal(gv0, want[1]) and torch.allclose(gd, want[2], rtol=1e-5, atol=1e-6)

    # expanded incoming gradients (what s.sum().backward() and v.sum().backward() hand over): no copy
    ones = torch.ones((), dtype=x.dtype).expand(x.shape)
    ones_v = torch.ones(()).expand(x.shape[1:])
    with OpLog() as ops:
        gx1 = contract.run_backward(ones, ones_v, saved, None, decay, p, False, False, host_kernels)[0]
    assert not (set(ops.ops) & COPIES), ops.ops
    plan = host_kernels.launches[-1]
    assert (plan.arg("gs_nstride"), plan.arg("gs_tstride"), plan.arg("gv_nstride")) == (0, 0, 0)
    dense = contract.run_backward(torch.ones_like(x), torch.ones_like(v_last), saved, None, decay, p, False, False,
                                  host_kernels)[0]
    assert torch.equal(gx1, dense)


def test_gradient_expanded_over_time_and_per_step(host_kernels):
    x = _layouts()["channels_last"]
    decay = torch.tensor(0.5)
    p = params(1, 4.0)
    _, _, h = contract.run_forward(x, None, decay, p, True, host_kernels)
    step = dyadic(x.shape[1:], -8, 8, torch.Generator().manual_seed(5), x.dtype)
    step_cl = torch.empty_like(x[0]).copy_(step)
    per_t = torch.tensor([1.0, -0.5, 2.0])
    for g in (step_cl.expand(x.shape), per_t.view(3, 1, 1, 1, 1).expand(x.shape)):
        with OpLog() as ops:
            gx = contract.run_backward(g, None, h, None, decay, p, False, False, host_kernels)[0]
        assert not (set(ops.ops) & COPIES), ops.ops
        want = contract.run_backward(g.contiguous(), None, h.contiguous(), None, decay, p, False, False,
                                     host_kernels)[0]
        assert torch.equal(gx, want)


def test_non_dense_input_is_copied_once(host_kernels):
    g = torch.Generator().manual_seed(6)
    x = dyadic((4, 3, 8), -16, 26, g, torch.float32).transpose(0, 1)  # [T=3, N=4, C=8]: steps interleaved
    decay = torch.tensor([0.25, 0.5, 0.75, 1.0] * 2)
    p = params()
    with OpLog() as ops:
        spike, v_last, h = contract.run_forward(x, None, decay, p, True, host_kernels)
    assert [o for o in ops.ops if o in COPIES] == ["clone"]
    assert spike.is_contiguous()
    ref = contract.run_forward(x.contiguous(), None, decay, p, True, host_kernels)
    assert torch.equal(spike, ref[0]) and torch.equal(h, ref[2])
    with OpLog() as ops:  # a gradient in a layout of its own: one copy into the saved state's layout
        gx = contract.run_backward(torch.ones(8, 4, 3).permute(2, 1, 0), None, h, None, decay, p, False, False,
                                   host_kernels)[0]
    assert [o for o in ops.ops if o in COPIES] == ["copy_"]
    assert torch.equal(gx, contract.run_backward(torch.ones(3, 4, 8), None, h, None, decay, p, False, False,
                                                 host_kernels)[0])


# (shape as stored, permutation to [T, N, C, *], expected V). n % 4 == 0 takes the vector path with one decay per
# lane; C = 6 / 5 make vectors span two pixels' channels; the last size is ragged (n = 105): the scalar path.
PER_LANE_CASES = {
    "channels_last_c8": ((3, 2, 5, 7, 8), (0, 1, 4, 2, 3), 4),
    "channels_last_c6": ((4, 2, 5, 6, 6), (0, 1, 4, 2, 3), 4),
    "channels_last_3d_c12": ((2, 1, 3, 5, 3, 12), (0, 1, 5, 2, 3, 4), 4),
    "channels_last_3d_c5": ((3, 3, 2, 2, 2, 5), (0, 1, 5, 2, 3, 4), 4),
    "channels_last_ragged": ((3, 1, 5, 7, 3), (0, 1, 4, 2, 3), 1),
}


@pytest.mark.parametrize("case", list(PER_LANE_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("saved_state", ["fp32", "fp16"])
def test_per_channel_decay_vector_path_matches_reference(host_kernels, case, dtype, saved_state):
    """Per-channel decay on channels-innermost layouts: each lane of a vector reads its own channel's decay and
    (backward) keeps its own decay-gradient partial sum. Spikes, ``v`` and the saved state exact (the saved state
    bit for bit equal to the torch backend's); gradients of ``x``, ``v0`` and the decay against the reference's
    autograd (fp32 state) and the torch backend (both states), every surrogate, ``detach_reset`` both ways."""
    stored, perm, vec = PER_LANE_CASES[case]
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    x = dyadic(stored, -16, 26, g, dtype).permute(perm)
    C = x.shape[2]
    decay = torch.tensor([0.25, 0.5, 0.75, 1.0])[torch.randint(0, 4, (C,), generator=g)]
    v0 = torch.empty_like(x[0], dtype=torch.float32).copy_(dyadic(x.shape[1:], -8, 16, g, torch.float32))
    ref_s, ref_v, _ = decay_fire_reference(x, v0, decay, V_TH, surrogate.Rect(), False)
    p = params(0, 1.0, saved_state=saved_state)
    spike, v_last, saved = contract.run_forward(x, v0, decay, p, True, host_kernels)
    plan = host_kernels.launches[-1]
    assert plan.arg("channel_stride") == 1 and launched_vec(plan.name) == vec
    assert torch.equal(spike, ref_s) and torch.equal(v_last, ref_v) and spike.stride() == x.stride()
    t_saved = torch_fused.forward(x, v0, decay, p, True)[2]
    assert torch.equal(saved.view(torch.int16 if saved_state == "fp16" else torch.int32),
                       t_saved.view(torch.int16 if saved_state == "fp16" else torch.int32))
    gs = dyadic(x.shape, -8, 8, g, dtype)
    gv = dyadic(x.shape[1:], -8, 8, g, torch.float32)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    for spec in SURROGATES:
        for detach in (False, True):
            sg = spec.sj_class()
            p = params(spec.sid, float(sg.alpha), detach, saved_state=saved_state)
            got = contract.run_backward(gs, gv, saved, v0, decay, p, True, True, host_kernels)
            assert launched_vec(host_kernels.launches[-1].name) == vec
            what = f"{case} {spec.name} detach={detach}"
            want = torch_fused.backward(gs, gv, t_saved, v0, decay, p, True, True)
            if saved_state == "fp32":
                xr = x.detach().clone().requires_grad_(True)
                v0r = v0.detach().clone().requires_grad_(True)
                dr = decay.clone().requires_grad_(True)
                s_r, vl_r, _ = decay_fire_reference(xr, v0r, dr, V_TH, sg, detach)
                loss = (s_r.float() * gs.float()).sum() + (vl_r * gv).sum()
                ref = torch.autograd.grad(loss, (xr, v0r, dr))
                for name, a, b in zip(("x", "v0", "decay"), got, ref, strict=True):
                    close(a, b, tol, f"grad_{name} {what} vs reference")
            for name, a, b in zip(("x", "v0", "decay"), got, want, strict=True):
                close(a, b, tol, f"grad_{name} {what} vs torch backend")
