"""Spiking ResNets whose every shortcut has a BatchNorm (BN alone on identity shortcuts), SpikingJelly drop-ins.

``blocks.py`` holds the residual blocks, ``resnet.py`` the model and its builders, ``registry.py`` the model and
weights registries (names and metadata), ``weights.py`` weights loading (fetch, hash, unpickle, compare). See
``docs/models.md``.
"""

from .blocks import BasicBlock, Bottleneck
from .registry import (
    WEIGHTS,
    WeightsEntry,
    create_model,
    get_weights,
    list_models,
    list_weights,
    register_model,
    register_weights,
)
from .resnet import (
    SpikingResNet,
    resnet18,
    resnet18_cifar,
    resnet19,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from .weights import WeightsError, WeightsMismatchError, load_weights, sha256_file

__all__ = [
    "WEIGHTS",
    "BasicBlock",
    "Bottleneck",
    "SpikingResNet",
    "WeightsEntry",
    "WeightsError",
    "WeightsMismatchError",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "load_weights",
    "register_model",
    "register_weights",
    "resnet18",
    "resnet18_cifar",
    "resnet19",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "sha256_file",
]
