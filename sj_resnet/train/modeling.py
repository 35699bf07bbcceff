"""Model construction from a :class:`TrainConfig`: surrogate parsing and the builder keyword arguments.

The builder arguments are stored in every checkpoint as plain data (``model_spec``), so ``sj-resnet eval``
rebuilds the exact network without the training command line.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sj_resnet.neuron.surrogates import SURROGATES

SURROGATE_NAMES: dict[str, type[nn.Module]] = {spec.name.lower(): spec.sj_class for spec in SURROGATES}
"""``--surrogate`` names: the surrogates with a fused kernel (``sj_resnet.neuron.surrogates.SURROGATES``)."""


def parse_surrogate(spec: str) -> nn.Module:
    """``'atan'``, ``'atan:2.0'``, ``'rect:1.0'``, ... -> a SpikingJelly surrogate module.

    Names are SpikingJelly's surrogate classes, case-insensitive (:data:`SURROGATE_NAMES`); ``:alpha`` overrides
    the class's default alpha.
    """
    name, _, alpha = str(spec).partition(":")
    cls = SURROGATE_NAMES.get(name.strip().lower())
    if cls is None:
        raise ValueError(
            f"unknown --surrogate {spec!r}; choose one of {', '.join(sorted(SURROGATE_NAMES))} "
            "optionally with ':alpha', e.g. 'atan:2.0'"
        )
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
