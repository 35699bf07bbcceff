"""Lazy package exports (PEP 562): a package's public names are imported from their modules on first use.

This keeps ``import sj_resnet`` and the torch-free ``choices`` modules (which ``sj-resnet --help`` and the
training config read) free of torch, while ``from sj_resnet.models import create_model`` works as usual.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: name ``n`` comes from module ``homes[n]`` (relative to the
    package, e.g. ``'.nodes'``), imported when ``n`` is first looked up and then kept as a plain attribute."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
