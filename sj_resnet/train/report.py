"""What a run leaves behind: the per-epoch line, ``metrics.csv``, TensorBoard events, ``summary.json`` and
``curves.png``. Only rank 0 writes; every other rank holds a disabled :class:`Reporter`.

Columns of ``metrics.csv`` (one row per epoch, rewritten from the checkpoint's history on resume):
``epoch, lr, train_loss, train_acc, test_loss, test_acc1, test_acc5, train_img_s, epoch_s, peak_mem_mib,
train_firing, test_firing, grad_norm`` (accuracies and firing rates as fractions in [0, 1]; ``grad_norm``: mean
global gradient norm before clipping, rank 0's). The test columns are empty after an epoch that was not evaluated
(``--eval-every``).
"""

from __future__ import annotations

import csv
import json
import math
import resource
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch

COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc1", "test_acc5", "train_img_s",
           "epoch_s", "peak_mem_mib", "train_firing", "test_firing", "grad_norm")


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """``(MiB, kind)``: CUDA max allocated since the last reset on a GPU, the process's max RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "max RSS"


def format_epoch(row: dict[str, Any], epochs: int, mem_kind: str) -> str:
    """One human-readable line per epoch (the test columns blank after an epoch that was not evaluated)."""
    if row["test_acc1"] is None:
        test = f"{'test  (not evaluated this epoch)':45s}"
    else:
        test = (f"test loss {row['test_loss']:.4f} acc@1 {100 * row['test_acc1']:6.2f}% "
                f"acc@5 {100 * row['test_acc5']:6.2f}%")
    return (
        f"epoch {row['epoch']:>3d}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:6.2f}%  "
        f"{test}  "
        f"{row['train_img_s']:7.1f} img/s  {row['epoch_s']:6.1f} s  "
        f"peak {row['peak_mem_mib']:.0f} MiB ({mem_kind})  firing {row['train_firing']:.3f}  "
        f"|grad| {row.get('grad_norm', math.nan):.3g}  lr {row['lr']:.2e}"
    )


def format_eta(row: dict[str, Any], epochs: int, now: datetime | None = None) -> str:
    """The estimate printed after the first epoch of an invocation: remaining epochs x this epoch's time."""
    left = epochs - row["epoch"]
    eta = left * row["epoch_s"]
    end = (now or datetime.now()) + timedelta(seconds=eta)
    return (f"  eta:    ~{eta:.0f} s more ({left} epochs x {row['epoch_s']:.1f} s, the first epoch's time), "
            f"done at about {end:%H:%M:%S}")


class Reporter:
    """Rank-0 writer of the run's report files; ``enabled=False`` makes every method a no-op."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool = True, purge_step: int | None = None
                 ) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.writer = None
        self.eta_shown = False
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.log("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(self.dir / "tb"), purge_step=purge_step)

    def log(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)

    def write_csv(self, history: list[dict[str, Any]]) -> None:
        """(Re)write ``metrics.csv`` from the full history (one row per completed epoch)."""
        if not self.enabled:
            return
        tmp = self.dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k) for k in COLUMNS})
        tmp.replace(self.dir / "metrics.csv")

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]], epochs: int, mem_kind: str,
              firing_layers: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.log(format_epoch(row, epochs, mem_kind))
        if not self.eta_shown and row["epoch"] < epochs:
            self.eta_shown = True
            self.log(format_eta(row, epochs))
        self.write_csv(history)
        if self.writer is not None:
            e = row["epoch"]
            for key in COLUMNS[1:]:
                value = row.get(key)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, e)
            for name, rate in firing_layers.items():
                self.writer.add_scalar(f"firing_layers/{name}", rate, e)
            self.writer.flush()

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]], plot: bool = True) -> None:
        if not self.enabled:
            return
        tmp = self.dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        tmp.replace(self.dir / "summary.json")
        if plot and history:
            try:
                plot_curves(history, self.dir / "curves.png")
            except Exception as exc:  # a plotting problem must not lose a finished run
                self.log(f"warning: curves.png not written ({type(exc).__name__}: {exc})")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss, accuracy and mean firing rate per epoch, three panels, matplotlib Agg."""
    from matplotlib.figure import Figure  # the object API: no pyplot import (~0.6 s), no global figure state

    ep = [r["epoch"] for r in history]
    evaluated = [r for r in history if r["test_acc1"] is not None]  # --eval-every: the evaluated epochs
    ev_ep = [r["epoch"] for r in evaluated]
    mark = "o" if len(evaluated) < len(history) else None
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    axes[0].plot(ep, [r["train_loss"] for r in history], label="train")
    axes[0].plot(ev_ep, [r["test_loss"] for r in evaluated], label="test", marker=mark)
    axes[0].set_title("loss")
    axes[1].plot(ep, [100 * r["train_acc"] for r in history], label="train")
    axes[1].plot(ev_ep, [100 * r["test_acc1"] for r in evaluated], label="test acc@1", marker=mark)
    axes[1].set_title("accuracy (%)")
    axes[2].plot(ep, [r["train_firing"] for r in history], label="train")
    axes[2].plot(ev_ep, [r["test_firing"] for r in evaluated], label="test", marker=mark)
    axes[2].set_title("mean firing rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
