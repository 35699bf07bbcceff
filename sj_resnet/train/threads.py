"""The CPU thread policy of ``sj-resnet``: OpenMP threads that sleep instead of spinning, one per core.

Why a busy host doubled the time: torch runs each operator's parallel loop on a team of OpenMP threads and ends
it with a barrier. GNU OpenMP's default wait at a barrier is *active*: a thread that arrives first spins on its
core for a while before it sleeps. When another process is runnable (even at ``nice 19``), the partner thread
is often descheduled, and the spinning thread burns its own core's time slice waiting for it: a training step
(several hundred small operators, several hundred barriers) then moves at the pace of the slowest thread and
wastes the rest. Measured on the default digits step on a busy 2-core host (``docs/training.md``, "Threads"):
with the default active wait, 2 threads took ~10x the wall time and ~12x the CPU time of 1 thread; with
``OMP_WAIT_POLICY=PASSIVE`` 2 threads took the *same* CPU time as 1 and ~2.2x less wall time, with or without
an extra ``nice 19`` busy loop. So:

* the ``sj-resnet`` command sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (:func:`prefer_passive_wait`;
  an explicit ``OMP_WAIT_POLICY`` in the environment wins), and
* uses one thread per available core (torch's own default), split evenly between the processes of a CPU
  ``torchrun`` job; ``--threads N`` overrides. Where the wait is not passive (torch loaded before the CLI ran,
  e.g. ``sj_resnet.cli.main`` called in-process), a single process keeps the thread count it was given.

The thread count is fixed by the machine, not by its load at start, so the same command on the same machine
runs the same trajectory (a different thread count changes the float summation order, hence the trajectory).
This module imports torch only inside functions, so the CLI can call :func:`prefer_passive_wait` first.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int | None  # None: leave torch's default alone (GPU runs)
    reason: str


def prefer_passive_wait() -> None:
    """Ask OpenMP threads to sleep at barriers (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    OpenMP reads the variable when torch loads it; called after that, it changes nothing (see :func:`wait_policy`).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def wait_policy() -> str:
    """The OpenMP wait policy of this process, as the header prints it."""
    value = os.environ.get(WAIT_POLICY_ENV)
    return f"OpenMP wait {value.lower()}" if value else "OpenMP wait default (active spin)"


def available_cores() -> int:
    """How many CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(requested: int | None, device: torch.device, local_world_size: int = 1) -> ThreadChoice:
    """The thread count for a run, with the reason the header prints.

    ``--threads N`` wins; a GPU run keeps torch's default; on a CPU, one thread per available core, the cores
    split evenly between the processes of a ``torchrun`` job.
    """
    if requested is not None:
        return ThreadChoice(requested, f"--threads; {wait_policy()}")
    if device.type != "cpu":
        return ThreadChoice(None, "torch default")
    cores = available_cores()
    if local_world_size > 1:
        return ThreadChoice(max(1, cores // local_world_size),
                            f"{cores} cores split between {local_world_size} processes; {wait_policy()}")
    if os.environ.get(WAIT_POLICY_ENV, "").upper() != "PASSIVE":
        # torch was loaded before the CLI could ask for passive waits (e.g. sj-resnet called in-process): threads
        # that spin are the busy-host trap, so keep the caller's thread count instead of one per core
        import torch

        return ThreadChoice(None, f"kept at {torch.get_num_threads()}; {wait_policy()}")
    return ThreadChoice(cores, f"one per core; {wait_policy()}")


def apply(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (no-op for ``threads=None``)."""
    if choice.threads is not None:
        import torch

        torch.set_num_threads(choice.threads)
