"""The neuron's lists of choices and its decay range: one torch-free owner for the package, the config and the CLI.

Everything here is plain Python, so ``sj-resnet --help`` and the training config can check options without
importing torch. The torch modules (``backends/``, ``surrogates.py``, ``params.py``, ``ops.py``, ``nodes.py``)
import these names; nothing else spells them out.
"""

from __future__ import annotations

import math

FUSED_BACKENDS = ("torch", "cupy")
"""Backends with a fused kernel (one module each in ``backends/``)."""
BACKENDS = ("auto", "reference", *FUSED_BACKENDS)
"""Every ``backend=`` of the nodes and the op: ``auto`` picks a fused one when it can, ``reference`` is the spec."""

SURROGATE_CLASSES = ("Rect", "Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp", "SoftSign", "SuperSpike", "Erf")
"""The SpikingJelly surrogate classes with a fused kernel; the position is the kernel's surrogate id (the
``SJR_SURROGATE_*`` constants of ``backends/cupy/surrogates.cuh``). ``surrogates.py`` holds one formula per name."""
SURROGATES: dict[str, str] = {name.lower(): name for name in SURROGATE_CLASSES}
"""Surrogate names as written in ``'atan'`` / ``'atan:2.0'`` (``--surrogate``) -> the SpikingJelly class name."""

DECAY_LOW, DECAY_HIGH = 0.0, 1.0
"""A decay must lie in ``(DECAY_LOW, DECAY_HIGH]``: above 0, and 1 at most (1 is the non-leaky IF neuron)."""
DECAY_RANGE = f"({DECAY_LOW:g}, {DECAY_HIGH:g}]"

SAVED_STATES = ("fp32", "fp16")
"""What a fused forward saves for backward:
``"fp32"``: ``h[t]`` (the pre-reset membrane) in the state dtype (float32, float64 for float64 inputs), 4 B/neuron-step;
``"fp16"``: ``d[t] = h[t] - v_threshold`` as float16, 2 B/neuron-step; spikes come from the sign bit of ``d``."""


def decay_in_range(decay: float) -> bool:
    """True for a number in ``(0, 1]`` (NaN is not)."""
    return DECAY_LOW < decay <= DECAY_HIGH


def parse_surrogate(spec: str) -> tuple[str, float | None]:
    """``'atan:2.0'`` -> ``('ATan', 2.0)``; ``'Rect'`` -> ``('Rect', None)`` (``None``: the class's default alpha).

    The name is case-insensitive, one of :data:`SURROGATES`; ``:alpha`` must be a finite number > 0. Raises
    ``TypeError`` for a non-string and ``ValueError`` naming the accepted spellings otherwise.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a surrogate name must be a str such as 'atan' or 'atan:2.0', got {type(spec).__name__}")
    name, sep, alpha_text = spec.partition(":")
    cls_name = SURROGATES.get(name.strip().lower())
    if cls_name is None:
        raise ValueError(
            f"unknown surrogate {spec!r}; choose one of {', '.join(SURROGATES)} optionally with ':alpha' "
            "(e.g. 'atan:2.0')"
        )
    if not sep:
        return cls_name, None
    try:
        alpha = float(alpha_text)
    except ValueError:
        raise ValueError(f"surrogate {spec!r}: alpha {alpha_text!r} is not a number") from None
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"surrogate {spec!r}: alpha must be a finite number > 0, got {alpha}")
    return cls_name, alpha
