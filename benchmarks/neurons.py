"""Neuron benchmark sweep: ours (reference / torch / cupy) vs SpikingJelly 2.0 (LIFNode Rect, LIFNode ATan, FlexSN).

Usage::

    python -m benchmarks.neurons [--device cpu|cuda] [--quick] [--dtypes fp32,bf16,fp16] [--T 2,4,8,16,32]
                                 [--neurons 16,18,20] [--impls ...] [--compile] [--out-dir DIR] [--no-plots]

Two sweeps per dtype: time vs T at a fixed neuron count (``--base-neurons``), and time vs neuron count at a
fixed T (``--base-T``). Inputs are ``x [T, N]`` ~ N(0, 1), zero initial state, decay 0.25, V_th 0.5.
Per configuration and implementation it records:

- ``fwd_s``: forward with autograd recording (the training forward), ``fwdbwd_s``: forward + ``backward(g)``;
  interleaved medians (``time.perf_counter`` on the CPU, CUDA events on a GPU; see ``benchmarks.common``);
- ``saved_bytes``: bytes kept for backward (``saved_tensors_hooks``, unique storages; ``saved_bytes_excl_x``
  without the input's own storage);
- ``peak_bytes``: peak memory of one forward + backward above the starting level;
- ``spike_mismatch`` and ``grad_max_err``: spikes and ``dL/dx`` against the float64 reference (``decay_fire_reference``
  with the implementation's own surrogate) on the first ``--err-neurons`` neurons;
- on CUDA: ``fwdbwd_GBps``, the minimum traffic of a fused kernel (``sj_resnet.neuron.backends.cupy.traffic``:
  x, spikes, fp32 h and v_last forward; grad_s, h, grad_x backward = ``T*N*(4*e + 8) + 4*N`` bytes, ``e`` the
  input element size) divided by the time, and its fraction of the measured device copy bandwidth (``copy_GBps``).

Writes ``neurons-<device>-<date>.json``, ``.md`` and ``.png`` plots under ``--out-dir`` (default
``benchmarks/results``). ``--quick`` (a smoke run) finishes in under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sj_resnet.neuron.backends.cupy import traffic

from . import common
from .neuron_impls import (
    COMPILABLE,
    IMPLS,
    available,
    flexsn_implementation,
    float64_reference,
    label,
    make_runner,
    surrogate_of,
)

CPU_DEFAULTS = {"T": [2, 4, 8, 16, 32], "neurons": [16, 18, 20], "base_T": 4, "base_neurons": 18}
CUDA_DEFAULTS = {"T": [2, 4, 8, 16, 32], "neurons": [20, 22, 24, 26], "base_T": 8, "base_neurons": 24}
CPU_QUICK = {"T": [4, 8], "neurons": [16], "base_T": 4, "base_neurons": 16, "dtypes": ["fp32", "bf16"], "rounds": 5}
CUDA_QUICK = {
    "T": [4, 8],
    "neurons": [24],
    "base_T": 8,
    "base_neurons": 24,
    "dtypes": ["fp32", "bf16", "fp16"],
    "rounds": 7,
}
BASELINE = "sj_rect"
# the CUDA backend's targets (docs/cuda_backend.md), fwd+bwd at T in {4, 8} and >= 2^24 neurons
CUDA_TARGETS = {
    "frac_copy_bw_fp32": 0.85,
    "vs_sj_atan": 1.3,
    "vs_sj_rect": 10.0,
    "vs_sj_flexsn": 1.0,
    "low_precision_vs_fp32": 1.6,
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def min_traffic_bytes(T: int, n: int, dtype: torch.dtype, with_backward: bool) -> int:
    """Bytes a fused kernel must move for this benchmark's call (fresh state, ``v_last`` only, the loss through the
    spikes, constant decay, fp32 state saved): ``traffic.forward_bytes`` / ``training_step_bytes``, the formula
    the kernel byte-count tests assert."""
    e = torch.empty((), dtype=dtype).element_size()
    if with_backward:
        return traffic.training_step_bytes(T, n, e).total
    return traffic.forward_bytes(T=T, n=n, x_size=e, state_size=4, saved_size=4, v0=False, store_v_seq=False).total


def measure_config(keys: list[str], T: int, n: int, dtype: torch.dtype, device: torch.device, args) -> list[dict]:
    """All measurements of one (T, N, dtype) for the implementations ``keys``."""
    gen = torch.Generator(device=device).manual_seed(1000 * T + n % 997)
    x = torch.randn(T, n, generator=gen, device=device).to(dtype).requires_grad_(True)
    g = torch.randn(T, n, generator=gen, device=device).to(dtype)
    runners, modules, errors = {}, {}, {}
    for k in keys:
        try:
            runners[k], modules[k] = make_runner(k, device)
            with torch.no_grad():
                runners[k](x[:, :64].detach())  # build/compile on a small input first
        except Exception as exc:  # an implementation that cannot run this config is reported, not fatal
            errors[k] = f"{type(exc).__name__}: {exc}"[:300]
    ok = [k for k in keys if k not in errors]

    def fwd(run):
        return lambda: run(x)

    def fwdbwd(run):
        def f():
            x.grad = None
            run(x).backward(g)

        return f

    def timed(make) -> dict[str, dict]:
        """Interleaved timing of every working implementation; one that fails is dropped with its error."""
        kw = dict(rounds=args.rounds, min_sample_s=args.min_sample_s, time_budget_s=args.time_budget_s)
        try:
            return common.interleaved_medians({k: make(runners[k]) for k in ok}, device, **kw)
        except Exception:
            for k in list(ok):
                try:
                    common.interleaved_medians({k: make(runners[k])}, device, rounds=1, warmup=1)
                except Exception as exc:
                    errors[k] = f"{type(exc).__name__}: {exc}"[:300]
                    ok.remove(k)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return common.interleaved_medians({k: make(runners[k]) for k in ok}, device, **kw)

    t_fwd = timed(fwd)
    t_fb = timed(fwdbwd)
    ne = min(n, args.err_neurons)
    xe, ge = x[:, :ne].detach(), g[:, :ne]
    refs = {}
    rows = []
    for k in keys:
        row = {
            "impl": k,
            "label": label(k),
            "surrogate": surrogate_of(k),
            "T": T,
            "neurons": n,
            "dtype": common.dtype_name(dtype),
        }
        if k in errors:
            row["error"] = errors[k]
            rows.append(row)
            continue
        try:
            rows.append(_measure_row(row, runners[k], modules[k], t_fwd[k], t_fb[k], x, g, xe, ge, refs, args, device))
        except Exception as exc:  # e.g. out of memory in the peak-memory pass: keep the timings, note the error
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
    timed_rows = {r["impl"]: r for r in rows if "fwdbwd_s" in r and "error" not in r}
    base = timed_rows.get(BASELINE)
    for r in timed_rows.values():
        # per-round ratios against every SpikingJelly implementation of this configuration
        r["speedup_fwdbwd_vs"] = {
            k: common.ratio_stats(o["fwdbwd_samples_s"], r["fwdbwd_samples_s"])
            for k, o in timed_rows.items()
            if IMPLS[k.removesuffix("_compiled")].family == "sj"
        }
        if base is not None:
            r["speedup_fwdbwd_vs_sj_rect"] = r["speedup_fwdbwd_vs"][BASELINE]
            r["speedup_fwd_vs_sj_rect"] = common.ratio_stats(base["fwd_samples_s"], r["fwd_samples_s"])
            r["saved_ratio_vs_sj_rect"] = r["saved_bytes"] / base["saved_bytes"]
    return rows


def _measure_row(row, run, module, t_fwd, t_fb, x, g, xe, ge, refs, args, device) -> dict:
    """Fill one implementation's row: times, saved bytes, peak memory, error vs float64, bandwidth."""
    k, T, n, dtype = row["impl"], row["T"], row["neurons"], x.dtype

    def fwdbwd():
        x.grad = None
        run(x).backward(g)

    row["fwd_s"] = t_fwd["median_s"]
    row["fwdbwd_s"] = t_fb["median_s"]
    row["fwd_samples_s"] = t_fwd["samples_s"]
    row["fwdbwd_samples_s"] = t_fb["samples_s"]
    saved = common.saved_bytes(lambda: run(x), exclude=(x,))
    row["saved_bytes"] = saved["bytes"]
    row["saved_bytes_excl_x"] = saved["bytes_excl_inputs"]
    if not args.no_peak:
        row["peak_bytes"] = common.peak_memory(fwdbwd, device)
    sur = surrogate_of(k)
    if sur not in refs:
        refs[sur] = float64_reference(xe, ge, sur)
    s_ref, gx_ref = refs[sur]
    xx = xe.clone().requires_grad_(True)
    s = run(xx)
    s.backward(ge)
    row["spike_mismatch"] = (s.double() != s_ref).double().mean().item()
    row["grad_max_err"] = (xx.grad.double() - gx_ref).abs().max().item()
    if k == "sj_flexsn":
        row["flexsn_path"] = flexsn_implementation(module)
    if device.type == "cuda":
        row["fwd_GBps"] = min_traffic_bytes(T, n, dtype, False) / row["fwd_s"] / 1e9
        row["fwdbwd_GBps"] = min_traffic_bytes(T, n, dtype, True) / row["fwdbwd_s"] / 1e9
        if args.copy_GBps:
            row["fwdbwd_frac_copy_bw"] = row["fwdbwd_GBps"] / args.copy_GBps
    return row


def cuda_target_checks(rows: list[dict], impl: str = "ours_cupy") -> list[dict]:
    """The CUDA backend's targets (docs/cuda_backend.md) for ``impl`` at T in {4, 8} and >= 2^24 neurons, one entry
    per row."""
    fp32 = {(r["T"], r["neurons"]): r for r in rows if r["impl"] == impl and r["dtype"] == "fp32" and "fwdbwd_s" in r}
    out = []
    for r in rows:
        if r["impl"] != impl or "fwdbwd_s" not in r or r["T"] not in (4, 8) or r["neurons"] < 2**24:
            continue
        vs = r.get("speedup_fwdbwd_vs", {})
        check = {"dtype": r["dtype"], "T": r["T"], "neurons": r["neurons"]}
        for key, name in (("vs_sj_atan", "sj_atan"), ("vs_sj_rect", "sj_rect"), ("vs_sj_flexsn", "sj_flexsn")):
            if name in vs:
                check[key] = vs[name]
                check[key + "_met"] = vs[name] >= CUDA_TARGETS[key] if key != "vs_sj_flexsn" else vs[name] > 1.0
        if r["dtype"] == "fp32" and r.get("fwdbwd_frac_copy_bw") is not None:
            check["frac_copy_bw"] = r["fwdbwd_frac_copy_bw"]
            check["frac_copy_bw_met"] = r["fwdbwd_frac_copy_bw"] >= CUDA_TARGETS["frac_copy_bw_fp32"]
        ref = fp32.get((r["T"], r["neurons"]))
        if r["dtype"] != "fp32" and ref is not None:
            check["vs_own_fp32"] = ref["fwdbwd_s"] / r["fwdbwd_s"]
            check["vs_own_fp32_met"] = check["vs_own_fp32"] >= CUDA_TARGETS["low_precision_vs_fp32"]
        out.append(check)
    return out


def configs(args) -> list[tuple[str, int, int]]:
    """``(sweep, T, neurons)``: a T sweep at ``base_neurons`` and a neuron sweep at ``base_T``.

    The point both sweeps share is measured once, with sweep ``'both'``.
    """
    points: dict[tuple[int, int], str] = {}
    for T in args.T:
        points[(T, 2**args.base_neurons)] = "T"
    for p in args.neurons:
        key = (args.base_T, 2**p)
        points[key] = "both" if key in points else "neurons"
    return [(sweep, T, n) for (T, n), sweep in points.items()]


def markdown(payload: dict) -> str:
    """A Markdown table of every row (fwd+bwd time, speed-up over SJ Rect, saved bytes, errors)."""
    m = payload["machine"]
    cuda = payload["machine"]["device"].startswith("cuda")
    lines = [
        f"Neuron benchmark on **{m['device_name']}** ({m['cpu_count']} CPU cores, torch {m['torch']}, "
        f"SpikingJelly {m['spikingjelly']}), load average at start {m['loadavg_start'][0]:.2f}. "
        "Times are interleaved medians; speed-up = median per-round ratio t(SJ LIFNode Rect) / t(impl).",
        "",
        "| dtype | T | neurons | implementation | surrogate | fwd | fwd+bwd | speed-up fwd+bwd vs SJ Rect "
        "| saved for bwd | peak | spike mismatch | max grad err |" + (" GB/s | % copy BW |" if cuda else ""),
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else ""),
    ]
    for r in payload["rows"]:
        n = f"2^{r['neurons'].bit_length() - 1}"
        if "error" in r:
            lines.append(
                f"| {r['dtype']} | {r['T']} | {n} | {r['label']} | {r['surrogate']} | "
                f"failed: {r['error'][:60]} |" + " |" * (10 if cuda else 8)
            )
            continue
        sp = r.get("speedup_fwdbwd_vs_sj_rect")
        cells = [
            r["dtype"],
            str(r["T"]),
            n,
            r["label"],
            r["surrogate"],
            common.fmt_time(r["fwd_s"]),
            common.fmt_time(r["fwdbwd_s"]),
            f"{sp:.2f}x" if sp is not None else "–",
            common.fmt_bytes(r["saved_bytes"]),
            common.fmt_bytes(r.get("peak_bytes")),
            f"{r['spike_mismatch']:.1e}",
            f"{r['grad_max_err']:.1e}",
        ]
        if cuda:
            frac = r.get("fwdbwd_frac_copy_bw")
            cells += [f"{r['fwdbwd_GBps']:.0f}", f"{100 * frac:.0f} %" if frac else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Neuron benchmark sweep (ours vs SpikingJelly 2.0)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: T 4,8; CPU 2^16 neurons, fp32+bf16 (< 1 min); CUDA 2^24 neurons, all dtypes",
    )
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16 (default all three)")
    p.add_argument("--T", type=_ints, default=None, help="T values of the T sweep")
    p.add_argument("--neurons", type=_ints, default=None, help="log2 neuron counts of the neuron sweep")
    p.add_argument("--base-T", type=int, default=None, help="T of the neuron sweep")
    p.add_argument("--base-neurons", type=int, default=None, help="log2 neurons of the T sweep")
    p.add_argument("--impls", default=None, help=f"comma list from {list(IMPLS)} (+ _compiled variants)")
    p.add_argument("--compile", action="store_true", help=f"also torch.compile {COMPILABLE}")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 11; quick 5)")
    p.add_argument("--min-sample-s", type=float, default=None, help="repeat calls until a sample lasts this long")
    p.add_argument("--time-budget-s", type=float, default=None, help="cap on the rounds of one timing table")
    p.add_argument("--err-neurons", type=int, default=1 << 16, help="neurons checked against float64")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--tag", default="neurons", help="file name prefix (default 'neurons')")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)

    device = common.parse_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = dict(CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS)
    if args.quick:
        defaults.update(CUDA_QUICK if device.type == "cuda" else CPU_QUICK)
    args.T = args.T or defaults["T"]
    args.neurons = args.neurons or defaults["neurons"]
    args.base_T = args.base_T or defaults["base_T"]
    args.base_neurons = args.base_neurons or defaults["base_neurons"]
    args.rounds = args.rounds or defaults.get("rounds", 11)
    if args.min_sample_s is None:
        args.min_sample_s = 0.0 if args.quick else (0.02 if device.type == "cpu" else 0.005)
    dtypes = [
        common.parse_dtype(d)
        for d in (args.dtypes.split(",") if args.dtypes else defaults.get("dtypes", ["fp32", "bf16", "fp16"]))
    ]
    keys = args.impls.split(",") if args.impls else list(IMPLS)
    if args.compile:
        keys += [f"{k}_compiled" for k in COMPILABLE if f"{k}_compiled" not in keys]
    skipped = {}
    for k in list(keys):
        ok, why = available(k, device)
        if not ok:
            keys.remove(k)
            skipped[k] = why

    t0 = time.perf_counter()
    payload = {"benchmark": "neurons", "machine": common.machine_info(device), "rows": []}
    if device.type == "cuda":
        args.copy_GBps = common.copy_bandwidth(device) / 1e9
        payload["machine"]["copy_GBps"] = args.copy_GBps
    else:
        args.copy_GBps = None
    payload["config"] = {
        "T": args.T,
        "neurons_log2": args.neurons,
        "base_T": args.base_T,
        "base_neurons_log2": args.base_neurons,
        "dtypes": [common.dtype_name(d) for d in dtypes],
        "impls": {k: label(k) for k in keys},
        "skipped": skipped,
        "rounds": args.rounds,
        "min_sample_s": args.min_sample_s,
        "quick": args.quick,
        "decay": 0.25,
        "v_threshold": 0.5,
        "baseline": BASELINE,
        "tag": args.tag,
    }
    print(f"neurons benchmark on {payload['machine']['device_name']}; impls {keys}; skipped {skipped}")
    for dtype in dtypes:
        for sweep, T, n in configs(args):
            rows = measure_config(keys, T, n, dtype, device, args)
            for r in rows:
                r["sweep"] = sweep
                if "error" in r:
                    print(f"  {r['dtype']} T={T:<3d} N=2^{n.bit_length() - 1:<2d} {r['label']:28s} FAILED {r['error']}")
                    continue
                sp = r.get("speedup_fwdbwd_vs_sj_rect")
                print(
                    f"  {r['dtype']} T={T:<3d} N=2^{n.bit_length() - 1:<2d} {r['label']:28s} "
                    f"fwd {common.fmt_time(r['fwd_s']):>10s} fwd+bwd {common.fmt_time(r['fwdbwd_s']):>10s}"
                    + (f"  x{sp:5.2f} vs SJ Rect" if sp else "")
                    + f"  saved {common.fmt_bytes(r['saved_bytes'])}"
                )
            payload["rows"].extend(rows)
    if device.type == "cuda":
        payload["cuda_targets"] = {"thresholds": CUDA_TARGETS, "checks": cuda_target_checks(payload["rows"])}
        for c in payload["cuda_targets"]["checks"]:
            print(
                "  target check "
                + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items())
            )
    payload["wall_s"] = time.perf_counter() - t0
    json_path = common.write_json(common.result_path(args.tag, device, args.out_dir, args.threads), payload)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(payload))
    written = [json_path, md_path]
    if not args.no_plots:
        from .plots import plot_neurons

        written += plot_neurons(payload, json_path.with_suffix(""))
    print(f"done in {payload['wall_s']:.1f} s; wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
