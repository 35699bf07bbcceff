"""Kernel-level roofline of the fused backends and the CUDA backend's performance targets.

Usage::

    python -m benchmarks.gpu.kernel_bench --out DIR [--dry-run] [--T 2,4,8,16] [--log2-neurons 24]
        [--dtypes fp32,bf16,fp16] [--neurons-json DIR/neurons-*.json]

Times the backend contract directly (``forward`` and ``backward`` of ``cupy`` and ``torch``, inputs
preallocated, no autograd), so the numbers are the kernels' own, plus one node-level phase: a
``DecayFireNode`` forward + backward right after ``functional.reset_net`` (fresh state, the whole op).
Interleaved medians (``benchmarks.common.interleaved_medians``: CUDA events, rotated order). Phases:

    fwd           training forward, h saved in fp32         fwd-fp16   training forward, float16 h - v_th saved
    fwd-infer     inference forward (spikes + v_last)       bwd-<sg>   backward from the fp32 state (Rect, ATan)
    bwd-ATan-fp16 backward from the float16 state           node       node fwd + bwd after reset_net (ATan)

Bytes per phase are the minimum of ``sj_resnet.neuron.backends.cupy.traffic`` (the formula the byte-count
tests assert for the kernels: fresh state, ``v_last`` only, a dense spike gradient, no ``grad_v0``, constant
decay), and the fraction is of the device-to-device copy bandwidth measured in the same run (read + write).
With ``--neurons-json`` (the output of ``python -m benchmarks.neurons``) it also evaluates the op-level targets
at T in {4, 8}: fp32 fwd+bwd >= 85 % of the copy roofline, >= 1.3x SpikingJelly LIFNode(ATan), >= 10x
LIFNode(Rect), faster than FlexSN, bf16/fp16 >= 1.6x our fp32. Writes ``kernels.json`` and ``kernels.md``
into ``--out``. ``--dry-run`` runs on the CPU with tiny sizes (torch backend only) so the script itself is
tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import common
from sj_resnet.neuron.backends.cupy import traffic
from sj_resnet.neuron.params import DecayFireParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SURROGATES = {"Rect": (0, 1.0), "ATan": (2, 2.0)}
TARGET_T = (4, 8)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _params(sid: int, alpha: float, saved_state: str = "fp32") -> DecayFireParams:
    return DecayFireParams(v_threshold=common.STBP_V_TH, surrogate_id=sid, alpha=alpha, detach_reset=False,
                           store_v_seq=False, saved_state=saved_state)


def phase_bytes(phase: str, T: int, n: int, dtype: torch.dtype) -> int:
    """Minimum bytes of one benchmark phase (``traffic`` formulas; see the module docstring). ``node`` and ``fwd``
    are the neuron benchmarks' calls (``common.min_traffic_bytes``)."""
    if phase in ("node", "fwd"):
        return common.min_traffic_bytes(T, n, dtype, with_backward=phase == "node")
    e = torch.empty((), dtype=dtype).element_size()
    saved = 2 if phase.endswith("fp16") else (0 if phase == "fwd-infer" else 4)
    if phase.startswith("fwd"):
        return traffic.forward_bytes(T=T, n=n, x_size=e, state_size=4, saved_size=saved, v0=False,
                                     store_v_seq=False).total
    return traffic.backward_bytes(T=T, n=n, grad_size=e, state_size=4, saved_size=saved, grad_spike_elems=T * n,
                                  grad_v_elems=0, grad_v0=False, decay_grad=False, v0=False).total


def backends_for(device: torch.device) -> tuple[dict, dict]:
    from sj_resnet.neuron.backends import cupy as cupy_backend
    from sj_resnet.neuron.backends import get_backend

    found, skipped = {"torch": get_backend("torch")}, {}
    reason = cupy_backend.probe(device) if device.type == "cuda" else "needs a CUDA device and CuPy"
    if reason is None:
        found["cupy"] = get_backend("cupy")
    else:
        skipped["cupy"] = reason
    return found, skipped


def config_calls(found: dict, x, gs, decay) -> dict[str, Callable[[], object]]:
    """``{"<backend>/<phase>": call}`` for one input configuration."""
    from spikingjelly.activation_based import functional

    from sj_resnet import DecayFireNode

    fns = {}
    for bname, mod in found.items():
        saved = {kind: mod.forward(x, None, decay, _params(0, 1.0, kind), True)[2] for kind in ("fp32", "fp16")}
        fns[f"{bname}/fwd"] = lambda mod=mod: mod.forward(x, None, decay, _params(0, 1.0), True)
        fns[f"{bname}/fwd-fp16"] = lambda mod=mod: mod.forward(x, None, decay, _params(0, 1.0, "fp16"), True)
        fns[f"{bname}/fwd-infer"] = lambda mod=mod: mod.forward(x, None, decay, _params(0, 1.0), False)
        backward_cases = {f"bwd-{name}": (_params(sid, alpha), "fp32") for name, (sid, alpha) in SURROGATES.items()}
        backward_cases["bwd-ATan-fp16"] = (_params(2, 2.0, "fp16"), "fp16")
        for phase, (p, kind) in backward_cases.items():
            fns[f"{bname}/{phase}"] = lambda mod=mod, p=p, h=saved[kind]: mod.backward(gs, None, h, None, decay, p,
                                                                                      False, False)
        node = DecayFireNode(decay=common.STBP_DECAY, v_threshold=common.STBP_V_TH,
                             surrogate_function=common.sj_surrogate("ATan"), step_mode="m", backend=bname)
        xg = x.detach().requires_grad_(True)

        def node_step(node=node, xg=xg):
            functional.reset_net(node)
            xg.grad = None
            node(xg).backward(gs)

        fns[f"{bname}/node"] = node_step
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
            decay = torch.tensor(common.STBP_DECAY, device=device)
            fns = config_calls(found, x, gs, decay)
            res = common.interleaved_medians(fns, device, rounds=args.rounds, warmup=2, min_sample_s=args.min_sample_s)
            for key, r in res.items():
                bname, phase = key.split("/")
                nbytes = phase_bytes(phase, T, n, dtype)
                row = {"backend": bname, "phase": phase, "dtype": dname, "T": T, "neurons": n,
                       "median_s": r["median_s"], "min_s": r["min_s"], "min_bytes": nbytes,
                       "GBps": nbytes / r["median_s"] / 1e9}
                if args.copy_GBps:
                    row["frac_copy_bw"] = row["GBps"] / args.copy_GBps
                rows.append(row)
                print(f"  {dname} T={T:<2d} {key:20s} {r['median_s'] * 1e3:9.3f} ms  {row['GBps']:8.1f} GB/s"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_out"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, torch backend only")
    p.add_argument("--T", type=_ints, default=[2, 4, 8, 16])
    p.add_argument("--log2-neurons", type=int, default=24)
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["fp32", "bf16", "fp16"])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--min-sample-s", type=float, default=0.02, help="each timed sample lasts about this long")
    p.add_argument("--neurons-json", type=Path, default=None, help="a benchmarks.neurons JSON for op-level targets")
    args = p.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        args.T, args.log2_neurons, args.rounds, args.min_sample_s = [2, 4], 12, 3, 0.0
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --dry-run", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    info = common.machine_info(device)
    args.copy_GBps = None
    if device.type == "cuda":
        args.copy_GBps = common.copy_bandwidth(device, 1 << 30, rounds=10) / 1e9
        info["copy_GBps"] = args.copy_GBps
        print(f"copy bandwidth {args.copy_GBps:.0f} GB/s", flush=True)
    result = measure(args, device)
    targets = kernel_targets(result["rows"])
    if args.neurons_json is not None and args.neurons_json.is_file():
        targets += op_targets(json.loads(args.neurons_json.read_text()))
    payload = {"benchmark": "kernels", "machine": info, "config": {"T": args.T, "log2_neurons": args.log2_neurons,
               "dtypes": args.dtypes, "rounds": args.rounds, "min_sample_s": args.min_sample_s,
               "dry_run": args.dry_run},
               "rows": result["rows"], "skipped": result["skipped"], "targets": targets}
    (args.out / "kernels.json").write_text(json.dumps(payload, indent=1))
    (args.out / "kernels.md").write_text(markdown(payload))
    for tg in targets:
        print(f"  target {tg['target']}: {tg['value']:.3g} (goal {tg['goal']}) {'PASS' if tg['pass'] else 'FAIL'}")
    print(f"wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
