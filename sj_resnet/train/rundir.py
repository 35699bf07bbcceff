"""The run folder: where a run may write, checked before anything is created.

A run writes only into its own folder (``--output-dir``). :func:`check_writable_dir` proves, before the
folder is created, that it can be created and written (an impossible or read-only ``-o`` is a one-line
error, not a traceback after minutes of set-up, and leaves no empty folder behind); :func:`check_output_file`
does the same for a single result file (``sj-resnet eval --output``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .config import ConfigError


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(directory: Path, option: str, target: Path) -> None:
    """Create and remove a temporary file in ``directory`` (what a write there needs, as root or not)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".sj-resnet-probe-", dir=directory)
    except OSError as exc:
        raise ConfigError(
            f"{option} {target}: cannot write in {directory} ({exc.strerror or exc}); choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_writable_dir(path: str | os.PathLike, option: str = "--output-dir") -> Path:
    """Raise :class:`ConfigError` unless ``path`` is a writable directory or can be created as one."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{option} {target} is a file, not a directory; choose a directory")
    anchor = _nearest_existing(target)
    if not anchor.is_dir():
        raise ConfigError(f"{option} {target}: {anchor} is a file, so no directory can be created below it")
    _probe_writable(anchor, option, target)
    return target


def check_output_file(path: str | os.PathLike, option: str = "--output") -> Path:
    """Raise :class:`ConfigError` unless ``path`` can be written as a file (its directory exists, is writable)."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {target} is a directory; give a file name, e.g. {target / 'result.json'}")
    parent = target.absolute().parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {target}: the directory {parent} does not exist; create it first")
    _probe_writable(parent, option, target)
    return target
