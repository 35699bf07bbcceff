"""Memory modes of the spiking ResNets: what training keeps for the backward pass.

One switch, ``memory=`` on every builder, :func:`~sj_resnet.models.create_model` and ``--memory`` in the CLI (the
names, :class:`MemoryMode` and :func:`parse_memory` live in the torch-free ``choices.py``)::

    standard            what autograd saves: spikes, BN inputs and neuron states in the compute dtype
    compact             the same computation; binary tensors saved 1 bit per element, neuron state as fp16
    checkpoint[:LEVEL]  SpikingJelly's memopt.optimize_memory on every residual block (recompute in backward)

``compact`` (no recomputation):

* every convolution and identity-shortcut BatchNorm whose input is a spike tensor (a block's input, a neuron's
  output) saves that input bit-packed — 8 spikes per byte, ``1/32`` of fp32 — and unpacks it in backward.
  Gradients are bit-identical to ``standard``: the unpacked tensor equals the saved one exactly, and the same
  backward kernels run on it. The stem convolution, which sees real-valued images, is unchanged.
* the ImageNet stem's max-pool over spikes saves its input bit-packed and its argmax indices as ``int16``
  (``int32`` for planes over 32767 pixels) instead of ``int64`` — also exact.
* the neurons save the fp16 state ``d = h - V_th`` (``saved_state="fp16"``, see ``docs/neuron.md``): 2 bytes
  instead of 4 per neuron and step; spikes are exact, surrogate gradients carry the documented fp16 error.

How: a ``torch.autograd.graph.saved_tensors_hooks`` pair scoped to one spike-input op. Its pack hook packs only
a tensor that *is* the spike input (same storage, offset, shape, strides and dtype), so nothing that merely
looks binary is ever packed; everything else passes through untouched. Under autocast the input is cast to the
autocast dtype first (what autocast would do inside the convolution, so the result is identical), and that cast
is packed too. Pack and unpack are a few vectorised torch ops (no loop over elements; see :func:`pack_bits`).

``checkpoint`` applies ``spikingjelly.activation_based.memopt.optimize_memory(model, (BasicBlock, Bottleneck),
example_forward, level=LEVEL)``: level 1 wraps every block in a non-reentrant checkpoint whose spike input is
stored bit-packed (SpikingJelly's ``BitSpikeCompressor``) and recomputes the block in backward; levels 2-4 add
SpikingJelly's CUDA-measured splitting and unwrapping (they need the model on a CUDA device and a real batch,
see :func:`apply_checkpoint`).
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .choices import CHECKPOINT_LEVELS, MEMORY_MODES, MemoryMode, parse_memory

__all__ = [
    "CHECKPOINT_LEVELS",
    "MEMORY_MODES",
    "MemoryMode",
    "PackedBits",
    "SpikeInput",
    "apply_checkpoint",
    "BN_INPUT_REL_ERROR",
    "check_spiking",
    "compact_batch_norm",
    "compact_neuron_kwargs",
    "pack_bits",
    "parse_memory",
    "spike_input",
    "unpack_bits",
]

# --------------------------------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------------------------------

# 0x8040201008040201 as a signed int64. With the 8 bytes b_0..b_7 of a little-endian int64 each 0 or 1,
# (v * _MAGIC) has b_i at bit 63 - i and nothing else in bits 56-63 (the other partial products land below bit
# 56 at distinct positions, so no carries, or above bit 63): the top byte is the 8 spikes, b_0 in its high bit.
# Multiplying that byte back by _MAGIC puts b_k at bit 8k + 7 of every byte k; >> 7 and & 0x01.. leave b_k in
# byte k. Both directions are one integer multiply per 8 spikes.
_MAGIC = 0x8040201008040201 - (1 << 64)
_LOW_BITS = 0x0101010101010101
_TOP_BYTE = 7  # index of the most significant byte of a little-endian int64


@dataclass(frozen=True)
class PackedBits:
    """A binary tensor stored 1 bit per element: ``bits`` (uint8, 8 elements per byte) and how to rebuild it."""

    bits: Tensor
    shape: torch.Size
    dtype: torch.dtype
    channels_last: bool = False

    @property
    def nbytes(self) -> int:
        return self.bits.numel()


def _memory_order(x: Tensor) -> tuple[Tensor, bool] | None:
    """``x`` as a view whose logical order is its memory order (contiguous or channels_last), else ``None``."""
    if x.is_contiguous():
        return x, False
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1), True
    return None


def pack_bits(x: Tensor) -> PackedBits:
    """Pack a tensor whose elements are all 0 or 1 (any float dtype) into 1 bit per element.

    Nonzero elements become 1 (the caller guarantees they are exactly 1). ``x`` must be contiguous or
    ``channels_last``; the order of memory is kept, so :func:`unpack_bits` restores the same strides. Cost: one
    ``x -> bool`` pass and one int64 multiply per 8 elements.
    """
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("pack_bits assumes a little-endian machine")
    ordered = _memory_order(x)
    if ordered is None:
        raise ValueError("pack_bits needs a contiguous or channels_last tensor; call .contiguous() first")
    view, channels_last = ordered
    flat = view.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.uint8).view(torch.int64)
    top = (words * _MAGIC).view(torch.uint8).view(-1, 8)[:, _TOP_BYTE]
    bits = torch.empty(top.shape, dtype=torch.uint8, device=x.device).copy_(top)  # fresh strides (size-1 dims)
    return PackedBits(bits, x.shape, x.dtype, channels_last)


def unpack_bits(packed: PackedBits, dtype: torch.dtype | None = None) -> Tensor:
    """Rebuild the tensor :func:`pack_bits` packed (same shape and strides), in ``dtype`` (default: its own)."""
    words = torch.empty(packed.bits.shape, dtype=torch.int64, device=packed.bits.device).copy_(packed.bits)
    words.mul_(_MAGIC).bitwise_right_shift_(7).bitwise_and_(_LOW_BITS)
    shape = packed.shape
    flat = words.view(torch.uint8)[: shape.numel()].to(packed.dtype if dtype is None else dtype)
    if packed.channels_last:
        n, c, h, w = shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


# --------------------------------------------------------------------------------------------------
# Spike inputs saved bit-packed
# --------------------------------------------------------------------------------------------------


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """``a`` and ``b`` are views of the same memory with the same layout and dtype (hence the same values)."""
    return (
        a.dtype == b.dtype
        and a.device == b.device
        and a.shape == b.shape
        and a.data_ptr() == b.data_ptr()
        and a.stride() == b.stride()
    )


class _Narrowed:
    """An int64 index tensor stored in a narrower integer dtype (values proven to fit)."""

    __slots__ = ("values",)

    def __init__(self, values: Tensor) -> None:
        self.values = values


class SpikeInput:
    """A spike tensor ``x`` (every element 0 or 1) fed to ops that save it for backward.

    ``compact=False`` runs the ops unchanged (``standard``). ``compact=True`` stores every copy those ops save of
    ``x`` — or of its autocast cast — bit-packed, packed at most once per dtype and shared between the ops (a
    block's first conv and its identity-shortcut BN save the same bits). Use one ``SpikeInput`` per spike tensor::

        s = SpikeInput(x, compact=True)
        y = s.conv(block.conv1)        # conv2d saves x packed
        r = s.apply(block.shortcut)    # a BN on the identity saves x packed too (same bits)
    """

    def __init__(self, x: Tensor, compact: bool) -> None:
        self.x = x
        self.compact = bool(compact) and torch.is_grad_enabled() and _memory_order(x) is not None
        self._casts: list[Tensor] = [x]
        self._packed: dict[torch.dtype, PackedBits] = {}

    # -- hooks ------------------------------------------------------------------------------------
    def _pack(self, t: Tensor) -> Any:
        for known in self._casts:
            if _same_tensor(t, known):
                packed = self._packed.get(t.dtype)
                if packed is None:
                    packed = self._packed[t.dtype] = pack_bits(known.detach())
                return packed
        return t

    @staticmethod
    def _unpack(saved: Any) -> Tensor:
        if isinstance(saved, PackedBits):
            return unpack_bits(saved)
        if isinstance(saved, _Narrowed):
            return saved.values.to(torch.int64)
        return saved

    def _hooks(self, narrow: torch.dtype | None = None):
        # torch keeps the pack hook alive with every tensor it saved, so the hook holds this object only weakly
        # (a strong reference would keep the unpacked spike tensor alive, defeating the packing).
        ref = weakref.ref(self)

        def pack(t: Tensor) -> Any:
            if narrow is not None and t.dtype == torch.int64:
                return _Narrowed(t.to(narrow))
            owner = ref()
            return t if owner is None else owner._pack(t)

        return torch.autograd.graph.saved_tensors_hooks(pack, self._unpack)

    # -- ops --------------------------------------------------------------------------------------
    def apply(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn(x)`` with the saved copies of ``x`` packed (``fn`` must not cast ``x``: use :meth:`conv`)."""
        if not self.compact:
            return fn(self.x)
        with self._hooks():
            return fn(self.x)

    def conv(self, conv: nn.Module) -> Tensor:
        """``conv(x)``; under autocast ``x`` is cast to the autocast dtype first, as autocast would do."""
        if not self.compact:
            return conv(self.x)
        x = self.x
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            if x.dtype != dtype and x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                x = x.to(dtype)
                self._casts.append(x)
        with self._hooks():
            return conv(x)

    def max_pool(self, pool: nn.MaxPool2d) -> Tensor:
        """``pool(x)`` for a ``[B, C, H, W]`` spike tensor: input saved packed, argmax indices narrowed."""
        if not self.compact or not isinstance(pool, nn.MaxPool2d) or self.x.dim() != 4:
            return pool(self.x)
        plane = self.x.shape[-2] * self.x.shape[-1]  # indices are flat positions inside one input plane
        narrow = torch.int16 if plane <= torch.iinfo(torch.int16).max else torch.int32
        with self._hooks(narrow):  # the only int64 tensor max_pool2d saves is its argmax indices
            return pool(self.x)


def spike_input(x: Tensor, compact: bool) -> SpikeInput:
    """Shorthand for :class:`SpikeInput` ``(x, compact)``."""
    return SpikeInput(x, compact)


class _Standardised:
    """A BN input kept for backward; :meth:`compress` turns it into fp16 of ``(x - mean) * invstd`` per channel."""

    __slots__ = ("full", "values", "mean", "invstd", "dtype")

    def __init__(self, x: Tensor) -> None:
        self.full: Tensor | None = x
        self.values = self.mean = self.invstd = None
        self.dtype = x.dtype

    def compress(self, mean: Tensor, invstd: Tensor) -> None:
        x, self.full = self.full, None
        shape = (1, -1) + (1,) * (x.dim() - 2)
        self.mean = mean.detach().to(x.dtype).reshape(shape)
        self.invstd = invstd.detach().to(x.dtype).reshape(shape)
        with torch.no_grad():
            self.values = ((x - self.mean) * self.invstd).to(torch.float16)

    def restore(self) -> Tensor:
        if self.full is not None:
            return self.full
        return torch.addcdiv(self.mean, self.values.to(self.dtype), self.invstd)


BN_INPUT_REL_ERROR = 2.0**-11
"""Bound on the relative error of every standardised BN input ``x_hat`` that ``compact`` backward sees."""

_BN_NODES = ("NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0")


def _batch_stats(y: Tensor, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The per-channel batch ``(mean, invstd)`` the BN that produced ``y`` from ``x`` computed (read from its
    autograd node, which saved them), or computed here if the node is of an unknown kind."""
    node = y.grad_fn
    if type(node).__name__ in _BN_NODES:
        mean, invstd = node._saved_result1, node._saved_result2
        if mean.shape == invstd.shape == (x.shape[1],):
            return mean, invstd
    with torch.no_grad():
        var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=0)
        return mean, (var + eps).rsqrt()


def compact_batch_norm(bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(x)`` for a real-valued ``x [B, C, H, W]`` (a conv output), saving ``x`` in 2 bytes instead of 4.

    Forward and running statistics are unchanged (``bn`` runs as usual). What BN's backward reads — its input —
    is stored as fp16 of the standardised ``x_hat = (x - mean) * invstd`` (the batch statistics this BN just
    computed) and rebuilt as ``mean + x_hat / invstd`` in the input dtype. Standardising keeps fp16 in range
    (``|x_hat| <= sqrt(M)`` for ``M`` elements per channel, far below 65504) and makes the rounding relative to
    the spread that BN's backward uses: every ``x_hat`` backward recomputes carries a relative error of at most
    ``2**-11`` (:data:`BN_INPUT_REL_ERROR`, fp16 round-to-nearest) plus fp32 rounding, so the BN's gradients are
    within that relative bound of the exact ones (tested). Used only for a plain ``nn.BatchNorm2d`` in training
    mode on fp32/fp64 input; 16-bit input (autocast) and anything else run ``bn(x)`` unchanged.
    """
    if not (
        torch.is_grad_enabled()
        and type(bn) is nn.BatchNorm2d
        and bn.training
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64)
        and x.requires_grad
    ):
        return bn(x)
    key = (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device)  # no reference to x: it must be freed
    kept: list[_Standardised] = []

    def pack(t: Tensor) -> Any:
        if (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device) != key:
            return t
        kept.append(_Standardised(t))
        return kept[-1]

    def unpack(saved: Any) -> Tensor:
        return saved.restore() if isinstance(saved, _Standardised) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = bn(x)
    if kept:  # compressed once BN has computed its statistics: no extra pass over x for them
        mean, invstd = _batch_stats(y, x, bn.eps)
        for k in kept:
            k.compress(mean, invstd)
    return y


def _takes_saved_state(spiking_neuron: Any) -> bool:
    from ..neuron import DecayFireNode

    if not (isinstance(spiking_neuron, type) and issubclass(spiking_neuron, DecayFireNode)):
        return False
    return "saved_state" in inspect.signature(DecayFireNode.__init__).parameters


def compact_neuron_kwargs(spiking_neuron: Any, neuron_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Neuron arguments for ``compact``: ``saved_state=MemoryMode('compact').saved_state`` (``'fp16'``) added for
    our nodes, unless given explicitly (``saved_state='fp32'`` keeps the fp32 state with bit-packed spikes).

    Third-party nodes (SpikingJelly's ``LIFNode``, ...) are built as given: their saved state is theirs.
    """
    kwargs = dict(neuron_kwargs)
    if "saved_state" not in kwargs and _takes_saved_state(spiking_neuron):
        kwargs["saved_state"] = MemoryMode("compact").saved_state
    return kwargs


def check_spiking(node: nn.Module, where: str) -> None:
    """Raise unless ``node`` emits exact 0/1 spikes (a SpikingJelly node with a spiking surrogate).

    ``compact`` packs the tensors a neuron emits as bits, so a node that emits anything else would silently
    corrupt the gradients; this is checked once, when the model is built.
    """
    from spikingjelly.activation_based.neuron import BaseNode

    surrogate = getattr(node, "surrogate_function", None)
    if not isinstance(node, BaseNode) or not getattr(surrogate, "spiking", False):
        raise ValueError(
            f"memory='compact' stores neuron outputs as bits, but {where} is {type(node).__name__}, which is not a "
            "SpikingJelly node with a spiking surrogate (outputs exactly 0/1); use memory='standard' with it"
        )


# --------------------------------------------------------------------------------------------------
# checkpoint: SpikingJelly's optimize_memory
# --------------------------------------------------------------------------------------------------


def apply_checkpoint(
    model: nn.Module,
    level: int,
    example_forward: Callable[[nn.Module], object],
    targets: tuple[type, ...] | None = None,
) -> nn.Module:
    """Apply SpikingJelly's ``memopt.optimize_memory`` to ``model`` in place with our residual blocks as targets.

    Args:
        model: a :class:`~sj_resnet.models.SpikingResNet` (or any model whose blocks are ``targets``).
        level: 1 (checkpoint every block, spike inputs stored bit-packed), 2 (also split blocks into their
            conv-BN-neuron stages where it lowers the CUDA peak), 3 (also chunk the neurons over time where it
            lowers the peak), 4 (also unwrap checkpoints that do not pay). 2-4 measure CUDA memory, so ``model``
            must be on a CUDA device.
        example_forward: ``fn(model)`` running one representative forward pass (for 2-4: a real training batch);
            SpikingJelly restores RNG, buffers and neuron states after it.
        targets: module types to checkpoint; default ``(BasicBlock, Bottleneck)``.

    Returns ``model``. Gradients equal the unwrapped model's bit for bit (recomputation repeats the same ops).
    """
    from spikingjelly.activation_based import base
    from spikingjelly.activation_based.memopt import optimize_memory

    from .blocks import BasicBlock, Bottleneck

    if level not in CHECKPOINT_LEVELS:
        raise ValueError(f"checkpoint level must be one of {CHECKPOINT_LEVELS}, got {level!r}")
    targets = (BasicBlock, Bottleneck) if targets is None else targets
    if level > 1:
        device = next(iter(model.parameters())).device
        if device.type != "cuda":
            raise ValueError(
                f"memory='checkpoint:{level}' measures CUDA memory (SpikingJelly's memopt levels 2-4); the model is "
                f"on {device}. Use checkpoint:1 on the CPU, or move the model to a CUDA device first"
            )

    def split_fn(block: nn.Module) -> list[nn.Module]:
        # The stages of a block that can be recomputed alone: each conv-BN pair and each neuron, in order.
        return [m for m in block.children() if not isinstance(m, nn.Identity)]

    def can_chunk(module: nn.Module) -> bool:
        # Only neurons are independent along dim 0 (time, state carried over); BN statistics span all of T.
        return isinstance(module, base.MemoryModule)

    return optimize_memory(
        model,
        targets,
        example_forward,
        level=level,
        split_fn=split_fn if level >= 2 else None,
        can_chunk=can_chunk if level >= 3 else None,
    )
