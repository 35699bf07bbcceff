"""Model construction from a :class:`TrainConfig`: surrogate parsing and the builder keyword arguments.

The builder arguments are stored in every checkpoint as plain data (``model_spec``), so ``sj-resnet eval``
rebuilds the exact network without the training command line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sj_resnet.neuron.surrogates import from_name

from .config import ConfigError


def parse_surrogate(spec: str) -> nn.Module:
    """``'atan'``, ``'atan:2.0'``, ``'rect:1.0'``, ... -> a SpikingJelly surrogate module.

    :func:`sj_resnet.neuron.surrogates.from_name` (names: ``sj_resnet.neuron.choices.SURROGATES``, case-insensitive;
    ``:alpha`` overrides the class's default alpha), raising :class:`~sj_resnet.train.config.ConfigError`.
    """
    try:
        return from_name(spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def resolve_memory_format(choice: str, device: torch.device) -> torch.memory_format:
    """``--memory-format`` on ``device``: ``auto`` is ``channels_last`` on a CPU, ``contiguous`` on CUDA.

    On a CPU, oneDNN's convolutions and ATen's BatchNorm are faster on NHWC: one training step of the digits default
    (width 16, [T*N, C, H, W] = [256, 16..128, 12..2, 12..2]) takes 0.77x the time with 2 threads, 0.74x with 1
    (``benchmarks/recipe_cost.py``; BatchNorm alone is 3-16x faster on these small maps). On CUDA it is not measured
    yet, so ``auto`` keeps torch's default there. The layout changes the rounding of the convolutions, not the math.
    """
    if choice == "auto":
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def check_backend(backend: str, device) -> None:
    """Raise :class:`~sj_resnet.train.config.ConfigError` when ``--backend`` cannot run on ``device``."""
    if backend != "cupy":
        return
    from sj_resnet.neuron.backends import cupy_available

    if device.type != "cuda" or not cupy_available():
        raise ConfigError(
            f"--backend cupy needs CuPy and a CUDA device (this run: {device}, CuPy "
            f"{'usable' if cupy_available() else 'not importable or no GPU'}); install cupy-cuda12x on a GPU "
            "machine, or use --backend auto (or torch)"
        )


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
        "saved_state": cfg.saved_state,
    }
    if cfg.width is not None:
        kwargs["width"] = cfg.width
    return {"name": cfg.model, "kwargs": kwargs}


def build_model(spec: dict[str, Any], strict_state: bool = True,
                memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    """Instantiate ``spec`` (from :func:`model_spec`) with ``sj_resnet.models.create_model``.

    With ``strict_state=True`` (the training and evaluation loops) a forward that starts on carried membrane
    state raises instead of silently mixing two batches (``SpikingResNet.strict_state``). ``memory_format``:
    the layout of the 4-D weights (:func:`resolve_memory_format`); the convolutions' outputs follow it, and so do
    BatchNorm's and the neurons' (which keep their input's strides)."""
    from sj_resnet.models import create_model

    kwargs = dict(spec["kwargs"])
    kwargs["surrogate_function"] = parse_surrogate(kwargs.pop("surrogate"))
    model = create_model(spec["name"], strict_state=strict_state, **kwargs)
    return model if memory_format == torch.contiguous_format else model.to(memory_format=memory_format)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
