"""The models' lists of choices: one torch-free owner for the builders, the training config and the CLI.

Plain Python only, so ``sj-resnet --help`` and the config checks need no torch; ``blocks.py``, ``resnet.py`` and
``memory.py`` import these names, and nothing else spells them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..neuron.choices import SAVED_STATES

NORMS = ("bn", "tdbn")
"""BN scale initialisation: ``'bn'`` (gamma = 1) or ``'tdbn'`` (gamma = alpha * V_th, see ``blocks.py``)."""
READOUTS = ("sum", "mean")
"""How the per-step pooled features are reduced over time before the classifier."""
STEMS = ("imagenet", "cifar")
"""``'imagenet'``: conv7x7/2 -> BN -> neuron -> maxpool3x3/2; ``'cifar'``: conv3x3/1 -> BN -> neuron."""

MEMORY_MODES = ("standard", "compact", "checkpoint")
"""What training keeps for backward (``memory.py`` implements them)."""
CHECKPOINT_LEVELS = (1, 2, 3, 4)
"""``optimize_memory`` levels: 1 selective checkpointing (any device); 2-4 need CUDA memory measurements."""
MEMORY_HELP = "standard | compact | checkpoint[:LEVEL] (LEVEL 1-4, default 1)"


@dataclass(frozen=True)
class MemoryMode:
    """A parsed memory mode: ``name`` in :data:`MEMORY_MODES`, ``level`` for ``checkpoint`` (else ``None``)."""

    name: str
    level: int | None = None

    @property
    def compact(self) -> bool:
        return self.name == "compact"

    @property
    def saved_state(self) -> str:
        """The neurons' ``saved_state`` this mode chooses when none is given: ``'fp16'`` for compact, else
        ``'fp32'`` (one of ``neuron.choices.SAVED_STATES``)."""
        return SAVED_STATES[1] if self.compact else SAVED_STATES[0]

    def __str__(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level}"


def parse_memory(spec: str | MemoryMode | None) -> MemoryMode:
    """``'standard'``, ``'compact'``, ``'checkpoint'`` or ``'checkpoint:LEVEL'`` -> :class:`MemoryMode`.

    ``None`` means ``'standard'``; ``'checkpoint'`` alone means level 1. Anything else raises ``ValueError``
    naming the accepted spellings.
    """
    if isinstance(spec, MemoryMode):
        return spec
    if spec is None:
        return MemoryMode("standard")
    if not isinstance(spec, str):
        raise TypeError(f"memory must be a string ({MEMORY_HELP}), got {type(spec).__name__}")
    name, sep, level = spec.strip().lower().partition(":")
    if name not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {spec!r}; choose {MEMORY_HELP}")
    if name != "checkpoint":
        if sep:
            raise ValueError(f"memory mode {name!r} takes no level (got {spec!r}); only checkpoint[:LEVEL] does")
        return MemoryMode(name)
    if not sep:
        return MemoryMode(name, 1)
    if level not in {str(v) for v in CHECKPOINT_LEVELS}:
        raise ValueError(f"checkpoint level must be one of {CHECKPOINT_LEVELS}, got {level!r} in {spec!r}")
    return MemoryMode(name, int(level))
