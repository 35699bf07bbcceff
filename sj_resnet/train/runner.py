"""``sj-resnet train``: set up (devices, process group, data, model, optimizer), run the epochs, checkpoint,
report. Also the shared set-up used by ``sj-resnet eval`` (:mod:`sj_resnet.train.evaluate`).

Reliability contract:

* a checkpoint (``last.pt``) is written atomically after every epoch, on rank 0 only;
* ``--resume`` restores model, optimizer, scheduler, grad scaler, every rank's RNG states (torch, CUDA,
  numpy, python) and the sampler position (epoch and batch), so the continued run is bit-identical to an
  uninterrupted one on the same hardware and settings (mid-epoch resume needs ``--workers 0`` for that);
* SIGINT/SIGTERM (Ctrl-C, or torchrun stopping its workers) finishes the current step on every rank, writes
  a checkpoint at that step and exits with status 130; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from . import distributed, rundir
from .config import TrainConfig
from .data import build_datasets, build_loaders
from .engine import evaluate, train_one_epoch
from .firing import FiringRateMonitor
from .modeling import build_model, check_backend, count_parameters, model_spec
from .report import Reporter, peak_memory_mib
from .schedule import build_optimizer, build_scheduler
from .threads import ThreadChoice, choose_threads
from .threads import apply as apply_threads

INTERRUPTED_EXIT = 130


class Interrupted(Exception):
    """Raised after a Ctrl-C checkpoint was written; carries its path."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(f"interrupted; checkpoint {path}")
        self.path = path


class StopRequest:
    """SIGINT/SIGTERM -> a flag the loop polls after each step; a second signal raises ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __call__(self) -> bool:
        return self.flag

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def ema_with_warmup(decay: float):
    """EMA update for ``AveragedModel``: ``ema <- d*ema + (1-d)*w`` with ``d = min(decay, (1+n)/(10+n))``.

    ``n`` counts the updates so far. The warmup makes the average follow the weights closely in the first
    hundreds of steps; a constant decay would keep the BN running statistics near their initial values
    (averaged over the buffers too) and silence the spiking layers of the averaged network in short runs.
    Floating-point tensors only (``num_batches_tracked`` keeps the first copy's count). The warmup term stays
    below 0.99 for the first 890 updates, so in runs shorter than that it, not ``decay``, sets the average's
    horizon (about the last ``n / 9`` steps).
    """

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not ema or not ema[0].is_floating_point():
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema, current, 1.0 - d)

    return update


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(cfg: TrainConfig, device: torch.device, info: distributed.DistInfo) -> ThreadChoice:
    """Apply the thread policy of :mod:`.threads` (``--threads``, one per core, or cores split between processes)."""
    choice = choose_threads(cfg.threads, device, info.local_world_size)
    apply_threads(choice)
    return choice


def default_output_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.dataset}-{cfg.model}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def _epoch_seed(cfg: TrainConfig, epoch: int, rank: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 997 + rank) % 2**63


class Trainer:
    """Holds the pieces of one run; :meth:`run` trains, :func:`train` is the entry point."""

    def __init__(self, cfg: TrainConfig, resume: dict[str, Any] | None = None, resume_path: Path | None = None
                 ) -> None:
        self.cfg = cfg
        self.info = distributed.env_info()
        self.device = distributed.resolve_device(cfg.device, self.info)
        distributed.init(self.info, self.device)
        self.threads = configure_threads(cfg, self.device, self.info)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device (GradScaler); on a CPU use --amp bf16 or none")
        if cfg.sync_bn and self.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm is GPU-only); drop it on a CPU")
        self.is_main = self.info.is_main

        # output directory: rank 0 decides, everybody agrees
        if cfg.output_dir is not None:
            out = Path(cfg.output_dir)
        elif resume_path is not None:
            out = resume_path.parent
        else:
            out = default_output_dir(cfg) if self.is_main else None
        self.out = Path(distributed.broadcast_object(str(out) if out is not None else None))
        if self.is_main:
            if resume is None and (self.out / ckpt_io.LAST).exists():
                raise FileExistsError(
                    f"{self.out} already holds a checkpoint ({ckpt_io.LAST}); pass --resume {self.out} to continue "
                    "that run, or choose another --output-dir"
                )
            rundir.check_writable_dir(self.out)  # the folder itself is created once the set-up has succeeded
        cfg.output_dir = str(self.out)
        check_backend(cfg.backend, self.device)

        seed_all(cfg.seed)
        self.data = build_datasets(cfg)
        self.train_loader, self.test_loader, self.sampler = build_loaders(
            self.data, cfg, self.info.rank, self.info.world_size, pin_memory=self.device.type == "cuda"
        )
        full = len(self.train_loader)
        self.steps_per_epoch = full if cfg.limit_train_batches is None else min(full, cfg.limit_train_batches)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.data.train)} samples) gives no batches")

        self.spec = model_spec(cfg, self.data.num_classes, self.data.in_channels)
        plain = build_model(self.spec).to(self.device)
        if self.info.enabled and cfg.sync_bn:
            plain = torch.nn.SyncBatchNorm.convert_sync_batchnorm(plain)
        self.plain = plain
        if self.info.rank > 0:
            seed_all(cfg.seed + self.info.rank)  # different augmentation per rank; DDP syncs the initial weights
        self.optimizer = build_optimizer(plain.parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ema = None
        if cfg.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(plain, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.start_step, self.best = 0, 0, (-1.0, 0)
        self.elapsed_before = 0.0
        self.partial: dict[str, Any] | None = None  # running totals of an interrupted epoch
        if resume is not None:
            self._restore(resume, resume_path)

        model: torch.nn.Module = plain
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(plain, device_ids=ids)
        if cfg.compile:
            model = torch.compile(model)
        self.model = model
        self.monitor = FiringRateMonitor(plain)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        # evaluation uses the EMA weights when --ema-decay is set (their own hooks)
        self.eval_plain = self.ema.module if self.ema is not None else plain
        self.eval_model = self.ema.module if self.ema is not None else model
        self.eval_monitor = FiringRateMonitor(self.eval_plain) if self.ema is not None else self.monitor
        self.reporter = Reporter(self.out, self.is_main, cfg.tensorboard,
                                 purge_step=self.start_epoch + 1 if resume is not None else None)

    # ------------------------------------------------------------------------------------------

    def _restore(self, ck: dict[str, Any], path: Path | None) -> None:
        where = str(path)
        ckpt_io.load_model_state(self.plain, ck["model"], where)
        if self.ema is not None:
            if ck.get("ema") is None:
                raise ckpt_io.CheckpointError(f"{where} has no EMA state but the run uses --ema-decay")
            self.ema.load_state_dict(ck["ema"])
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            self.scaler.load_state_dict(ck["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ckpt_io.CheckpointError(f"{where}: optimizer/scheduler state does not fit this run ({exc})") from exc
        states = ck["rng"]
        if len(states) != self.info.world_size:
            raise ckpt_io.CheckpointError(
                f"{where} was written by {len(states)} process(es) but this run has {self.info.world_size}; resume "
                "with the same number of processes (a bit-identical continuation needs the same sharding)"
            )
        ckpt_io.set_rng_state(states[self.info.rank])
        self.start_epoch = int(ck["epoch"])
        self.start_step = int(ck["step_in_epoch"])
        self.history = list(ck["history"])
        self.best = tuple(ck.get("best", (-1.0, 0)))
        self.elapsed_before = float(ck.get("elapsed_s", 0.0))
        self.partial = ck.get("partial_epoch") if self.start_step > 0 else None

    def _state(self, epoch: int, step: int, elapsed: float) -> dict[str, Any] | None:
        """The checkpoint dict on rank 0 (``None`` elsewhere); gathers every rank's RNG state."""
        rng = ckpt_io.rng_state()
        if self.info.enabled:
            gathered: list[Any] = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if not self.is_main:
            return None
        return {
            "format": ckpt_io.FORMAT,
            "config": self.cfg.to_dict(),
            "model_spec": self.spec,
            "model": self.plain.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "eval_model": self.eval_plain.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step,
            "rng": gathered,
            "history": self.history,
            "partial_epoch": self.partial if step > 0 else None,
            "best": self.best,
            "elapsed_s": elapsed,
            "world_size": self.info.world_size,
            "torch_version": str(torch.__version__),
        }

    def save(self, epoch: int, step: int, elapsed: float) -> Path | None:
        state = self._state(epoch, step, elapsed)
        path = None
        if state is not None:
            path = ckpt_io.save_atomic(state, self.out / ckpt_io.LAST)
        distributed.barrier()
        return path

    # ------------------------------------------------------------------------------------------

    def header(self) -> None:
        cfg, info = self.cfg, self.info
        n = count_parameters(self.plain)
        spec = ", ".join(f"{k}={v}" for k, v in self.spec["kwargs"].items() if k not in ("num_classes",))
        self.reporter.log(f"sj-resnet train  ->  {self.out}")
        self.reporter.log(f"  data:   {self.data.description}")
        self.reporter.log(f"  model:  {self.spec['name']} ({n / 1e6:.3f} M parameters; {spec})")
        self.reporter.log(
            f"  optim:  {cfg.opt} lr {cfg.lr:g} wd {cfg.wd:g} batch {cfg.batch_size} x {info.world_size} process(es), "
            f"{cfg.epochs} epochs x {self.steps_per_epoch} steps, warmup {cfg.warmup_epochs:g} epochs, cosine; "
            f"loss {cfg.loss}, amp {cfg.amp}" + (f", clip-grad {cfg.clip_grad:g}" if cfg.clip_grad else "")
        )
        self.reporter.log(
            f"  device: {self.device} ({torch.get_num_threads()} CPU threads: {self.threads.reason})"
            + (f", recipe {cfg.recipe}" if cfg.recipe else "")
            + (f"; resuming at epoch {self.start_epoch + 1} step {self.start_step}" if self.history or self.start_step
               else "")
        )
        if self.is_main:
            (self.out / "config.json").write_text(json.dumps(
                {"config": cfg.to_dict(), "model_spec": self.spec, "world_size": info.world_size}, indent=2) + "\n")

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.header()
        t_start = time.perf_counter()
        last_eval = None
        train_firing: dict[str, float] = {}
        with StopRequest() as stop:
            for epoch in range(self.start_epoch, cfg.epochs):
                start = self.start_step if epoch == self.start_epoch else 0
                self.sampler.set_epoch(epoch)
                self.sampler.set_start(start * cfg.batch_size)
                self.train_loader.generator.manual_seed(_epoch_seed(cfg, epoch, self.info.rank))
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                res = train_one_epoch(
                    self.model, self.plain, self.train_loader, self.optimizer, self.scheduler, self.scaler, cfg,
                    self.device, self.data.sequence, self.monitor, stop, self.steps_per_epoch, start,
                    desc=f"epoch {epoch + 1}/{cfg.epochs}", show_progress=self.is_main,
                    carry=self.partial if epoch == self.start_epoch else None, is_main=self.is_main,
                    after_step=(lambda: self.ema.update_parameters(self.plain)) if self.ema is not None else None,
                )
                elapsed = self.elapsed_before + time.perf_counter() - t_start
                if res.interrupted and start + res.steps < self.steps_per_epoch:
                    self.partial = res.carry
                    path = self.save(epoch, start + res.steps, elapsed)
                    self._interrupted(path, epoch, start + res.steps)
                train_firing = res.firing
                ev = evaluate(self.eval_model, self.eval_plain, self.test_loader, cfg, self.device, self.data.sequence,
                              self.eval_monitor, cfg.limit_eval_batches, desc="eval", show_progress=self.is_main)
                last_eval = ev
                mem, mem_kind = peak_memory_mib(self.device)
                row = {
                    "epoch": epoch + 1,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": res.loss, "train_acc": res.acc,
                    "test_loss": ev.loss, "test_acc1": ev.acc1, "test_acc5": ev.acc5,
                    "train_img_s": res.samples / res.seconds if res.seconds > 0 else math.nan,
                    "epoch_s": res.seconds + ev.seconds, "peak_mem_mib": mem,
                    "train_firing": res.firing_mean, "test_firing": ev.firing_mean,
                    "grad_norm": res.grad_norm,
                }
                self.history.append(row)
                if ev.acc1 > self.best[0]:
                    self.best = (ev.acc1, epoch + 1)
                    if self.is_main:
                        ckpt_io.save_atomic({
                            "format": ckpt_io.FORMAT, "config": cfg.to_dict(), "model_spec": self.spec,
                            "model": self.eval_plain.state_dict(), "epoch": epoch + 1, "metrics": row,
                        }, self.out / ckpt_io.BEST)
                elapsed = self.elapsed_before + time.perf_counter() - t_start
                path = self.save(epoch + 1, 0, elapsed)
                self.reporter.epoch(row, self.history, cfg.epochs, mem_kind, ev.firing)
                if distributed.any_rank(stop(), self.device) and epoch + 1 < cfg.epochs:
                    self._interrupted(path, epoch + 1, 0)
                done_here = epoch + 1 - self.start_epoch
                if cfg.stop_after_epochs is not None and done_here >= cfg.stop_after_epochs and epoch + 1 < cfg.epochs:
                    self.reporter.log(
                        f"stopping after {done_here} epoch(s) as asked (--stop-after-epochs); continue with "
                        f"`sj-resnet train --resume {self.out}`"
                    )
                    self.reporter.close()
                    return {"output_dir": str(self.out), "epochs_completed": len(self.history), "stopped": True}
        total = self.elapsed_before + time.perf_counter() - t_start
        summary = self._summary(total, last_eval, train_firing)
        if self.info.enabled:
            summary["replicas_in_sync"] = replicas_in_sync(self.plain)
            self.reporter.log(f"replicas in sync across {self.info.world_size} processes: "
                              f"{'yes' if summary['replicas_in_sync'] else 'NO'}")
        self.reporter.finish(summary, self.history, plot=cfg.plot)
        if self.is_main and self.history:
            last = self.history[-1]
            self.reporter.log(
                f"done in {total:.1f} s: test acc@1 {100 * last['test_acc1']:.2f}% (best {100 * self.best[0]:.2f}% at "
                f"epoch {self.best[1]}), acc@5 {100 * last['test_acc5']:.2f}%  ->  {self.out}"
            )
        return summary

    def _interrupted(self, path: Path | None, epoch: int, step: int) -> None:
        self.reporter.log(
            f"interrupted: checkpoint at epoch {epoch} step {step} saved to {path}; continue with "
            f"`sj-resnet train --resume {self.out}`"
        )
        self.reporter.close()
        raise Interrupted(path)

    def _summary(self, total: float, ev, train_firing: dict[str, float]) -> dict[str, Any]:
        h = self.history
        mem, kind = peak_memory_mib(self.device)
        speeds = [r["train_img_s"] for r in h if r["train_img_s"] == r["train_img_s"]]
        return {
            "output_dir": str(self.out),
            "dataset": self.data.description,
            "model_spec": self.spec,
            "parameters": count_parameters(self.plain),
            "world_size": self.info.world_size,
            "device": str(self.device),
            "epochs_completed": len(h),
            "final": h[-1] if h else None,
            "best_test_acc1": self.best[0],
            "best_epoch": self.best[1],
            "wall_time_s": total,
            "mean_train_img_s": sum(speeds) / len(speeds) if speeds else None,
            "peak_memory_mib": mem,
            "peak_memory_kind": kind,
            "firing_rates_test": ev.firing if ev is not None else {},
            "firing_rates_train": train_firing,
            "config": self.cfg.to_dict(),
            "files": {"checkpoint": ckpt_io.LAST, "best": ckpt_io.BEST, "metrics": "metrics.csv",
                      "tensorboard": "tb/", "curves": "curves.png"},
        }


def replicas_in_sync(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (a DDP sanity check at the end of a run)."""
    tensors = [t.detach().reshape(-1).double() for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point()]
    flat = torch.cat(tensors) if tensors else torch.zeros(1, dtype=torch.float64)
    local = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64,
                                                           device=flat.device).remainder(9973)).sum()])
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    gathered = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def train(cfg: TrainConfig, resume: dict[str, Any] | None = None, resume_path: Path | None = None) -> dict[str, Any]:
    """Run training for ``cfg`` (resuming from the loaded checkpoint ``resume`` if given); returns the summary."""
    try:
        trainer = Trainer(cfg, resume, resume_path)
        return trainer.run()
    finally:
        distributed.cleanup()
