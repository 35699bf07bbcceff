"""Dense layouts run in place: channels_last / channels_last_3d / any permuted step, outputs keep the layout,
per-channel decay follows the channel stride, expanded gradients are read without being expanded, and only a
non-dense input (or a gradient in a layout of its own) is copied, once. Host runs of the kernels, exact values."""

from __future__ import annotations

import pytest
import torch
from test_kernel_bytes import OpLog
from test_kernel_host import dyadic, params

from sj_resnet.neuron.backends.cupy import contract

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
