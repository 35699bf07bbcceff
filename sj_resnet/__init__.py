"""sj_resnet: fused STBP decay-and-fire neurons and shortcut-BN spiking ResNets for SpikingJelly 2.x.

The neuron API is imported on first use (PEP 562), so ``sj-resnet --help`` and other torch-free entry points
stay instant: ``from sj_resnet import DecayFireNode`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "DecayFireNode",
    "ParametricDecayFireNode",
    "decay_fire_multi_step",
    "decay_fire_reference",
    "__version__",
]

if TYPE_CHECKING:
    from .neuron import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step, decay_fire_reference


__getattr__, __dir__ = lazy_exports(__name__, {name: ".neuron" for name in __all__ if name != "__version__"})
