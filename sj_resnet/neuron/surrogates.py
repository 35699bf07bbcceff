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

The names and their order are ``choices.SURROGATE_CLASSES`` (torch-free, shared with the CLI): an id is the
position there and a ``SJR_SURROGATE_*`` constant of ``backends/cupy/surrogates.cuh``; the tests check the tables
against each other and against SpikingJelly's own backward. A surrogate not in the table (or one
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

from .choices import SURROGATE_CLASSES, parse_surrogate


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


# In place: ``x`` (any float dtype, any strides) is overwritten by ``sg(x; a)`` and returned, no temporaries. The
# same functions as above, rearranged into a chain of unary in-place ops (each tested against its row above).
def _rect_(x: Tensor, a: float) -> Tensor:
    x.abs_().lt_(0.5 / a)  # 1.0 / 0.0 in x's dtype
    return x if a == 1.0 else x.mul_(a)


def _sigmoid_(x: Tensor, a: float) -> Tensor:
    # s (1 - s) = sigmoid(ax) sigmoid(-ax) = 1 / (4 cosh(ax/2)^2): accurate in both tails (cosh -> inf gives 0)
    return x.mul_(a / 2).cosh_().square_().mul_(4.0 / a).reciprocal_()


def _atan_(x: Tensor, a: float) -> Tensor:
    # (a/2) / (1 + (pi/2 a x)^2) = 1 / (2/a + (2/a)(pi/2 a)^2 x^2): one addcmul (a 0-d tensor as its constant
    # term, read as a scalar) and a reciprocal, two passes over x (the default surrogate of the CLI)
    c = 2.0 / a
    return torch.addcmul(x.new_full((), c), x, x, value=c * (math.pi / 2 * a) ** 2, out=x).reciprocal_()


def _piecewise_quadratic_(x: Tensor, a: float) -> Tensor:
    # a - a^2 |x| is < 0 exactly where |x| > 1/a (up to rounding at the edge, where both are 0 within an ulp)
    return x.abs_().mul_(-a * a).add_(a).clamp_min_(0.0)


def _piecewise_exp_(x: Tensor, a: float) -> Tensor:
    return x.abs_().mul_(-a).exp_().mul_(a / 2)


def _soft_sign_(x: Tensor, a: float) -> Tensor:
    return x.abs_().add_(1.0 / a).square_().mul_(2.0 * a).reciprocal_()


def _super_spike_(x: Tensor, a: float) -> Tensor:
    return x.abs_().add_(1.0).square_().reciprocal_().mul_(a)


def _erf_(x: Tensor, a: float) -> Tensor:
    return x.square_().mul_(-a * a).exp_().mul_(a / math.sqrt(math.pi))


IN_PLACE: dict[str, Callable[[Tensor, float], Tensor]] = {
    "Rect": _rect_, "Sigmoid": _sigmoid_, "ATan": _atan_, "PiecewiseQuadratic": _piecewise_quadratic_,
    "PiecewiseExp": _piecewise_exp_, "SoftSign": _soft_sign_, "SuperSpike": _super_spike_, "Erf": _erf_,
}
"""``sg(x; a)`` written over ``x``, one row per name of ``FORMULAS`` (what the torch backend's backward calls)."""


@dataclass(frozen=True)
class SurrogateSpec:
    """One row of the table: the kernel id, the SpikingJelly class, ``sg(x, alpha)`` in torch, two bounds, and
    ``grad_(x, alpha)``, the same ``sg`` written over ``x`` (``IN_PLACE``).

    ``peak(a) = max_x sg(x; a)`` and ``slope(a) = max_x |sg'(x; a)|`` (the Lipschitz constant; Rect's is 0 away
    from its two jumps at ``|x| = 1/(2a)``). They bound how much a perturbed membrane changes the gradient
    (``saved_state='fp16'``, ``docs/neuron.md``); the tests check them against the formulas.
    """

    sid: int
    name: str
    sj_class: type
    grad: Callable[[Tensor, float], Tensor]
    peak: Callable[[float], float]
    slope: Callable[[float], float]
    grad_: Callable[[Tensor, float], Tensor]


_Bound = Callable[[float], float]
FORMULAS: dict[str, tuple[type, Callable[[Tensor, float], Tensor], _Bound, _Bound]] = {
    "Rect": (surrogate.Rect, _rect, lambda a: a, lambda a: 0.0),
    "Sigmoid": (surrogate.Sigmoid, _sigmoid, lambda a: a / 4, lambda a: a * a / (6 * math.sqrt(3))),
    "ATan": (surrogate.ATan, _atan, lambda a: a / 2, lambda a: a * a * 9 * math.pi / (32 * math.sqrt(3))),
    "PiecewiseQuadratic": (surrogate.PiecewiseQuadratic, _piecewise_quadratic, lambda a: a, lambda a: a * a),
    "PiecewiseExp": (surrogate.PiecewiseExp, _piecewise_exp, lambda a: a / 2, lambda a: a * a / 2),
    "SoftSign": (surrogate.SoftSign, _soft_sign, lambda a: a / 2, lambda a: a * a),
    "SuperSpike": (surrogate.SuperSpike, _super_spike, lambda a: a, lambda a: 2 * a),
    "Erf": (surrogate.Erf, _erf, lambda a: a / math.sqrt(math.pi),
            lambda a: a * a * math.sqrt(2 / math.pi) * math.exp(-0.5)),
}
"""One row per name of ``choices.SURROGATE_CLASSES``: (SpikingJelly class, ``sg(x; a)``, ``peak(a)``, ``slope(a)``)."""

SURROGATES: tuple[SurrogateSpec, ...] = tuple(
    SurrogateSpec(sid, name, *FORMULAS[name], IN_PLACE[name]) for sid, name in enumerate(SURROGATE_CLASSES)
)
"""The table, in kernel-id order (the order of ``choices.SURROGATE_CLASSES``)."""
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


def surrogate_grad_(sid: int, x: Tensor, alpha: float) -> Tensor:
    """``sg(x; alpha)`` of table row ``sid`` written over ``x`` (returned), without temporaries."""
    return _BY_ID[sid].grad_(x, alpha)


def from_name(spec: str) -> torch.nn.Module:
    """``'atan'``, ``'ATan:2.0'``, ``'rect:1.0'`` ... -> the SpikingJelly surrogate module of that table row.

    The spec is parsed by :func:`sj_resnet.neuron.choices.parse_surrogate` (the parser the CLI uses too): a class
    of the table above, case-insensitive, and an optional ``:alpha`` (finite, > 0) overriding the class's default
    ``alpha``. Raises ``ValueError`` naming the choices.
    """
    name, alpha = parse_surrogate(spec)
    cls = FORMULAS[name][0]
    return cls() if alpha is None else cls(alpha=alpha)
