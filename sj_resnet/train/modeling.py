"""Model construction from a :class:`TrainConfig`: surrogate parsing, builder keyword arguments, DDP/compile wraps.

The builder arguments are stored in every checkpoint as plain data (``model_spec``), so ``sj-resnet eval``
rebuilds the exact network without the training command line.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_SURROGATE_NAMES = {
    "rect": "Rect", "sigmoid": "Sigmoid", "atan": "ATan", "piecewisequadratic": "PiecewiseQuadratic",
    "piecewiseexp": "PiecewiseExp", "softsign": "SoftSign", "superspike": "SuperSpike", "erf": "Erf",
}


def parse_surrogate(spec: str) -> nn.Module:
    """``'atan'``, ``'atan:2.0'``, ``'rect:1.0'``, ... -> a SpikingJelly surrogate module.

    Names are SpikingJelly's surrogate classes, case-insensitive; ``:alpha`` overrides the class's default alpha.
    """
    from spikingjelly.activation_based import surrogate

    name, _, alpha = str(spec).partition(":")
    cls_name = _SURROGATE_NAMES.get(name.strip().lower())
    if cls_name is None:
        raise ValueError(
            f"unknown --surrogate {spec!r}; choose one of {', '.join(sorted(_SURROGATE_NAMES))} "
            "optionally with ':alpha', e.g. 'atan:2.0'"
        )
    cls = getattr(surrogate, cls_name)
    if not alpha:
        return cls()
    try:
        a = float(alpha)
    except ValueError as exc:
        raise ValueError(f"--surrogate {spec!r}: alpha {alpha!r} is not a number") from exc
    if a <= 0:
        raise ValueError(f"--surrogate {spec!r}: alpha must be > 0")
    return cls(alpha=a)


def model_spec(cfg, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The builder name and plain-data keyword arguments for ``cfg`` (stored in checkpoints)."""
    kwargs: dict[str, Any] = {
        "T": cfg.T,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "norm": cfg.norm,
        "identity_bn": cfg.identity_bn,
        "zero_init_residual": cfg.zero_init_residual,
        "readout": cfg.readout,
        "return_sequence": cfg.loss == "tet",
        "decay": cfg.decay,
        "v_threshold": cfg.v_threshold,
        "detach_reset": cfg.detach_reset,
        "backend": cfg.backend,
        "surrogate": cfg.surrogate,
        "memory": cfg.memory,
    }
    if cfg.width is not None:
        kwargs["width"] = cfg.width
    return {"name": cfg.model, "kwargs": kwargs}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate ``spec`` (from :func:`model_spec`) with ``sj_resnet.models.create_model``."""
    from sj_resnet.models import create_model

    kwargs = dict(spec["kwargs"])
    kwargs["surrogate_function"] = parse_surrogate(kwargs.pop("surrogate"))
    return create_model(spec["name"], **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
