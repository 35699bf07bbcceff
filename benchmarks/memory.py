"""Memory modes benchmark: what a training step keeps for backward, its peak memory and its time.

Usage::

    python -m benchmarks.memory [--device cpu|cuda] [--configs cifar-t4,cifar-t6,r18-224,r34-224] [--rounds 5]
                                [--threads 1] [--quick]

Configurations (``CONFIGS``; batch sizes sized for a shared 2-core CPU, larger on CUDA):

- ``cifar-t4`` / ``cifar-t6``: ``resnet18_cifar`` (width 64), 32x32, T=4 / T=6;
- ``r18-224`` / ``r34-224``: ``resnet18`` / ``resnet34`` (ImageNet stem, width 64), 224x224, T=4.

Variants, all on the same batch, timed interleaved (``benchmarks.common.interleaved_medians``):

- ours ``standard``, ``compact`` and ``checkpoint`` (``memory=`` of the builders, ``DecayFireNode`` Rect,
  decay 0.25, V_th 0.5, ``torch`` backend);
- SpikingJelly ``LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0, Rect)`` — the same neuron — in
  SpikingJelly's ``spiking_resnet18/34`` (ImageNet configurations; multi-step) or, for the CIFAR configurations
  (SpikingJelly has no CIFAR-stem ResNet), in our architecture; each with and without SpikingJelly's
  ``memopt.optimize_memory(level=1)`` on its residual blocks.

Per variant: **saved** = bytes allocated by the forward pass and still alive when it returns (what the graph
keeps for backward, plus the logits), **peak** = the highest allocation level above the start during a whole
training step (``reset_net``, forward, cross-entropy, backward, SGD step; gradients included) — both from the
CPU profiler's allocation events replayed in time order, or ``torch.cuda`` allocator statistics on a GPU — and
the median step time. The batch that fits in N GiB is estimated from the peak:
``floor((N - 3 x parameter bytes) / ((peak - parameter bytes) / batch))`` (weights, gradients and momentum
fixed; the rest scales with the batch).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import common

DECAY, V_TH = common.STBP_DECAY, common.STBP_V_TH
NUM_CLASSES = 10
SAVED_TARGET = 0.5  # compact / standard saved bytes
TIME_TARGET = 1.1  # compact / standard step time
SJ_SAVED_TARGET = 0.35  # compact / SpikingJelly spiking_resnet18 + LIFNode(Rect) saved bytes
FIT_GIB = (16, 24, 40, 80)


@dataclass(frozen=True)
class Config:
    key: str
    model: str
    T: int
    size: int
    batch_cpu: int
    batch_cuda: int
    sj_arch: str | None  # SpikingJelly zoo builder, None: our arch with SpikingJelly's neuron


CONFIGS = {
    "cifar-t4": Config("cifar-t4", "resnet18_cifar", 4, 32, 4, 64, None),
    "r18-224": Config("r18-224", "resnet18", 4, 224, 1, 16, "spiking_resnet18"),
    "cifar-t6": Config("cifar-t6", "resnet18_cifar", 6, 32, 4, 64, None),
    "r34-224": Config("r34-224", "resnet34", 4, 224, 1, 16, "spiking_resnet34"),
}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    memory: str | None  # ours: the memory mode; None: a SpikingJelly neuron variant
    memopt: bool = False  # SpikingJelly's optimize_memory on the blocks


OURS = [
    Variant("ours_standard", "ours, standard", "standard"),
    Variant("ours_compact", "ours, compact", "compact"),
    Variant("ours_checkpoint", "ours, checkpoint:1", "checkpoint"),
]


def sj_variants(cfg: Config) -> list[Variant]:
    name = cfg.sj_arch or "our arch"
    return [
        Variant("sj_rect", f"SJ {name} + LIFNode(Rect)", None),
        Variant("sj_rect_memopt", f"SJ {name} + LIFNode(Rect) + optimize_memory(1)", None, True),
    ]


def _lif() -> tuple[type[nn.Module], dict]:
    from spikingjelly.activation_based import neuron

    return neuron.LIFNode, common.sj_stbp_lif_kwargs("Rect")


def build(cfg: Config, v: Variant, width: int | None, x: torch.Tensor) -> tuple[nn.Module, bool]:
    """``(network, takes_sequence)``: a sequence network takes ``[T, N, C, H, W]`` and returns ``[T, N, classes]``."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.memopt import optimize_memory

    from sj_resnet.models import BasicBlock, Bottleneck, create_model

    w = {} if width is None else {"width": width}
    if v.memory is not None:
        net = create_model(cfg.model, T=cfg.T, num_classes=NUM_CLASSES, memory=v.memory, decay=DECAY,
                           v_threshold=V_TH, backend="torch", **w)  # fmt: skip
        return net, False
    factory, kwargs = _lif()
    if cfg.sj_arch is None:
        net = create_model(cfg.model, T=cfg.T, num_classes=NUM_CLASSES, spiking_neuron=factory, **w, **kwargs)
        targets, seq = (BasicBlock, Bottleneck), False
    else:
        from spikingjelly.activation_based.model import spiking_resnet

        net = getattr(spiking_resnet, cfg.sj_arch)(spiking_neuron=factory, num_classes=NUM_CLASSES, **kwargs)
        functional.set_step_mode(net, "m")
        targets, seq = (spiking_resnet.BasicBlock, spiking_resnet.Bottleneck), True
    if v.memopt:
        xs = _as_input(x, cfg.T, seq)
        optimize_memory(net, targets, lambda m: m(xs), level=1)
    return net, seq


def _as_input(x: torch.Tensor, T: int, seq: bool) -> torch.Tensor:
    return x.unsqueeze(0).expand(T, *x.shape).contiguous() if seq else x


class Bench:
    """One variant: its network, SGD optimizer and the training-step closure."""

    def __init__(self, cfg: Config, v: Variant, width: int | None, device: torch.device, x, y) -> None:
        from spikingjelly.activation_based import functional

        self.variant = v
        self.net, self.seq = build(cfg, v, width, x)
        self.net.to(device).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9)
        self.x = _as_input(x.to(device), cfg.T, self.seq)
        self.y = y.to(device)
        self.reset = functional.reset_net

    def forward(self) -> torch.Tensor:
        self.reset(self.net)
        self.opt.zero_grad(set_to_none=True)
        out = self.net(self.x)
        return out.mean(0) if self.seq else out

    def backward(self, out: torch.Tensor) -> None:
        F.cross_entropy(out, self.y).backward()
        self.opt.step()

    def train_step(self) -> None:
        self.backward(self.forward())

    def grads(self) -> dict[str, torch.Tensor]:
        self.backward(self.forward())
        return {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone() for n, p in self.net.named_parameters()}

    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.net.parameters())


def step_memory(forward: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None],
                device: torch.device) -> dict[str, int]:
    """``{'saved_bytes', 'peak_bytes'}`` of one training step, above the allocation level at its start.

    ``saved_bytes``: allocated by ``forward`` and still alive when it returns (the graph's saved tensors and the
    output). ``peak_bytes``: the highest level during ``forward`` + ``backward``. CUDA: allocator statistics; CPU:
    the allocation/free events of ``torch.profiler(profile_memory=True)`` replayed in time order.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = forward()
        torch.cuda.synchronize(device)
        saved = torch.cuda.memory_allocated(device) - base
        backward(out)
        del out
        torch.cuda.synchronize(device)
        return {"saved_bytes": saved, "peak_bytes": torch.cuda.max_memory_allocated(device) - base}
    from torch.profiler import ProfilerActivity, profile, record_function

    marker = "##sj_resnet_forward_done"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = forward()
        with record_function(marker):
            pass
        backward(out)
        del out
    events = list(prof.profiler.kineto_results.events())
    t_mark = min(e.start_ns() for e in events if e.name() == marker)
    cur = peak = 0
    saved = None
    for t, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        if saved is None and t >= t_mark:
            saved = cur
        cur += nbytes
        peak = max(peak, cur)
    return {"saved_bytes": cur if saved is None else saved, "peak_bytes": peak}


def batch_fit(peak_bytes: int, batch: int, param_bytes: int, gib: float) -> int:
    """Largest batch whose step fits in ``gib`` GiB, scaling the measured peak (see the module docstring)."""
    per_sample = max(peak_bytes - param_bytes, 1) / batch
    return max(0, math.floor((gib * 2**30 - 3 * param_bytes) / per_sample))


def run_config(cfg: Config, args, device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    batch = args.batch or (cfg.batch_cuda if device.type == "cuda" else cfg.batch_cpu)
    size = args.size or cfg.size
    x = torch.rand(batch, 3, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    benches: dict[str, Bench] = {}
    rows: list[dict] = []
    for v in OURS + sj_variants(cfg):
        torch.manual_seed(0)  # ours: identical initial weights in every memory mode
        try:
            b = Bench(cfg, v, args.width, device, x, y)
            b.train_step()  # lazily created state (momentum buffers), fail early
            benches[v.key] = b
        except Exception as exc:  # a variant that cannot run is reported, not fatal
            err = f"{type(exc).__name__}: {exc}"[:300]
            rows.append({"config": cfg.key, "variant": v.key, "label": v.label, "error": err})
            print(f"  {cfg.key} {v.label}: FAILED {rows[-1]['error']}")
    exact = None
    if "ours_standard" in benches and "ours_checkpoint" in benches:
        # fresh twins: same weights, one step each from the same state
        torch.manual_seed(1)
        g = {k: Bench(cfg, benches[k].variant, args.width, device, x, y).grads() for k in ("ours_standard",)}
        torch.manual_seed(1)
        g["ours_checkpoint"] = Bench(cfg, benches["ours_checkpoint"].variant, args.width, device, x, y).grads()
        exact = all(torch.equal(a, g["ours_checkpoint"][k]) for k, a in g["ours_standard"].items())
    mem = {k: step_memory(b.forward, b.backward, device) for k, b in benches.items()}
    timing = common.interleaved_medians({k: b.train_step for k, b in benches.items()}, device, rounds=args.rounds,
                                        warmup=1, time_budget_s=args.time_budget_s)  # fmt: skip
    ref = timing.get("ours_standard")
    for k, b in benches.items():
        t = timing[k]
        row = {
            "config": cfg.key,
            "model": cfg.model if b.variant.memory is not None or cfg.sj_arch is None else cfg.sj_arch,
            "variant": k,
            "label": b.variant.label,
            "memory": b.variant.memory,
            "T": cfg.T,
            "size": size,
            "batch": batch,
            "params": sum(p.numel() for p in b.net.parameters()),
            "param_bytes": b.param_bytes(),
            **mem[k],
            "train_step_s": t["median_s"],
            "train_samples_s": t["samples_s"],
            "time_ratio_vs_standard": None if ref is None else common.ratio_stats(t["samples_s"], ref["samples_s"]),
            "batch_fit": {str(n): batch_fit(mem[k]["peak_bytes"], batch, b.param_bytes(), n) for n in FIT_GIB},
        }
        if k == "ours_checkpoint":
            row["grads_bit_identical_to_standard"] = exact
        rows.append(row)
    std = next((r for r in rows if r.get("variant") == "ours_standard" and "saved_bytes" in r), None)
    sj = next((r for r in rows if r.get("variant") == "sj_rect" and "saved_bytes" in r), None)
    for r in rows:
        if "saved_bytes" not in r:
            continue
        r["saved_ratio_vs_standard"] = r["saved_bytes"] / std["saved_bytes"] if std else None
        r["peak_ratio_vs_standard"] = r["peak_bytes"] / std["peak_bytes"] if std else None
        r["saved_ratio_vs_sj_rect"] = r["saved_bytes"] / sj["saved_bytes"] if sj else None
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's CPU targets, per configuration."""
    out = []
    for key in dict.fromkeys(r["config"] for r in rows):
        done = {r["variant"]: r for r in rows if r["config"] == key and "saved_bytes" in r}
        c, ck = done.get("ours_compact"), done.get("ours_checkpoint")
        if c is None:
            continue
        t = {
            "config": key,
            "compact_saved_ratio": c["saved_ratio_vs_standard"],
            "compact_saved_met": c["saved_ratio_vs_standard"] <= SAVED_TARGET,
            "compact_time_ratio": c["time_ratio_vs_standard"],
            "compact_time_met": c["time_ratio_vs_standard"] is not None and c["time_ratio_vs_standard"] <= TIME_TARGET,
            "checkpoint_grads_bit_identical": None if ck is None else ck.get("grads_bit_identical_to_standard"),
        }
        if key in ("r18-224",) and c.get("saved_ratio_vs_sj_rect") is not None:
            t["compact_vs_sj_saved_ratio"] = c["saved_ratio_vs_sj_rect"]
            t["compact_vs_sj_saved_met"] = c["saved_ratio_vs_sj_rect"] <= SJ_SAVED_TARGET
        out.append(t)
    return out


def markdown(payload: dict) -> str:
    """The result tables (also embedded in ``docs/benchmarks.md`` by ``benchmarks.make_docs``)."""
    lines = []
    for key in dict.fromkeys(r["config"] for r in payload["rows"]):
        rows = [r for r in payload["rows"] if r["config"] == key]
        ok = [r for r in rows if "saved_bytes" in r]
        if not ok:
            continue
        r0 = ok[0]
        lines += [
            f"**{key}**: {ok[0]['model'] if ok[0]['memory'] else key}, T={r0['T']}, {r0['size']}x{r0['size']}, "
            f"batch {r0['batch']}",
            "",
            "| variant | saved for backward | × standard | × SJ Rect | peak | × standard | step (median) "
            "| × standard |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['label']} | failed: {r['error'][:80]} | | | | | | |")
                continue

            def x(v):
                return "–" if v is None else f"{v:.2f}×"

            lines.append(
                f"| {r['label']} | {common.fmt_bytes(r['saved_bytes'])} | {x(r['saved_ratio_vs_standard'])} | "
                f"{x(r['saved_ratio_vs_sj_rect'])} | {common.fmt_bytes(r['peak_bytes'])} | "
                f"{x(r['peak_ratio_vs_standard'])} | {common.fmt_time(r['train_step_s'])} | "
                f"{x(r['time_ratio_vs_standard'])} |"
            )
        lines.append("")
    fit_rows = [r for r in payload["rows"] if "batch_fit" in r]
    if fit_rows:
        lines += [
            "**How big a batch fits** (estimated from the measured peak, see `benchmarks/memory.py`):",
            "",
            "| config | variant | " + " | ".join(f"{n} GiB" for n in FIT_GIB) + " |",
            "|---|---|" + "---:|" * len(FIT_GIB),
        ]
        for r in fit_rows:
            lines.append(f"| {r['config']} | {r['label']} | " + " | ".join(str(r["batch_fit"][str(n)]) for n in FIT_GIB)
                         + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Memory modes: saved bytes, peak memory and step time (ours vs SJ)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {tuple(CONFIGS)}")
    p.add_argument("--batch", type=int, default=None, help="override every configuration's batch")
    p.add_argument("--size", type=int, default=None, help="override the image side")
    p.add_argument("--width", type=int, default=None, help="override the width (default: the builders' 64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--time-budget-s", type=float, default=None, help="cap on the timing rounds of one config")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: width 8, 32x32, batch 2, 2 rounds")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--tag", default="memory")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    device = common.parse_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = args.configs.split(",")
    for k in keys:
        if k not in CONFIGS:
            raise SystemExit(f"--configs: unknown {k!r}; choose from {tuple(CONFIGS)}")
    if args.quick:
        args.width, args.size, args.batch, args.rounds = args.width or 8, args.size or 32, args.batch or 2, 2
    t0 = time.perf_counter()
    payload = {"benchmark": "memory", "machine": common.machine_info(device), "rows": []}
    payload["config"] = {
        "configs": keys, "rounds": args.rounds, "width": args.width, "size": args.size, "batch": args.batch,
        "quick": args.quick, "tag": args.tag, "decay": DECAY, "v_threshold": V_TH, "saved_target": SAVED_TARGET,
        "time_target": TIME_TARGET, "sj_saved_target": SJ_SAVED_TARGET, "fit_gib": FIT_GIB,
    }  # fmt: skip
    print(f"memory benchmark on {payload['machine']['device_name']}: {keys}")
    path = common.result_path(args.tag, device, args.out_dir, args.threads)
    for key in keys:
        rows = run_config(CONFIGS[key], args, device)
        for r in rows:
            if "saved_bytes" in r:
                print(f"  {key:9s} {r['label']:52s} saved {common.fmt_bytes(r['saved_bytes']):>10s} "
                      f"({r['saved_ratio_vs_standard']:.2f}x) peak {common.fmt_bytes(r['peak_bytes']):>10s} step "
                      f"{common.fmt_time(r['train_step_s']):>9s} ({r['time_ratio_vs_standard']:.2f}x)")  # fmt: skip
        payload["rows"].extend(rows)
        payload["targets"] = targets(payload["rows"])
        payload["wall_s"] = time.perf_counter() - t0
        common.write_json(path, payload)  # after every configuration: a long run keeps what it measured
    path.with_suffix(".md").write_text(markdown(payload))
    written = [path, path.with_suffix(".md")]
    if not args.no_plots:
        from .plots import plot_memory

        written += plot_memory(payload, path.with_suffix(""))
    for t in payload["targets"]:
        print(f"target {t['config']}: compact saved {t['compact_saved_ratio']:.3f}x (<= {SAVED_TARGET}: "
              f"{'met' if t['compact_saved_met'] else 'MISSED'}), time {t['compact_time_ratio']:.3f}x "
              f"(<= {TIME_TARGET}: {'met' if t['compact_time_met'] else 'MISSED'}), checkpoint grads exact: "
              f"{t['checkpoint_grads_bit_identical']}"
              + (f", vs SJ {t['compact_vs_sj_saved_ratio']:.3f}x" if "compact_vs_sj_saved_ratio" in t else ""))
    print(f"done in {payload['wall_s']:.1f} s; wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
