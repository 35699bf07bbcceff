"""Model and weights registries: ``create_model``, ``list_models``, ``WeightsEntry`` and weights loading.

Builders register themselves with :func:`register_model` (``resnet.py`` does, at import). Weights are described
by a :class:`WeightsEntry` — where the file is (URL or local path), its SHA-256, the architecture and builder
arguments it was trained with, and metadata (dataset, T, accuracy, recipe). URLs are fetched and cached by
``torch.hub.load_state_dict_from_url`` with ``check_hash=True`` (the full SHA-256 is put in the cache file name,
so torch.hub verifies it on download); local files are hashed on every load. A state dict that does not fit the
model raises :class:`WeightsMismatchError` listing the missing, unexpected and mis-shaped keys.

No trained weights are published yet, so ``WEIGHTS`` starts empty; :func:`register_weights` adds entries
(e.g. a checkpoint you trained with the ``sj-resnet`` CLI) so that ``resnet19(weights="my-name")`` works.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "WEIGHTS",
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
    "resolve_weights",
    "sha256_file",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched, verified or read."""


class WeightsMismatchError(WeightsError):
    """A state dict does not fit the model (different architecture, width or neuron)."""


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


def list_models() -> list[str]:
    """Names of the registered builders, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name: ``create_model('resnet18', T=4, num_classes=10)``.

    Keyword arguments go to the builder (see ``SpikingResNet`` and the builders' docstrings).
    """
    if name not in _MODELS:
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


def resolve_weights(weights: str | WeightsEntry | None, arch: str | None = None) -> WeightsEntry | None:
    """``None`` -> ``None``; a registered name or an entry -> the entry, checked against builder ``arch``."""
    if weights is None:
        return None
    if isinstance(weights, str):
        entry = get_weights(weights)
    elif isinstance(weights, WeightsEntry):
        entry = weights
    else:
        raise TypeError(
            f"weights must be None, a registered weights name or a WeightsEntry, got {type(weights).__name__}"
        )
    if arch is not None and entry.arch is not None and entry.arch != arch:
        raise WeightsMismatchError(
            f"these weights are for {entry.arch!r} but the builder is {arch!r}; use "
            f"sj_resnet.models.create_model({entry.arch!r}, weights=...)"
        )
    return entry


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_url(entry: WeightsEntry, progress: bool) -> Any:
    base = os.path.basename(str(entry.url).split("?")[0]) or "weights.pth"
    stem, ext = os.path.splitext(base)
    stem = re.sub(r"-[0-9a-fA-F]+$", "", stem)  # drop a short hash already in the name, torch.hub style
    file_name = f"{stem}-{entry.sha256.lower()}{ext or '.pth'}"  # torch.hub checks sha256 starts with this
    try:
        return torch.hub.load_state_dict_from_url(
            str(entry.url), map_location="cpu", progress=progress, check_hash=True, file_name=file_name,
            weights_only=True,
        )
    except RuntimeError as err:
        if "hash" in str(err).lower():
            raise WeightsError(
                f"the file at {entry.url} does not match its registered SHA-256 ({entry.sha256}): {err}. The "
                "download was discarded; the entry or the file is wrong"
            ) from err
        raise WeightsError(f"could not read weights from {entry.url}: {err}") from err
    except OSError as err:
        raise WeightsError(f"could not download weights from {entry.url}: {err}") from err


def _read_path(entry: WeightsEntry) -> Any:
    path = os.path.expanduser(str(entry.url))
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path!r} does not exist (WeightsEntry.url is a URL or a local file path)")
    digest = sha256_file(path)
    if digest.lower() != entry.sha256.lower():
        raise WeightsError(
            f"weights file {path!r} has SHA-256 {digest}, but the entry expects {entry.sha256}; the file is "
            "corrupt, truncated or not the one registered (re-download it, or fix the entry's sha256)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure gets the same clear message
        raise WeightsError(f"weights file {path!r} is not a readable torch state dict: {err}") from err


def _unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """Accept a bare state dict or a training checkpoint holding one under ``'model'`` / ``'state_dict'``;
    strip the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(
            "the weights file does not hold a state dict (a mapping of names to tensors, possibly under a "
            "'model' or 'state_dict' key)"
        )
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model: nn.Module, weights: str | WeightsEntry, progress: bool = True) -> nn.Module:
    """Fetch, verify and load ``weights`` into ``model`` (strictly); returns ``model``.

    Raises:
        WeightsError: the file is missing, fails its SHA-256 check, or is not a state dict.
        WeightsMismatchError: keys or shapes differ from the model's; the message lists them.
    """
    entry = resolve_weights(weights)
    assert entry is not None
    state = _unwrap_state_dict(_read_url(entry, progress) if entry.is_url else _read_path(entry))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_list(shapes, 6)}")
        trained = f" (trained as {entry.arch or '?'} with {dict(entry.kwargs)})" if entry.kwargs or entry.arch else ""
        raise WeightsMismatchError(
            f"the weights at {entry.url}{trained} do not fit this {type(model).__name__}: " + "; ".join(parts)
            + ". Build the model with the same architecture, width, num_classes, identity_bn and neuron class "
            "as the weights (a shortcut BN or a learnable-decay neuron adds keys)"
        )
    model.load_state_dict(state, strict=True)
    return model
