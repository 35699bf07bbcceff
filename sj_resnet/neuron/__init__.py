"""The STBP decay-and-fire neuron: reference spec, surrogate table, fused backends, op and nodes.

Where to look: the math in ``reference.py``; the lists of choices (backends, surrogate names, decay range,
saved-state kinds) in ``choices.py``; the surrogate formulas in ``surrogates.py``; each backend in ``backends/``;
input checks and backend choice in ``ops.py``; the SpikingJelly nodes in ``nodes.py``.

The public names are imported on first use (PEP 562), so the torch-free ``choices`` module can be imported (by
``sj-resnet --help`` and the training config) without importing torch: ``from sj_resnet.neuron import
DecayFireNode`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
