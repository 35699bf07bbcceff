"""Whole-network benchmark: training steps and inference of spiking ResNets, ours vs SpikingJelly 2.0.

Usage::

    python -m benchmarks.resnet [--device cpu|cuda] [--models resnet18_cifar,resnet18,resnet19] [--[no-]sj-zoo]
                                [--precisions fp32,amp] [--batch 64] [--size 16] [--width 16] [--T 4] [--quick]

For every model and precision, the variants below are timed *interleaved* (see ``benchmarks.common``) on the
same batch: a training step (``reset_net`` + forward + cross-entropy + backward + SGD step) and an inference
forward (``no_grad``). Recorded per variant: step time, images/s, inference time, peak memory of a training
step, and the bytes autograd saves for backward during the forward (``saved_tensors_hooks``, unique storages,
the input batch excluded).

Variants (``our arch`` = ``sj_resnet.models.<model>``, every shortcut with a BN):

- ``ours_<backend>``: our arch with our ``DecayFireNode`` (backends ``torch``, ``reference``, ``cupy`` on CUDA);
- ``ours_arch_sj_rect`` / ``ours_arch_sj_atan``: our arch with SpikingJelly ``LIFNode(tau=1/(1-decay),
  decay_input=False, v_reset=0, Rect(1.0) | ATan())`` injected as ``spiking_neuron`` — the like-for-like
  comparison: the networks differ in the neuron only;
- ``ours_arch_relu``: our arch with ``ReLU`` in place of every neuron — the floor. ``neuron cost = step - floor``;
- with ``--sj-zoo`` (default on CUDA; ``resnet18`` only): SpikingJelly's ``spiking_resnet18`` (Rect, ATan, ReLU floor),
  ``sew_resnet18(cnf='ADD')`` and ``ms_resnet18`` with ``LIFNode(Rect)``, multi-step via ``set_step_mode``.

AMP is ``torch.autocast`` with bfloat16 (CPU and CUDA). CPU target setting (the default on CPU): narrow
``resnet18_cifar`` (width 16), T=4, 16x16 inputs, batch 64 — targets: our neuron cost above the ReLU floor
<= 1/3 of SpikingJelly LIFNode(Rect)'s, and saved bytes <= 0.75x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import common

NEURON_COST_TARGET = 1.0 / 3.0
SAVED_TARGET = 0.75
OUR_MODELS = ("resnet18_cifar", "resnet18", "resnet19")


class ReLUNeuron(nn.ReLU):
    """The floor: ``ReLU`` accepting (and ignoring) any neuron keyword, so it drops in as ``spiking_neuron``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()


def sj_lif_factory(surrogate_name: str) -> tuple[Callable[..., nn.Module], dict]:
    """SpikingJelly ``LIFNode`` configured as the STBP neuron, as ``(class, kwargs)`` for a model builder."""
    from spikingjelly.activation_based import neuron

    return neuron.LIFNode, common.sj_stbp_lif_kwargs(surrogate_name)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    arch: str  # 'ours' | 'sj_spiking' | 'sj_sew' | 'sj_ms'
    neuron: str  # 'torch' | 'reference' | 'cupy' | 'sj_rect' | 'sj_atan' | 'relu'


def variants_for(model: str, device: torch.device, backends: list[str], sj_zoo: bool) -> list[Variant]:
    out = [Variant(f"ours_{b}", f"ours ({b} backend)", "ours", b) for b in backends]
    out += [
        Variant("ours_arch_sj_rect", "our arch + SJ LIFNode(Rect)", "ours", "sj_rect"),
        Variant("ours_arch_sj_atan", "our arch + SJ LIFNode(ATan) [diff. surrogate]", "ours", "sj_atan"),
        Variant("ours_arch_relu", "our arch + ReLU (floor)", "ours", "relu"),
    ]
    if sj_zoo and model == "resnet18":
        out += [
            Variant("sj_spiking_rect", "SJ spiking_resnet18 + LIFNode(Rect)", "sj_spiking", "sj_rect"),
            Variant("sj_spiking_atan", "SJ spiking_resnet18 + LIFNode(ATan)", "sj_spiking", "sj_atan"),
            Variant("sj_spiking_relu", "SJ spiking_resnet18 + ReLU (floor)", "sj_spiking", "relu"),
            Variant("sj_sew_rect", "SJ sew_resnet18(ADD) + LIFNode(Rect)", "sj_sew", "sj_rect"),
            Variant("sj_ms_rect", "SJ ms_resnet18 + LIFNode(Rect)", "sj_ms", "sj_rect"),
        ]
    return out


def _neuron_args(neuron: str) -> tuple[Callable[..., nn.Module] | None, dict]:
    if neuron in ("torch", "reference", "cupy"):
        return None, dict(decay=common.STBP_DECAY, v_threshold=common.STBP_V_TH, backend=neuron)
    if neuron == "relu":
        return ReLUNeuron, {}
    return sj_lif_factory("Rect" if neuron == "sj_rect" else "ATan")


def build(variant: Variant, model: str, cfg: argparse.Namespace) -> tuple[nn.Module, bool]:
    """``(network, takes_sequence)``; ``takes_sequence`` means the input must be ``[T, N, C, H, W]``."""
    factory, kwargs = _neuron_args(variant.neuron)
    if variant.arch == "ours":
        from sj_resnet import models

        extra = {"spiking_neuron": factory} if factory is not None else {}
        width = {} if cfg.width is None else {"width": cfg.width * (2 if model == "resnet19" else 1)}
        net = models.create_model(model, T=cfg.T, num_classes=cfg.num_classes, **width, **extra, **kwargs)
        return net, False
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model import ms_resnet, sew_resnet, spiking_resnet

    if variant.arch == "sj_spiking":
        net = spiking_resnet.spiking_resnet18(spiking_neuron=factory, num_classes=cfg.num_classes, **kwargs)
    elif variant.arch == "sj_sew":
        net = sew_resnet.sew_resnet18(cnf="ADD", spiking_neuron=factory, num_classes=cfg.num_classes, **kwargs)
    elif variant.arch == "sj_ms":
        net = ms_resnet.ms_resnet18(T=cfg.T, num_classes=cfg.num_classes, spiking_neuron=factory, **kwargs)
        functional.set_step_mode(net, "m")
        return net, False
    else:
        raise ValueError(variant.arch)
    functional.set_step_mode(net, "m")
    return net, True


class Bench:
    """One network variant with its optimizer, batch and the two timed closures."""

    def __init__(self, variant: Variant, model: str, cfg, device: torch.device, amp: bool, x, y) -> None:
        from spikingjelly.activation_based import functional

        self.variant = variant
        self.net, seq = build(variant, model, cfg)
        self.net.to(device).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.x = x.unsqueeze(0).expand(cfg.T, *x.shape).contiguous() if seq else x
        self.seq = seq
        self.y = y
        self.device = device
        self.amp = amp
        self.reset = functional.reset_net

    def forward(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(self.x)
        if self.seq:
            out = out.mean(0)
        return out.float()

    def train_step(self) -> None:
        self.reset(self.net)
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(), self.y).backward()
        self.opt.step()

    def infer(self) -> None:
        self.reset(self.net)
        self.net.eval()
        with torch.no_grad():
            self.forward()
        self.net.train()

    def saved(self) -> dict:
        self.reset(self.net)
        self.opt.zero_grad(set_to_none=True)
        return common.saved_bytes(self.forward, exclude=(self.x,))


def run_group(model: str, precision: str, cfg, device: torch.device) -> list[dict]:
    """Interleaved measurements of every variant of one (model, precision)."""
    gen = torch.Generator().manual_seed(0)
    size = cfg.size or (224 if model == "resnet18" and device.type == "cuda" else 32 if device.type == "cuda" else 16)
    x = torch.randn(cfg.batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, cfg.num_classes, (cfg.batch,), generator=gen).to(device)
    amp = precision == "amp"
    benches, rows = {}, []
    for v in variants_for(model, device, cfg.backends, cfg.sj_zoo):
        try:
            b = Bench(v, model, cfg, device, amp, x, y)
            b.train_step()  # build lazily created state, fail early
            benches[v.key] = b
        except Exception as exc:
            rows.append(
                {
                    "model": model,
                    "precision": precision,
                    "variant": v.key,
                    "variant_label": v.label,
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                }
            )
            print(f"  {model} {precision} {v.label}: FAILED {rows[-1]['error']}")
    kw = dict(rounds=cfg.rounds, warmup=cfg.warmup, time_budget_s=cfg.time_budget_s)
    t_train = common.interleaved_medians({k: b.train_step for k, b in benches.items()}, device, **kw)
    t_inf = common.interleaved_medians({k: b.infer for k, b in benches.items()}, device, **kw)
    for k, b in benches.items():
        v = b.variant
        saved = b.saved()
        peak = None if cfg.no_peak else common.peak_memory(b.train_step, device)
        step = t_train[k]["median_s"]
        rows.append(
            {
                "model": model,
                "precision": precision,
                "variant": k,
                "variant_label": v.label,
                "arch": v.arch,
                "neuron": v.neuron,
                "T": cfg.T,
                "batch": cfg.batch,
                "size": size,
                "width": getattr(b.net, "width", cfg.width),
                "params": sum(p.numel() for p in b.net.parameters()),
                "train_step_s": step,
                "train_samples_s": t_train[k]["samples_s"],
                "train_images_per_s": cfg.batch / step,
                "infer_s": t_inf[k]["median_s"],
                "infer_samples_s": t_inf[k]["samples_s"],
                "infer_images_per_s": cfg.batch / t_inf[k]["median_s"],
                "saved_bytes": saved["bytes"],
                "peak_bytes": peak,
            }
        )
    _neuron_costs(rows)
    return rows


def _floor_key(arch: str) -> str:
    return "ours_arch_relu" if arch == "ours" else f"{arch}_relu"


def _neuron_costs(rows: list[dict]) -> None:
    """Add ``neuron_cost_s`` (step - same-arch ReLU floor), per-round medians included."""
    by_key = {r["variant"]: r for r in rows if "train_step_s" in r}
    for r in by_key.values():
        floor = by_key.get(_floor_key(r["arch"]))
        if floor is None or r["neuron"] == "relu":
            continue
        r["neuron_cost_s"] = r["train_step_s"] - floor["train_step_s"]
        r["neuron_saved_bytes"] = r["saved_bytes"] - floor["saved_bytes"]
        r["neuron_cost_infer_s"] = r["infer_s"] - floor["infer_s"]
        per_round = [a - f for a, f in zip(r["train_samples_s"], floor["train_samples_s"], strict=True)]
        r["neuron_cost_round_median_s"] = statistics.median(per_round)
    ref = by_key.get("ours_arch_sj_rect")
    for r in by_key.values():
        if ref is None or r["arch"] != "ours":
            continue
        r["step_speedup_vs_ours_arch_sj_rect"] = common.ratio_stats(ref["train_samples_s"], r["train_samples_s"])
        r["saved_ratio_vs_ours_arch_sj_rect"] = r["saved_bytes"] / ref["saved_bytes"]
        if "neuron_cost_s" in r and ref.get("neuron_cost_s", 0) > 0:
            r["neuron_cost_ratio_vs_sj_rect"] = r["neuron_cost_s"] / ref["neuron_cost_s"]
        if "neuron_saved_bytes" in r and ref.get("neuron_saved_bytes", 0) > 0:
            r["neuron_saved_ratio_vs_sj_rect"] = r["neuron_saved_bytes"] / ref["neuron_saved_bytes"]


def targets(rows: list[dict]) -> list[dict]:
    """The CPU target checks for every (model, precision) group that has ``ours_torch`` and the SJ reference."""
    out = []
    for r in rows:
        if r.get("variant") != "ours_torch" or "neuron_cost_ratio_vs_sj_rect" not in r:
            continue
        out.append(
            {
                "model": r["model"],
                "precision": r["precision"],
                "neuron_cost_ratio": r["neuron_cost_ratio_vs_sj_rect"],
                "neuron_cost_met": r["neuron_cost_ratio_vs_sj_rect"] <= NEURON_COST_TARGET,
                "saved_ratio": r["saved_ratio_vs_ours_arch_sj_rect"],
                "neuron_saved_ratio": r.get("neuron_saved_ratio_vs_sj_rect"),
                "saved_met": r["saved_ratio_vs_ours_arch_sj_rect"] <= SAVED_TARGET,
                "step_speedup": r["step_speedup_vs_ours_arch_sj_rect"],
            }
        )
    return out


def markdown(payload: dict) -> str:
    m = payload["machine"]
    c = payload["config"]
    lines = [
        f"ResNet benchmark on **{m['device_name']}** ({m['cpu_count']} CPU cores, torch {m['torch']}, SpikingJelly "
        f"{m['spikingjelly']}), T={c['T']}, batch {c['batch']}, load average at start {m['loadavg_start'][0]:.2f}. "
        "Interleaved medians; neuron cost = step − same-architecture ReLU floor.",
        "",
        "| model | precision | variant | params | train step | img/s (train) | inference | img/s (inf) "
        "| neuron cost | vs SJ Rect (cost) | saved for bwd | vs SJ Rect (saved) | peak |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['variant_label']} | failed: {r['error'][:80]} |" + " |" * 9
            )
            continue
        ncr = r.get("neuron_cost_ratio_vs_sj_rect")
        sr = r.get("saved_ratio_vs_ours_arch_sj_rect")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["precision"],
                    r["variant_label"],
                    f"{r['params'] / 1e6:.2f} M",
                    common.fmt_time(r["train_step_s"]),
                    f"{r['train_images_per_s']:.0f}",
                    common.fmt_time(r["infer_s"]),
                    f"{r['infer_images_per_s']:.0f}",
                    common.fmt_time(r.get("neuron_cost_s")),
                    f"{ncr:.2f}x" if ncr is not None else "–",
                    common.fmt_bytes(r["saved_bytes"]),
                    f"{sr:.2f}x" if sr is not None else "–",
                    common.fmt_bytes(r.get("peak_bytes")),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Spiking ResNet training/inference benchmark (ours vs SpikingJelly 2.0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default=None, help=f"comma list of {OUR_MODELS} (CPU default: resnet18_cifar)")
    p.add_argument("--precisions", default="fp32,amp", help="fp32 and/or amp (bf16 autocast)")
    p.add_argument("--backends", default=None, help="our neuron backends (default torch,reference [+cupy on CUDA])")
    p.add_argument(
        "--sj-zoo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add SpikingJelly's spiking/sew/ms_resnet18 to the resnet18 group (default: on CUDA only)",
    )
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 64 on CPU, 32 on CUDA")
    p.add_argument("--size", type=int, default=None, help="image side (default 16 on CPU; CUDA 224 resnet18, 32 else)")
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="first-stage width (default 16 on CPU = the narrow target net; model default on CUDA)",
    )
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--time-budget-s", type=float, default=None, help="cap on the rounds of one timing table")
    p.add_argument("--no-peak", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny batch and size, 3 rounds, fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--tag", default="resnet")
    p.add_argument("--no-plots", action="store_true")
    cfg = p.parse_args(argv)
    device = common.parse_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == "cuda"
    models = cfg.models.split(",") if cfg.models else (list(OUR_MODELS) if cuda else ["resnet18_cifar"])
    for m in models:
        if m not in OUR_MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; choose from {OUR_MODELS}")
    if cfg.backends:
        cfg.backends = cfg.backends.split(",")
    else:
        from .neuron_impls import cupy_backend_usable

        cfg.backends = ["torch", "reference"] + (["cupy"] if cuda and cupy_backend_usable() else [])
    cfg.batch = cfg.batch or (32 if cuda else 64)
    if cfg.sj_zoo is None:
        cfg.sj_zoo = cuda
    if cfg.width is None and not cuda:
        cfg.width = 16
    precisions = cfg.precisions.split(",")
    if cfg.quick:
        cfg.batch, cfg.size, cfg.rounds, cfg.warmup, precisions = 4, 8, 3, 1, ["fp32"]
        cfg.width = cfg.width or 8
    t0 = time.perf_counter()
    payload = {"benchmark": "resnet", "machine": common.machine_info(device), "rows": []}
    payload["config"] = {
        "models": models,
        "precisions": precisions,
        "backends": cfg.backends,
        "T": cfg.T,
        "batch": cfg.batch,
        "size": cfg.size,
        "width": cfg.width,
        "rounds": cfg.rounds,
        "sj_zoo": cfg.sj_zoo,
        "quick": cfg.quick,
        "amp_dtype": "bf16",
        "neuron_cost_target": NEURON_COST_TARGET,
        "saved_target": SAVED_TARGET,
        "tag": cfg.tag,
    }
    print(f"resnet benchmark on {payload['machine']['device_name']}: models {models}, precisions {precisions}")
    for model in models:
        for prec in precisions:
            rows = run_group(model, prec, cfg, device)
            for r in rows:
                if "error" in r:
                    continue
                extra = ""
                if "neuron_cost_ratio_vs_sj_rect" in r:
                    extra = (
                        f"  neuron cost {common.fmt_time(r['neuron_cost_s'])} "
                        f"({r['neuron_cost_ratio_vs_sj_rect']:.2f}x SJ Rect), saved "
                        f"{r['saved_ratio_vs_ours_arch_sj_rect']:.2f}x SJ Rect"
                    )
                print(
                    f"  {model} {prec:4s} {r['variant_label']:46s} step {common.fmt_time(r['train_step_s']):>10s} "
                    f"({r['train_images_per_s']:7.1f} img/s) infer {common.fmt_time(r['infer_s']):>10s}{extra}"
                )
            payload["rows"].extend(rows)
    payload["targets"] = targets(payload["rows"])
    payload["wall_s"] = time.perf_counter() - t0
    path = common.write_json(common.result_path(cfg.tag, device, cfg.out_dir, cfg.threads), payload)
    path.with_suffix(".md").write_text(markdown(payload))
    written = [path, path.with_suffix(".md")]
    if not cfg.no_plots:
        from .plots import plot_resnet

        written += plot_resnet(payload, path.with_suffix(""))
    for t in payload["targets"]:
        print(
            f"target {t['model']} {t['precision']}: neuron cost {t['neuron_cost_ratio']:.3f}x SJ "
            f"(<= 0.33: {'met' if t['neuron_cost_met'] else 'MISSED'}), saved {t['saved_ratio']:.2f}x "
            f"(<= 0.75: {'met' if t['saved_met'] else 'MISSED'}), step speed-up {t['step_speedup']:.2f}x"
        )
    print(f"done in {payload['wall_s']:.1f} s; wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
