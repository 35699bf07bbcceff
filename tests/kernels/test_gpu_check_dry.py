"""``benchmarks/gpu_check.sh --dry-run`` runs end to end on the CPU, and the target evaluation is right."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import kernel_bench
from sj_resnet.neuron.backends.cupy import traffic

pytestmark = pytest.mark.cuda_cpu
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), STEPS="env wheels warm index64 flips memcheck neurons kernels",
               PY="python", CUPY_CACHE_DIR=str(tmp_path / "cupy_cache"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    summary = (out / "summary.md").read_text()
    assert "| memcheck | skipped: needs a GPU |" in summary and "| warm | skipped: needs a GPU |" in summary
    assert "| kernels | 0 |" in summary and "| neurons | 0 |" in summary
    assert "| index64 | 0 |" in summary and "| flips | 0 |" in summary
    payload = json.loads((out / "kernels.json").read_text())
    assert payload["config"]["dry_run"] and payload["skipped"] == {"cupy": "needs a CUDA device and CuPy"}
    assert {r["phase"] for r in payload["rows"]} == {"fwd", "fwd-fp16", "fwd-infer", "bwd-Rect", "bwd-ATan",
                                                     "bwd-ATan-fp16", "node"}
    assert all(r["median_s"] > 0 for r in payload["rows"])
    node = next(r for r in payload["rows"] if r["phase"] == "node")
    assert node["min_bytes"] == traffic.training_step_bytes(node["T"], node["neurons"], 4).total
    for check, rows in (("index64", 4), ("flips", 2 * 8)):
        result = json.loads((out / f"{check}.json").read_text())
        assert result["pass"] and len(result["rows"]) == rows and f"{check} on" in summary
    flips = json.loads((out / "flips.json").read_text())["rows"]
    assert all(r["flips_away_from_threshold"] == 0 and r["grad_x_rel_err"] < 1e-2 for r in flips)
    assert list(out.glob("neurons-*.json"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_fails_when_gpu_tests_skip(tmp_path):
    """A real (not dry) run exports SJR_REQUIRE_GPU=1: here, without a GPU, the tests step must fail."""
    env = {k: v for k, v in os.environ.items() if k != "SJR_REQUIRE_GPU"}
    env.update(OUT=str(tmp_path / "out"), STEPS="tests", PY="python", CUPY_CACHE_DIR=str(tmp_path / "cache"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "| tests | 1 |" in (tmp_path / "out" / "summary.md").read_text()
    assert "SJR_REQUIRE_GPU=1 requires every gpu test to run" in proc.stdout


def _row(impl, dtype, T, seconds, frac=None):
    r = {"impl": impl, "dtype": dtype, "T": T, "neurons": 2**24, "fwdbwd_s": seconds}
    if frac is not None:
        r["fwdbwd_frac_copy_bw"] = frac
    return r


def test_op_targets():
    rows = [
        _row("ours_cupy", "fp32", 4, 1.0, 0.9), _row("sj_atan", "fp32", 4, 1.2), _row("sj_rect", "fp32", 4, 12.0),
        _row("sj_flexsn", "fp32", 4, 2.0), _row("ours_cupy", "bf16", 4, 0.6), _row("ours_cupy", "fp16", 4, 0.7),
        _row("ours_cupy", "fp32", 4, 0.1) | {"neurons": 2**20},  # a smaller size is ignored
    ]
    got = {t["target"]: (round(t["value"], 3), t["pass"]) for t in kernel_bench.op_targets({"rows": rows})}
    assert got == {
        "op fp32 T=4: fwd+bwd >= 85 % of copy roofline": (0.9, True),
        "op fp32 T=4: >= 1.3x SJ LIFNode(ATan)": (1.2, False),
        "op fp32 T=4: >= 10x SJ LIFNode(Rect)": (12.0, True),
        "op fp32 T=4: faster than SJ FlexSN (STBP core)": (2.0, True),
        "op bf16 T=4: >= 1.6x our fp32": (1.667, True),
        "op fp16 T=4: >= 1.6x our fp32": (1.429, False),
    }


def test_kernel_targets():
    def row(phase, s):
        return {"backend": "cupy", "dtype": "fp32", "T": 4, "phase": phase, "median_s": s, "min_bytes": 100,
                "GBps": 100 / s / 1e9, "frac_copy_bw": 100 / s / 1e9 / 1000}

    (t,) = kernel_bench.kernel_targets([row("fwd", 1e-9), row("bwd-Rect", 1e-9)])  # 200 B in 2 ns = 100 GB/s
    assert t["value"] == pytest.approx(0.1) and not t["pass"]
