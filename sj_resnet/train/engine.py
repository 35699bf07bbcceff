"""The per-batch computation of a spiking network and one evaluation pass (training epochs: ``trainer.py``).

Per batch (:func:`forward_batch`, shared by training and evaluation): ``functional.reset_net`` (fresh membrane
state), forward under autocast (``--amp``), loss (cross entropy on the time-reduced logits, or TET's per-step
loss). The trainer's step then goes backward through it (``Trainer.train_epoch``).

TET (Deng et al., ICLR 2022, "Temporal Efficient Training of Spiking Neural Network via Gradient
Re-weighting"): with per-step logits ``y[t]`` (``model.return_sequence = True``)::

    L = (1 - lambda) * mean_t CE(y[t], target) + lambda * mean_{t,n,k} (y[t, n, k] - phi)^2

with ``phi = --tet-means`` (1.0) and ``lambda = --tet-lambda`` (1e-3), the defaults of the authors' code;
predictions use ``mean_t y[t]``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .data import to_model_input
from .firing import FiringRateMonitor


def compute_loss(out: Tensor, target: Tensor, cfg) -> tuple[Tensor, Tensor]:
    """``(loss, logits [N, K])`` for ``cfg.loss`` in ``('ce', 'tet')``; ``out`` is ``[N, K]`` or ``[T, N, K]``."""
    if cfg.loss == "tet":
        if out.dim() != 3:
            raise RuntimeError(
                f"--loss tet needs per-step logits [T, N, K] (return_sequence=True); got {tuple(out.shape)}"
            )
        T = out.shape[0]
        ce = sum(F.cross_entropy(out[t].float(), target, label_smoothing=cfg.label_smoothing) for t in range(T)) / T
        loss = ce
        if cfg.tet_lambda > 0:
            mse = F.mse_loss(out.float(), torch.full_like(out, cfg.tet_means, dtype=torch.float32))
            loss = (1.0 - cfg.tet_lambda) * ce + cfg.tet_lambda * mse
        return loss, out.mean(0)
    return F.cross_entropy(out.float(), target, label_smoothing=cfg.label_smoothing), out


def autocast(device: torch.device, amp: str):
    """Autocast context for ``--amp bf16|fp16`` (a null context for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal (rank 0), the bare iterable otherwise."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_batch(
    model: nn.Module, plain_model: nn.Module, x: Tensor, y: Tensor, cfg, device: torch.device, sequence: bool
) -> tuple[Tensor, Tensor]:
    """One batch's forward from a fresh membrane state: ``(loss, logits)``; ``y`` is already on ``device``."""
    from spikingjelly.activation_based import functional

    x = to_model_input(x.to(device, non_blocking=True), sequence)
    functional.reset_net(plain_model)
    with autocast(device, cfg.amp):
        out = model(x)
    return compute_loss(out, y, cfg)


@dataclass
class EvalResult:
    loss: float
    acc1: float
    acc5: float
    samples: int
    seconds: float
    firing_mean: float
    firing: dict[str, float]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    plain_model: nn.Module,
    loader,
    cfg,
    device: torch.device,
    sequence: bool,
    monitor: FiringRateMonitor,
    limit: int | None = None,
    desc: str = "eval",
    show_progress: bool = True,
) -> EvalResult:
    """Loss, top-1 and top-5 accuracy and per-layer firing rates over the (sharded) test set, summed over ranks."""

    model.eval()
    monitor.reset()
    monitor.enabled = True
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss_sum, top1, top5, n
    total = len(loader) if limit is None else min(limit, len(loader))
    t0 = time.perf_counter()
    bar = progress(loader, total, desc, show_progress)
    for i, (x, y) in enumerate(bar):
        if limit is not None and i >= limit:
            break
        y = y.to(device, non_blocking=True)
        loss, logits = forward_batch(model, plain_model, x, y, cfg, device, sequence)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        totals += torch.stack([loss.double() * y.shape[0], hit[:, 0].sum().double(), hit.any(1).sum().double(),
                               torch.tensor(float(y.shape[0]), dtype=torch.float64, device=device)])
    if bar is not loader:
        bar.close()
    distributed.all_reduce_sum(totals)
    sync(device)
    n = max(1.0, float(totals[3]))
    firing, firing_mean = monitor.summary()
    return EvalResult(
        loss=float(totals[0]) / n,
        acc1=float(totals[1]) / n,
        acc5=float(totals[2]) / n,
        samples=int(totals[3]),
        seconds=time.perf_counter() - t0,
        firing_mean=firing_mean,
        firing=firing,
    )
