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


# --------------------------------------------------------------------------------------------------
# What marks a folder as holding a run, run ids, stale temporary files
# --------------------------------------------------------------------------------------------------

RUN_ID_KEY = "run_id"
# Every file a run writes (report.py, checkpoint.py, runner.py): any of them means the folder holds a run.
RUN_ARTIFACTS = ("config.json", "last.pt", "best.pt", "metrics.csv", "summary.json", "curves.png", "tb")
_TEMP_PREFIXES = (".last.pt.tmp-", ".best.pt.tmp-", ".metrics.csv.tmp", ".summary.json.tmp")


def new_run_id() -> str:
    """A fresh random run id (stored in ``config.json``, every checkpoint and ``summary.json``)."""
    import uuid

    return uuid.uuid4().hex[:16]


def artifacts(folder: str | os.PathLike) -> list[str]:
    """The run artifacts present in ``folder`` (empty for a missing folder or one with unrelated files)."""
    f = Path(folder)
    if not f.is_dir():
        return []
    return [name for name in RUN_ARTIFACTS if (f / name).exists()]


def folder_run_id(folder: str | os.PathLike) -> str | None:
    """The run id recorded in ``folder/config.json`` (``None``: no config, or one written before run ids)."""
    import json

    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text()).get(RUN_ID_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def check_fresh_folder(folder: str | os.PathLike) -> None:
    """A new run may only start in a folder that holds no run artifact (whatever the artifact is)."""
    found = artifacts(folder)
    if found:
        raise FileExistsError(
            f"{folder} already holds a run ({', '.join(found)}); pass --resume {folder} to continue it, or choose "
            "another --output-dir"
        )


def check_resume_folder(ckpt_path: Path, ckpt_run_id: str | None, output_dir: str | None) -> Path:
    """The folder a resume may write to: the checkpoint's own run folder, and only if it holds that run.

    ``output_dir`` (``-o``, if given) must name that folder. The folder's ``config.json`` must carry the
    checkpoint's run id; without a ``config.json``, only the folder's own ``last.pt`` (or a checkpoint in a
    folder holding no run artifact) may continue it. Raises :class:`ConfigError` otherwise; returns the folder."""
    folder = ckpt_path.parent
    if output_dir is not None and Path(output_dir).resolve() != folder.resolve():
        raise ConfigError(
            f"--resume continues a run in its own folder {folder}; --output-dir {output_dir} is another folder. "
            "Drop --output-dir (a resume never writes elsewhere), or start a new run there"
        )
    recorded = folder_run_id(folder)
    if (folder / "config.json").exists():
        same = recorded == ckpt_run_id
    else:  # no record of the folder's run: only its own last.pt may continue it
        same = ckpt_path.name == "last.pt" or not artifacts(folder)
    if not same:
        raise ConfigError(
            f"{ckpt_path} belongs to run {ckpt_run_id or '(unknown)'} but {folder} holds run {recorded or '(unknown)'};"
            " resuming it here would overwrite that run's files. Resume the checkpoint from its own run folder"
        )
    return folder


def remove_stale_temp_files(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed writer left in the run ``folder`` (``.last.pt.tmp-<pid>``, ...).

    A temporary file whose ``<pid>`` is a running process is left alone (it may be that process's write in
    progress). Returns the names removed."""
    f = Path(folder)
    removed = []
    if not f.is_dir():
        return removed
    for p in f.iterdir():
        if not p.name.startswith(_TEMP_PREFIXES) or not p.is_file():
            continue
        pid = p.name.rsplit("-", 1)[-1] if ".tmp-" in p.name else ""
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            p.unlink()
        except OSError:
            continue
        removed.append(p.name)
    return sorted(removed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
