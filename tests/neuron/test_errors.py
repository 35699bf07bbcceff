"""Every bad input gets a clear error that names the fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

from sj_resnet import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step
from sj_resnet.neuron import ops


@pytest.mark.parametrize("decay", [0.0, -0.1, 1.5, float("nan")])
def test_decay_outside_the_unit_interval(decay):
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\]"):
        DecayFireNode(decay=decay)
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\]"):
        decay_fire_multi_step(torch.zeros(2, 3), decay=decay)


def test_parametric_init_decay_of_one():
    with pytest.raises(ValueError, match=r"init_decay must be in \(0, 1\)"):
        ParametricDecayFireNode(init_decay=1.0)


def test_non_number_arguments():
    with pytest.raises(TypeError, match="decay must be a real number"):
        DecayFireNode(decay="0.5")
    with pytest.raises(TypeError, match="v_threshold must be a real number"):
        DecayFireNode(v_threshold=None)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_input(dtype):
    with pytest.raises(TypeError, match=r"floating point.*x\.float\(\)"):
        decay_fire_multi_step(torch.ones(2, 3, dtype=dtype))
    with pytest.raises(TypeError, match="floating point"):
        DecayFireNode(step_mode="m")(torch.ones(2, 3, dtype=dtype))


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"\[T, N, \*\]"):
        decay_fire_multi_step(torch.ones(5))
    with pytest.raises(ValueError, match=r"\[T, N, \*\]"):
        DecayFireNode(step_mode="m")(torch.ones(5))
    with pytest.raises(ValueError, match=r"\[N, \*\]"):
        DecayFireNode(step_mode="s")(torch.tensor(1.0))


def test_empty_sequence():
    with pytest.raises(ValueError, match="T = 0"):
        decay_fire_multi_step(torch.ones(0, 3))


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_shape_change_mid_sequence_says_reset_net(step_mode):
    node = DecayFireNode(step_mode=step_mode)
    shape = (4, 3) if step_mode == "s" else (2, 4, 3)
    node(torch.randn(shape))
    smaller = (3, 3) if step_mode == "s" else (2, 3, 3)
    with pytest.raises(ValueError, match="reset_net"):
        node(torch.randn(smaller))
    functional.reset_net(node)
    node(torch.randn(smaller))  # fine after a reset


def test_v0_shape_mismatch_in_the_op():
    with pytest.raises(ValueError, match="reset_net"):
        decay_fire_multi_step(torch.zeros(2, 3, 4), v0=torch.zeros(3, 5))


def test_per_channel_decay_shape():
    with pytest.raises(ValueError, match="per-channel decay has 5 channels"):
        decay_fire_multi_step(torch.zeros(2, 3, 4, 6), decay=torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="0-d .* or \\[C\\]"):
        decay_fire_multi_step(torch.zeros(2, 3, 4), decay=torch.full((2, 2), 0.5))
    with pytest.raises(TypeError, match="decay tensor must be floating point"):
        decay_fire_multi_step(torch.zeros(2, 3, 4), decay=torch.ones((), dtype=torch.int64))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        DecayFireNode(backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        decay_fire_multi_step(torch.zeros(2, 3), backend="cuda")


def test_cupy_backend_with_a_cpu_tensor():
    with pytest.raises(ValueError, match=r"backend='cupy' needs CUDA tensors.*backend='torch'"):
        decay_fire_multi_step(torch.zeros(2, 3), backend="cupy")


def test_surrogate_without_kernel():
    sg = surrogate.PiecewiseLeakyReLU()
    with pytest.raises(ValueError, match="no kernel for surrogate PiecewiseLeakyReLU.*backend='reference'"):
        decay_fire_multi_step(torch.zeros(2, 3), surrogate_function=sg, backend="torch")
    ops._warned_fallback.discard("PiecewiseLeakyReLU")
    x = torch.randn(3, 2, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no fused kernel"):
        spikes, _, _ = decay_fire_multi_step(x, surrogate_function=sg, backend="auto")
    spikes.sum().backward()
    assert x.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-time: the second call is silent
        decay_fire_multi_step(x, surrogate_function=sg, backend="auto")
