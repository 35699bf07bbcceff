"""``DecayFireParams``: the backend contract's one record of non-tensor arguments."""

from __future__ import annotations

import dataclasses

import pytest

from sj_resnet.neuron.choices import SAVED_STATES
from sj_resnet.neuron.params import DecayFireParams

GOOD = dict(v_threshold=0.5, surrogate_id=2, alpha=2.0, detach_reset=True, store_v_seq=False)


def test_positional_construction_is_impossible():
    """A swapped flag cannot happen: every field is keyword-only."""
    with pytest.raises(TypeError):
        DecayFireParams(0.5, 2, 2.0, True, False)  # type: ignore[misc]


def test_frozen_and_round_trips_through_primitives():
    p = DecayFireParams(**GOOD, saved_state="fp16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.detach_reset = False  # type: ignore[misc]
    assert DecayFireParams.from_primitives(*p.to_primitives()) == p
    assert p.to_primitives() == (0.5, 2, 2.0, True, False, "fp16")


@pytest.mark.parametrize(
    "field,value,error",
    [("detach_reset", 1, TypeError), ("store_v_seq", None, TypeError), ("surrogate_id", 2.0, TypeError),
     ("surrogate_id", True, TypeError), ("v_threshold", float("nan"), ValueError), ("alpha", 0.0, ValueError),
     ("alpha", float("inf"), ValueError), ("saved_state", "bf16", ValueError)],
)  # fmt: skip
def test_bad_fields(field, value, error):
    with pytest.raises(error, match=field if field != "saved_state" else "saved_state must be one of"):
        DecayFireParams(**{**GOOD, field: value})


def test_saved_state_choices():
    assert SAVED_STATES == ("fp32", "fp16") and DecayFireParams(**GOOD).saved_state == "fp32"
