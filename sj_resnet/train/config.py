"""The run configuration: one flat dataclass, filled from defaults, dataset defaults, a recipe and the command line.

Precedence, lowest first: ``TrainConfig`` field defaults < ``DATASET_DEFAULTS[dataset]`` < ``RECIPES[recipe]``
< the config stored in a checkpoint being resumed < options given explicitly on the command line. On resume,
options that would change the model or the optimisation trajectory must match the checkpoint (see
``RESUME_MUTABLE``), so a resumed run continues the run it claims to continue.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..models.choices import NORMS, READOUTS, parse_memory
from ..neuron.choices import BACKENDS, DECAY_RANGE, SAVED_STATES, decay_in_range, parse_surrogate
from .recipes import DATASET_DEFAULTS, RECIPES

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("ce", "tet")
AMP_MODES = ("none", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
"""``--memory-format``: the layout of the model's weights and activations (``modeling.resolve_memory_format``)."""
DATASETS = ("digits", "fake", "cifar10", "cifar100", "imagenet", "cifar10-dvs", "dvs128-gesture")
"""Every ``--dataset`` (``data.build_datasets`` builds each; ``recipes.DATASET_DEFAULTS`` has an entry for each)."""
# The model's and the neuron's choices (norms, readouts, memory modes, backends, surrogate names, the decay range,
# saved-state kinds) are owned by the torch-free sj_resnet.models.choices and sj_resnet.neuron.choices.
SEED_LIMIT = 2**32  # numpy's and CUDA's seeds are 32-bit: larger seeds would alias smaller ones
MAX_IMAGE_SIZE = 1024  # sides beyond this exhaust memory long before they could help these models
MAX_DIGITS_IMAGE_SIZE = 256  # the 1797 upsampled digits are held in memory: 256 px is 470 MB
# Options that come from the command line only, never from a checkpoint (a crafted checkpoint must not choose
# where data is read from or start a download).
COMMAND_LINE_ONLY = ("data_dir", "download")

# Options that may differ between a checkpoint and the command that resumes it.
RESUME_MUTABLE = frozenset(
    {"output_dir", "workers", "device", "threads", "data_dir", "download", "tensorboard", "plot", "resume",
     "limit_eval_batches", "compile", "backend", "eval_batch_size", "stop_after_epochs", "memory_format",
     "eval_every"}
)


# Options `sj-resnet eval` may set; every other field comes from the evaluated checkpoint's config.
EVAL_FIELDS = frozenset(
    {"dataset", "data_dir", "download", "batch_size", "eval_batch_size", "workers", "device", "limit_eval_batches",
     "amp", "backend", "threads", "image_size", "fake_size", "memory_format"}
)


@dataclass
class TrainConfig:
    """Every option of ``sj-resnet train`` (the CLI's ``--kebab-case`` names map to these fields)."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # digits: upsampled side; event data: frame side after resizing
    augment: bool = True
    max_shift: int | None = None  # digits: largest random translation in pixels (default image_size // 8)
    max_rotate: float = 0.0  # digits: largest random rotation in degrees
    max_scale: float = 0.0  # digits: largest random zoom, as a fraction
    fake_size: int = 256  # samples in the 'fake' training set (test set: a quarter, at least 32)
    workers: int = 0
    # model
    model: str = "resnet18_cifar"
    width: int | None = None  # None: the builder's default
    T: int = 4
    norm: str = "bn"
    identity_bn: bool = True
    zero_init_residual: bool = False
    readout: str = "sum"
    # neuron
    surrogate: str = "rect"  # name[:alpha], e.g. 'atan', 'atan:2.0', 'rect:1.0'
    decay: float = 0.25
    v_threshold: float = 0.5
    detach_reset: bool = False
    backend: str = "auto"
    memory: str = "standard"  # sj_resnet.models.choices.MEMORY_MODES: standard, compact, checkpoint[:LEVEL]
    saved_state: str | None = None  # neuron state saved for backward: fp32 | fp16; None: the memory mode's choice
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # per process
    eval_batch_size: int | None = None  # default: 2 * batch_size
    opt: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 0.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    loss: str = "ce"
    tet_lambda: float = 1e-3
    tet_means: float = 1.0
    clip_grad: float | None = None
    ema_decay: float | None = None  # evaluate an exponential moving average of the weights (per-step decay)
    amp: str = "none"
    compile: bool = False
    memory_format: str = "auto"  # channels_last on a CPU, contiguous on CUDA (see modeling.resolve_memory_format)
    sync_bn: bool = False
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    output_dir: str | None = None
    recipe: str | None = None
    limit_train_batches: int | None = None  # smoke tests: stop each epoch after this many batches
    limit_eval_batches: int | None = None
    eval_every: int = 1  # evaluate after every k-th epoch and after the last one
    stop_after_epochs: int | None = None  # end this invocation (with a checkpoint) after N epochs; resume later
    tensorboard: bool = True
    plot: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class ConfigError(ValueError):
    """A bad option value or combination; the message names the fix."""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; got {value!r}")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _check_finite(cfg: TrainConfig) -> None:
    """Every float option must be a finite number (NaN or inf would train to NaN and still write checkpoints)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{_flag(f.name)} must be a finite number; got {value}")


def _check_range(name: str, value: float | None, low: float, high: float, high_open: bool = True) -> None:
    if value is None:
        return
    if not (low <= value < high if high_open else low <= value <= high):
        raise ConfigError(f"{_flag(name)} must be in [{low:g}, {high:g}{')' if high_open else ']'}; got {value!r}")


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    if value is None:
        return
    bad = value < 0 if allow_zero else value <= 0
    if bad:
        raise ConfigError(f"--{name.replace('_', '-')} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise :class:`ConfigError` for values that cannot work; returns ``cfg``."""
    _check_finite(cfg)
    _check_choice("dataset", cfg.dataset, DATASETS)
    _check_choice("opt", cfg.opt, OPTIMIZERS)
    _check_choice("loss", cfg.loss, LOSSES)
    _check_choice("amp", cfg.amp, AMP_MODES)
    _check_choice("memory_format", cfg.memory_format, MEMORY_FORMATS)
    _check_choice("norm", cfg.norm, NORMS)
    _check_choice("readout", cfg.readout, READOUTS)
    _check_choice("backend", cfg.backend, BACKENDS)
    for name in ("epochs", "batch_size", "T", "lr", "fake_size"):
        _check_positive(name, getattr(cfg, name))
    for name in ("width", "eval_batch_size", "image_size", "threads", "clip_grad", "limit_train_batches",
                 "limit_eval_batches", "stop_after_epochs", "eval_every"):
        _check_positive(name, getattr(cfg, name))
    for name in ("max_shift", "max_rotate", "max_scale", "wd", "warmup_epochs", "min_lr", "label_smoothing",
                 "workers", "momentum", "tet_lambda"):
        _check_positive(name, getattr(cfg, name), allow_zero=True)
    _check_range("label_smoothing", cfg.label_smoothing, 0, 1)
    _check_range("momentum", cfg.momentum, 0, 1)
    _check_range("max_scale", cfg.max_scale, 0, 1)  # the zoom 1 +- max_scale must stay > 0
    _check_range("max_rotate", cfg.max_rotate, 0, 180, high_open=False)
    if cfg.min_lr > cfg.lr:
        raise ConfigError(f"--min-lr ({cfg.min_lr:g}) exceeds --lr ({cfg.lr:g}); the cosine schedule decays from "
                          "--lr down to --min-lr")
    if cfg.v_threshold <= 0:
        raise ConfigError(f"--v-threshold must be > 0; got {cfg.v_threshold}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < SEED_LIMIT:
        raise ConfigError(f"--seed must be an integer in [0, 2**32) (numpy and CUDA seeds are 32-bit, so larger "
                          f"seeds would repeat smaller ones); got {cfg.seed!r}")
    if cfg.image_size is not None:
        limit = MAX_DIGITS_IMAGE_SIZE if cfg.dataset == "digits" else MAX_IMAGE_SIZE
        if cfg.image_size > limit:
            raise ConfigError(f"--image-size {cfg.image_size} is too large for --dataset {cfg.dataset} (at most "
                              f"{limit}); the defaults are in `sj-resnet train --help`")
    if not decay_in_range(cfg.decay):
        raise ConfigError(f"--decay must be in {DECAY_RANGE} (1 = IF neuron); got {cfg.decay}")
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"--warmup-epochs ({cfg.warmup_epochs}) exceeds --epochs ({cfg.epochs})")
    if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
        raise ConfigError(f"--ema-decay must be in (0, 1), e.g. 0.99; got {cfg.ema_decay}")
    if cfg.tet_lambda > 1:
        raise ConfigError(f"--tet-lambda must be in [0, 1]; got {cfg.tet_lambda}")
    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        raise ConfigError(f"unknown --recipe {cfg.recipe!r}; available: {', '.join(sorted(RECIPES))}")
    try:
        parse_surrogate(cfg.surrogate)
        memory = parse_memory(cfg.memory)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    cfg.memory = str(memory)
    if cfg.saved_state is None:
        cfg.saved_state = memory.saved_state
    _check_choice("saved_state", cfg.saved_state, SAVED_STATES)
    return cfg


def resolve(explicit: dict[str, Any], resumed: dict[str, Any] | None = None) -> TrainConfig:
    """Build the run config from the options given on the command line (``explicit``) and, when resuming,
    the checkpoint's stored config (``resumed``). Raises :class:`ConfigError` on a conflicting resume."""
    unknown = set(explicit) - FIELDS
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if resumed is not None:
        values = {k: v for k, v in resumed.items() if k in FIELDS and k not in COMMAND_LINE_ONLY}
        conflicts = {
            k: (values.get(k), v) for k, v in explicit.items()
            if k not in RESUME_MUTABLE and k in values and values[k] != v
        }
        if conflicts:
            lines = ", ".join(
                f"--{k.replace('_', '-')} {new!r} (checkpoint: {old!r})" for k, (old, new) in conflicts.items()
            )
            raise ConfigError(
                f"cannot resume with options that change the run: {lines}. Drop them to continue the checkpoint's "
                "run, or start a new run in a fresh --output-dir."
            )
        values.update(explicit)
        return validate(TrainConfig(**values))
    recipe = explicit.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise ConfigError(f"unknown --recipe {recipe!r}; available: {', '.join(sorted(RECIPES))}")
    dataset = explicit.get("dataset") or (RECIPES[recipe]["dataset"] if recipe else TrainConfig.dataset)
    if dataset not in DATASET_DEFAULTS:
        raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    values: dict[str, Any] = {}
    values.update(DATASET_DEFAULTS[dataset])
    if recipe is not None:
        values.update({k: v for k, v in RECIPES[recipe].items() if k in FIELDS})
    values.update(explicit)
    values["dataset"] = dataset
    epochs = values.get("epochs", TrainConfig.epochs)
    if "warmup_epochs" not in explicit and values.get("warmup_epochs", 0.0) > epochs / 5:
        values["warmup_epochs"] = epochs / 5  # a default warmup never eats more than a fifth of a short run
    return validate(TrainConfig(**values))
