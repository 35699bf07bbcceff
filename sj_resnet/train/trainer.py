"""``sj-resnet train``: the :class:`Trainer` sets a run up in named steps, runs its epochs, checkpoints, reports.

Reliability contract:

* a checkpoint (``last.pt``) is written atomically after every epoch, on rank 0 only;
* ``--resume`` restores model, optimizer, scheduler, grad scaler, every rank's RNG states (torch, CUDA,
  numpy, python) and the sampler position (epoch and batch), so the continued run is bit-identical to an
  uninterrupted one on the same hardware and settings (mid-epoch resume needs ``--workers 0`` for that);
* SIGINT/SIGTERM (Ctrl-C, or torchrun stopping its workers) finishes the current step on every rank, writes
  a checkpoint at that step and raises :class:`Interrupted` (the CLI exits with status 130); a second Ctrl-C
  aborts at once;
* every run has an id (``config.json``, checkpoints, ``summary.json``); a new run starts only in a folder that
  holds no artifact of a run, a resume writes only into its own run's folder (:mod:`.rundir`), and stale
  temporary files of a killed write are removed on start;
* a non-finite loss or gradient norm is flagged on the device at every step (no host sync) and read once per
  epoch: the run ends with :class:`Diverged` before anything of that epoch is saved.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from . import distributed, rundir
from .config import TrainConfig
from .engine import evaluate, forward_batch, progress, sync
from .firing import FiringRateMonitor
from .malloc import malloc_note
from .modeling import build_model, check_backend, count_parameters, model_spec, resolve_memory_format
from .recipes import RECIPE_NOTES
from .report import Reporter, peak_memory_mib
from .runtime import build_data, seed_all, start_runtime
from .schedule import build_ema, build_optimizer, build_scheduler


class Interrupted(Exception):
    """Raised after a Ctrl-C checkpoint was written; carries its path."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(f"interrupted; checkpoint {path}")
        self.path = path


class Diverged(RuntimeError):
    """The loss (or the gradient norm, or the test loss) became non-finite; nothing of that epoch was saved."""


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


@dataclass
class EpochResult:
    """What :meth:`Trainer.train_epoch` measured (global over ranks)."""

    loss: float = math.nan
    acc: float = math.nan
    samples: int = 0
    steps: int = 0  # optimizer steps taken in this call
    seconds: float = 0.0
    interrupted: bool = False
    firing_mean: float = math.nan
    firing: dict[str, float] = field(default_factory=dict)
    grad_norm: float = math.nan  # mean global gradient norm (before clipping) over the epoch's steps
    carry: dict = field(default_factory=dict)  # global running totals, to continue a partial epoch after resume
    nonfinite_steps: int = 0  # steps (summed over ranks) whose loss or gradient norm was NaN/inf
    first_nonfinite_step: int = -1  # index in the epoch of the first such step on this rank (-1: none)


def default_output_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.dataset}-{cfg.model}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def evaluates_after(epoch: int, epochs: int, every: int) -> bool:
    """Whether the run evaluates after (1-based) ``epoch`` of ``epochs``: every ``every``-th one and the last."""
    return epoch % every == 0 or epoch == epochs


def _epoch_seed(cfg: TrainConfig, epoch: int, rank: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 997 + rank) % 2**63


class Trainer:
    """One training run. ``__init__`` performs the set-up steps in order (their order fixes the RNG draws, so a
    run is reproducible); :meth:`run` trains; :meth:`train_epoch` is one epoch over the trainer's own state.

    ``stop`` is polled after every step (default: a :class:`StopRequest` bound to SIGINT/SIGTERM during
    :meth:`run`); any callable returning ``True`` ends the run with a checkpoint, as Ctrl-C does.
    """

    def __init__(self, cfg: TrainConfig, resume: dict[str, Any] | None = None, resume_path: Path | None = None,
                 stop: Callable[[], bool] | None = None) -> None:
        self.cfg = cfg
        self.stop_override = stop
        self.rt = start_runtime(cfg)
        self.info, self.device, self.is_main = self.rt.info, self.rt.device, self.rt.is_main
        self._check_device_options()
        self.out = self._prepare_output_dir(resume, resume_path)
        seed_all(cfg.seed)
        self._build_data()
        self._build_model()
        self._build_optimisation()
        self._start_state(resume, resume_path)
        self._wrap_model()
        self._create_output_dir()
        self.reporter = Reporter(self.out, self.is_main, cfg.tensorboard,
                                 purge_step=self.start_epoch + 1 if resume is not None else None)

    # ------------------------------------------------------------------------------------------
    # set-up steps

    def _check_device_options(self) -> None:
        check_backend(self.cfg.backend, self.device)
        if self.cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device (GradScaler); on a CPU use --amp bf16 or none")
        if self.cfg.sync_bn and self.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm is GPU-only); drop it on a CPU")

    def _prepare_output_dir(self, resume: dict[str, Any] | None, resume_path: Path | None) -> Path:
        """Rank 0 decides the run directory (refusing one that holds another run), every rank agrees."""
        cfg = self.cfg
        if cfg.output_dir is not None:
            out = Path(cfg.output_dir)
        elif resume_path is not None:
            out = resume_path.parent
        else:
            out = default_output_dir(cfg) if self.is_main else None
        # a resumed run keeps its id (a checkpoint from before run ids gets one now)
        run_id = (resume or {}).get(rundir.RUN_ID_KEY) or (rundir.new_run_id() if self.is_main else None)
        out_str, self.run_id = distributed.broadcast_object((str(out) if out is not None else None, run_id))
        out = Path(out_str)
        if self.is_main:
            if resume is None:
                rundir.check_fresh_folder(out)  # any artifact of a run (not only last.pt) marks the folder
            rundir.check_writable_dir(out)  # the folder itself is created once the set-up has succeeded
        cfg.output_dir = str(out)
        return out

    def _create_output_dir(self) -> None:
        """Create the run folder once every set-up step has succeeded (a failed set-up leaves nothing behind)."""
        self.removed_temp_files: list[str] = []
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.removed_temp_files = rundir.remove_stale_temp_files(self.out)  # left by a killed writer
        distributed.barrier()

    def _build_data(self) -> None:
        self.data = build_data(self.cfg, self.rt)
        full = len(self.data.train_loader)
        limit = self.cfg.limit_train_batches
        self.steps_per_epoch = full if limit is None else min(full, limit)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.data.bundle.train)} samples) gives no batches")

    def _build_model(self) -> None:
        """The network of ``cfg`` (``self.plain``, unwrapped), SyncBN-converted under torchrun if asked."""
        bundle = self.data.bundle
        self.spec = model_spec(self.cfg, bundle.num_classes, bundle.in_channels)
        self.memory_format = resolve_memory_format(self.cfg.memory_format, self.device)
        plain = build_model(self.spec, memory_format=self.memory_format).to(self.device)
        if self.info.enabled and self.cfg.sync_bn:
            plain = torch.nn.SyncBatchNorm.convert_sync_batchnorm(plain)
        self.plain = plain

    def _build_optimisation(self) -> None:
        cfg = self.cfg
        if self.info.rank > 0:
            seed_all(cfg.seed + self.info.rank)  # different augmentation per rank; DDP syncs the initial weights
        self.optimizer = build_optimizer(self.plain.parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ema = build_ema(self.plain, cfg.ema_decay)

    def _start_state(self, resume: dict[str, Any] | None, resume_path: Path | None) -> None:
        """Epoch 0 of a fresh run, or everything a checkpoint holds for a resumed one."""
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.start_step, self.best = 0, 0, (-1.0, 0)
        self.elapsed_before = 0.0
        self.partial: dict[str, Any] | None = None  # running totals of an interrupted epoch
        if resume is not None:
            self._restore(resume, resume_path)

    def _wrap_model(self) -> None:
        """DDP and ``torch.compile`` wraps, firing-rate hooks; evaluation runs on the EMA weights when kept."""
        model: torch.nn.Module = self.plain
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(self.plain, device_ids=ids)
        if self.cfg.compile:
            model = torch.compile(model)
        self.model = model
        self.monitor = FiringRateMonitor(self.plain)
        self.eval_plain = self.ema.module if self.ema is not None else self.plain
        self.eval_model = self.ema.module if self.ema is not None else model
        self.eval_monitor = FiringRateMonitor(self.eval_plain) if self.ema is not None else self.monitor

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

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def checkpoint_state(self, epoch: int, step: int, elapsed: float, metrics: dict[str, Any] | None = None,
                         training_state: bool = True) -> dict[str, Any] | None:
        """The one checkpoint schema (see :mod:`.checkpoint`), on rank 0 (``None`` elsewhere).

        ``training_state=False`` (``best.pt``) leaves out what only a resume needs: optimizer, scheduler, scaler,
        EMA internals, RNG states, history. With it, every rank must call (the RNG states are gathered).
        """
        gathered: list[Any] | None = None
        if training_state:
            rng = ckpt_io.rng_state()
            if self.info.enabled:
                gathered = [None] * self.info.world_size
                torch.distributed.all_gather_object(gathered, rng)
            else:
                gathered = [rng]
        if not self.is_main:
            return None
        state: dict[str, Any] = {
            "format": ckpt_io.FORMAT,
            rundir.RUN_ID_KEY: self.run_id,
            "config": self.cfg.to_dict(),
            "model_spec": self.spec,
            "model": self.plain.state_dict(),
            "eval_model": self.eval_plain.state_dict() if self.ema is not None else None,
            "epoch": epoch,
            "step_in_epoch": step,
            "metrics": metrics,
            "world_size": self.info.world_size,
            "torch_version": str(torch.__version__),
        }
        if training_state:
            state.update({
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": gathered,
                "history": self.history,
                "partial_epoch": self.partial if step > 0 else None,
                "best": self.best,
                "elapsed_s": elapsed,
            })
        return state

    def save(self, name: str, epoch: int, step: int, elapsed: float, metrics: dict[str, Any] | None = None,
             training_state: bool = True) -> Path | None:
        """Write :meth:`checkpoint_state` atomically to ``out/name`` on rank 0; returns the path there."""
        state = self.checkpoint_state(epoch, step, elapsed, metrics, training_state)
        path = ckpt_io.save_atomic(state, self.out / name) if state is not None else None
        if training_state:
            distributed.barrier()
        return path

    # ------------------------------------------------------------------------------------------
    # the run

    def header(self) -> None:
        cfg, info = self.cfg, self.info
        n = count_parameters(self.plain)
        spec = ", ".join(f"{k}={v}" for k, v in self.spec["kwargs"].items() if k not in ("num_classes",))
        self.reporter.log(f"sj-resnet train  ->  {self.out}")
        self.reporter.log(f"  data:   {self.data.bundle.description}")
        self.reporter.log(f"  model:  {self.spec['name']} ({n / 1e6:.3f} M parameters; {spec})")
        self.reporter.log(
            f"  optim:  {cfg.opt} lr {cfg.lr:g} wd {cfg.wd:g} batch {cfg.batch_size} x {info.world_size} process(es), "
            f"{cfg.epochs} epochs x {self.steps_per_epoch} steps, warmup {cfg.warmup_epochs:g} epochs, cosine; "
            f"loss {cfg.loss}, amp {cfg.amp}" + (f", clip-grad {cfg.clip_grad:g}" if cfg.clip_grad else "")
        )
        if cfg.recipe:
            self.reporter.log(f"  recipe: {cfg.recipe}: {RECIPE_NOTES[cfg.recipe]}")
        self.reporter.log(
            f"  device: {self.device} ({torch.get_num_threads()} CPU threads: {self.rt.threads.reason}; "
            f"{'channels_last' if self.memory_format == torch.channels_last else 'contiguous'} layout; "
            f"{malloc_note()})"
            + (f", recipe {cfg.recipe}" if cfg.recipe else "")
            + (f"; resuming at epoch {self.start_epoch + 1} step {self.start_step}" if self.history or self.start_step
               else "")
        )
        if self.removed_temp_files:
            removed = ", ".join(self.removed_temp_files)
            self.reporter.log(f"  removed stale temporary files of a killed write: {removed}")
        if self.is_main:
            (self.out / "config.json").write_text(json.dumps(
                {rundir.RUN_ID_KEY: self.run_id, "config": cfg.to_dict(), "model_spec": self.spec,
                 "world_size": info.world_size}, indent=2) + "\n")

    def run(self) -> dict[str, Any]:
        """Train from the start (or resume) epoch to ``cfg.epochs``; returns the summary (also ``summary.json``)."""
        cfg = self.cfg
        self.header()
        t_start = time.perf_counter()
        last_eval = None
        train_firing: dict[str, float] = {}
        with StopRequest() as signals:
            stop = self.stop_override or signals
            for epoch in range(self.start_epoch, cfg.epochs):
                start = self.start_step if epoch == self.start_epoch else 0
                res = self.train_epoch(epoch, start, stop)
                if res.nonfinite_steps:  # before anything of this epoch is saved
                    step = f" at step {res.first_nonfinite_step}" if res.first_nonfinite_step >= 0 else ""
                    self._diverged(f"the training loss or gradient norm became non-finite (NaN/inf) in epoch "
                                   f"{epoch + 1}{step}")
                elapsed = self.elapsed_before + time.perf_counter() - t_start
                if res.interrupted and start + res.steps < self.steps_per_epoch:
                    self.partial = res.carry
                    path = self.save(ckpt_io.LAST, epoch, start + res.steps, elapsed)
                    self._interrupted(path, epoch, start + res.steps)
                train_firing = res.firing
                ev = None
                if evaluates_after(epoch + 1, cfg.epochs, cfg.eval_every):
                    ev = evaluate(self.eval_model, self.eval_plain, self.data.test_loader, cfg, self.device,
                                  self.data.bundle.sequence, self.eval_monitor, cfg.limit_eval_batches, desc="eval",
                                  show_progress=self.is_main)
                    last_eval = ev
                    if not math.isfinite(ev.loss):  # e.g. the last step of the epoch made the weights non-finite
                        self._diverged(f"the test loss became non-finite (NaN/inf) after epoch {epoch + 1}")
                mem, mem_kind = peak_memory_mib(self.device)
                row = {
                    "epoch": epoch + 1,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": res.loss, "train_acc": res.acc,
                    # not evaluated this epoch (--eval-every): None, an empty cell in metrics.csv
                    "test_loss": ev.loss if ev else None, "test_acc1": ev.acc1 if ev else None,
                    "test_acc5": ev.acc5 if ev else None,
                    "train_img_s": res.samples / res.seconds if res.seconds > 0 else math.nan,
                    "epoch_s": res.seconds + (ev.seconds if ev else 0.0), "peak_mem_mib": mem,
                    "train_firing": res.firing_mean, "test_firing": ev.firing_mean if ev else None,
                    "grad_norm": res.grad_norm,
                }
                self.history.append(row)
                elapsed = self.elapsed_before + time.perf_counter() - t_start
                if ev is not None and ev.acc1 > self.best[0]:
                    self.best = (ev.acc1, epoch + 1)
                    self.save(ckpt_io.BEST, epoch + 1, 0, elapsed, metrics=row, training_state=False)
                path = self.save(ckpt_io.LAST, epoch + 1, 0, elapsed, metrics=row)
                self.reporter.epoch(row, self.history, cfg.epochs, mem_kind, ev.firing if ev else {})
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
            summary["replicas_in_sync"] = distributed.replicas_in_sync(self.plain)
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

    def train_epoch(self, epoch: int, start_step: int, stop: Callable[[], bool]) -> EpochResult:
        """Train epoch ``epoch`` from batch ``start_step`` until its last step or until ``stop()`` on any rank.

        Per step: fresh membrane state, forward, loss, backward (scaled for fp16), gradient norm (clipped to
        ``--clip-grad``), optimizer and per-iteration scheduler step, EMA update. The step counter of the result
        counts only this call's steps; when resuming mid-epoch, ``self.partial`` (the interrupted part's running
        totals, held by rank 0) makes the statistics those of the whole epoch.
        """
        cfg, device = self.cfg, self.device
        carry = self.partial if epoch == self.start_epoch else None
        self.data.sampler.set_epoch(epoch)
        self.data.sampler.set_start(start_step * cfg.batch_size)
        self.data.train_loader.generator.manual_seed(_epoch_seed(cfg, epoch, self.info.rank))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        self.model.train()
        monitor = self.monitor
        monitor.reset()
        monitor.enabled = True
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        # non-finite detection on every step without a host sync: device tensors, read once at the epoch's end
        step_index = torch.full((), start_step, dtype=torch.long, device=device)
        nonfinite = torch.zeros((), dtype=torch.float64, device=device)
        first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)
        earlier_seconds, earlier_steps = 0.0, 0
        if carry and self.is_main:
            loss_sum += carry["loss_sum"]
            correct += carry["correct"]
            seen = int(carry["seen"])
            monitor.preload(carry["firing_sums"], carry["firing_counts"])
        if carry:
            earlier_seconds = float(carry["seconds"])
            # the interrupted part's gradient norms, so the epoch's mean is that of all its steps
            grad_norm_sum += float(carry.get("grad_norm_sum", 0.0))
            earlier_steps = int(carry.get("grad_norm_steps", 0))
        steps = 0
        interrupted = False
        sync(device)
        t0 = time.perf_counter()
        remaining = max(0, self.steps_per_epoch - start_step)
        loader = self.data.train_loader
        bar = progress(loader, remaining, f"epoch {epoch + 1}/{cfg.epochs}", self.is_main)
        it = iter(bar)
        while steps < remaining:
            try:
                x, y = next(it)
            except StopIteration:
                break
            except Exception:
                if stop():  # a worker killed by the same Ctrl-C
                    interrupted = True
                    break
                raise
            y = y.to(device, non_blocking=True)
            loss, logits = forward_batch(self.model, self.plain, x, y, cfg, device, self.data.bundle.sequence)
            norm = self._step(loss)
            bad = ~torch.isfinite(loss.detach())
            if not self.scaler.is_enabled():  # with fp16 an inf gradient is the scaler's business (step skipped)
                bad = bad | ~torch.isfinite(norm)
            nonfinite += bad.double()
            first_nonfinite = torch.where(bad & (first_nonfinite < 0), step_index, first_nonfinite)
            step_index += 1
            grad_norm_sum += torch.nan_to_num(norm.double(), nan=0.0, posinf=0.0)
            n = y.shape[0]
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum().double()
            seen += n
            steps += 1
            if bar is not loader and steps % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}")
            if distributed.any_rank(stop(), device):
                interrupted = True
                break
        if bar is not loader:
            bar.close()
        sync(device)
        seconds = time.perf_counter() - t0 + earlier_seconds
        totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=device),
                              nonfinite])
        distributed.all_reduce_sum(totals)
        total_seen = int(totals[2].item())
        fsums, fcounts = monitor.totals()
        firing, firing_mean = monitor.summary()
        grad_steps = earlier_steps + steps
        carry_out = {"loss_sum": float(totals[0]), "correct": float(totals[1]), "seen": total_seen,
                     "seconds": seconds, "firing_sums": fsums, "firing_counts": fcounts,
                     "grad_norm_sum": float(grad_norm_sum), "grad_norm_steps": grad_steps}
        return EpochResult(
            loss=float(totals[0] / max(1, total_seen)) if total_seen else math.nan,
            acc=float(totals[1] / max(1, total_seen)) if total_seen else math.nan,
            samples=total_seen,
            steps=steps,
            seconds=seconds,
            interrupted=interrupted,
            firing_mean=firing_mean,
            firing=firing,
            grad_norm=float(grad_norm_sum) / grad_steps if grad_steps else math.nan,
            carry=carry_out,
            nonfinite_steps=int(totals[3].item()),
            first_nonfinite_step=int(first_nonfinite.item()),
        )

    def _step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, optimizer, schedule and EMA step; returns the gradient norm before clipping (a device tensor,
        no host sync; NaN/inf when the gradients are)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16; the norm below is the true (unscaled) one
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.plain)
        return norm.detach()

    def _diverged(self, what: str) -> None:
        """End a run whose numbers went non-finite: nothing of the epoch is saved (best.pt, last.pt, metrics)."""
        kept = (f"{ckpt_io.LAST} and {ckpt_io.BEST} keep epoch {len(self.history)} and {self.best[1]}"
                if self.history else "no checkpoint was written")
        self.reporter.close()
        raise Diverged(
            f"training diverged: {what}; {kept}. Lower --lr, add --clip-grad or --warmup-epochs, or use --amp none, "
            "in a new run"
        )

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
            rundir.RUN_ID_KEY: self.run_id,
            "dataset": self.data.bundle.description,
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
            "memory": self.cfg.memory,
            "saved_state": self.cfg.saved_state,
            "peak_memory_mib": mem,
            "peak_memory_kind": kind,
            "firing_rates_test": ev.firing if ev is not None else {},
            "firing_rates_train": train_firing,
            "config": self.cfg.to_dict(),
            "files": {"checkpoint": ckpt_io.LAST, "best": ckpt_io.BEST, "metrics": "metrics.csv",
                      "tensorboard": "tb/", "curves": "curves.png"},
        }


def train(cfg: TrainConfig, resume: dict[str, Any] | None = None, resume_path: Path | None = None,
          stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run training for ``cfg`` (resuming from the loaded checkpoint ``resume`` if given); returns the summary.

    ``stop``: see :class:`Trainer`.
    """
    try:
        return Trainer(cfg, resume, resume_path, stop).run()
    finally:
        distributed.cleanup()
