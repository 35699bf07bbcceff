"""The surrogate gradients the fused backends implement: one table, shared with the CUDA twin.

The forward of every surrogate is SpikingJelly's heaviside ``H(x) = 1[x >= 0]``. Its backward replaces
``dH/dx`` by the derivative ``sg(x; alpha)`` below, copied from ``spikingjelly.activation_based.surrogate``
2.0.0 (``x = h - v_threshold``)::

    id  SpikingJelly class     sg(x; a)
    0   Rect                   a * 1[|x| < 1/(2a)]
    1   Sigmoid                a * s * (1 - s),             s = sigmoid(a x)
    2   ATan                   (a/2) / (1 + (pi/2 * a x)^2)
    3   PiecewiseQuadratic     (a - a^2 |x|) * 1[|x| <= 1/a]
    4   PiecewiseExp           (a/2) * exp(-a |x|)
    5   SoftSign               1 / (2a (1/a + |x|)^2)
    6   SuperSpike             a / (1 + |x|)^2
    7   Erf                    (a / sqrt(pi)) * exp(-(a x)^2)

The ids are the ``SJR_SURROGATE_*`` constants of ``backends/cupy/surrogates.cuh``; the tests check the two
tables against each other and against SpikingJelly's own backward. A surrogate not in the table (or one
with ``spiking=False``) has no fused kernel: ``lookup`` returns ``None`` and the op falls back to the
reference implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from spikingjelly.activation_based import surrogate
from torch import Tensor


def _rect(x: Tensor, a: float) -> Tensor:
    return (x.abs() < 0.5 / a).to(x.dtype) * a


def _sigmoid(x: Tensor, a: float) -> Tensor:
    s = torch.sigmoid(x * a)
    return s * (1.0 - s) * a


def _atan(x: Tensor, a: float) -> Tensor:
    ax = x * (math.pi / 2 * a)
    return (a / 2) / (1.0 + ax * ax)


def _piecewise_quadratic(x: Tensor, a: float) -> Tensor:
    ax = x.abs()
    return (a - a * a * ax).masked_fill_(ax > 1.0 / a, 0.0)


def _piecewise_exp(x: Tensor, a: float) -> Tensor:
    return torch.exp(x.abs() * -a) * (a / 2)


def _soft_sign(x: Tensor, a: float) -> Tensor:
    d = x.abs() + 1.0 / a
    return 1.0 / (2.0 * a * d * d)


def _super_spike(x: Tensor, a: float) -> Tensor:
    d = x.abs() + 1.0
    return a / (d * d)


def _erf(x: Tensor, a: float) -> Tensor:
    ax = x * a
    return torch.exp(-(ax * ax)) * (a / math.sqrt(math.pi))


@dataclass(frozen=True)
class SurrogateSpec:
    """One row of the table: the kernel id, the SpikingJelly class, and ``sg(x, alpha)`` in torch."""

    sid: int
    name: str
    sj_class: type
    grad: Callable[[Tensor, float], Tensor]


SURROGATES: tuple[SurrogateSpec, ...] = (
    SurrogateSpec(0, "Rect", surrogate.Rect, _rect),
    SurrogateSpec(1, "Sigmoid", surrogate.Sigmoid, _sigmoid),
    SurrogateSpec(2, "ATan", surrogate.ATan, _atan),
    SurrogateSpec(3, "PiecewiseQuadratic", surrogate.PiecewiseQuadratic, _piecewise_quadratic),
    SurrogateSpec(4, "PiecewiseExp", surrogate.PiecewiseExp, _piecewise_exp),
    SurrogateSpec(5, "SoftSign", surrogate.SoftSign, _soft_sign),
    SurrogateSpec(6, "SuperSpike", surrogate.SuperSpike, _super_spike),
    SurrogateSpec(7, "Erf", surrogate.Erf, _erf),
)
_BY_CLASS = {spec.sj_class: spec for spec in SURROGATES}
_BY_ID = {spec.sid: spec for spec in SURROGATES}


def lookup(surrogate_function: torch.nn.Module) -> tuple[int, float] | None:
    """``(id, alpha)`` for a surrogate module with a fused kernel, else ``None``.

    The match is on the exact class (a subclass may change the formula) and needs ``spiking=True``.
    """
    spec = _BY_CLASS.get(type(surrogate_function))
    if spec is None or not getattr(surrogate_function, "spiking", True):
        return None
    alpha = float(surrogate_function.alpha)
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"{spec.name}(alpha={alpha}): alpha must be a finite number > 0")
    return spec.sid, alpha


def surrogate_grad(sid: int, x: Tensor, alpha: float) -> Tensor:
    """``sg(x; alpha)`` of table row ``sid`` (a new tensor of x's dtype)."""
    return _BY_ID[sid].grad(x, alpha)


# Lower-case names (``'atan'``, ``'piecewisequadratic'``) -> table row: the one list the CLI and config use.
NAMES: dict[str, SurrogateSpec] = {spec.name.lower(): spec for spec in SURROGATES}


def from_name(spec: str) -> torch.nn.Module:
    """``'atan'``, ``'ATan:2.0'``, ``'rect:1.0'`` ... -> the SpikingJelly surrogate module of that table row.

    The name is a class of the table above, case-insensitive; ``:alpha`` (finite, > 0) overrides the class's
    default ``alpha``. Raises ``ValueError`` naming the choices.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a surrogate name must be a str such as 'atan' or 'atan:2.0', got {type(spec).__name__}")
    name, sep, alpha_text = spec.partition(":")
    row = NAMES.get(name.strip().lower())
    if row is None:
        raise ValueError(
            f"unknown surrogate {spec!r}; choose one of {', '.join(NAMES)} optionally with ':alpha' (e.g. 'atan:2.0'), "
            "or pass a spikingjelly.activation_based.surrogate module"
        )
    if not sep:
        return row.sj_class()
    try:
        alpha = float(alpha_text)
    except ValueError as exc:
        raise ValueError(f"surrogate {spec!r}: alpha {alpha_text!r} is not a number") from exc
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"surrogate {spec!r}: alpha must be a finite number > 0, got {alpha}")
    return row.sj_class(alpha=alpha)
