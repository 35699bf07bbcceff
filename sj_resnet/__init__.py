"""sj_resnet: fused STBP decay-and-fire neurons and shortcut-BN spiking ResNets for SpikingJelly 2.x.

The neuron API is imported on first use (PEP 562), so ``sj-resnet --help`` and other torch-free entry points
stay instant: ``from sj_resnet import DecayFireNode`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import neuron

        return getattr(neuron, name)
    raise AttributeError(f"module 'sj_resnet' has no attribute {name!r}")
