"""Matplotlib (Agg) plots of the benchmark JSONs: time vs T, time vs neurons, speed-up over SpikingJelly."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "ours_torch": dict(color="tab:blue", marker="o"),
    "ours_cupy": dict(color="tab:purple", marker="*"),
    "ours_reference": dict(color="tab:cyan", marker=".", linestyle=":"),
    "ours_torch_compiled": dict(color="tab:blue", marker="o", linestyle="--"),
    "ours_reference_compiled": dict(color="tab:cyan", marker=".", linestyle="--"),
    "sj_rect": dict(color="tab:red", marker="s"),
    "sj_rect_compiled": dict(color="tab:red", marker="s", linestyle="--"),
    "sj_atan": dict(color="tab:orange", marker="^"),
    "sj_flexsn": dict(color="tab:green", marker="v"),
}


def _series(rows: list[dict], dtype: str, sweep: str, xkey: str, ykey: str) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r["dtype"] != dtype or r.get("sweep") not in (sweep, "both") or ykey not in r:
            continue
        xs, ys = out.setdefault(r["impl"], ([], []))
        xs.append(r[xkey])
        ys.append(r[ykey])
    return {k: tuple(zip(*sorted(zip(*v, strict=True)), strict=True)) for k, v in out.items() if v[0]}


def _label(rows: list[dict], impl: str) -> str:
    r = next(r for r in rows if r["impl"] == impl)
    return r["label"] + (" [ATan: different surrogate]" if r["surrogate"] != "Rect" else "")


def plot_neurons(payload: dict, stem: Path) -> list[Path]:
    """One figure per dtype with three panels; returns the written PNG paths (``<stem>-<dtype>.png``)."""
    rows = payload["rows"]
    cfg = payload["config"]
    written = []
    for dtype in cfg["dtypes"]:
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
        panels = (
            (axes[0], "T", "T", "fwdbwd_s", f"fwd+bwd time vs T (N = 2^{cfg['base_neurons_log2']})", True),
            (axes[1], "neurons", "neurons", "fwdbwd_s", f"fwd+bwd time vs neurons (T = {cfg['base_T']})", True),
            (
                axes[2],
                "neurons",
                "neurons",
                "speedup_fwdbwd_vs_sj_rect",
                f"speed-up over SJ LIFNode(Rect), fwd+bwd (T = {cfg['base_T']})",
                False,
            ),
        )
        for ax, sweep, xkey, ykey, title, logy in panels:
            for impl, (xs, ys) in _series(rows, dtype, sweep, xkey, ykey).items():
                ax.plot(xs, ys, label=_label(rows, impl), **STYLE.get(impl, {}))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("T" if xkey == "T" else "neurons")
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
                ax.set_ylabel("seconds (median)")
            else:
                ax.axhline(1.0, color="gray", linewidth=0.8)
                ax.set_ylabel("t(SJ Rect) / t(impl)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        m = payload["machine"]
        fig.suptitle(
            f"Neuron {dtype} on {m['device_name']} — torch {m['torch']}, SpikingJelly {m['spikingjelly']}", fontsize=11
        )
        fig.tight_layout()
        path = Path(f"{stem}-{dtype}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def plot_resnet(payload: dict, stem: Path) -> list[Path]:
    """Bar chart of training-step time per network variant, one bar group per model and precision."""
    rows = [r for r in payload["rows"] if "train_step_s" in r]
    if not rows:
        return []
    groups = sorted({(r["model"], r["precision"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.8), squeeze=False)
    colors = {
        "torch": "tab:blue",
        "cupy": "tab:purple",
        "reference": "tab:cyan",
        "relu": "tab:gray",
        "sj_rect": "tab:red",
        "sj_atan": "tab:orange",
    }
    for ax, (model, prec) in zip(axes[0], groups, strict=True):
        sel = [r for r in rows if r["model"] == model and r["precision"] == prec]
        ax.barh(
            [r["variant_label"] for r in sel],
            [r["train_step_s"] * 1e3 for r in sel],
            color=[colors.get(r["neuron"], "tab:green") for r in sel],
        )
        floor = next((r for r in sel if r["variant"] == "ours_arch_relu"), None)
        if floor is not None:
            ax.axvline(floor["train_step_s"] * 1e3, color="black", linestyle="--", linewidth=1, label="ReLU floor")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("training step, ms (median)")
        ax.set_title(f"{model}, {prec}", fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    return _save(fig, stem, f"Spiking ResNet training step on {payload['machine']['device_name']}")


def _save(fig, stem: Path, title: str) -> list[Path]:
    """Title, tight layout, ``<stem>.png`` at 90 dpi; returns ``[path]``."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(f"{stem}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower is better on both), sorted by the first."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot_memory(payload: dict, stem: Path) -> list[Path]:
    """Peak memory vs training-step time per variant, one panel per configuration, with the Pareto frontier."""
    rows = [r for r in payload["rows"] if "peak_bytes" in r]
    if not rows:
        return []
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(configs), figsize=(4.8 * len(configs), 4.4), squeeze=False)
    style = {
        "ours_standard": dict(color="tab:blue", marker="o"),
        "ours_compact": dict(color="tab:green", marker="D"),
        "ours_checkpoint": dict(color="tab:purple", marker="^"),
        "sj_rect": dict(color="tab:red", marker="s"),
        "sj_rect_memopt": dict(color="tab:orange", marker="v"),
    }
    for ax, key in zip(axes[0], configs, strict=True):
        sel = [r for r in rows if r["config"] == key]
        for r in sel:
            ax.scatter(r["train_step_s"], r["peak_bytes"] / 2**20, s=60, label=r["label"],
                       **style.get(r["variant"], dict(color="gray", marker="x")))  # fmt: skip
        front = pareto_front([(r["train_step_s"], r["peak_bytes"] / 2**20) for r in sel])
        ax.plot(*zip(*front, strict=True), color="black", linestyle="--", linewidth=1, label="Pareto frontier")
        r0 = sel[0]
        ax.set_title(f"{key}: T={r0['T']}, {r0['size']}px, batch {r0['batch']}", fontsize=10)
        ax.set_xlabel("training step, s (median)")
        ax.set_ylabel("peak memory of a step, MiB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    return _save(fig, stem, f"Memory modes: peak memory vs step time on {payload['machine']['device_name']}")
