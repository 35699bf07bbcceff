"""Kernel-level roofline of the fused backends and the CUDA backend's performance targets.

Usage::

    python -m benchmarks.gpu.kernel_bench --out DIR [--dry-run] [--T 2,4,8,16] [--log2-neurons 24]
        [--dtypes fp32,bf16,fp16] [--neurons-json DIR/neurons-*.json]

Times the backend contract directly (``forward`` and ``backward`` of ``cupy`` and ``torch``, inputs
preallocated, no autograd), so the numbers are the kernels' own: CUDA events around ``inner`` back-to-back
calls, implementations interleaved round by round, medians. Bytes counted are the minimum any fused
implementation must move (per neuron-step, ``e`` = input element size, state fp32)::

    forward:  x (e) + spikes (e) + h (4)          fp32: 12 B   bf16/fp16: 8 B
    backward: grad_s (e) + h (4) + grad_x (e)     fp32: 12 B   bf16/fp16: 8 B

and the fraction is of the device-to-device copy bandwidth measured in the same run (read + write).
With ``--neurons-json`` (the output of ``python -m benchmarks.neurons``) it also evaluates the issue's
op-level targets at T in {4, 8}: fp32 fwd+bwd >= 85 % of the copy roofline, >= 1.3x SpikingJelly LIFNode(ATan),
>= 10x LIFNode(Rect), faster than FlexSN, bf16/fp16 >= 1.6x our fp32. Writes ``kernels.json`` and
``kernels.md`` into ``--out``. ``--dry-run`` runs on the CPU with tiny sizes (torch backend only) so the
script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import synchronize as sync
from benchmarks.common import time_calls

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SURROGATES = {"Rect": 0, "ATan": 2}
TARGET_T = (4, 8)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, inner: int) -> dict:
    """Median seconds per call of each function; every round times each function once, in rotated order."""
    names = list(fns)
    for name in names:  # warm-up (compiles kernels on first use)
        fns[name]()
        fns[name]()
    sync(device)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(time_calls(fns[name], inner, device))
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "samples_s": s} for n, s in samples.items()}


def copy_bandwidth(device: torch.device, nbytes: int, rounds: int) -> float:
    """Device copy bandwidth in bytes/s, read + write counted."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    res = interleaved({"copy": lambda: dst.copy_(src)}, device, rounds, inner=5)
    return 2 * nbytes / res["copy"]["median_s"]


def min_bytes(T: int, n: int, dtype: torch.dtype) -> tuple[int, int]:
    """Minimum bytes of forward and of backward (see the module docstring)."""
    e = torch.empty((), dtype=dtype).element_size()
    return T * n * (2 * e + 4), T * n * (2 * e + 4)


def backends_for(device: torch.device) -> tuple[dict, dict]:
    from sj_resnet.neuron.backends import cupy_available, get_backend

    found, skipped = {"torch": get_backend("torch")}, {}
    if device.type == "cuda" and cupy_available():
        found["cupy"] = get_backend("cupy")
    else:
        skipped["cupy"] = "needs a CUDA device and CuPy"
    return found, skipped


def config_calls(found: dict, x, gs, v0, gv, decay) -> dict[str, Callable[[], object]]:
    """``{"<backend>/fwd" | "<backend>/bwd-<surrogate>": call}`` for one input configuration."""
    from sj_resnet.neuron.params import DecayFireParams

    def params(sid: int = 0, alpha: float = 1.0) -> DecayFireParams:
        return DecayFireParams(v_threshold=0.5, surrogate_id=sid, alpha=alpha, detach_reset=False, store_v_seq=False)

    fns = {}
    for bname, mod in found.items():
        h = mod.forward(x, v0, decay, params(), True)[2]
        fns[f"{bname}/fwd"] = lambda mod=mod: mod.forward(x, v0, decay, params(), True)
        for sname, sid in SURROGATES.items():
            alpha = 2.0 if sname == "ATan" else 1.0
            p = params(sid, alpha)
            fns[f"{bname}/bwd-{sname}"] = lambda mod=mod, h=h, p=p: mod.backward(gs, gv, h, v0, decay, p, True, False)
    return fns


def measure(args, device: torch.device) -> dict:
    found, skipped = backends_for(device)
    n = 2**args.log2_neurons
    rows = []
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for T in args.T:
            g = torch.Generator(device=device).manual_seed(T)
            x = (torch.randn(T, n, generator=g, device=device) * 0.6 + 0.3).to(dtype)
            gs = torch.randn(T, n, generator=g, device=device).to(dtype)
            v0 = torch.zeros(n, device=device)
            gv = torch.zeros(n, device=device)
            decay = torch.tensor(0.25, device=device)
            fns = config_calls(found, x, gs, v0, gv, decay)
            res = interleaved(fns, device, args.rounds, args.inner)
            fwd_b, bwd_b = min_bytes(T, n, dtype)
            for key, r in res.items():
                bname, phase = key.split("/")
                nbytes = fwd_b if phase == "fwd" else bwd_b
                row = {"backend": bname, "phase": phase, "dtype": dname, "T": T, "neurons": n,
                       "median_s": r["median_s"], "min_s": r["min_s"], "min_bytes": nbytes,
                       "GBps": nbytes / r["median_s"] / 1e9}
                if args.copy_GBps:
                    row["frac_copy_bw"] = row["GBps"] / args.copy_GBps
                rows.append(row)
                print(f"  {dname} T={T:<2d} {key:16s} {r['median_s'] * 1e3:9.3f} ms  {row['GBps']:8.1f} GB/s"
                      + (f"  {100 * row['frac_copy_bw']:5.1f} % of copy" if args.copy_GBps else ""), flush=True)
            del x, gs, fns
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"rows": rows, "skipped": skipped}


def kernel_targets(rows: list[dict]) -> list[dict]:
    """fwd + bwd(Rect) kernel time of ``cupy`` at T in {4, 8}, fp32: >= 85 % of the copy roofline."""
    out = []
    for T in TARGET_T:
        sel = {r["phase"]: r for r in rows if r["backend"] == "cupy" and r["dtype"] == "fp32" and r["T"] == T}
        if "fwd" in sel and "bwd-Rect" in sel and "frac_copy_bw" in sel["fwd"]:
            t = sel["fwd"]["median_s"] + sel["bwd-Rect"]["median_s"]
            frac = (sel["fwd"]["min_bytes"] + sel["bwd-Rect"]["min_bytes"]) / t / 1e9 / (
                sel["fwd"]["GBps"] / sel["fwd"]["frac_copy_bw"])
            out.append({"target": f"kernels fp32 T={T}: fwd+bwd >= 85 % of copy roofline", "value": frac,
                        "goal": 0.85, "pass": frac >= 0.85})
    return out


def op_targets(neurons: dict) -> list[dict]:
    """The issue's op-level targets from a ``benchmarks.neurons`` run (fwd+bwd through the nodes)."""
    rows = [r for r in neurons.get("rows", []) if "fwdbwd_s" in r]
    big = max((r["neurons"] for r in rows), default=0)

    def t(impl, dtype, T):
        for r in rows:
            if r["impl"] == impl and r["dtype"] == dtype and r["T"] == T and r["neurons"] == big:
                return r
        return None

    out = []
    for T in TARGET_T:
        ours = t("ours_cupy", "fp32", T)
        if ours is None:
            continue
        frac = ours.get("fwdbwd_frac_copy_bw")
        if frac is not None:
            out.append({"target": f"op fp32 T={T}: fwd+bwd >= 85 % of copy roofline", "value": frac, "goal": 0.85,
                        "pass": frac >= 0.85})
        for impl, goal, text in (
            ("sj_atan", 1.3, ">= 1.3x SJ LIFNode(ATan)"),
            ("sj_rect", 10.0, ">= 10x SJ LIFNode(Rect)"),
            ("sj_flexsn", 1.0, "faster than SJ FlexSN (STBP core)"),
        ):
            other = t(impl, "fp32", T)
            if other is not None:
                sp = other["fwdbwd_s"] / ours["fwdbwd_s"]
                out.append({"target": f"op fp32 T={T}: {text}", "value": sp, "goal": goal,
                            "pass": sp >= goal if goal > 1 else sp > goal})
        for half in ("bf16", "fp16"):
            h = t("ours_cupy", half, T)
            if h is not None:
                sp = ours["fwdbwd_s"] / h["fwdbwd_s"]
                out.append({"target": f"op {half} T={T}: >= 1.6x our fp32", "value": sp, "goal": 1.6,
                            "pass": sp >= 1.6})
    return out


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"Kernel benchmark on **{m['device_name']}** (torch {m['torch']}, CuPy {m['cupy']}); copy bandwidth "
             f"{m['copy_GBps']:.0f} GB/s (read + write) measured in the same run." if m.get("copy_GBps") else
             f"Kernel benchmark on **{m['device_name']}** (dry run: no GPU, numbers meaningless).", "",
             "| dtype | T | neurons | backend | phase | median | GB/s (min bytes) | % copy BW |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in payload["rows"]:
        frac = f"{100 * r['frac_copy_bw']:.1f} %" if "frac_copy_bw" in r else "–"
        lines.append(f"| {r['dtype']} | {r['T']} | 2^{r['neurons'].bit_length() - 1} | {r['backend']} | {r['phase']} "
                     f"| {r['median_s'] * 1e3:.3f} ms | {r['GBps']:.1f} | {frac} |")
    if payload["skipped"]:
        lines += ["", "Skipped: " + ", ".join(f"{k} ({v})" for k, v in payload["skipped"].items())]
    if payload["targets"]:
        lines += ["", "| target | value | goal | pass |", "|---|---:|---:|---|"]
        for tg in payload["targets"]:
            lines.append(f"| {tg['target']} | {tg['value']:.3g} | {tg['goal']} | {'yes' if tg['pass'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except ImportError:
        info["cupy"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_out"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, torch backend only")
    p.add_argument("--T", type=_ints, default=[2, 4, 8, 16])
    p.add_argument("--log2-neurons", type=int, default=24)
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["fp32", "bf16", "fp16"])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--neurons-json", type=Path, default=None, help="a benchmarks.neurons JSON for op-level targets")
    args = p.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        args.T, args.log2_neurons, args.rounds, args.inner = [2, 4], 12, 3, 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --dry-run", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine(device)
    args.copy_GBps = None
    if device.type == "cuda":
        args.copy_GBps = copy_bandwidth(device, 1 << 30, rounds=10) / 1e9
        info["copy_GBps"] = args.copy_GBps
        print(f"copy bandwidth {args.copy_GBps:.0f} GB/s", flush=True)
    result = measure(args, device)
    targets = kernel_targets(result["rows"])
    if args.neurons_json is not None and args.neurons_json.is_file():
        targets += op_targets(json.loads(args.neurons_json.read_text()))
    payload = {"benchmark": "kernels", "machine": info, "config": {"T": args.T, "log2_neurons": args.log2_neurons,
               "dtypes": args.dtypes, "rounds": args.rounds, "inner": args.inner, "dry_run": args.dry_run},
               "rows": result["rows"], "skipped": result["skipped"], "targets": targets}
    (args.out / "kernels.json").write_text(json.dumps(payload, indent=1))
    (args.out / "kernels.md").write_text(markdown(payload))
    for tg in targets:
        print(f"  target {tg['target']}: {tg['value']:.3g} (goal {tg['goal']}) {'PASS' if tg['pass'] else 'FAIL'}")
    print(f"wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
