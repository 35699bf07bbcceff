"""torch.library registration: opcheck, and torch.compile(fullgraph=True) without graph breaks."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

from sj_resnet import DecayFireNode, decay_fire_multi_step
from sj_resnet.neuron.testing import sample_inputs


@pytest.mark.parametrize("store_v_seq", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("saved_state", ["fp32", "fp16"])
@pytest.mark.parametrize("fresh_state", [False, True])
def test_opcheck(store_v_seq, per_channel, saved_state, fresh_state):
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    v0 = None if fresh_state else torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    decay = torch.full((4,) if per_channel else (), 0.3, dtype=torch.float64, requires_grad=True)
    params = (0.5, 2, 2.0, False, store_v_seq, saved_state)
    torch.library.opcheck(torch.ops.sj_resnet.decay_fire.default, (x, v0, decay, *params, True, "torch"))
    with torch.no_grad():  # the inference path: nothing saved
        torch.library.opcheck(torch.ops.sj_resnet.decay_fire.default, (x, v0, decay, *params, False, "torch"))
    v0d = None if v0 is None else v0.detach()
    _, _, saved = torch.ops.sj_resnet.decay_fire(x.detach(), v0d, decay.detach(), *params, True, "torch")
    gv = torch.randn(x.shape if store_v_seq else x.shape[1:], dtype=torch.float64)
    for grads in ((torch.randn_like(x), gv), (None, gv), (torch.randn_like(x), None)):
        for need_v0, need_decay in ((True, True), (False, False)):
            bargs = (*grads, saved, v0d, decay.detach(), *params, need_v0 and v0 is not None, need_decay, "torch")
            torch.library.opcheck(torch.ops.sj_resnet.decay_fire_backward.default, bargs)


def test_compiled_op_fullgraph_matches_eager():
    x = sample_inputs((4, 3, 8), seed=1).requires_grad_()
    decay = torch.tensor(0.4, requires_grad=True)

    def f(x, decay):
        spikes, v_last, _ = decay_fire_multi_step(x, None, decay, 0.5, surrogate.Rect(), False, False, "torch")
        return spikes, v_last

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    outs = compiled(x, decay)
    (outs[0].sum() + outs[1].sum()).backward()
    g_compiled = (x.grad.clone(), decay.grad.clone())
    x.grad = None
    decay.grad = None
    ref = f(x, decay)
    (ref[0].sum() + ref[1].sum()).backward()
    assert torch.equal(outs[0], ref[0])
    torch.testing.assert_close(outs[1], ref[1])
    torch.testing.assert_close(g_compiled[0], x.grad)
    torch.testing.assert_close(g_compiled[1], decay.grad)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_compiled_network_with_nodes_fullgraph(backend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), DecayFireNode(backend=backend), torch.nn.Linear(16, 4), DecayFireNode(backend=backend)
    )
    functional.set_step_mode(net, "m")
    x = torch.randn(4, 3, 8)
    eager = net(x)
    functional.reset_net(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.equal(out, eager)
    assert net[0].weight.grad is not None
    functional.reset_net(net)
    assert torch.equal(compiled(x), eager)  # reset works through the compiled module


def test_auto_picks_reference_when_compiling_on_cpu(monkeypatch):
    """Inductor fuses the reference loop on the CPU (measured faster than the opaque fused op)."""
    from sj_resnet.neuron.ops import resolve_backend

    x = torch.zeros(2, 3)
    assert resolve_backend("auto", x, True, "Rect") == "torch"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert resolve_backend("auto", x, True, "Rect") == "reference"
    assert resolve_backend("torch", x, True, "Rect") == "torch"  # an explicit choice is kept
