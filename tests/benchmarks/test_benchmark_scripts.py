"""Smoke tests of the benchmark scripts: they run on tiny sizes and write well-formed results.

Benchmarks are scripts, not tests: nothing here checks a speed. These tests only check that each script runs end
to end on tiny inputs (one torch thread, few rounds) and that its JSON has the fields ``make_docs`` reads.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import make_docs, neuron_cpu, neurons, resnet


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every benchmark smoke test runs on one torch thread (``one_torch_thread`` in tests/conftest.py)."""


def _load_one(out_dir, prefix: str) -> dict:
    files = sorted(out_dir.glob(f"{prefix}-cpu-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_neuron_cpu_writes_ratios(tmp_path):
    assert neuron_cpu.main(["--shapes", "2x3x4x5;3x64", "--rounds", "2", "--out-dir", str(tmp_path)]) == 0
    p = _load_one(tmp_path, "neuron_cpu")
    assert p["benchmark"] == "neuron_cpu" and len(p["rows"]) == 2
    for row in p["rows"]:
        for key in neuron_cpu.IMPL_KEYS:
            assert _positive(row["timing"][key]["median_s"])
            assert row["saved"][key]["bytes"] > 0
        assert _positive(row["speedup_vs_sj_rect"]["ours_torch"])
        assert set(row["targets"]) == {"speedup_ge_2", "saved_bytes_le_one_third"}
    assert len(p["machine"]["loadavg_start"]) == 3 and "loadavg_end" in p["machine"]


def test_neurons_sweep_rows_and_plots(tmp_path):
    args = ["--T", "2,3", "--neurons", "8,9", "--base-T", "2", "--base-neurons", "8", "--dtypes", "fp32,bf16",
            "--rounds", "2", "--err-neurons", "64", "--out-dir", str(tmp_path)]
    assert neurons.main(args) == 0
    p = _load_one(tmp_path, "neurons")
    impls = set(p["config"]["impls"])
    assert {"ours_torch", "ours_reference", "sj_rect", "sj_atan", "sj_flexsn"} <= impls
    # (T, N) points: T sweep {2, 3} at 2^8 and neuron sweep {2^8, 2^9} at T=2 share (2, 2^8) -> 3 points
    assert len(p["rows"]) == 3 * len(impls) * 2
    for r in p["rows"]:
        assert "error" not in r, r
        assert _positive(r["fwd_s"]) and _positive(r["fwdbwd_s"]) and r["saved_bytes"] > 0
        assert r["sweep"] in ("T", "neurons", "both")
        assert _positive(r["speedup_fwdbwd_vs_sj_rect"])
        assert 0.0 <= r["spike_mismatch"] <= 1.0 and r["grad_max_err"] >= 0.0
    # our fused backend (fp32 state) agrees with the float64 spec
    ours = [r for r in p["rows"] if r["impl"] == "ours_torch"]
    assert all(r["spike_mismatch"] <= 1e-2 for r in ours)
    assert all(r["spike_mismatch"] == 0.0 and r["grad_max_err"] < 1e-4 for r in ours if r["dtype"] == "fp32")
    assert (tmp_path / f"{next(tmp_path.glob('neurons-*.json')).stem}-fp32.png").stat().st_size > 1000
    assert "| fp32 |" in next(tmp_path.glob("neurons-*.md")).read_text()


def test_resnet_quick_and_docs(tmp_path):
    args = ["--quick", "--rounds", "2", "--warmup", "1", "--no-peak", "--backends", "torch", "--no-plots",
            "--out-dir", str(tmp_path)]
    assert resnet.main(args) == 0
    p = _load_one(tmp_path, "resnet")
    keys = {r["variant"] for r in p["rows"]}
    assert {"ours_torch", "ours_arch_sj_rect", "ours_arch_relu"} <= keys
    for r in p["rows"]:
        assert "error" not in r, r
        assert _positive(r["train_step_s"]) and _positive(r["infer_s"]) and r["saved_bytes"] > 0
    (t,) = p["targets"]
    assert t["model"] == "resnet18_cifar" and isinstance(t["neuron_cost_met"], bool)

    out = tmp_path / "docs" / "benchmarks.md"
    assert make_docs.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Spiking ResNets" in text and "resnet18_cifar" in text
    assert "_No result yet: run `python -m benchmarks.neuron_cpu`._" in text


def test_sj_lif_setup_is_the_stbp_neuron():
    """``common.sj_stbp_lif_kwargs`` makes SpikingJelly's LIFNode compute our neuron (the reference backend)."""
    import torch
    from spikingjelly.activation_based import functional, neuron

    from benchmarks import common
    from sj_resnet import DecayFireNode

    torch.manual_seed(0)
    x = (torch.rand(6, 4, 33, dtype=torch.float64) * 1.5).requires_grad_()
    sj = neuron.LIFNode(step_mode="m", **common.sj_stbp_lif_kwargs("Rect"))
    ours = DecayFireNode(decay=common.STBP_DECAY, v_threshold=common.STBP_V_TH,
                         surrogate_function=common.sj_surrogate("Rect"), step_mode="m", backend="reference")
    outs, grads = [], []
    for node in (sj, ours):
        functional.reset_net(node)
        s = node(x)
        (g,) = torch.autograd.grad((s * torch.linspace(-1, 1, 33, dtype=torch.float64)).sum(), x)
        outs.append(s.detach())
        grads.append(g)
    assert 0 < outs[0].mean() < 1  # some neurons fire, some do not
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Rect and ATan"):
        common.sj_surrogate("Sigmoid")


def test_result_path_never_replaces_an_earlier_run(tmp_path):
    import torch

    from benchmarks import common

    cpu = torch.device("cpu")
    first = common.result_path("neuron_cpu", cpu, tmp_path, threads=1)
    common.write_json(first, {"benchmark": "neuron_cpu"})
    second = common.result_path("neuron_cpu", cpu, tmp_path, threads=1)
    common.write_json(second, {"benchmark": "neuron_cpu", "run": 2})
    third = common.result_path("neuron_cpu", cpu, tmp_path, threads=1)
    assert first.name.endswith("-1t-" + common.today() + ".json")
    assert second.name == first.name.replace(".json", "-2.json")
    assert third.name == first.name.replace(".json", "-3.json") and not third.exists()
    assert "run" not in json.loads(first.read_text())  # the first run's file is untouched


def test_threads_benchmark_runs_the_command_per_policy(tmp_path):
    """Two tiny fresh-process runs (passive and a short spin), one thread, no background load."""
    from benchmarks import threads

    out = tmp_path / "threads.json"
    argv = ["--epochs", "2", "--threads", "1", "--waits", "passive", "spin1000", "--loads", "0", "--out", str(out),
            "--train-args", "--dataset fake --fake-size 32 --width 4 --T 2 --batch-size 16 --image-size 8"]
    assert threads.main(argv) == 0
    p = json.loads(out.read_text())
    assert [(r["wait"], r["threads"]) for r in p["summary"]] == [("passive", 1), ("spin1000", 1)]
    assert all(_positive(r["img_s"]) for r in p["summary"])
    assert all(len(r["img_s"]) == 2 for r in p["results"])


def test_threads_benchmark_refuses_an_unknown_policy():
    from benchmarks import threads

    with pytest.raises(SystemExit, match="unknown wait policy"):
        threads.main(["--waits", "sometimes"])


def test_recipe_cost_prices_each_configuration(capsys):
    from benchmarks import recipe_cost

    assert recipe_cost.main(["w=4,s=8,b=4,T=2", "w=8,s=8,b=4,T=2", "--rounds", "1", "--steps", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "ms" in ln and "x" in ln]
    assert len(lines) == 2 and lines[0].rstrip().endswith("1.00x")
    assert recipe_cost.parse_config("")["cl"] == 1  # the command's layout on a CPU (--memory-format auto)
    with pytest.raises(SystemExit, match="bad configuration item"):
        recipe_cost.parse_config("width=16")
