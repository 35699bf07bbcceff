"""The ``sj-resnet`` command (also ``python -m sj_resnet`` and ``torchrun -m sj_resnet``).

``sj-resnet train`` with no options trains a narrow spiking ResNet-18 on scikit-learn's bundled digits
(no download, a few minutes on a laptop CPU); ``sj-resnet eval --checkpoint RUN_DIR`` scores a checkpoint.
Heavy imports (torch, torchvision, SpikingJelly) happen after argument parsing, so ``--help`` is instant; the
``[train]`` extra's packages are checked when a command runs, and a missing one is named with the install
command. See ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence
from typing import Any

from .models.choices import MEMORY_HELP, NORMS, READOUTS
from .neuron.choices import BACKENDS, DECAY_RANGE, SAVED_STATES, SURROGATES
from .train.config import AMP_MODES, DATASETS, EVAL_FIELDS, FIELDS, LOSSES, MEMORY_FORMATS, OPTIMIZERS, resolve
from .train.recipes import DATASET_DEFAULTS, RECIPES

INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C/SIGTERM (128 + SIGINT, as shells report it), with or without a checkpoint written."""

# Options whose default is not a value of the resolved config (or is spelled out in the help text itself).
_NO_DEFAULT_NOTE = frozenset({"dataset", "recipe", "resume", "output_dir", "data_dir", "download", "saved_state"})


def _fmt_defaults(d: dict[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in d.items())


def _fmt_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_notes() -> dict[str, str]:
    """``{field: '(default: ...)'}``: the value ``sj-resnet train`` really uses when the option is not given,
    per dataset, read from :func:`sj_resnet.train.config.resolve` (so the help cannot drift from the code)."""
    per_dataset = {ds: resolve({"dataset": ds}).to_dict() for ds in DATASETS}
    notes = {}
    for name in FIELDS - _NO_DEFAULT_NOTE:
        groups: dict[str, list[str]] = {}
        for ds in DATASETS:
            groups.setdefault(_fmt_value(per_dataset[ds][name]), []).append(ds)
        if len(groups) == 1:
            if "unset" not in groups:  # an option unset everywhere explains 'unset' in its own help
                notes[name] = f"(default: {next(iter(groups))})"
        else:
            notes[name] = "(default: " + "; ".join(f"{v} for {', '.join(dss)}" for v, dss in groups.items()) + ")"
    return notes


def _add_default_notes(p: argparse.ArgumentParser) -> None:
    notes = default_notes()
    for action in p._actions:
        note = notes.get(action.dest)
        if note is not None:
            action.help = f"{action.help} {note}" if action.help else note


class _Group:
    """An argument group that adds only the options whose config field is in ``only`` (``None``: all)."""

    def __init__(self, parser: argparse.ArgumentParser, title: str, only: Collection[str] | None) -> None:
        self.group, self.only = parser.add_argument_group(title), only

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if self.only is None or dest in self.only:
            self.group.add_argument(*flags, **kwargs)


def _add_train_options(p: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """The options of ``sj-resnet train`` (one per :class:`TrainConfig` field); ``only``: a subset of fields."""
    B = argparse.BooleanOptionalAction
    g = _Group(p, "data", only)
    g.add_argument("--dataset", choices=DATASETS, help="training data (digits: bundled with scikit-learn)")
    g.add_argument("--data-dir", help="dataset root (cifar: default ./data; imagenet: ROOT with train/ and val/; "
                                      "event data: SpikingJelly's dataset root)")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR-10/100 into --data-dir")
    g.add_argument("--image-size", type=int,
                   help="digits: upsampled side; imagenet: crop; event data: frame side")
    g.add_argument("--augment", action=B, default=None, help="training augmentation")
    g.add_argument("--max-shift", type=int,
                   help="digits: largest random translation in pixels (unset: max(1, image-size // 8))")
    g.add_argument("--max-rotate", type=float, help="digits: largest random rotation in degrees")
    g.add_argument("--max-scale", type=float, help="digits: largest random zoom, as a fraction (0.1 = +-10%%)")
    g.add_argument("--fake-size", type=int, help="FakeData training samples")
    g.add_argument("--workers", type=int, help="DataLoader worker processes")

    g = _Group(p, "model and neuron", only)
    g.add_argument("--model", help="builder in sj_resnet.models (resnet18_cifar, resnet19, resnet18, ...)")
    g.add_argument("--width", type=int, help="channels of the first stage (unset: the builder's)")
    g.add_argument("--T", "-T", type=int, dest="T", help="time steps (event data: frames per sample)")
    g.add_argument("--norm", choices=NORMS, help="BN scale init 1, or alpha*V_th (tdBN)")
    g.add_argument("--identity-bn", action=B, default=None, help="BN on identity shortcuts")
    g.add_argument("--zero-init-residual", action=B, default=None, help="zero each block's last BN scale")
    g.add_argument("--readout", choices=READOUTS, help="reduce the per-step outputs over time")
    g.add_argument("--surrogate", help=f"surrogate gradient NAME[:alpha]; NAME: {', '.join(SURROGATES)}")
    g.add_argument("--decay", type=float, help=f"membrane decay in {DECAY_RANGE}; 1 = IF neuron")
    g.add_argument("--v-threshold", type=float, help="firing threshold (> 0)")
    g.add_argument("--detach-reset", action=B, default=None, help="no gradient through the reset")
    g.add_argument("--backend", choices=BACKENDS, help="neuron kernel backend")
    g.add_argument("--memory", help=f"what training keeps for backward: {MEMORY_HELP}; compact: spikes bit-packed, "
                                    "fp16 neuron state, no recompute; checkpoint: recompute blocks; see docs/models.md")
    g.add_argument("--saved-state", choices=SAVED_STATES,
                   help="neuron state saved for backward: fp32, or fp16 (h - V_th, half the bytes; docs/neuron.md); "
                        "unset: the --memory mode's, fp16 for compact, else fp32")

    g = _Group(p, "optimisation", only)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", "-b", type=int, help="per process")
    g.add_argument("--eval-batch-size", type=int, help="unset: 2 x --batch-size")
    g.add_argument("--opt", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, help="peak learning rate (after warmup)")
    g.add_argument("--momentum", type=float, help="SGD momentum in [0, 1)")
    g.add_argument("--wd", type=float, help="weight decay")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup, then cosine decay to --min-lr")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule (<= --lr)")
    g.add_argument("--label-smoothing", type=float, help="in [0, 1)")
    g.add_argument("--loss", choices=LOSSES, help="cross entropy, or TET (Deng et al. 2022)")
    g.add_argument("--tet-lambda", type=float, help="TET's MSE weight lambda")
    g.add_argument("--tet-means", type=float, help="TET's MSE target phi")
    g.add_argument("--clip-grad", type=float, help="clip the global gradient norm to this value (unset: no clipping)")
    g.add_argument("--ema-decay", type=float,
                   help="evaluate and save an exponential moving average of the weights (decay per step, e.g. 0.99; "
                        "unset: off)")
    g.add_argument("--amp", choices=AMP_MODES, help="mixed precision (fp16 needs CUDA)")
    g.add_argument("--compile", action=B, default=None, help="torch.compile the model")
    g.add_argument("--memory-format", choices=MEMORY_FORMATS,
                   help="layout of weights and activations; auto: channels_last on a CPU (0.77x the step time of the "
                        "digits default), contiguous on CUDA")
    g.add_argument("--sync-bn", action=B, default=None, help="SyncBatchNorm across processes (torchrun)")

    g = _Group(p, "run", only)
    g.add_argument("--recipe", choices=sorted(RECIPES), help="literature preset (options given explicitly win)")
    g.add_argument("--seed", type=int, help="in [0, 2**32)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads (unset: torch's; split between CPU ranks)")
    g.add_argument("--output-dir", "-o", help="run directory (unset: runs/<dataset>-<model>-<time>)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from a checkpoint file or run directory (no PATH: --output-dir)")
    g.add_argument("--limit-train-batches", type=int, help="stop each epoch after N batches (smoke tests)")
    g.add_argument("--limit-eval-batches", type=int, help="evaluate on N batches only (smoke tests)")
    g.add_argument("--eval-every", type=int,
                   help="evaluate after every K-th epoch and after the last (1: every epoch); best.pt is the best "
                        "evaluated epoch")
    g.add_argument("--stop-after-epochs", type=int,
                   help="end this invocation after N epochs (checkpointed); continue later with --resume")
    g.add_argument("--tensorboard", action=B, default=None, help="write TensorBoard events")
    g.add_argument("--plot", action=B, default=None, help="write curves.png at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sj-resnet",
        description="Train and evaluate spiking ResNets (sj_resnet). `sj-resnet train` alone trains on bundled digits.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,eval}")
    epilog = (
        "defaults for --dataset digits: " + _fmt_defaults(DATASET_DEFAULTS["digits"])
        + "\nrecipes: " + ", ".join(sorted(RECIPES))
        + "\nmulti-GPU: torchrun --nproc_per_node=K -m sj_resnet train ...   (docs/training.md)"
    )
    tp = sub.add_parser("train", help="train a model", epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_options(tp)
    _add_default_notes(tp)
    ep = sub.add_parser("eval", help="evaluate a checkpoint: acc@1, acc@5, per-layer firing rates",
                        description="Evaluate a checkpoint. Options not given keep the checkpoint's values, except "
                                    "--device (auto) and --data-dir/--download (the command line's only).")
    ep.add_argument("--checkpoint", "-c", required=True, help="checkpoint file (last.pt/best.pt) or run directory")
    ep.add_argument("--output", help="also write the result as JSON to this file")
    ep.add_argument("--batch-size", "-b", type=int, dest="eval_batch_size", help="evaluation batch size")
    # the training options that may differ from the checkpoint's config
    _add_train_options(ep, only=EVAL_FIELDS - {"batch_size", "eval_batch_size"})
    return parser


TRAIN_PACKAGES = {"torchvision": "torchvision", "tqdm": "tqdm", "tensorboard": "tensorboard",
                  "matplotlib": "matplotlib", "sklearn": "scikit-learn"}
"""Import name -> distribution of what the ``[train]`` extra adds (pyproject.toml); the commands need them all."""


def _missing_train_packages() -> list[str]:
    import importlib.util

    return [dist for mod, dist in TRAIN_PACKAGES.items() if importlib.util.find_spec(mod) is None]


def _explicit(ns: argparse.Namespace, skip: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if v is not None and k not in skip}


def _error(msg: str) -> int:
    print(f"sj-resnet: error: {msg}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sj-resnet`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .train.malloc import keep_freed_memory
    from .train.threads import prefer_wait_policy

    prefer_wait_policy()  # before torch loads: the OpenMP wait for this machine's load (docs/training.md, "Threads")
    keep_freed_memory()  # no page faults for every step's activations (train/malloc.py)

    missing = _missing_train_packages()
    if missing:
        return _error(f"`sj-resnet {args.command}` needs {', '.join(missing)}: pip install 'sj-resnet[train]'")

    from .train.checkpoint import CheckpointError
    from .train.config import ConfigError
    from .train.data import DataError

    try:
        if args.command == "train":
            return _train(args)
        from .train.eval_command import run_eval

        explicit = _explicit(args, ("command", "checkpoint", "output"))
        run_eval(args.checkpoint, explicit, args.output)
        return 0
    except (ConfigError, DataError, CheckpointError, FileExistsError) as exc:
        return _error(str(exc))
    except OSError as exc:  # a write that failed (disk full, permissions) after the checks passed
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}; free space or fix the permissions, then --resume the run")
    except KeyboardInterrupt:
        print("sj-resnet: aborted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .train import checkpoint as ckpt_io
    from .train import rundir
    from .train.config import ConfigError, resolve
    from .train.trainer import Diverged, Interrupted, train

    explicit = _explicit(args, ("command", "resume"))
    resume, resume_path = None, None
    if args.resume is not None:
        target = args.resume or explicit.get("output_dir")
        if not target:
            raise ConfigError("--resume without a PATH needs --output-dir (the run directory to continue)")
        resume_path = ckpt_io.resolve_path(target)
        resume = ckpt_io.read(resume_path)
        # a resume writes only into the folder of the run it continues
        rundir.check_resume_folder(resume_path, resume.get(rundir.RUN_ID_KEY), explicit.get("output_dir"))
    try:
        cfg = resolve(explicit, resume["config"] if resume is not None else None)
    except TypeError as exc:  # a checkpoint config with fields this version does not know
        raise ConfigError(f"checkpoint config does not fit this sj-resnet version: {exc}") from exc
    if resume is not None:
        cfg.output_dir = str(Path(resume_path).parent)
        if int(resume["epoch"]) >= cfg.epochs and int(resume["step_in_epoch"]) == 0:
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
                print(f"sj-resnet: the run in {cfg.output_dir} already finished all {cfg.epochs} epochs; nothing "
                      "to do (its files are unchanged). To train longer, start a new run with --output-dir.",
                      flush=True)
            return 0
    try:
        train(cfg, resume, resume_path)
    except Diverged as exc:
        return _error(str(exc))
    except Interrupted:
        return INTERRUPTED_EXIT
    except ValueError as exc:  # bad model/optimizer arguments surface as ValueError from the builders
        raise ConfigError(str(exc)) from exc
    return 0
