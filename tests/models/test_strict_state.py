"""``strict_state``: a forward that starts on carried membrane state raises; ``continue_sequence`` allows it."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron

from sj_resnet.models import resnet18_cifar, resnet19


def _tiny(**kw):
    return resnet18_cifar(num_classes=3, width=4, T=2, **kw)


def test_default_is_off_and_carries_state_silently():
    """The SpikingJelly behaviour stays the default: a second call without reset continues the state."""
    model = _tiny().eval()
    x = torch.rand(2, 3, 8, 8)
    functional.reset_net(model)
    first = model(x)
    second = model(x)  # carried state: a different result, no error
    assert not torch.equal(first, second)
    assert model.carried_state()


def test_strict_state_refuses_a_forgotten_reset():
    model = _tiny(strict_state=True).eval()
    x = torch.rand(2, 3, 8, 8)
    functional.reset_net(model)
    assert model.carried_state() == []
    first = model(x)
    with pytest.raises(RuntimeError, match=r"reset_net\(model\).*continue_sequence"):
        model(x)
    functional.reset_net(model)
    assert torch.equal(model(x), first)  # a reset makes it legal again, and the result is the fresh one


def test_strict_state_checks_under_torch_compile():
    """Compiled, the check runs eagerly as a graph break (wrapped with torch.compiler.disable on first use)."""
    model = _tiny(strict_state=True).eval()
    compiled = torch.compile(model, backend="eager")
    x = torch.rand(2, 3, 8, 8)
    for _ in range(2):  # the second round runs the cached graph
        functional.reset_net(model)
        first = compiled(x)
        with pytest.raises(RuntimeError, match=r"reset_net\(model\)"):
            compiled(x)
    functional.reset_net(model)
    assert torch.equal(compiled(x), first)
    with model.continue_sequence():
        compiled(x)


@pytest.mark.parametrize("node", [None, neuron.LIFNode])
def test_continue_sequence_streams_chunks_equal_to_one_long_sequence(node):
    """Streaming a [T, ...] sequence in two chunks inside continue_sequence() equals running it at once."""
    kw = {} if node is None else {"spiking_neuron": node}
    model = resnet18_cifar(num_classes=3, width=4, T=2, strict_state=True, **kw).eval()
    seq = torch.rand(4, 2, 3, 8, 8)
    with torch.no_grad():
        long = resnet18_cifar(num_classes=3, width=4, T=4, **kw).eval()
        long.load_state_dict(model.state_dict())
        functional.reset_net(long)
        whole = long(seq)  # sum readout over 4 steps
        functional.reset_net(model)
        part1 = model(seq[:2])
        with pytest.raises(RuntimeError, match="strict_state"):
            model(seq[2:])
        with model.continue_sequence():
            part2 = model(seq[2:])
    # sum readout: logits = fc(sum_t f[t]); the two chunks' logits add up to the whole one's plus one extra bias
    torch.testing.assert_close(part1 + part2 - model.fc.bias, whole, rtol=1e-5, atol=1e-5)
    assert model._continuing == 0


def test_strict_state_covers_the_hidden_fc_neuron_and_is_in_repr():
    model = resnet19(num_classes=3, width=4, T=2, strict_state=True).eval()
    assert "strict_state=True" in model.extra_repr()
    functional.reset_net(model)
    model(torch.rand(2, 3, 8, 8))
    functional.reset_net(model.layer1)  # a partial reset: the stem and hidden neurons still carry state
    carried = model.carried_state()
    assert "sn1.v" in carried and "sn_hidden.v" in carried and not any(c.startswith("layer1.") for c in carried)
    with pytest.raises(RuntimeError, match=r"sn1\.v"):
        model(torch.rand(2, 3, 8, 8))
