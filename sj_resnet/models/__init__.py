"""Spiking ResNets whose every shortcut has a BatchNorm (BN alone on identity shortcuts), SpikingJelly drop-ins.

``blocks.py`` holds the residual blocks, ``resnet.py`` the model and its builders, ``registry.py`` the model and
weights registries (names and metadata), ``weights.py`` weights loading (fetch, hash, unpickle, compare),
``memory.py`` the memory modes (``memory='standard'|'compact'|'checkpoint[:LEVEL]'``), ``choices.py`` the
torch-free lists of choices (norms, readouts, stems, memory modes). See ``docs/models.md``.

The public names are imported on first use (PEP 562), so ``choices`` can be imported without torch:
``from sj_resnet.models import create_model`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

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

_HOMES = {
    **dict.fromkeys(("BasicBlock", "Bottleneck"), ".blocks"),
    **dict.fromkeys(("WEIGHTS", "WeightsEntry", "create_model", "get_weights", "list_models", "list_weights",
                     "register_model", "register_weights"), ".registry"),
    **dict.fromkeys(("SpikingResNet", "resnet18", "resnet18_cifar", "resnet19", "resnet34", "resnet50", "resnet101",
                     "resnet152"), ".resnet"),
    **dict.fromkeys(("WeightsError", "WeightsMismatchError", "load_weights", "sha256_file"), ".weights"),
}

if TYPE_CHECKING:
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
    from .resnet import SpikingResNet, resnet18, resnet18_cifar, resnet19, resnet34, resnet50, resnet101, resnet152
    from .weights import WeightsError, WeightsMismatchError, load_weights, sha256_file


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
