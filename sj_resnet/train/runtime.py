"""The set-up shared by ``sj-resnet train`` and ``sj-resnet eval``: where to run, with which data.

:func:`start_runtime` picks the device, joins the torchrun process group and sets the CPU threads;
:func:`build_data` builds the datasets and their (sharded) loaders for that runtime. Both commands call the
same two functions, so an evaluation sees the data exactly as training did.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from . import distributed
from .data import DataBundle, ResumableSampler, build_datasets, build_loaders
from .threads import ThreadChoice, choose_threads
from .threads import apply as apply_threads


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: its rank (``info``) and the ``device`` it computes on."""

    info: distributed.DistInfo
    device: torch.device
    threads: ThreadChoice = ThreadChoice(None, "torch default")

    @property
    def is_main(self) -> bool:
        return self.info.is_main


def configure_threads(threads: int | None, device: torch.device, info: distributed.DistInfo) -> ThreadChoice:
    """Apply the thread policy of :mod:`.threads` (``--threads``, one per core, or cores split between processes)."""
    choice = choose_threads(threads, device, info.local_world_size)
    apply_threads(choice)
    return choice


def start_runtime(cfg) -> Runtime:
    """Resolve ``cfg.device``, initialise the process group under torchrun, and set the CPU threads."""
    info = distributed.env_info()
    device = distributed.resolve_device(cfg.device, info)
    distributed.init(info, device)
    threads = configure_threads(cfg.threads, device, info)
    return Runtime(info, device, threads)


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
