"""Per-layer firing rates: forward hooks on every SpikingJelly ``BaseNode`` of a model.

The rate of a layer is the fraction of its outputs that are spikes, averaged over all time steps, samples
and neurons seen since the last :meth:`FiringRateMonitor.reset`: ``sum(spikes) / numel``. Sums accumulate
on the device (no host sync per batch) and are reduced over ranks by :meth:`rates` when asked.
"""

from __future__ import annotations

import torch
from torch import nn

from . import distributed


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every SpikingJelly ``BaseNode`` in ``model``."""
    from spikingjelly.activation_based.neuron import BaseNode

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseNode)]


class FiringRateMonitor:
    """Hooks every spiking layer of ``model``; ``enabled`` switches the (cheap) accounting on and off."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = spiking_layers(model)
        self.names = [name for name, _ in self.layers]
        self.enabled = True
        self._sums: list[torch.Tensor | None] = [None] * len(self.layers)
        self._counts = [0] * len(self.layers)
        for i, (_, m) in enumerate(self.layers):
            m.register_forward_hook(self._hook(i))

    def _hook(self, i: int):
        def hook(module, inputs, output):
            if not self.enabled or not isinstance(output, torch.Tensor):
                return
            # spikes are 0/1: a float32 sum is exact below 2**24 elements and ~5x faster than a float64 one
            exact32 = output.numel() < 1 << 24
            s = output.detach().sum(dtype=torch.float32 if exact32 else torch.float64).double()
            prev = self._sums[i]
            self._sums[i] = s if prev is None else prev.to(s.device) + s
            self._counts[i] += output.numel()

        return hook

    def reset(self) -> None:
        self._sums = [None] * len(self.layers)
        self._counts = [0] * len(self.layers)

    def totals(self, reduce: bool = True) -> tuple[list[float], list[float]]:
        """Per-layer ``(spike sums, neuron-step counts)``, summed over ranks if ``reduce`` (carried over a resume)."""
        sums, counts = self._tensors(reduce)
        return sums.tolist(), counts.tolist()

    def preload(self, sums: list[float], counts: list[float]) -> None:
        """Start the accumulation from :meth:`totals` of an interrupted epoch."""
        if len(sums) != len(self.layers):
            raise ValueError(f"firing totals for {len(sums)} layers, model has {len(self.layers)}")
        self._sums = [torch.tensor(float(s), dtype=torch.float64) for s in sums]
        self._counts = [int(c) for c in counts]

    def _tensors(self, reduce: bool) -> tuple[torch.Tensor, torch.Tensor]:
        device = next((s.device for s in self._sums if s is not None), torch.device("cpu"))
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums = torch.stack([s.to(device) if s is not None else zero for s in self._sums])
        counts = torch.tensor(self._counts, dtype=torch.float64, device=device)
        if reduce:
            distributed.all_reduce_sum(sums)
            distributed.all_reduce_sum(counts)
        return sums, counts

    def summary(self, reduce: bool = True) -> tuple[dict[str, float], float]:
        """``({layer: rate}, mean)`` over everything seen since :meth:`reset`, summed over ranks if ``reduce``.

        ``mean`` weights layers by their size: total spikes / total neuron-steps.
        """
        if not self.layers:
            return {}, float("nan")
        sums, counts = self._tensors(reduce)
        rates = (sums / counts.clamp_min(1)).tolist()
        total = float(counts.sum())
        mean = float(sums.sum()) / total if total > 0 else float("nan")
        return {name: float(r) for name, r in zip(self.names, rates, strict=True)}, mean
