"""Helpers for testing neuron implementations against each other.

Two implementations of the same neuron can round ``decay*v + x`` differently (an FMA, another summation
order). Where the pre-reset membrane ``h`` lands within one rounding error of the threshold, that flips a
spike and every later step diverges: a legitimate difference, not a bug. ``sample_inputs`` draws inputs whose
``h`` (computed in float64) stays a margin away from the threshold and from the surrogate's discontinuities,
so comparisons can demand identical spikes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .reference import broadcast_decay


def sample_inputs(
    shape: Sequence[int],
    *,
    decay: float | Tensor = 0.25,
    v_threshold: float = 0.5,
    v0: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    margin: float | None = None,
    critical_offsets: Sequence[float] = (0.0,),
    mean: float = 0.3,
    std: float = 0.6,
    seed: int = 0,
) -> Tensor:
    """``x_seq`` of ``shape = [T, N, *]`` in ``dtype`` whose every ``h[t]`` keeps ``margin`` distance from
    each ``v_threshold + c`` (``c`` in ``critical_offsets``), given the initial state ``v0`` (zeros if None).

    ``margin`` defaults to 1e-3 for float32/float64 and 0.04 for float16/bfloat16. Offending entries are
    pushed up by ``3 * margin`` (and re-rounded to ``dtype``) until none is left.
    """
    if margin is None:
        margin = 0.04 if dtype in (torch.float16, torch.bfloat16) else 1e-3
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(tuple(shape), generator=g, dtype=torch.float64) * std + mean).to(dtype).to(torch.float64)
    d = broadcast_decay(decay.detach().double() if isinstance(decay, Tensor) else float(decay), x)
    v = torch.zeros(x.shape[1:], dtype=torch.float64) if v0 is None else v0.detach().double().cpu().clone()
    points = [v_threshold + c for c in critical_offsets]
    for t in range(x.shape[0]):
        for _ in range(100):
            h = d * v + x[t]
            bad = torch.zeros_like(h, dtype=torch.bool)
            for p in points:
                bad |= (h - p).abs() < margin
            if not bad.any():
                break
            x[t] = torch.where(bad, x[t] + 3 * margin, x[t]).to(dtype).to(torch.float64)
        else:
            raise RuntimeError("could not move the inputs away from the threshold; use a smaller margin")
        v = h * (h < v_threshold)
    return x.to(dtype)


def critical_offsets_for(surrogate_function: torch.nn.Module) -> tuple[float, ...]:
    """Offsets from the threshold where the surrogate derivative jumps (Rect's box edges), plus 0."""
    from spikingjelly.activation_based import surrogate

    if type(surrogate_function) is surrogate.Rect:
        w = 0.5 / float(surrogate_function.alpha)
        return (0.0, -w, w)
    return (0.0,)
