"""The surrogate table against SpikingJelly's own backward formulas."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate

from sj_resnet.neuron.choices import SURROGATE_CLASSES
from sj_resnet.neuron.choices import SURROGATES as CLI_NAMES
from sj_resnet.neuron.surrogates import (
    FORMULAS,
    IN_PLACE,
    SURROGATES,
    from_name,
    lookup,
    surrogate_grad,
    surrogate_grad_,
)


@pytest.mark.parametrize("spec", SURROGATES, ids=lambda s: s.name)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_table_matches_spikingjelly_backward(spec, alpha):
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64)
    x = x[(x.abs() - 0.5 / alpha).abs() > 1e-6]  # away from Rect's jumps
    module = spec.sj_class(alpha=alpha)
    xr = x.clone().requires_grad_()
    module(xr).sum().backward()
    torch.testing.assert_close(surrogate_grad(spec.sid, x, alpha), xr.grad, atol=1e-12, rtol=1e-10)
    assert lookup(module) == (spec.sid, alpha)


@pytest.mark.parametrize("spec", SURROGATES, ids=lambda s: s.name)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_in_place_grad_equals_the_formula(spec, alpha, dtype):
    """``grad_`` overwrites its argument (any strides) with ``grad``'s value, to a few ulps of the peak (the
    rearranged chain rounds differently; the tails of ``Sigmoid`` are more accurate than ``s (1 - s)``)."""
    x = torch.linspace(-40, 40, 40001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.0, -0.0, 0.5 / alpha, -0.5 / alpha, 1 / alpha, -1 / alpha])]).to(dtype)
    x = torch.stack([x, x]).t()[:, 1]  # a strided view
    want = spec.grad(x, alpha)
    buf = x.clone()
    got = surrogate_grad_(spec.sid, buf, alpha)
    assert got is buf and got.dtype == dtype
    eps = torch.finfo(dtype).eps
    if spec.name == "Rect":  # a 0/1 step: exact, its jumps included
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=4 * eps * spec.peak(alpha), rtol=4 * eps)


def test_in_place_table_covers_the_formula_table():
    assert set(IN_PLACE) == set(FORMULAS)
    assert all(spec.grad_ is IN_PLACE[spec.name] for spec in SURROGATES)


def test_ids_are_unique_and_dense():
    assert sorted(s.sid for s in SURROGATES) == list(range(len(SURROGATES)))


def test_the_formula_table_covers_exactly_the_named_surrogates():
    """``FORMULAS`` has one row per name of the torch-free ``choices.SURROGATE_CLASSES`` (the CLI's names), the
    ids are the positions there, and each row's class is the SpikingJelly class of that name."""
    assert set(FORMULAS) == set(SURROGATE_CLASSES) and len(SURROGATE_CLASSES) == len(set(SURROGATE_CLASSES))
    assert [(s.sid, s.name) for s in SURROGATES] == list(enumerate(SURROGATE_CLASSES))
    for spec in SURROGATES:
        assert spec.sj_class is getattr(surrogate, spec.name)
    for cli_name, cls_name in CLI_NAMES.items():  # every --surrogate name builds its class
        assert type(from_name(cli_name)) is getattr(surrogate, cls_name)
        assert from_name(f"{cli_name.upper()}:0.5").alpha == 0.5


def test_lookup_rejects_what_has_no_kernel():
    assert lookup(surrogate.Rect(alpha=1.0, spiking=False)) is None
    assert lookup(surrogate.PiecewiseLeakyReLU()) is None

    class MyRect(surrogate.Rect):  # a subclass may change the formula: no kernel
        pass

    assert lookup(MyRect()) is None
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        lookup(surrogate.Rect(alpha=0.0))
