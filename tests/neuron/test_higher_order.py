"""Higher-order autograd and ``torch.func``: correct through the reference, refused clearly by the fused backend."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_resnet import DecayFireNode, decay_fire_multi_step
from sj_resnet.neuron.testing import sample_inputs

SHAPE = (4, 2, 3)


def _inputs(dtype=torch.float64):
    x = sample_inputs(SHAPE, dtype=dtype, seed=1).requires_grad_()
    v0 = (torch.rand(SHAPE[1:], generator=torch.Generator().manual_seed(2), dtype=dtype) * 0.3).requires_grad_()
    decay = torch.tensor(0.4, dtype=dtype, requires_grad=True)
    return x, v0, decay


def _loss(backend, x, v0, decay, with_v=False, detach_reset=False):
    spikes, v_last, v_seq = decay_fire_multi_step(x, v0, decay, 0.5, surrogate.Sigmoid(), detach_reset, True, backend)
    loss = (spikes * torch.linspace(-1, 1, spikes.numel(), dtype=x.dtype).view_as(spikes)).sum()
    return loss + (v_seq.square().sum() + v_last.sum() if with_v else 0)


@pytest.mark.parametrize("with_v", [False, True])
def test_double_backward_through_the_reference_is_correct(with_v):
    """gradgradcheck: second derivatives of the reference (plain autograd) against finite differences.

    With ``detach_reset=True``: otherwise autograd differentiates the spike inside the reset term with the
    surrogate while finite differences see a step (derivative 0), so no second derivative could match.
    """
    x, v0, decay = _inputs()

    def f(x, v0, decay):
        return _loss("reference", x, v0, decay, with_v, detach_reset=True)

    assert torch.autograd.gradgradcheck(f, (x, v0, decay), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("with_v", [False, True])
def test_double_backward_through_the_fused_backend_is_refused(with_v):
    x, v0, decay = _inputs(torch.float32)
    loss = _loss("torch", x, v0, decay, with_v)
    with pytest.raises(RuntimeError, match=r"second-order gradients.*backend='reference'"):
        torch.autograd.grad(loss, (x, decay), create_graph=True)


def test_first_order_backward_after_a_refused_double_backward_still_works():
    x, v0, decay = _inputs(torch.float32)
    _loss("torch", x, v0, decay).backward()
    ref = [t.detach().clone().requires_grad_() for t in (x, v0, decay)]
    _loss("reference", *ref).backward()
    for got, want in zip((x, v0, decay), ref, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_a_gradient_penalty_with_a_node_names_the_fix():
    node = DecayFireNode(step_mode="m", backend="torch")
    x = sample_inputs(SHAPE, seed=3).requires_grad_()
    (g,) = torch.autograd.grad(node(x).sum(), x, create_graph=False)  # first order: fine
    assert g.shape == x.shape
    node.reset()
    with pytest.raises(RuntimeError, match="backend='reference'"):
        torch.autograd.grad(node(x).sum(), x, create_graph=True)


def _spikes_sum(backend):
    def f(x):
        return decay_fire_multi_step(x, None, 0.4, 0.5, surrogate.ATan(), backend=backend)[0].sum()

    return f


def test_torch_func_with_a_fused_backend_is_refused():
    x = sample_inputs(SHAPE, seed=4)
    with pytest.raises(ValueError, match=r"torch\.func.*backend='reference'"):
        torch.func.grad(_spikes_sum("torch"))(x)
    with pytest.raises(ValueError, match=r"torch\.func.*backend='reference'"):
        torch.func.vmap(_spikes_sum("torch"))(torch.stack([x, x]))


def test_torch_func_with_auto_uses_the_reference():
    """grad / jacrev / vjp work through the reference. (vmap cannot: SpikingJelly's surrogate functions have no
    vmap rule, which SpikingJelly's own error says.)"""
    x = sample_inputs(SHAPE, seed=5)
    got = torch.func.grad(_spikes_sum("auto"))(x)
    xr = x.clone().requires_grad_()
    _spikes_sum("reference")(xr).backward()
    torch.testing.assert_close(got, xr.grad)
    jac = torch.func.jacrev(_spikes_sum("auto"))(x)
    torch.testing.assert_close(jac, xr.grad)
