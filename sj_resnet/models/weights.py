"""Loading weights: resolve an entry, fetch or read the file, check its SHA-256, unpickle safely, compare.

URLs are fetched and cached by ``torch.hub.load_state_dict_from_url`` with ``check_hash=True`` (the full SHA-256
is put in the cache file name, so torch.hub verifies it on download); local files are hashed on every load.
Everything is read with ``weights_only=True``. A state dict that does not fit the model raises
:class:`WeightsMismatchError` listing the missing, unexpected and mis-shaped keys (:func:`state_dict_mismatch`,
also used by the training checkpoints).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .registry import WeightsEntry, get_weights

__all__ = [
    "WeightsError",
    "WeightsMismatchError",
    "load_weights",
    "resolve_weights",
    "sha256_file",
    "state_dict_mismatch",
]


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched, verified or read."""


class WeightsMismatchError(WeightsError):
    """A state dict does not fit the model (different architecture, width or neuron)."""


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
    """Accept a bare state dict or a training checkpoint holding one under ``'eval_model'`` (an sj-resnet run's
    evaluated weights, their EMA) / ``'model'`` / ``'state_dict'``; strip the ``module.`` (DDP) and ``_orig_mod.``
    (torch.compile) prefixes."""
    if isinstance(obj, Mapping):
        for key in ("eval_model", "model", "state_dict", "model_state_dict"):
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


def state_dict_mismatch(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str | None:
    """How ``state`` fails to fit a model whose state dict is ``own`` (missing, unexpected and mis-shaped keys,
    each list abbreviated), or ``None`` when every key is present with the model's shape."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_list(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_list(shapes, 6)}")
    return "; ".join(parts) or None


def load_weights(model: nn.Module, weights: str | WeightsEntry, progress: bool = True) -> nn.Module:
    """Fetch, verify and load ``weights`` into ``model`` (strictly); returns ``model``.

    Raises:
        WeightsError: the file is missing, fails its SHA-256 check, or is not a state dict.
        WeightsMismatchError: keys or shapes differ from the model's; the message lists them.
    """
    entry = resolve_weights(weights)
    assert entry is not None
    state = _unwrap_state_dict(_read_url(entry, progress) if entry.is_url else _read_path(entry))
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem is not None:
        trained = f" (trained as {entry.arch or '?'} with {dict(entry.kwargs)})" if entry.kwargs or entry.arch else ""
        raise WeightsMismatchError(
            f"the weights at {entry.url}{trained} do not fit this {type(model).__name__}: {problem}. Build the model "
            "with the same architecture, width, num_classes, identity_bn and neuron class as the weights (a shortcut "
            "BN or a learnable-decay neuron adds keys)"
        )
    model.load_state_dict(state, strict=True)
    return model
