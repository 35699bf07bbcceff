"""Training checkpoints: atomic writes, validated reads, and the RNG state that makes a resume bit-identical.

Write: ``torch.save`` into a temporary file in the checkpoint's directory, ``flush`` + ``fsync``, then
``os.replace`` onto the target (atomic on POSIX and Windows) and ``fsync`` the directory, so a crash or a
full disk at any moment leaves either the old or the new checkpoint, never a torn one.

Read: ``torch.load(weights_only=True)`` (no arbitrary code from a downloaded file; RNG states are stored as
tensors and tuples for that reason), then checks of the format tag and the keys, each failure a
:class:`CheckpointError` that says what is wrong and what to do. A failed read never modifies the file.

Schema (``last.pt`` and ``best.pt`` alike, built by ``Trainer.checkpoint_state``)::

    format, run_id (the run's id, also in config.json and summary.json), config, model_spec, model (the trained
    weights), eval_model (their EMA with --ema-decay, else None), epoch, step_in_epoch, metrics (the epoch's
    metrics.csv row, None mid-epoch), world_size, torch_version
    + training state (last.pt only): ema, optimizer, scheduler, scaler, rng (one per rank), history,
      partial_epoch (an interrupted epoch's running sums: loss, accuracy, firing, gradient norm), best, elapsed_s

Evaluation uses ``eval_model`` when present, else ``model``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

FORMAT = "sj_resnet.train/1"
LAST = "last.pt"
BEST = "best.pt"
MODEL_KEYS = ("format", "config", "model_spec", "model", "epoch")
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "step_in_epoch", "rng", "history")


class CheckpointError(RuntimeError):
    """The checkpoint is missing, unreadable or does not belong to this run; the message names the fix."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).

    An ``OSError`` (disk full, ...) becomes a :class:`CheckpointError` that says the old file survived; so does the
    ``RuntimeError`` that ``torch.save``'s zip writer raises when the file's ``write`` fails (the ``OSError`` is its
    context)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with _suppress():
            tmp.unlink()
        failed = _os_error(exc)
        if failed is not None:  # disk full, quota, file size limit, read-only: the old file is still there
            raise CheckpointError(
                f"could not write {path} ({failed.strerror or failed}); the previous {path.name}, if any, is "
                "unchanged. Free space (or pick another --output-dir) and continue with --resume"
            ) from exc
        raise
    with _suppress():  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """``exc`` if it is an ``OSError``, else the ``OSError`` it was raised from or while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


def resolve_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (-> its ``last.pt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST
    if not p.exists():
        raise CheckpointError(
            f"no checkpoint at {p}; pass the .pt file written by `sj-resnet train` or its run directory "
            f"(which holds {LAST})"
        )
    return p


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu", require_training_state: bool = True
         ) -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_atomic` (``last.pt`` or ``best.pt``)."""
    p = resolve_path(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, foreign objects, ...
        raise CheckpointError(
            f"{p} is not a readable checkpoint ({type(exc).__name__}: {_reason(exc)}). "
            "It may be truncated or not written by sj-resnet; the file was left untouched. Resume from another "
            "checkpoint or start a new run in a fresh --output-dir."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{p} is not an sj-resnet training checkpoint (format {found!r}, expected {FORMAT!r}). Plain model "
            "weights load with sj_resnet.models.load_weights; training checkpoints come from `sj-resnet train`."
        )
    keys = MODEL_KEYS + TRAINING_KEYS if require_training_state else MODEL_KEYS
    missing = [k for k in keys if k not in ckpt]
    if missing:
        what = "training state" if require_training_state else "model"
        raise CheckpointError(
            f"{p} lacks {', '.join(missing)} ({what} incomplete); "
            + ("best.pt holds no training state: resume from last.pt" if require_training_state else "re-save it")
        )
    return ckpt


def _reason(exc: BaseException) -> str:
    """The informative part of a ``torch.load`` error, without torch's advice to load unsafely."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # the detail follows torch's paragraph about weights_only
        detail = [ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()]
        return "it holds data that a safe load refuses" + (f": {detail[0]}" if detail else "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else type(exc).__name__


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """``load_state_dict(strict=True)`` with the models' mismatch report on an architecture mismatch."""
    from sj_resnet.models.weights import state_dict_mismatch

    problem = state_dict_mismatch(model.state_dict(), state)
    if problem is not None:
        raise CheckpointError(
            f"{path} does not fit the model: {problem}. The checkpoint's model_spec describes the network it was "
            "trained with."
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states as tensors/tuples (weights_only-safe)."""
    import numpy as np

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
