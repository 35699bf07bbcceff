"""DecayFireNode / ParametricDecayFireNode as SpikingJelly users use them."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from sj_resnet import DecayFireNode, ParametricDecayFireNode
from sj_resnet.neuron.testing import critical_offsets_for, sample_inputs

BACKENDS = ["reference", "torch"]


def _grad(fn, x):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), x.grad


@pytest.mark.parametrize("decay", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("sg", [surrogate.Rect(1.0), surrogate.ATan()], ids=["Rect", "ATan"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_equals_spikingjelly_lif(decay, sg, detach_reset):
    """STBP == LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0) up to float rounding."""
    x = sample_inputs((6, 4, 3, 5), decay=decay, critical_offsets=critical_offsets_for(sg), seed=1)
    ours = DecayFireNode(decay=decay, surrogate_function=sg, detach_reset=detach_reset, step_mode="m", backend="torch")
    sj = neuron.LIFNode(tau=1.0 / (1.0 - decay), decay_input=False, v_threshold=0.5, v_reset=0.0,
                        surrogate_function=sg, detach_reset=detach_reset, step_mode="m")
    s_ours, g_ours = _grad(ours, x)
    s_sj, g_sj = _grad(sj, x)
    assert torch.equal(s_ours, s_sj)
    torch.testing.assert_close(ours.v, sj.v, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_ours, g_sj, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_step_loop_equals_multi_step(backend):
    x = sample_inputs((5, 2, 3, 4), seed=2)
    multi = DecayFireNode(step_mode="m", backend=backend)
    single = DecayFireNode(step_mode="s", backend=backend)
    s_m, g_m = _grad(multi, x)
    s_s, g_s = _grad(lambda x: torch.stack([single(x[t]) for t in range(x.shape[0])]), x)
    assert torch.equal(s_m, s_s)
    torch.testing.assert_close(multi.v, single.v)
    torch.testing.assert_close(g_m, g_s, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_calls_equal_one_call_on_the_concatenation(backend):
    x = sample_inputs((6, 3, 5), seed=3)
    whole = DecayFireNode(step_mode="m", backend=backend)
    parts = DecayFireNode(step_mode="m", backend=backend)
    s_whole, g_whole = _grad(whole, x)
    s_parts, g_parts = _grad(lambda x: torch.cat([parts(x[:2]), parts(x[2:])]), x)
    assert torch.equal(s_whole, s_parts)
    torch.testing.assert_close(whole.v, parts.v)
    torch.testing.assert_close(g_whole, g_parts, atol=1e-6, rtol=1e-6)


def test_reset_net_restores_the_initial_state():
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), DecayFireNode(step_mode="m"))
    x = torch.randn(4, 3, 5)
    first = net(x)
    net(x)
    assert isinstance(net[1].v, torch.Tensor) and net[1].v.shape == (3, 7)  # state carried over
    functional.reset_net(net)
    assert isinstance(net[1].v, float) and net[1].v == 0.0
    torch.testing.assert_close(net(x), first)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_store_v_seq(step_mode):
    x = sample_inputs((4, 2, 3), seed=4)
    node = DecayFireNode(step_mode=step_mode, store_v_seq=True, backend="torch")
    if step_mode == "m":
        node(x)
    else:
        for t in range(4):
            node(x[t])
    from sj_resnet.neuron import decay_fire_multi_step

    _, v_last, v_seq = decay_fire_multi_step(x, store_v_seq=True, backend="reference")
    torch.testing.assert_close(node.v_seq, v_seq)
    torch.testing.assert_close(node.v, v_last)


def test_set_step_mode_and_detach_net():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), DecayFireNode())
    functional.set_step_mode(net, "m")
    assert net[1].step_mode == "m"
    x = torch.randn(3, 2, 4)
    net(x)
    assert net[1].v.requires_grad
    functional.detach_net(net)
    assert not net[1].v.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_keeps_float32_state(dtype):
    node = DecayFireNode(step_mode="m", backend="torch")
    out = node(torch.randn(3, 2, 4).to(dtype))
    assert out.dtype == dtype and node.v.dtype == torch.float32


def test_under_cpu_autocast():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), DecayFireNode(step_mode="m", backend="torch"))
    x = torch.randn(4, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16 and net[1].v.dtype == torch.float32
    out.float().sum().backward()
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()


def test_ints_are_accepted_where_floats_are_meant():
    node = DecayFireNode(decay=1, v_threshold=1)
    assert node.decay == 1.0 and isinstance(node.v_threshold, float)


@pytest.mark.parametrize("num_channels", [None, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_parametric_decay_learns_and_matches_reference(num_channels, backend):
    node = ParametricDecayFireNode(init_decay=0.3, num_channels=num_channels, step_mode="m", backend=backend)
    ref = ParametricDecayFireNode(init_decay=0.3, num_channels=num_channels, step_mode="m", backend="reference")
    assert torch.allclose(node.decay, torch.tensor(0.3))
    x = sample_inputs((5, 2, 3, 4), decay=0.3, seed=6)
    for n in (node, ref):
        n(x).sum().backward()
    assert node.w.grad is not None and node.w.grad.shape == node.w.shape
    torch.testing.assert_close(node.w.grad, ref.w.grad, atol=1e-5, rtol=1e-5)
    assert (node.w.grad != 0).all()
    opt = torch.optim.SGD(node.parameters(), lr=10.0)
    opt.step()
    assert ((node.decay > 0) & (node.decay < 1)).all()


def _count_ours(model):
    return sum(isinstance(m, DecayFireNode) for m in model.modules())


def test_drop_in_spikingjelly_spiking_resnet18():
    from spikingjelly.activation_based.model import spiking_resnet

    net = spiking_resnet.spiking_resnet18(spiking_neuron=DecayFireNode, num_classes=10, backend="torch")
    functional.set_step_mode(net, "m")
    assert _count_ours(net) > 10
    out = net(torch.randn(2, 1, 3, 32, 32)).mean(0)
    out.sum().backward()
    assert out.shape == (1, 10) and net.conv1.weight.grad is not None


def test_drop_in_spikingjelly_sew_resnet18():
    from spikingjelly.activation_based.model import sew_resnet

    net = sew_resnet.sew_resnet18(spiking_neuron=DecayFireNode, cnf="ADD", num_classes=10, decay=0.5)
    functional.set_step_mode(net, "m")
    assert _count_ours(net) > 10
    out = net(torch.randn(2, 1, 3, 32, 32)).mean(0)
    out.sum().backward()
    assert out.shape == (1, 10) and net.conv1.weight.grad is not None


def test_drop_in_spikingjelly_ms_resnet18():
    from spikingjelly.activation_based.model import ms_resnet

    net = ms_resnet.ms_resnet18(T=2, num_classes=10, spiking_neuron=DecayFireNode, v_threshold=0.5)
    nodes = [m for m in net.modules() if isinstance(m, DecayFireNode)]
    assert len(nodes) > 10 and all(m.step_mode == "m" for m in nodes)
    out = net(torch.randn(1, 3, 32, 32))
    out.float().sum().backward()
    assert torch.isfinite(out).all()
