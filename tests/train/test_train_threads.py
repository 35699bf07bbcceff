"""The CPU thread policy (sj_resnet/train/threads.py) and the ETA line printed after the first epoch."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime

import torch
from train_helpers import REPO, subprocess_env

from sj_resnet.train import threads
from sj_resnet.train.report import format_eta

CPU = torch.device("cpu")


def test_one_thread_per_core_split_between_processes(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setenv(threads.WAIT_POLICY_ENV, "PASSIVE")
    assert threads.choose_threads(None, CPU).threads == 4
    assert threads.choose_threads(3, CPU).threads == 3
    assert threads.choose_threads(None, torch.device("cuda")).threads is None
    split = threads.choose_threads(None, CPU, local_world_size=3)
    assert split.threads == 1 and "4 cores split between 3 processes" in split.reason


def test_spinning_threads_keep_the_callers_count(monkeypatch):
    """Without passive waits (torch loaded first, e.g. in-process), one process keeps its thread count."""
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.delenv(threads.WAIT_POLICY_ENV, raising=False)
    choice = threads.choose_threads(None, CPU)
    assert choice.threads is None and "kept at" in choice.reason and "active spin" in choice.reason


def test_wait_policy_is_reported(monkeypatch):
    monkeypatch.setenv(threads.WAIT_POLICY_ENV, "PASSIVE")
    assert "OpenMP wait passive" in threads.choose_threads(None, CPU).reason
    monkeypatch.delenv(threads.WAIT_POLICY_ENV)
    assert "active spin" in threads.choose_threads(2, CPU).reason


def test_passive_unless_the_user_chose_or_torch_is_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `sj-resnet` process (restored afterwards)
    monkeypatch.delenv(threads.WAIT_POLICY_ENV, raising=False)
    threads.prefer_passive_wait()
    assert threads.wait_policy() == "OpenMP wait passive"
    monkeypatch.setenv(threads.WAIT_POLICY_ENV, "ACTIVE")
    threads.prefer_passive_wait()
    assert threads.wait_policy() == "OpenMP wait active"


def test_too_late_once_torch_is_loaded(monkeypatch):
    monkeypatch.delenv(threads.WAIT_POLICY_ENV, raising=False)
    threads.prefer_passive_wait()  # torch is loaded in this process: OpenMP already read its environment
    assert threads.WAIT_POLICY_ENV not in os.environ


def test_header_names_the_policy(tmp_path):
    """A fresh ``sj-resnet`` process sets the passive wait before torch loads and says so in the header."""
    env = subprocess_env()
    env.pop("OMP_WAIT_POLICY", None)
    run = subprocess.run(
        [sys.executable, "-m", "sj_resnet", "train", "--dataset", "fake", "--fake-size", "32", "--width", "4",
         "--T", "2", "--epochs", "2", "--threads", "1", "--no-tensorboard", "--no-plot", "-o", str(tmp_path / "r")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "1 CPU threads: --threads; OpenMP wait passive" in run.stdout
    assert "eta:" in run.stdout


def test_eta_line():
    line = format_eta({"epoch": 1, "epoch_s": 4.0}, 18, now=datetime(2026, 1, 1, 12, 0, 0))
    assert "~68 s more" in line and "17 epochs x 4.0 s" in line and "12:01:08" in line
