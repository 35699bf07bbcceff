"""The memory-modes benchmark: its byte accounting on known allocations, the frontier, and a smoke run."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import memory as bench
from benchmarks.plots import pareto_front


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread (``one_torch_thread`` in tests/conftest.py)."""


def test_step_memory_counts_what_the_forward_keeps_and_the_peak():
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(1024, 256)

    def forward():
        return (x @ w).tanh()  # keeps tanh's output (1 MiB) for backward; returns it (the same storage)

    def backward(out):
        out.sum().backward()

    bench.step_memory(forward, backward, torch.device("cpu"))  # warm-up: w.grad exists afterwards
    m = bench.step_memory(forward, backward, torch.device("cpu"))
    mib = 2**20
    assert m["saved_bytes"] == 1024 * 256 * 4  # exactly one [1024, 256] fp32 tensor is alive after the forward
    assert mib <= m["peak_bytes"] <= 4 * mib


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 5.0), (1.5, 12.0), (3.0, 5.0), (4.0, 1.0)]
    assert pareto_front(pts) == [(1.0, 10.0), (2.0, 5.0), (4.0, 1.0)]


def test_batch_fit_scales_the_peak():
    gib = 2**30
    assert bench.batch_fit(peak_bytes=gib + 100, batch=2, param_bytes=100, gib=10) == 19  # (10 GiB - 300 B) / 0.5 GiB


def test_memory_benchmark_quick_run(tmp_path):
    argv = ["--quick", "--configs", "cifar-t4", "--out-dir", str(tmp_path), "--no-plots"]
    assert bench.main(argv) == 0
    files = sorted(tmp_path.glob("memory-cpu-*.json"))
    assert len(files) == 1
    p = json.loads(files[0].read_text())
    rows = {r["variant"]: r for r in p["rows"]}
    assert set(rows) == {"ours_standard", "ours_compact", "ours_checkpoint", "sj_rect", "sj_rect_memopt"}
    for r in rows.values():
        assert r["saved_bytes"] > 0 and r["peak_bytes"] >= r["saved_bytes"] and r["train_step_s"] > 0
        assert set(r["batch_fit"]) == {str(n) for n in bench.FIT_GIB}
    assert rows["ours_compact"]["saved_bytes"] < 0.7 * rows["ours_standard"]["saved_bytes"]
    assert rows["ours_checkpoint"]["grads_bit_identical_to_standard"] is True
    (t,) = p["targets"]
    assert t["config"] == "cifar-t4" and t["checkpoint_grads_bit_identical"] is True
    assert "| ours, compact |" in files[0].with_suffix(".md").read_text()
