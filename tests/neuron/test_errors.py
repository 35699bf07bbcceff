"""Every bad input gets a clear error that names the fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

from sj_resnet import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step


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

    class NoKernelInThisTest(surrogate.PiecewiseLeakyReLU):  # a class seen for the first time: warns once
        pass

    sg = NoKernelInThisTest()
    x = torch.randn(3, 2, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="NoKernelInThisTest has no fused kernel"):
        spikes, _, _ = decay_fire_multi_step(x, surrogate_function=sg, backend="auto")
    spikes.sum().backward()
    assert x.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-time: the second call is silent
        decay_fire_multi_step(x, surrogate_function=sg, backend="auto")


@pytest.mark.parametrize("bad", [-0.5, 1.5, 0.0, float("nan")])
@pytest.mark.parametrize("shape", [(), (4,)], ids=["layer", "channel"])
def test_tensor_decay_outside_the_unit_interval(bad, shape):
    """Same rule as for floats; the value named in the message. (Nodes never pass such a tensor: their float
    decay is checked at construction and sigmoid(w) lies in (0, 1].)"""
    decay = torch.full(shape, 0.5)
    decay.view(-1)[-1] = bad
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\].*got a tensor holding"):
        decay_fire_multi_step(torch.zeros(2, 3, 4, 5), decay=decay)
    decay_fire_multi_step(torch.zeros(2, 3, 4, 5), decay=torch.full(shape, 1.0))  # 1.0 is allowed


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_threshold(bad):
    with pytest.raises(ValueError, match="v_threshold must be finite"):
        DecayFireNode(v_threshold=bad)
    with pytest.raises(ValueError, match="v_threshold must be finite"):
        ParametricDecayFireNode(v_threshold=bad)
    with pytest.raises(ValueError, match="v_threshold must be finite"):
        decay_fire_multi_step(torch.zeros(2, 3), v_threshold=bad)


@pytest.mark.parametrize("bad", [2.7, -2, 0, True, "4"])
def test_num_channels_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_channels must be a positive int"):
        ParametricDecayFireNode(num_channels=bad)
    assert ParametricDecayFireNode(num_channels=torch.tensor(3).item()).w.shape == (3,)


def test_parametric_node_given_decay_names_init_decay():
    with pytest.raises(TypeError, match=r"init_decay=.*not decay="):
        ParametricDecayFireNode(decay=0.3)


@pytest.mark.parametrize("v0", [0.5, 0, [0.0, 0.0]])
def test_v0_that_is_not_a_tensor(v0):
    with pytest.raises(TypeError, match=r"v0 must be a tensor .*or None.*torch\.full"):
        decay_fire_multi_step(torch.zeros(2, 3), v0=v0)


@pytest.mark.parametrize("name,cls,alpha", [("atan", surrogate.ATan, 2.0), ("ATan:3", surrogate.ATan, 3.0),
                                             ("rect:0.5", surrogate.Rect, 0.5), ("erf", surrogate.Erf, 2.0)])
def test_surrogate_given_by_name(name, cls, alpha):
    node = DecayFireNode(surrogate_function=name, step_mode="m")
    assert type(node.surrogate_function) is cls and node.surrogate_function.alpha == alpha
    x = torch.randn(3, 2, 4)
    ref, _, _ = decay_fire_multi_step(x, surrogate_function=cls(alpha=alpha), backend="reference")
    assert torch.equal(decay_fire_multi_step(x, surrogate_function=name)[0], ref)
    assert torch.equal(node(x), ref)


@pytest.mark.parametrize("name,match", [("arctan", r"unknown surrogate 'arctan'; choose one of rect, sigmoid, atan"),
                                        ("atan:x", "alpha 'x' is not a number"),
                                        ("atan:nan", "alpha must be a finite number > 0"),
                                        ("atan:-1", "alpha must be a finite number > 0")])
def test_bad_surrogate_names(name, match):
    with pytest.raises(ValueError, match=match):
        DecayFireNode(surrogate_function=name)
    with pytest.raises(ValueError, match=match):
        decay_fire_multi_step(torch.zeros(2, 3), surrogate_function=name)
