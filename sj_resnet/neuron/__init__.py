"""The STBP decay-and-fire neuron: reference spec, surrogate table, fused backends, op and nodes.

Where to look: the math in ``reference.py``; the surrogate formulas in ``surrogates.py``; each backend in
``backends/``; input checks and backend choice in ``ops.py``; the SpikingJelly nodes in ``nodes.py``.
"""

from .nodes import DecayFireNode, ParametricDecayFireNode
from .ops import decay_fire_multi_step
from .reference import decay_fire_reference

__all__ = ["DecayFireNode", "ParametricDecayFireNode", "decay_fire_multi_step", "decay_fire_reference"]
