"""``train/malloc.py``: the command keeps freed memory in the process (glibc malloc, checked with ``mallinfo2``)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from train_helpers import REPO, subprocess_env

from sj_resnet.train import malloc

_PROBE = """
import ctypes, json, sys
from sj_resnet.train.malloc import keep_freed_memory
note = keep_freed_memory() if sys.argv[1] == "keep" else "untouched"
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
size = 20 << 20  # an activation-sized block (above glibc's initial 128 KiB mmap threshold)
block = libc.malloc(size)
ctypes.memset(block, 1, size)
held = libc.mallinfo2()
libc.free(ctypes.c_void_p(block))
freed = libc.mallinfo2()
print(json.dumps({"note": note, "mmapped_while_held": held.hblkhd, "free_in_heap_after": freed.fordblks}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in subprocess_env().items() if k not in (*malloc.USER_ENV, "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only; elsewhere the command leaves it")
def test_freed_blocks_stay_in_the_process():
    """glibc's default maps a 20 MiB block with mmap and unmaps it on free (the next one faults in again); kept,
    the block comes from the heap and stays there after free, ready for the next step."""
    size = 20 << 20
    plain, kept = _probe("plain"), _probe("keep")
    assert plain["mmapped_while_held"] >= size and plain["free_in_heap_after"] < size, plain
    assert kept["note"] == "malloc keeps freed memory"
    assert kept["mmapped_while_held"] < size and kept["free_in_heap_after"] >= size, kept


def test_the_users_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert malloc.keep_freed_memory() == "malloc as tuned by MALLOC_TRIM_THRESHOLD_"
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert malloc.keep_freed_memory() == "malloc from LD_PRELOAD, untouched"
    assert malloc.malloc_note() == "malloc from LD_PRELOAD, untouched"
