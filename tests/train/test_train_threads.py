"""The CPU thread policy (sj_resnet/train/threads.py) and the ETA line printed after the first epoch."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest
import torch
from train_helpers import REPO, subprocess_env

from sj_resnet.train import threads
from sj_resnet.train.report import format_eta

CPU = torch.device("cpu")


@pytest.fixture
def fresh_policy(monkeypatch):
    """No wait in the environment and no choice made yet, as in a fresh ``sj-resnet`` process."""
    monkeypatch.delenv(threads.WAIT_POLICY_ENV, raising=False)
    monkeypatch.delenv(threads.SPIN_COUNT_ENV, raising=False)
    monkeypatch.setattr(threads, "_choice_note", None)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)


def test_one_thread_per_core_split_between_processes(monkeypatch, fresh_policy):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setenv(threads.WAIT_POLICY_ENV, "PASSIVE")
    assert threads.choose_threads(None, CPU).threads == 4
    assert threads.choose_threads(3, CPU).threads == 3
    assert threads.choose_threads(None, torch.device("cuda")).threads is None
    split = threads.choose_threads(None, CPU, local_world_size=3)
    assert split.threads == 1 and "4 cores split between 3 processes" in split.reason


def test_unchosen_wait_keeps_the_callers_count(fresh_policy):
    """torch loaded before the CLI could choose the wait (in-process call): one process keeps its thread count."""
    choice = threads.choose_threads(None, CPU)
    assert choice.threads is None and "kept at" in choice.reason and "OpenMP wait default" in choice.reason


@pytest.mark.parametrize(("others", "policy"), [(0.0, None), (1.0, None), (2.0, "PASSIVE"), (7.0, "PASSIVE")])
def test_passive_only_when_other_work_fills_every_core(monkeypatch, fresh_policy, others, policy):
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `sj-resnet` process (restored afterwards)
    threads.prefer_wait_policy(others=others)
    assert os.environ.get(threads.WAIT_POLICY_ENV) == policy
    text = threads.wait_policy()
    assert ("OpenMP wait passive" if policy else "OpenMP wait default") in text
    assert f"{others:g} runnable tasks elsewhere on 2 cores" in text
    assert threads.choose_threads(None, CPU).threads == 2  # the thread count never depends on the load


def test_unknown_load_keeps_the_default_wait():
    assert threads.busy_wait_policy(None, 2) is None and threads.busy_wait_policy(1.5, 2) is None


@pytest.mark.parametrize("env", [(threads.WAIT_POLICY_ENV, "ACTIVE"), (threads.SPIN_COUNT_ENV, "10000")])
def test_the_users_wait_wins(monkeypatch, fresh_policy, env):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv(*env)
    threads.prefer_wait_policy(others=9.0)
    assert os.environ.get(threads.WAIT_POLICY_ENV) == (env[1] if env[0] == threads.WAIT_POLICY_ENV else None)
    assert "from the environment" in threads.wait_policy()
    assert threads.choose_threads(None, CPU).threads == 2


def test_too_late_once_torch_is_loaded(fresh_policy):
    threads.prefer_wait_policy(others=9.0)  # torch is loaded in this process: OpenMP already read its environment
    assert threads.WAIT_POLICY_ENV not in os.environ and threads._choice_note is None


def test_runnable_elsewhere_reads_proc_loadavg():
    others = threads.runnable_elsewhere(samples=3, interval_s=0.0)
    if os.path.exists("/proc/loadavg"):
        assert others is not None and others >= 0
    else:
        assert others is None


def test_header_names_the_policy(tmp_path):
    """A fresh ``sj-resnet`` process chooses the wait before torch loads and says so in the header."""
    env = subprocess_env()
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    run = subprocess.run(
        [sys.executable, "-m", "sj_resnet", "train", "--dataset", "fake", "--fake-size", "32", "--width", "4",
         "--T", "2", "--epochs", "2", "--threads", "1", "--no-tensorboard", "--no-plot", "-o", str(tmp_path / "r")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"1 CPU threads: --threads; OpenMP wait (default|passive).*, chosen for [\d.]+ runnable tasks "
                     r"elsewhere on \d+ cores", run.stdout), run.stdout
    assert "eta:" in run.stdout


def test_the_wait_changes_no_result(tmp_path):
    """Passive and spinning waits split the work the same way: the same run, bit for bit (2 threads)."""
    runs = {}
    for policy in ("PASSIVE", "ACTIVE"):
        env = subprocess_env()
        env["OMP_WAIT_POLICY"] = policy
        out = tmp_path / policy
        run = subprocess.run(
            [sys.executable, "-m", "sj_resnet", "train", "--dataset", "fake", "--fake-size", "64", "--width", "8",
             "--T", "2", "--epochs", "2", "--threads", "2", "--no-tensorboard", "--no-plot", "-o", str(out)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stderr
        with open(out / "metrics.csv", newline="") as f:
            rows = [{k: v for k, v in r.items() if k not in ("train_img_s", "epoch_s", "peak_mem_mib")}
                    for r in csv.DictReader(f)]
        runs[policy] = (rows, torch.load(out / "best.pt", map_location="cpu", weights_only=True)["model"])
    (rows_a, model_a), (rows_b, model_b) = runs.values()
    assert rows_a == rows_b
    assert model_a.keys() == model_b.keys() and all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_eta_line():
    line = format_eta({"epoch": 1, "epoch_s": 4.0}, 18, now=datetime(2026, 1, 1, 12, 0, 0))
    assert "~68 s more" in line and "17 epochs x 4.0 s" in line and "12:01:08" in line
