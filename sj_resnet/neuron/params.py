"""The decay-and-fire neuron's call parameters: one frozen, keyword-only record shared by every backend.

Backends receive a ``DecayFireParams`` instead of a row of positional floats and flags, so a swapped
``detach_reset``/``store_v_seq`` is a ``TypeError`` at construction, not a silently wrong gradient. The
only place that spells the fields out positionally is the ``torch.library`` boundary in ``ops.py`` (custom
ops take primitives), through ``to_primitives`` / ``from_primitives`` below.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

from .choices import SAVED_STATES


@dataclass(frozen=True, kw_only=True)
class DecayFireParams:
    """Everything about one neuron call that is not a tensor.

    Attributes:
        v_threshold: finite firing threshold; a spike fires at ``h >= v_threshold``.
        surrogate_id: row of ``surrogates.SURROGATES`` whose derivative replaces ``H'`` in backward.
        alpha: that surrogate's ``alpha`` (> 0).
        detach_reset: stop the gradient through the reset term ``(1 - o)``.
        store_v_seq: ``forward`` returns every post-reset potential ``v_seq [T, N, *]`` instead of ``v_last``.
        saved_state: what ``forward`` saves for ``backward``, one of ``choices.SAVED_STATES``.
    """

    v_threshold: float
    surrogate_id: int
    alpha: float
    detach_reset: bool
    store_v_seq: bool
    saved_state: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("detach_reset", "store_v_seq"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"DecayFireParams.{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.surrogate_id, bool) or not isinstance(self.surrogate_id, int):
            raise TypeError(f"DecayFireParams.surrogate_id must be an int, got {self.surrogate_id!r}")
        for name in ("v_threshold", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"DecayFireParams.{name} must be a finite real number, got {value!r}")
        if not self.alpha > 0:
            raise ValueError(f"DecayFireParams.alpha must be > 0, got {self.alpha}")
        if self.saved_state not in SAVED_STATES:
            raise ValueError(f"saved_state must be one of {SAVED_STATES}, got {self.saved_state!r}")

    def to_primitives(self) -> tuple[float, int, float, bool, bool, str]:
        """The fields in declaration order, for the ``torch.library`` custom ops (which take primitives)."""
        return astuple(self)

    @classmethod
    def from_primitives(
        cls,
        v_threshold: float,
        surrogate_id: int,
        alpha: float,
        detach_reset: bool,
        store_v_seq: bool,
        saved_state: str,
    ) -> DecayFireParams:
        """Inverse of ``to_primitives`` (the one positional adapter, used inside the custom ops)."""
        return cls(
            v_threshold=v_threshold,
            surrogate_id=surrogate_id,
            alpha=alpha,
            detach_reset=detach_reset,
            store_v_seq=store_v_seq,
            saved_state=saved_state,
        )
