"""The CPU thread policy of ``sj-resnet``: one thread per core, and an OpenMP wait chosen by the machine's load.

torch runs each operator's parallel loop on a team of OpenMP threads that meet at a barrier at its end, several
hundred times per training step. How a thread waits there decides how a 2-thread run behaves beside other work.
Measured with ``benchmarks/threads.py`` (the digits default, 2-core AMD EPYC; img/s of the training loop, medians;
``docs/training.md``, "Threads"):

=============================  ==========  ======================  ============================
background                     threads     libgomp default wait    ``OMP_WAIT_POLICY=PASSIVE``
=============================  ==========  ======================  ============================
none                           1 / 2       269 / **358**           294 / 209
one ``nice 19`` busy loop      1 / 2       273 / **406**           290 / 245
two ``nice 0`` busy loops      1 / 2       155 / 58                205 / **171**
=============================  ==========  ======================  ============================

libgomp's default wait (spin ~300 000 iterations, then sleep) is the fastest while the machine has a core free
for each of our threads, and a disaster when other runnable work of the same priority fills the cores: a thread
spins while its partner waits for a time slice. Sleeping at once (passive) is the graceful choice then, and 40 %
slower otherwise. The wait changes no result (the work is split the same way; only the waiting differs), so the
command picks it per run from the machine's load at start, before torch loads (:func:`prefer_wait_policy`):
passive when the runnable tasks of other processes (``/proc/loadavg``, sampled for 0.1 s) fill every core,
libgomp's default otherwise. An explicit ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins.

The thread count does change results (the float summation order), so it depends on the machine only, never on
its load: one thread per available core, split evenly between the processes of a CPU ``torchrun`` job;
``--threads N`` overrides. Where the CLI could not choose the wait (torch was loaded before it ran, e.g.
``sj_resnet.cli.main`` called in-process), a single process keeps the thread count it was given.
This module imports torch only inside functions, so the CLI can call :func:`prefer_wait_policy` first.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
SPIN_COUNT_ENV = "GOMP_SPINCOUNT"
LOAD_SAMPLES = 20  # samples of /proc/loadavg's runnable-task count ...
LOAD_INTERVAL_S = 0.005  # ... this far apart (0.1 s in all)

# How this process's wait was chosen, for the header (set by prefer_wait_policy).
_choice_note: str | None = None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int | None  # None: leave torch's default alone (GPU runs)
    reason: str


def runnable_elsewhere(samples: int = LOAD_SAMPLES, interval_s: float = LOAD_INTERVAL_S) -> float | None:
    """Median number of runnable tasks of other processes (``/proc/loadavg``'s 4th field minus this one).

    ``None`` where ``/proc/loadavg`` does not exist (not Linux)."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def busy_wait_policy(others: float | None, cores: int) -> str | None:
    """``'PASSIVE'`` when other runnable work fills every core, else ``None`` (libgomp's default wait)."""
    return "PASSIVE" if others is not None and others >= cores else None


def prefer_wait_policy(others: float | None = None) -> None:
    """Choose the OpenMP wait from the machine's load (see the module docstring), before torch loads.

    ``others`` (tests): the runnable tasks of other processes; measured when ``None``. Does nothing once torch is
    loaded (OpenMP has read its environment) or when the user set ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT``."""
    global _choice_note
    if "torch" in sys.modules or WAIT_POLICY_ENV in os.environ or SPIN_COUNT_ENV in os.environ:
        return
    cores = available_cores()
    if others is None:
        others = runnable_elsewhere()
    policy = busy_wait_policy(others, cores)
    load = "load unknown" if others is None else f"{others:g} runnable tasks elsewhere on {cores} cores"
    if policy is not None:
        os.environ[WAIT_POLICY_ENV] = policy
    _choice_note = load


def wait_policy() -> str:
    """The OpenMP wait of this process, as the header prints it."""
    value = os.environ.get(WAIT_POLICY_ENV)
    spin = os.environ.get(SPIN_COUNT_ENV)
    if value:
        text = f"OpenMP wait {value.lower()}"
    elif spin:
        text = f"OpenMP wait: spin {spin}, then sleep"
    else:
        text = "OpenMP wait default (spin, then sleep)"
    if _choice_note is not None:
        return f"{text}, chosen for {_choice_note}"
    return text if not (value or spin) else f"{text} (from the environment)"


def wait_chosen() -> bool:
    """Whether this process's wait was chosen, by the CLI before torch loaded or in the environment (so one thread
    per core is a deliberate choice, not libgomp's default spinning by accident)."""
    return _choice_note is not None or WAIT_POLICY_ENV in os.environ or SPIN_COUNT_ENV in os.environ


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
    if not wait_chosen():
        # torch was loaded before the CLI could choose the wait (e.g. sj-resnet called in-process): spinning
        # threads on a busy host are the trap above, so keep the caller's thread count instead of one per core
        import torch

        return ThreadChoice(None, f"kept at {torch.get_num_threads()}; {wait_policy()}")
    return ThreadChoice(cores, f"one per core; {wait_policy()}")


def apply(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (no-op for ``threads=None``)."""
    if choice.threads is not None:
        import torch

        torch.set_num_threads(choice.threads)
