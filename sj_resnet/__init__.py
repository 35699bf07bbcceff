"""sj_resnet: fused STBP decay-and-fire neurons and shortcut-BN spiking ResNets for SpikingJelly 2.x."""

from .neuron import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step, decay_fire_reference

__version__ = "0.1.0"

__all__ = [
    "DecayFireNode",
    "ParametricDecayFireNode",
    "decay_fire_multi_step",
    "decay_fire_reference",
    "__version__",
]
