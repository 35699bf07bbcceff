"""Process-group setup for ``torchrun``: one process per device, rank 0 logs and checkpoints.

``torchrun --nproc_per_node=K -m sj_resnet train ...`` (or ``--nnodes=M --rdzv-endpoint=HOST:PORT`` across
machines) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; this module reads them,
initialises the default process group (``nccl`` on CUDA, ``gloo`` on CPU) and offers the few collective
helpers the training loop needs. Without those variables everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun?)") from exc


def env_info() -> DistInfo:
    """Read the torchrun environment; a plain ``python`` run is rank 0 of 1."""
    world = _env_int("WORLD_SIZE", 1)
    return DistInfo(
        rank=_env_int("RANK", 0),
        world_size=world,
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", world),
    )


def resolve_device(requested: str, info: DistInfo) -> torch.device:
    """``'auto'`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``'cuda'`` gets the local rank.

    Raises :class:`~sj_resnet.train.config.ConfigError` for a device that is unknown or not present."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown --device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {requested!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: no CUDA GPU is visible to torch on this machine; "
                              "use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", info.local_rank % max(1, count))
        elif device.index >= count:
            raise ConfigError(f"--device {requested}: this machine has {count} CUDA device(s) (cuda:0..cuda:"
                              f"{count - 1})")
        torch.cuda.set_device(device)
    return device


def init(info: DistInfo, device: torch.device) -> None:
    """Initialise the default process group when running under torchrun with more than one process."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``t``."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (used to stop every rank together on Ctrl-C)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (e.g. the timestamped output directory)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def replicas_in_sync(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (a DDP sanity check at the end of a run)."""
    tensors = [t.detach().reshape(-1).double() for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point()]
    flat = torch.cat(tensors) if tensors else torch.zeros(1, dtype=torch.float64)
    local = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64,
                                                           device=flat.device).remainder(9973)).sum()])
    if not (dist.is_available() and dist.is_initialized()):
        return True
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)
