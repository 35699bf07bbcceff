"""The set-up shared by ``sj-resnet train`` and ``sj-resnet eval``: where to run, with which data.

:func:`start_runtime` picks the device, joins the torchrun process group and sets the CPU threads;
:func:`build_data` builds the datasets and their (sharded) loaders for that runtime. Both commands call the
same two functions, so an evaluation sees the data exactly as training did.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from . import distributed
from .data import DataBundle, ResumableSampler, build_datasets, build_loaders


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: its rank (``info``) and the ``device`` it computes on."""

    info: distributed.DistInfo
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.info.is_main


def configure_threads(threads: int | None, device: torch.device, info: distributed.DistInfo) -> None:
    """``--threads``, or split the CPU cores evenly between the processes of a CPU torchrun job."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif device.type == "cpu" and info.local_world_size > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // info.local_world_size))


def start_runtime(cfg) -> Runtime:
    """Resolve ``cfg.device``, initialise the process group under torchrun, and set the CPU threads."""
    info = distributed.env_info()
    device = distributed.resolve_device(cfg.device, info)
    distributed.init(info, device)
    configure_threads(cfg.threads, device, info)
    return Runtime(info, device)


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Data:
    """The datasets of a run and the loaders of this process's shard."""

    bundle: DataBundle
    train_loader: DataLoader
    test_loader: DataLoader
    sampler: ResumableSampler


def build_data(cfg, rt: Runtime) -> Data:
    """Datasets for ``cfg.dataset`` and this rank's loaders (pinned memory on CUDA)."""
    bundle = build_datasets(cfg)
    train, test, sampler = build_loaders(bundle, cfg, rt.info.rank, rt.info.world_size,
                                         pin_memory=rt.device.type == "cuda")
    return Data(bundle, train, test, sampler)
