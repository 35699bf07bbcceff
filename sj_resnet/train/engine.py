"""One training epoch and one evaluation pass: the per-batch step of a spiking network.

Per batch: ``functional.reset_net`` (fresh membrane state), forward under autocast (``--amp``), loss (cross
entropy on the time-reduced logits, or TET's per-step loss), backward (through a ``GradScaler`` for fp16),
optional gradient-norm clipping, optimizer step, scheduler step (the schedule is per iteration).

TET (Deng et al., ICLR 2022, "Temporal Efficient Training of Spiking Neural Network via Gradient
Re-weighting"): with per-step logits ``y[t]`` (``model.return_sequence = True``)::

    L = (1 - lambda) * mean_t CE(y[t], target) + lambda * mean_{t,n,k} (y[t, n, k] - phi)^2

with ``phi = --tet-means`` (1.0) and ``lambda = --tet-lambda`` (1e-3), the defaults of the authors' code;
predictions use ``mean_t y[t]``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class EpochResult:
    loss: float = math.nan
    acc: float = math.nan
    samples: int = 0
    steps: int = 0  # optimizer steps taken in this call
    seconds: float = 0.0
    interrupted: bool = False
    firing_mean: float = math.nan
    firing: dict[str, float] = field(default_factory=dict)
    grad_norm: float = math.nan  # mean global gradient norm (before clipping) over this call's steps
    carry: dict = field(default_factory=dict)  # global running totals, to continue a partial epoch after resume


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


def train_one_epoch(
    model: nn.Module,
    plain_model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    cfg,
    device: torch.device,
    sequence: bool,
    monitor: FiringRateMonitor,
    should_stop: Callable[[], bool],
    total_steps: int,
    start_step: int = 0,
    desc: str = "train",
    show_progress: bool = True,
    carry: dict | None = None,
    is_main: bool = True,
    after_step: Callable[[], None] | None = None,
) -> EpochResult:
    """Train until the loader is exhausted, ``total_steps`` steps of this epoch are done, or ``should_stop()``.

    ``start_step`` is the index of the first batch (non-zero when resuming mid-epoch): the step counter of the
    returned result counts only the steps of this call. ``carry`` (the ``EpochResult.carry`` of the interrupted
    part of this epoch) makes the epoch's statistics those of the whole epoch; rank 0 (``is_main``) holds it.
    """

    model.train()
    monitor.reset()
    monitor.enabled = True
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
    earlier_seconds = 0.0
    if carry and is_main:
        loss_sum += carry["loss_sum"]
        correct += carry["correct"]
        seen = int(carry["seen"])
        monitor.preload(carry["firing_sums"], carry["firing_counts"])
    if carry:
        earlier_seconds = float(carry["seconds"])
    steps = 0
    interrupted = False
    _sync(device)
    t0 = time.perf_counter()
    remaining = max(0, total_steps - start_step)
    bar = progress(loader, remaining, desc, show_progress)
    it = iter(bar)
    while steps < remaining:
        try:
            x, y = next(it)
        except StopIteration:
            break
        except Exception:
            if should_stop():  # a worker killed by the same Ctrl-C
                interrupted = True
                break
            raise
        y = y.to(device, non_blocking=True)
        loss, logits = forward_batch(model, plain_model, x, y, cfg, device, sequence)
        if steps % 50 == 0 and not torch.isfinite(loss):  # a host sync: only every 50 steps
            raise FloatingPointError(
                f"loss is {loss.item()} at step {start_step + steps} of this epoch; lower --lr, add --clip-grad or "
                "--warmup-epochs, or use --amp none"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # a no-op without fp16; the norm below is the true (unscaled) one
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad or math.inf)
        grad_norm_sum += torch.nan_to_num(norm.detach().double(), nan=0.0, posinf=0.0)  # no host sync
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        n = y.shape[0]
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum().double()
        seen += n
        steps += 1
        if bar is not loader and steps % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}")
        if distributed.any_rank(should_stop(), device):
            interrupted = True
            break
    if bar is not loader:
        bar.close()
    _sync(device)
    seconds = time.perf_counter() - t0 + earlier_seconds
    totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=device)])
    distributed.all_reduce_sum(totals)
    total_seen = int(totals[2].item())
    fsums, fcounts = monitor.totals()
    firing, firing_mean = monitor.summary()
    carry_out = {"loss_sum": float(totals[0]), "correct": float(totals[1]), "seen": total_seen, "seconds": seconds,
                 "firing_sums": fsums, "firing_counts": fcounts}
    return EpochResult(
        loss=float(totals[0] / max(1, total_seen)) if total_seen else math.nan,
        acc=float(totals[1] / max(1, total_seen)) if total_seen else math.nan,
        samples=total_seen,
        steps=steps,
        seconds=seconds,
        interrupted=interrupted,
        firing_mean=firing_mean,
        firing=firing,
        grad_norm=float(grad_norm_sum) / steps if steps else math.nan,
        carry=carry_out,
    )


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
    _sync(device)
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
