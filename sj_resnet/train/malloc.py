"""Keep freed CPU memory in the process, so that a training step does not fault its activations in again.

torch's CPU allocator takes every tensor from ``malloc``. glibc serves a block above its mmap threshold (128 KiB,
raised dynamically up to 32 MiB) with a fresh ``mmap``, and gives heap memory above its trim threshold back to the
kernel. A training step frees its activations and allocates them again in the next step, so each new block is
fresh memory: the kernel maps it page by page on first touch (a minor page fault, ~2 µs per 4 KiB page). Measured
on the project's 2-core machine (``docs/training.md``, round 4): one training step of the digits default had
~1000 minor faults and the neuron's forward + backward on ``[4, 64, 16, 12, 12]`` ~1700 (6.5 ms); with the
thresholds below, ~20 and ~0 (2.5 ms), and the training step took ~0.91x the time.

:func:`keep_freed_memory` raises glibc's mmap threshold to its maximum (32 MiB on 64-bit: smaller blocks come from
the heap) and the trim threshold to 1 GiB (freed heap memory stays in the process) with ``mallopt``. The cost is
that the resident set stays at its peak, which a training process reaches in its first step anyway. Nothing is done
off glibc, when another allocator is preloaded (``LD_PRELOAD``: jemalloc, tcmalloc), or when the environment
already tunes glibc's malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``GLIBC_TUNABLES``): the user's choice wins. It changes no result, only where memory comes from.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 1 << 30
USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_note = "malloc untouched"  # what keep_freed_memory did, for the header (the CLI calls it; a library user does not)


def keep_freed_memory() -> str:
    """Set the thresholds (see the module docstring) if this process uses glibc's malloc untuned; returns what
    was done (also :func:`malloc_note`)."""
    global _note
    user = [name for name in USER_ENV if name in os.environ]
    if user:
        _note = f"malloc as tuned by {', '.join(user)}"
    elif os.environ.get("LD_PRELOAD"):
        _note = "malloc from LD_PRELOAD, untouched"
    elif platform.libc_ver()[0] != "glibc":
        _note = "malloc untouched (not glibc)"
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                  and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
        except (OSError, AttributeError):
            ok = False
        _note = "malloc keeps freed memory" if ok else "malloc untouched (mallopt failed)"
    return _note


def malloc_note() -> str:
    """What :func:`keep_freed_memory` did in this process, as the header prints it."""
    return _note
