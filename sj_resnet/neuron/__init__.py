"""The STBP decay-and-fire neuron: reference spec, surrogate table, fused backends, op and nodes.

Where to look: the math in ``reference.py``; the lists of choices (backends, surrogate names, decay range,
saved-state kinds) in ``choices.py``; the surrogate formulas in ``surrogates.py``; each backend in ``backends/``;
input checks and backend choice in ``ops.py``; the SpikingJelly nodes in ``nodes.py``.

The public names are imported on first use (PEP 562), so the torch-free ``choices`` module can be imported (by
``sj-resnet --help`` and the training config) without importing torch: ``from sj_resnet.neuron import
DecayFireNode`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["DecayFireNode", "ParametricDecayFireNode", "decay_fire_multi_step", "decay_fire_reference"]

_HOMES = {
    "DecayFireNode": ".nodes",
    "ParametricDecayFireNode": ".nodes",
    "decay_fire_multi_step": ".ops",
    "decay_fire_reference": ".reference",
}

if TYPE_CHECKING:
    from .nodes import DecayFireNode, ParametricDecayFireNode
    from .ops import decay_fire_multi_step
    from .reference import decay_fire_reference


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
