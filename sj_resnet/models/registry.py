"""Names and metadata: the model registry (``register_model``, ``list_models``, ``create_model``) and the weights
registry (``WeightsEntry``, ``register_weights``, ``list_weights``, ``get_weights``).

Builders register themselves with :func:`register_model` (``resnet.py`` does, at import). Weights are described
by a :class:`WeightsEntry` — where the file is (URL or local path), its SHA-256, the architecture and builder
arguments it was trained with, and metadata (dataset, T, accuracy, recipe). Fetching, hashing and loading them is
:mod:`sj_resnet.models.weights`' job; nothing here does I/O.

No trained weights are published yet, so ``WEIGHTS`` starts empty; :func:`register_weights` adds entries
(e.g. a checkpoint you trained with the ``sj-resnet`` CLI) so that ``resnet19(weights="my-name")`` works.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "WEIGHTS",
    "WeightsEntry",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "register_model",
    "register_weights",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class WeightsEntry:
    """A pretrained state dict and what it was trained with.

    Attributes:
        url: ``http(s)://`` / ``file://`` URL (fetched and cached by torch.hub) or a local file path.
        sha256: hex SHA-256 of the file (64 digits), checked before the file is used.
        arch: builder name the weights belong to (``'resnet19'``); ``None`` skips the check.
        kwargs: builder arguments the weights need (``num_classes``, ``width``, ``norm``, ``identity_bn``, neuron
            arguments, ...); the builder fills them in and refuses a conflicting explicit value.
        meta: free metadata, by convention ``dataset``, ``T``, ``accuracy`` (top-1 %), ``recipe``.
    """

    url: str
    sha256: str
    arch: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str | os.PathLike) or not str(self.url):
            raise ValueError(f"WeightsEntry.url must be a URL or a file path, got {self.url!r}")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", str(self.sha256)):
            raise ValueError(
                f"WeightsEntry.sha256 must be the 64 hex digits of the file's SHA-256, got {self.sha256!r}; "
                "compute it with sj_resnet.models.sha256_file(path) or `sha256sum FILE`"
            )

    @property
    def is_url(self) -> bool:
        return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", str(self.url)) is not None


WEIGHTS: dict[str, WeightsEntry] = {}
"""Registered weights by name. Empty until trained weights are published; see :func:`register_weights`."""


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make a builder available to :func:`create_model` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def _builders() -> dict[str, Callable[..., nn.Module]]:
    """The registered builders, ours included (``resnet.py`` registers them when it is first imported)."""
    from . import resnet  # noqa: F401

    return _MODELS


def list_models(filter: str = "") -> list[str]:
    """Names of the registered builders, sorted; ``filter`` is a shell-style pattern (``'resnet1*'``)."""
    return sorted(n for n in _builders() if not filter or fnmatch.fnmatchcase(n, filter))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name: ``create_model('resnet18', T=4, num_classes=10)``.

    Keyword arguments go to the builder (see ``SpikingResNet`` and the builders' docstrings).
    """
    if name not in _builders():
        close = difflib.get_close_matches(str(name), list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}.{hint}")
    return _MODELS[name](**kwargs)


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def register_weights(name: str, entry: WeightsEntry, *, overwrite: bool = False) -> WeightsEntry:
    """Register ``entry`` under ``name`` so builders accept ``weights=name``."""
    if not isinstance(entry, WeightsEntry):
        raise TypeError(f"entry must be a WeightsEntry, got {type(entry).__name__}")
    if name in WEIGHTS and not overwrite and WEIGHTS[name] != entry:
        raise ValueError(f"weights {name!r} are already registered; pass overwrite=True to replace them")
    WEIGHTS[name] = entry
    return entry


def list_weights(arch: str | None = None) -> list[str]:
    """Registered weights names, optionally only those for builder ``arch``."""
    return sorted(n for n, e in WEIGHTS.items() if arch is None or e.arch in (None, arch))


def get_weights(name: str) -> WeightsEntry:
    """The registered entry called ``name``."""
    if name not in WEIGHTS:
        known = ", ".join(list_weights()) or "none are registered yet"
        raise ValueError(
            f"unknown weights {name!r} (registered: {known}); pass a WeightsEntry(url_or_path, sha256, ...) "
            "or register one with sj_resnet.models.register_weights(name, entry)"
        )
    return WEIGHTS[name]
