"""The CPU thread policy: how many intra-op threads a run uses when ``--threads`` is not given.

Why not simply one thread per core: torch runs each operator's parallel loop on a team of OpenMP threads and
ends it with a barrier, so a step is as fast as the *slowest* thread of every one of its several hundred small
operators. When another process is runnable on one of the cores, even at ``nice 19``, the thread that shares
that core is descheduled for part of its time slices while the other thread waits at the barrier: the run
then pays for both cores and progresses at the speed of the slower one. Measured on the default digits run
(``docs/training.md``, "Threads on a busy host"): with one busy core, 2 threads were slower than 1, while on
idle cores 2 threads are ~1.7x faster than 1. So the policy counts the cores that are actually idle when the
run starts (``/proc/stat``, over a quarter of a second; time of ``nice``d processes counts as busy) and uses
that many threads, at least one.

A different thread count changes the float summation order of the convolutions, hence the run's trajectory
(not its expected accuracy): the header prints the choice and why; ``--threads N`` fixes it for a
reproducible or bit-identically resumed run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThreadChoice:
    threads: int | None  # None: leave torch's default alone (GPU runs)
    reason: str


def available_cores() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> tuple[int, int] | None:
    """``(idle, total)`` jiffies summed over ``cpus`` from ``/proc/stat``; None where it cannot be read."""
    wanted = {f"cpu{c}" for c in cpus}
    idle = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in wanted:
                    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
                    v = [int(x) for x in parts[1:9]]
                    idle += v[3] + v[4]
                    total += sum(v)
    except (OSError, ValueError, IndexError):
        return None
    return (idle, total) if total > 0 else None


def idle_cores(cpus: list[int], interval: float = 0.25) -> float | None:
    """How many of ``cpus`` were idle over the next ``interval`` seconds, in cores (Linux; None elsewhere)."""
    a = _cpu_times(cpus)
    time.sleep(interval)
    b = _cpu_times(cpus)
    if a is None or b is None or b[1] <= a[1]:
        return None
    return len(cpus) * (b[0] - a[0]) / (b[1] - a[1])


def choose_threads(requested: int | None, device: torch.device, local_world_size: int = 1) -> ThreadChoice:
    """The thread count for a run, with the reason the header prints.

    ``--threads N`` wins; a GPU run keeps torch's default; a CPU ``torchrun`` job splits the cores evenly
    between its processes; a single CPU process uses the idle cores at start (at least 1, at most its cores).
    """
    if requested is not None:
        return ThreadChoice(requested, "--threads")
    if device.type != "cpu":
        return ThreadChoice(None, "torch default")
    cores = available_cores()
    if local_world_size > 1:
        return ThreadChoice(max(1, len(cores) // local_world_size),
                            f"{len(cores)} cores split between {local_world_size} processes")
    idle = idle_cores(cores)
    if idle is None:
        return ThreadChoice(len(cores), f"{len(cores)} cores (idle time unknown)")
    n = max(1, min(len(cores), int(idle + 0.5)))
    return ThreadChoice(n, f"{idle:.1f} of {len(cores)} cores idle at start; --threads N to fix")


def apply(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (no-op for ``threads=None``)."""
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
