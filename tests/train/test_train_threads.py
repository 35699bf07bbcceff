"""The CPU thread policy (sj_resnet/train/threads.py) and the ETA line printed after the first epoch."""

from __future__ import annotations

from datetime import datetime

import pytest
import torch

from sj_resnet.train import threads
from sj_resnet.train.report import format_eta

CPU = torch.device("cpu")


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: [0, 1])


@pytest.mark.parametrize("idle, expect", [(2.0, 2), (1.6, 2), (1.4, 1), (1.0, 1), (0.1, 1), (0.0, 1)])
def test_idle_cores_decide_the_thread_count(monkeypatch, two_cores, idle, expect):
    monkeypatch.setattr(threads, "idle_cores", lambda cpus, interval=0.25: idle)
    choice = threads.choose_threads(None, CPU)
    assert choice.threads == expect
    assert f"{idle:.1f} of 2 cores idle" in choice.reason and "--threads N" in choice.reason


def test_explicit_threads_gpu_and_torchrun(monkeypatch, two_cores):
    def fail(*a, **k):
        raise AssertionError("idle time must not be measured here")

    monkeypatch.setattr(threads, "idle_cores", fail)
    assert threads.choose_threads(3, CPU) == threads.ThreadChoice(3, "--threads")
    assert threads.choose_threads(None, torch.device("cuda")).threads is None
    split = threads.choose_threads(None, CPU, local_world_size=2)
    assert split.threads == 1 and "split between 2 processes" in split.reason


def test_unknown_idle_time_uses_every_core(monkeypatch, two_cores):
    monkeypatch.setattr(threads, "idle_cores", lambda cpus, interval=0.25: None)
    assert threads.choose_threads(None, CPU).threads == 2


def test_idle_cores_reads_proc_stat():
    """On Linux the measurement is a fraction of the cores given, never more than all of them."""
    cpus = threads.available_cores()
    idle = threads.idle_cores(cpus, interval=0.05)
    if idle is None:
        pytest.skip("no /proc/stat on this platform (the policy then uses every core, tested above)")
    assert 0.0 <= idle <= len(cpus) + 1e-9


def test_eta_line():
    line = format_eta({"epoch": 1, "epoch_s": 4.0}, 18, now=datetime(2026, 1, 1, 12, 0, 0))
    assert "~68 s more" in line and "17 epochs x 4.0 s" in line and "12:01:08" in line
