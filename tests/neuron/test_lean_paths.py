"""The torch backend moves only the bytes the math needs (issue: no zero tensors, an inference path, any layout).

Counted with ``torch.profiler``: which ops run (no zero fills, no full-size copies) and which allocations of
the input's size happen. Every case is also checked against the reference.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate
from torch.profiler import ProfilerActivity, profile

from sj_resnet import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step
from sj_resnet.neuron.backends import torch_fused
from sj_resnet.neuron.params import DecayFireParams
from sj_resnet.neuron.testing import sample_inputs

FILLS = {"aten::zero_", "aten::fill_"}  # what zeros/full/zeros_like/new_zeros call on the tensor they make
COPIES = {"aten::copy_", "aten::contiguous", "aten::clone", "aten::_to_copy", "aten::expand_as"}


def _ops(fn) -> list[tuple[str, list]]:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [(e.name, e.input_shapes) for e in prof.events()]


def _full_size_allocations(fn, nbytes: int) -> int:
    """How many allocations of at least ``nbytes`` happen while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    return sum(1 for e in events if e.name() == "[memory]" and e.nbytes() >= nbytes)


def _large(ops, names, numel: int) -> list[str]:
    """The ops in ``names`` that touch a tensor of at least ``numel`` elements."""
    return [name for name, shapes in ops if name in names and any(s and torch.Size(s).numel() >= numel for s in shapes)]


def _full_size_copies(ops, shape) -> list[str]:
    return _large(ops, COPIES, torch.Size(shape).numel())


def _step_size_fills(ops, shape) -> list[str]:
    """Zero fills of one step (or more) of a ``[T, N, *]`` sequence; tiny ones (the loss seed, a 0-d decay) pass."""
    return _large(ops, FILLS, torch.Size(shape[1:]).numel())


@pytest.mark.parametrize("node_cls", [DecayFireNode, ParametricDecayFireNode])
def test_fresh_state_after_reset_is_never_materialised(node_cls):
    """After reset_net the state is SpikingJelly's float 0.0: no zeros are allocated, filled or read, forward or
    backward (and grad_v0, which nobody needs, is not computed)."""
    node = node_cls(step_mode="m", backend="torch")
    x = sample_inputs((4, 2, 3, 5), seed=1).requires_grad_()
    node(x)
    functional.reset_net(node)
    assert isinstance(node.v, float) and node.v == 0.0
    assert node.materialize_states((x,), (node.v,), "m") == (None,)
    ops = _ops(lambda: node(x).sum().backward())
    assert _step_size_fills(ops, x.shape) == []
    ref = x.detach().clone().requires_grad_()
    spikes, _, _ = decay_fire_multi_step(ref, None, node.decay, node.v_threshold, backend="reference")
    spikes.sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


@pytest.mark.parametrize("loss_on", ["spikes", "v_last", "v_seq"])
def test_absent_gradients_are_not_filled(loss_on):
    x = sample_inputs((5, 3, 4), seed=2)
    v0 = torch.rand(3, 4) * 0.3

    def run(backend):
        xg = x.clone().requires_grad_()
        spikes, v_last, v_seq = decay_fire_multi_step(xg, v0, 0.4, 0.5, surrogate.ATan(), False, loss_on == "v_seq",
                                                      backend)  # fmt: skip
        out = {"spikes": spikes, "v_last": v_last, "v_seq": v_seq}[loss_on]
        return xg, out.square().sum()

    xg, loss = run("torch")
    assert _step_size_fills(_ops(loss.backward), x.shape) == []
    xr, loss_r = run("reference")
    loss_r.backward()
    torch.testing.assert_close(xg.grad, xr.grad)


def test_unneeded_gradients_are_not_computed():
    p = DecayFireParams(v_threshold=0.5, surrogate_id=2, alpha=2.0, detach_reset=False, store_v_seq=False)
    x = sample_inputs((3, 2, 4), seed=3)
    v0, decay = torch.rand(2, 4), torch.tensor(0.3)
    _, v_last, h = torch_fused.forward(x, v0, decay, p, True)
    grads = torch_fused.backward(torch.randn_like(x), None, h, v0, decay, p, False, False)
    assert grads[1] is None and grads[2] is None
    grads = torch_fused.backward(torch.randn_like(x), None, h, v0, decay, p, True, True)
    assert grads[1].shape == v0.shape and grads[2].shape == decay.shape


def test_inference_writes_spikes_and_the_last_state_only():
    """No grad possible -> no h_seq: the only full-size allocation is the spike tensor (+ v_seq if stored)."""
    x = sample_inputs((4, 8, 16, 16), seed=4)
    nbytes = x.numel() * x.element_size()
    decay = torch.tensor(0.3, requires_grad=True)

    def call(x, decay=0.3, store_v_seq=False):
        return lambda: decay_fire_multi_step(x, None, decay, store_v_seq=store_v_seq, backend="torch")

    with torch.no_grad():
        assert _full_size_allocations(call(x), nbytes) == 1
        assert _full_size_allocations(call(x, store_v_seq=True), nbytes) == 2
        assert _full_size_allocations(call(x, decay), nbytes) == 1
    with torch.inference_mode():
        assert _full_size_allocations(call(x), nbytes) == 1
    assert _full_size_allocations(call(x), nbytes) == 1  # grad mode, but nothing requires grad
    assert _full_size_allocations(call(x.clone().requires_grad_()), nbytes) == 2  # training: + h_seq
    assert _full_size_allocations(call(x, decay), nbytes) == 2  # a learnable decay needs h_seq too


@pytest.mark.parametrize("mode", ["no_grad", "nothing_requires_grad"])
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_inference_path_matches_reference(mode, store_v_seq):
    x = sample_inputs((5, 3, 4, 6), decay=torch.tensor([0.2, 0.5, 0.9, 1.0]), seed=5)
    v0 = torch.rand(3, 4, 6) * 0.3
    decay = torch.tensor([0.2, 0.5, 0.9, 1.0])
    ref = decay_fire_multi_step(x, v0, decay, 0.5, store_v_seq=store_v_seq, backend="reference")
    with torch.set_grad_enabled(mode != "no_grad"):
        got = decay_fire_multi_step(x, v0, decay, 0.5, store_v_seq=store_v_seq, backend="torch")
    assert torch.equal(got[0], ref[0].detach())
    for g, r in zip(got[1:], ref[1:], strict=True):
        if r is None:
            assert g is None
        else:
            assert not g.requires_grad
            torch.testing.assert_close(g, r.detach())


def _conv_output(memory_format, T=3, N=2, C=4, spatial=(5, 6), seed=0) -> torch.Tensor:
    """A conv output ``[T*N, C, *spatial]`` in ``memory_format`` viewed as ``[T, N, C, *spatial]`` (no copy)."""
    g = torch.Generator().manual_seed(seed)
    conv_cls = torch.nn.Conv2d if len(spatial) == 2 else torch.nn.Conv3d
    torch.manual_seed(seed)
    conv = conv_cls(3, C, 3, padding=1).to(memory_format=memory_format)
    img = torch.randn(T * N, 3, *spatial, generator=g).to(memory_format=memory_format)
    y = conv(img).detach()
    assert y.is_contiguous(memory_format=memory_format) and not y.is_contiguous()
    return (y * 2.0 + 0.3).view(T, N, C, *spatial)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.channels_last_3d], ids=["cl", "cl3d"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
def test_channels_last_runs_in_place_and_keeps_its_layout(memory_format, per_channel):
    spatial = (5, 6) if memory_format == torch.channels_last else (3, 4, 5)
    x = _conv_output(memory_format, spatial=spatial).requires_grad_()
    decay = torch.tensor([0.2, 0.5, 0.8, 1.0]) if per_channel else torch.tensor(0.4)
    decay = decay.clone().requires_grad_()
    gs = torch.randn(x.shape)
    result = {}

    def step():
        result["out"] = decay_fire_multi_step(x, None, decay, 0.5, surrogate.Sigmoid(), backend="torch")
        (result["out"][0] * gs).sum().backward()

    ops = _ops(step)
    assert _full_size_copies(ops, x.shape) == []
    spikes, v_last, _ = result["out"]
    assert spikes.stride() == x.stride() and x.grad.stride() == x.stride()
    assert v_last.stride() == x[0].stride()
    xr = x.detach().contiguous().requires_grad_()
    dr = decay.detach().clone().requires_grad_()
    s_r, v_r, _ = decay_fire_multi_step(xr, None, dr, 0.5, surrogate.Sigmoid(), backend="reference")
    (s_r * gs).sum().backward()
    assert torch.equal(spikes, s_r)
    torch.testing.assert_close(v_last, v_r)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(decay.grad, dr.grad)


def test_expanded_incoming_gradients_are_read_in_place():
    """``spikes.sum()`` sends a stride-0 gradient: backward reads it through the view, no full-size copy."""
    x = sample_inputs((4, 6, 8, 9), seed=6)
    v0 = torch.rand(6, 8, 9, generator=torch.Generator().manual_seed(1))
    grads = {}
    for backend in ("torch", "reference"):
        xg = x.clone().requires_grad_()
        spikes, v_last, _ = decay_fire_multi_step(xg, v0, 0.3, 0.5, backend=backend)
        loss = spikes.sum() + v_last.sum()
        if backend == "torch":
            assert _full_size_copies(_ops(loss.backward), x.shape) == []
        else:
            loss.backward()
        grads[backend] = xg.grad
    torch.testing.assert_close(grads["torch"], grads["reference"])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "batch_innermost"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
@pytest.mark.parametrize("store_v_seq", [False, True], ids=["vlast", "vseq"])
def test_cpu_inference_in_sample_blocks_equals_training_forward(layout, dtype, per_channel, carried, store_v_seq):
    """CPU inference runs blocks of samples through all T steps (``torch_fused.sample_blocks``; 7 samples of
    81 920 neurons: blocks of 3, 3 and 1); spikes and states equal the one-block training forward bit for bit and
    the reference, in the input's layout. A layout whose dim 1 is not outermost runs as one block."""
    g = torch.Generator().manual_seed(8)
    decay = torch.rand(4, generator=g) * 0.9 + 0.05 if per_channel else torch.tensor(0.3)
    v0 = torch.randn((7, 4, 128, 160), generator=g) * 0.3 if carried else None
    x = sample_inputs((2, 7, 4, 128, 160), decay=decay, v0=v0, dtype=dtype, seed=8)  # margins: no spike flips
    perm = {"contiguous": (0, 1, 2, 3, 4), "channels_last": (0, 1, 3, 4, 2), "batch_innermost": (0, 2, 3, 4, 1)}[layout]
    x = x.permute(perm).contiguous().permute([perm.index(i) for i in range(5)])  # same values, stored in layout
    blocks = torch_fused.sample_blocks(x, needs_grad=False)
    assert blocks == ([(0, 7)] if layout == "batch_innermost" else [(0, 3), (3, 6), (6, 7)])
    assert torch_fused.sample_blocks(x, needs_grad=True) == [(0, 7)]
    p = DecayFireParams(v_threshold=0.5, surrogate_id=0, alpha=1.0, detach_reset=False, store_v_seq=store_v_seq,
                        saved_state="fp32")
    spikes, v_out, saved = torch_fused.forward(x, v0, decay, p, False)
    assert saved is None and spikes.stride() == x.stride()
    train = torch_fused.forward(x, v0, decay, p, True)
    assert torch.equal(spikes, train[0]) and torch.equal(v_out, train[1])
    ref = decay_fire_multi_step(x, v0, decay, 0.5, store_v_seq=store_v_seq, backend="reference")
    assert torch.equal(spikes, ref[0])
    torch.testing.assert_close(v_out, ref[2] if store_v_seq else ref[1])
