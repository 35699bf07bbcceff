"""Regenerate ``docs/benchmarks.md`` from the result JSONs in ``benchmarks/results/`` (no hand-copied numbers).

Usage: ``python -m benchmarks.make_docs [--results DIR] [--out docs/benchmarks.md]``

For every benchmark kind (``neuron_cpu``, ``neurons``, ``resnet``) and device, the newest JSON is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import common

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("neuron_cpu", "neurons", "resnet")


def load_results(results_dir: Path) -> dict[str, list[tuple[Path, dict]]]:
    """``{kind: [(path, payload), ...]}``: the newest file per (kind, device, torch threads, file tag)."""
    newest: dict[tuple[str, str], tuple[str, Path, dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        kind = payload.get("benchmark") if isinstance(payload, dict) else None
        if kind not in KINDS:
            continue
        m = payload.get("machine", {})
        tag = payload.get("config", {}).get("tag", kind)
        key = (kind, f"{m.get('device', '?').split(':')[0]}-{m.get('device_name', '?')}-{m.get('torch_threads')}-{tag}")
        stamp = m.get("date_utc", "")
        if key not in newest or stamp >= newest[key][0]:
            newest[key] = (stamp, path, payload)
    out: dict[str, list[tuple[Path, dict]]] = {k: [] for k in KINDS}
    for (kind, _), (_, path, payload) in sorted(newest.items()):
        out[kind].append((path, payload))
    return out


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(path, out.parent).replace(os.sep, "/")


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _commit(m: dict) -> str:
    if not m.get("commit"):
        return "–"
    return f"`{m['commit']}`" + (" + local changes" if m.get("sj_resnet_dirty") else "")


def machines_section(results: dict) -> list[str]:
    lines = [
        "## Machines and runs",
        "",
        "| result file | device | CPU cores / torch threads | torch | SpikingJelly | sj_resnet commit "
        "| date (UTC) | load avg start → end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for path, p in results[kind]:
            m = p["machine"]
            end = m.get("loadavg_end", [float("nan")])[0]
            lines.append(
                f"| `{path.name}` | {m['device_name']} | {m['cpu_count']} / {m['torch_threads']} | "
                f"{m['torch']} | {m['spikingjelly']} | {_commit(m)} | {m['date_utc']} | "
                f"{m['loadavg_start'][0]:.2f} → {end:.2f} |"
            )
    return lines + [""]


def _section_start(title: str, intro: str, results: dict, kind: str) -> list[str]:
    """A section's title and introduction, plus a placeholder when ``results`` holds no ``kind`` run yet."""
    lines = [f"## {title}", "", intro, ""]
    if not results[kind]:
        lines += [f"_No result yet: run `python -m benchmarks.{kind}`._", ""]
    return lines


def neuron_cpu_section(results: dict, out: Path) -> list[str]:
    lines = _section_start(
        "Foundation targets: fused `torch` backend vs SpikingJelly `LIFNode(Rect)` on the CPU",
        "`python -m benchmarks.neuron_cpu` — float32, forward + backward, fresh zero state per call. "
        "Targets: speed-up **≥ 2×**, bytes saved for backward **≤ 1/3** of SpikingJelly's.",
        results, "neuron_cpu",
    )
    for path, p in results["neuron_cpu"]:
        m = p["machine"]
        lines += [
            f"Measured on {m['device_name']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads), "
            f"{p['config']['rounds']} interleaved rounds, load average {m['loadavg_start'][0]:.2f} at start.",
            "",
            "| shape | ours torch | ours reference | SJ LIFNode(Rect) | speed-up torch vs SJ | target ≥ 2× "
            "| saved: ours torch | saved: SJ | saved ratio | target ≤ 1/3 |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
        ]
        for r in p["rows"]:
            t, s = r["timing"], r["saved"]
            sp, br = r["speedup_vs_sj_rect"]["ours_torch"], r["saved_bytes_ratio_vs_sj_rect"]["ours_torch"]
            lines.append(
                f"| `{r['shape']}` | {common.fmt_time(t['ours_torch']['median_s'])} | "
                f"{common.fmt_time(t['ours_reference']['median_s'])} | {common.fmt_time(t['sj_rect']['median_s'])} | "
                f"{sp:.2f}× | {_met(r['targets']['speedup_ge_2'])} | {common.fmt_bytes(s['ours_torch']['bytes'])} | "
                f"{common.fmt_bytes(s['sj_rect']['bytes'])} | {br:.3f} | "
                f"{_met(r['targets']['saved_bytes_le_one_third'])} |"
            )
        lines += ["", f"Source: [`{path.name}`]({_rel(path, out)}).", ""]
        if p.get("profile_ours_torch"):
            lines += [
                "<details><summary>torch.profiler table of our torch backend (fwd+bwd)</summary>",
                "",
                "```",
                p["profile_ours_torch"].strip(),
                "```",
                "",
                "</details>",
                "",
            ]
    return lines


def _headline_neurons(p: dict) -> list[str]:
    """Speed-up of each implementation over SJ Rect at the sweeps' shared point, per dtype."""
    c = p["config"]
    rows = [r for r in p["rows"] if r.get("sweep") == "both" and "fwdbwd_s" in r]
    if not rows:
        rows = [r for r in p["rows"] if "fwdbwd_s" in r and r["T"] == c["base_T"]]
    cuda = p["machine"]["device"].startswith("cuda")
    head = (
        "| dtype | T | neurons | implementation | fwd+bwd | speed-up vs SJ Rect | saved for bwd | saved vs SJ Rect "
        "| spike mismatch vs fp64 |" + (" % copy BW |" if cuda else "")
    )
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for r in rows:
        sp = r.get("speedup_fwdbwd_vs_sj_rect")
        sr = r.get("saved_ratio_vs_sj_rect")
        name = r["label"] + (" *(ATan: different surrogate)*" if r["surrogate"] != "Rect" else "")
        cells = [
            r["dtype"],
            str(r["T"]),
            f"2^{r['neurons'].bit_length() - 1}",
            name,
            common.fmt_time(r["fwdbwd_s"]),
            f"{sp:.2f}×" if sp else "–",
            common.fmt_bytes(r["saved_bytes"]),
            f"{sr:.2f}" if sr else "–",
            f"{r['spike_mismatch']:.1e}",
        ]
        if cuda:
            f = r.get("fwdbwd_frac_copy_bw")
            cells.append(f"{100 * f:.0f} %" if f else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cuda_targets(targets: dict) -> list[str]:
    """The CUDA backend's targets (docs/cuda_backend.md) per (dtype, T, neurons) of our cupy backend."""
    th = targets["thresholds"]
    lines = [
        f"CUDA backend targets (fwd+bwd, T ∈ {{4, 8}}, ≥ 2^24 neurons): fp32 ≥ {th['frac_copy_bw_fp32']:.0%} of "
        f"the measured copy bandwidth, ≥ {th['vs_sj_atan']}× SJ `LIFNode(ATan)`, ≥ {th['vs_sj_rect']:.0f}× "
        f"SJ `LIFNode(Rect)`, ahead of `FlexSN`, bf16/fp16 ≥ {th['low_precision_vs_fp32']}× our fp32.",
        "",
        "| dtype | T | neurons | % copy BW | vs SJ ATan | vs SJ Rect | vs FlexSN | vs our fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(c: dict, key: str, fmt: str) -> str:
        if key not in c:
            return "–"
        return fmt.format(c[key]) + (" ✓" if c.get(key + "_met") else " ✗")

    for c in targets["checks"]:
        lines.append(
            f"| {c['dtype']} | {c['T']} | 2^{c['neurons'].bit_length() - 1} | "
            f"{cell(c, 'frac_copy_bw', '{:.0%}')} | {cell(c, 'vs_sj_atan', '{:.2f}×')} | "
            f"{cell(c, 'vs_sj_rect', '{:.1f}×')} | {cell(c, 'vs_sj_flexsn', '{:.2f}×')} | "
            f"{cell(c, 'vs_own_fp32', '{:.2f}×')} |"
        )
    return lines


def neurons_section(results: dict, out: Path) -> list[str]:
    lines = _section_start(
        "Neuron sweep: ours vs SpikingJelly 2.0",
        "`python -m benchmarks.neurons [--device cuda]` — implementations: ours `reference` / `torch` / `cupy` "
        "(CUDA); SpikingJelly `LIFNode(Rect)` (the same neuron; SpikingJelly has no kernel for Rect and runs a "
        "Python loop), `LIFNode(ATan)` (a different surrogate, measured because it is SpikingJelly's fast path: "
        "Triton on CUDA), `FlexSN` with an STBP core. Input `x [T, N]`, zero state. Spike mismatch and gradient "
        "error are against the float64 reference with the implementation's own surrogate.",
        results, "neurons",
    )
    for path, p in results["neurons"]:
        m = p["machine"]
        lines += [
            f"### {m['device_name']}, {m['torch_threads']} torch thread(s)"
            + (f" — `{p['config']['tag']}`" if p["config"].get("tag", "neurons") != "neurons" else ""),
            "",
            f"{m['cpu_count']} CPU cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
            f"SpikingJelly {m['spikingjelly']}"
            + (f", copy bandwidth {m['copy_GBps']:.0f} GB/s" if m.get("copy_GBps") else "")
            + f"; load average {m['loadavg_start'][0]:.2f} at start"
            + (" (a `--quick` smoke run)" if p["config"].get("quick") else "")
            + ".",
            "",
        ]
        lines += _headline_neurons(p)
        if p.get("cuda_targets", {}).get("checks"):
            lines += ["", *_cuda_targets(p["cuda_targets"])]
        md = path.with_suffix(".md")
        lines += [
            "",
            f"Every row (T sweep, neuron sweep, all dtypes): [`{md.name}`]({_rel(md, out)}); "
            f"raw data [`{path.name}`]({_rel(path, out)}).",
            "",
        ]
        for dtype in p["config"]["dtypes"]:
            png = path.parent / f"{path.stem}-{dtype}.png"
            if png.exists():
                lines += [f"![{dtype} neuron benchmark on {m['device_name']}]({_rel(png, out)})", ""]
    return lines


def resnet_section(results: dict, out: Path) -> list[str]:
    from .resnet import markdown as resnet_md

    lines = _section_start(
        "Spiking ResNets: training step and inference",
        "`python -m benchmarks.resnet [--device cuda] [--sj-zoo]` — each variant on the same batch, interleaved. "
        "*our arch + SJ LIFNode* is our network with SpikingJelly's neuron injected as `spiking_neuron`, so the "
        "difference to *ours* is the neuron only; *ReLU (floor)* is the same network with ReLU in place of every "
        "neuron, and **neuron cost = step − floor**. CPU targets (narrow `resnet18_cifar`, T=4, 16×16, batch 64): "
        "our neuron cost **≤ 1/3** of SpikingJelly `LIFNode(Rect)`'s and saved bytes **≤ 0.75×**.",
        results, "resnet",
    )
    for path, p in results["resnet"]:
        m = p["machine"]
        lines += [f"### {m['device_name']}, {m['torch_threads']} torch thread(s)", ""]
        if p["targets"]:
            lines += [
                "| model | precision | neuron cost vs SJ Rect | target ≤ 1/3 | saved vs SJ Rect (network) "
                "| target ≤ 0.75 | saved vs SJ Rect (neurons only) | step speed-up vs SJ Rect |",
                "|---|---|---:|---|---:|---|---:|---:|",
            ]
            for t in p["targets"]:
                ns = t.get("neuron_saved_ratio")
                lines.append(
                    f"| {t['model']} | {t['precision']} | {t['neuron_cost_ratio']:.3f}× | "
                    f"{_met(t['neuron_cost_met'])} | {t['saved_ratio']:.2f}× | {_met(t['saved_met'])} | "
                    f"{'–' if ns is None else f'{ns:.2f}×'} | {t['step_speedup']:.2f}× |"
                )
            lines += ["", "*Neurons only* = (saved bytes − the ReLU floor's) of ours over the same for SpikingJelly."]
            lines.append("")
        lines += [resnet_md(p), f"Raw data: [`{path.name}`]({_rel(path, out)}).", ""]
        png = path.with_suffix(".png")
        if png.exists():
            lines += [f"![ResNet training steps on {m['device_name']}]({_rel(png, out)})", ""]
    return lines


def _load(m: dict) -> str:
    end = m.get("loadavg_end", m["loadavg_start"])[0]
    return f"{m['torch_threads']} torch thread(s), load average {m['loadavg_start'][0]:.1f} → {end:.1f}"


def summary_section(results: dict) -> list[str]:
    """Headline ratios, computed from the newest results (one bullet per result file)."""
    lines = ["## Summary", ""]
    for _, p in results["neuron_cpu"]:
        m = p["machine"]
        parts = [
            f"`{r['shape']}` {r['speedup_vs_sj_rect']['ours_torch']:.2f}× faster, "
            f"{r['saved_bytes_ratio_vs_sj_rect']['ours_torch']:.2f}× the saved bytes"
            for r in p["rows"]
        ]
        lines.append(
            f"- Neuron, CPU fp32 fwd+bwd, torch backend vs SpikingJelly `LIFNode(Rect)` "
            f"({_load(m)}): " + "; ".join(parts) + f" — targets {'met' if p['all_targets_met'] else 'not all met'}."
        )
    for _, p in results["neurons"]:
        m = p["machine"]
        best = {}
        for r in p["rows"]:
            if (
                r.get("sweep") in ("both",)
                and r["impl"] in ("ours_torch", "ours_cupy")
                and r.get("speedup_fwdbwd_vs_sj_rect")
            ):
                best.setdefault(r["dtype"], []).append(f"{r['label']} {r['speedup_fwdbwd_vs_sj_rect']:.2f}×")
        if best:
            c = p["config"]
            lines.append(
                f"- Neuron sweep on {m['device_name']} ({_load(m)}"
                + (f", `{c['tag']}`" if c.get("tag", "neurons") != "neurons" else "")
                + f"), fwd+bwd speed-up over SJ `LIFNode(Rect)` at T={c['base_T']}, "
                f"N=2^{c['base_neurons_log2']}: " + "; ".join(f"{d}: {', '.join(v)}" for d, v in best.items()) + "."
            )
        comp = [
            r for r in p["rows"] if r["impl"].endswith("_compiled") and r.get("sweep") == "both" and "fwdbwd_s" in r
        ]
        for r in comp:
            ours = next(
                (
                    o
                    for o in p["rows"]
                    if o["impl"] == "ours_torch"
                    and o["T"] == r["T"]
                    and o["neurons"] == r["neurons"]
                    and o["dtype"] == r["dtype"]
                    and "fwdbwd_s" in o
                ),
                None,
            )
            if ours is not None:
                lines.append(
                    f"  - {r['label']} ({r['dtype']}, T={r['T']}, N=2^{r['neurons'].bit_length() - 1}): "
                    f"{ours['fwdbwd_s'] / r['fwdbwd_s']:.2f}× the fwd+bwd speed of our eager torch backend, "
                    f"{r['saved_bytes'] / ours['saved_bytes']:.2f}× its saved bytes."
                )
        if comp:
            lines.append(
                "  - (inductor fuses a plain loop over T into one C++ kernel; our fused torch op is a custom "
                "op, opaque to inductor, so compiling it changes little)"
            )
    for _, p in results["resnet"]:
        m = p["machine"]
        for t in p["targets"]:
            lines.append(
                f"- `{t['model']}` {t['precision']} training step on {m['device_name']} "
                f"({_load(m)}): neuron cost {t['neuron_cost_ratio']:.3f}× SpikingJelly's "
                f"(target ≤ 0.33 {'met' if t['neuron_cost_met'] else 'missed'}), saved bytes "
                f"{t['saved_ratio']:.2f}× (target ≤ 0.75 {'met' if t['saved_met'] else 'missed'}), "
                f"step {t['step_speedup']:.2f}× faster."
            )
    return lines + [""]


def render(results: dict, out: Path) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.make_docs` from benchmarks/results/*.json; do not edit by hand. -->",
        "",
        "How the numbers are taken (`benchmarks/common.py`):",
        "",
        "- **Interleaved medians.** After a warm-up, every round runs each implementation once (rotating order); the "
        "reported time is the median over rounds and a speed-up is the median of the per-round ratios. Load changes "
        "on a shared machine hit all implementations of a round alike, so the *ratios* are the numbers to trust; "
        "absolute times on a loaded CPU are noisy (the load average at the start and end of each run is recorded).",
        "- **CPU**: `time.perf_counter`; **CUDA**: CUDA events around the same calls.",
        "- **Saved for backward**: every tensor packed by `torch.autograd.graph.saved_tensors_hooks` during the "
        "forward, counted once per distinct storage with the storage's full size.",
        "- **Peak memory**: `torch.cuda.max_memory_allocated` above the starting level on CUDA; on the CPU the "
        "allocation/free events of `torch.profiler(profile_memory=True)` replayed in time order.",
        "- **Correctness**: spikes and `dL/dx` against the float64 reference implementation.",
        "- **Threads**: on a 2-core machine shared with other jobs, torch's default of 2 intra-op threads makes every "
        "parallel op wait for a descheduled thread, which inflates small-op times by up to 100× and swamps any "
        "comparison; runs marked *1 torch thread* (`--threads 1`) avoid that. The torch thread count is part of every "
        "result's key below.",
        "- **Allocation**: every fresh CPU tensor above glibc's mmap threshold (32 MiB at most) is new memory whose "
        "pages fault on first touch; on a VM this costs about as much as a pass over the data, so the number of "
        "full-size temporaries an implementation allocates shows up directly in its time.",
        "",
        "Reproduce: `python -m benchmarks.neuron_cpu`, `python -m benchmarks.neurons [--device cuda]`, "
        "`python -m benchmarks.resnet [--device cuda]`, then `python -m benchmarks.make_docs`.",
        "",
    ]
    lines += summary_section(results)
    lines += machines_section(results)
    lines += neuron_cpu_section(results, out)
    lines += neurons_section(results, out)
    lines += resnet_section(results, out)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    results = load_results(args.results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, args.out))
    n = sum(len(v) for v in results.values())
    print(f"wrote {args.out} from {n} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
