"""Spiking residual blocks whose every shortcut passes through a BatchNorm.

Layout convention (the SpikingJelly multi-step convention): a block takes and returns spikes ``[T, N, C, H, W]``.
Convolutions and BatchNorms see the time-flattened ``[T*N, C, H, W]``, so a ``BatchNorm2d`` normalises every
channel over ``(T, N, H, W)`` — the statistics of tdBN (Zheng et al. 2021), numerically the same as ``BatchNorm3d`` on
``[N, C, T, H, W]``. Neurons see ``[T, N, C, H, W]`` and run over time.

Shortcut (what sets this zoo apart from SpikingJelly's ``spiking_resnet``, SEW, tdBN, TET and MS-ResNet)::

    shape changes (stride 2 or new channel count)   conv1x1(stride) -> BN
    shape unchanged, identity_bn=True (default)     BN alone on the identity (incoming spikes are re-normalised)
    shape unchanged, identity_bn=False              bare identity (the SpikingJelly / tdBN layout, for ablations)

tdBN (Zheng et al., AAAI 2021, "Going Deeper With Directly-Trained Larger Spiking Neural Networks"):
``norm='tdbn'`` initialises each BN's scale ``gamma = alpha * V_th`` with ``alpha = 1/sqrt(2)`` on the last BN
of the residual branch and on the shortcut BN (the two summands of the pre-activation) and ``alpha = 1``
elsewhere, so the sum keeps the variance ``V_th**2`` of a single normalised input.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .memory import SpikeInput, compact_batch_norm

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "TDBN_RESIDUAL_ALPHA",
    "conv1x1",
    "conv3x3",
    "make_neuron",
    "neuron_threshold",
    "batch_norm_repeated",
    "init_bn",
    "seq_apply",
]

TDBN_RESIDUAL_ALPHA = 1.0 / math.sqrt(2.0)
"""tdBN's alpha for the two BNs whose outputs are added (branch end and shortcut)."""


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def seq_apply(module: Callable[[Tensor], Tensor], x_seq: Tensor) -> Tensor:
    """Apply a stateless per-step ``module`` to ``x_seq [T, N, *]`` as one ``[T*N, *]`` batch; returns ``[T, N, *]``."""
    return module(x_seq.flatten(0, 1)).unflatten(0, x_seq.shape[:2])


def make_neuron(spiking_neuron: Callable[..., nn.Module] | None, neuron_kwargs: dict[str, Any]) -> nn.Module:
    """Build one multi-step neuron: ``spiking_neuron(**neuron_kwargs, step_mode='m')``.

    Any SpikingJelly ``BaseNode`` subclass works (``DecayFireNode``, ``neuron.LIFNode``, ...). The arguments are
    deep-copied per neuron (as SpikingJelly's ResNets do), so a surrogate module passed in is not shared between
    layers. A wrong keyword gets an error that names the node class instead of a bare ``TypeError``. ``None`` means
    ``DecayFireNode``.
    """
    if neuron_kwargs.get("step_mode", "m") != "m":
        raise ValueError(
            f"the models are multi-step internally; step_mode={neuron_kwargs['step_mode']!r} is not supported "
            "(drop the step_mode argument)"
        )
    if spiking_neuron is None:
        from ..neuron import DecayFireNode

        spiking_neuron = DecayFireNode
    kwargs = copy.deepcopy({k: v for k, v in neuron_kwargs.items() if k != "step_mode"})
    name = getattr(spiking_neuron, "__name__", type(spiking_neuron).__name__)
    try:
        node = spiking_neuron(**kwargs, step_mode="m")
    except TypeError as err:
        raise TypeError(
            f"could not build the spiking neuron {name}(**{kwargs!r}, step_mode='m'): {err}. Keyword arguments "
            "that are not SpikingResNet arguments are passed to spiking_neuron; check their spelling, or pass a "
            "node class that accepts them"
        ) from err
    if not isinstance(node, nn.Module):
        raise TypeError(f"spiking_neuron must build an nn.Module (a SpikingJelly node), got {type(node).__name__}")
    return node


def neuron_threshold(node: nn.Module) -> float:
    """The firing threshold ``V_th`` of a node (its ``v_threshold`` attribute), needed by ``norm='tdbn'``."""
    v_th = getattr(node, "v_threshold", None)
    if v_th is None:
        raise ValueError(
            f"norm='tdbn' initialises BN scales to alpha*V_th but {type(node).__name__} has no v_threshold "
            "attribute; use norm='bn' or a node with a v_threshold"
        )
    return float(v_th)


def init_bn(bn: nn.BatchNorm2d, norm: str, v_threshold: float, alpha: float = 1.0) -> None:
    """Initialise a BN: ``gamma = 1`` (``norm='bn'``) or ``gamma = alpha * V_th`` (``norm='tdbn'``); ``beta = 0``."""
    nn.init.constant_(bn.weight, alpha * v_threshold if norm == "tdbn" else 1.0)
    nn.init.zeros_(bn.bias)


def _shortcut(in_planes: int, out_planes: int, stride: int, identity_bn: bool) -> nn.Module:
    if stride != 1 or in_planes != out_planes:
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    return nn.BatchNorm2d(out_planes) if identity_bn else nn.Identity()


def _shortcut_bn(shortcut: nn.Module) -> nn.BatchNorm2d | None:
    if isinstance(shortcut, nn.BatchNorm2d):
        return shortcut
    if isinstance(shortcut, nn.Sequential):
        return shortcut[1]
    return None


class _SpikingBlock(nn.Module):
    """Shared parts: shortcut construction, tdBN initialisation and the residual sum."""

    expansion = 1
    shortcut: nn.Module

    def _init_norms(self, norm: str, v_threshold: float, inner: list[nn.BatchNorm2d], last: nn.BatchNorm2d) -> None:
        for bn in inner:
            init_bn(bn, norm, v_threshold, 1.0)
        init_bn(last, norm, v_threshold, TDBN_RESIDUAL_ALPHA)
        sc_bn = _shortcut_bn(self.shortcut)
        if sc_bn is not None:
            init_bn(sc_bn, norm, v_threshold, TDBN_RESIDUAL_ALPHA)

    @property
    def has_identity_bn(self) -> bool:
        """True when the shortcut is a BN alone on the identity."""
        return isinstance(self.shortcut, nn.BatchNorm2d)

    def _spikes(self, x: Tensor) -> SpikeInput:
        return SpikeInput(x, self.compact)

    def _bn(self, bn: nn.Module, x: Tensor) -> Tensor:
        """A BN on a conv output; ``compact`` saves its input in fp16 (see ``memory.compact_batch_norm``)."""
        return compact_batch_norm(bn, x) if self.compact else bn(x)

    def _apply_shortcut(self, s: SpikeInput) -> Tensor:
        """The shortcut on the block's input spikes ``s`` (saved bit-packed when ``compact``)."""
        if isinstance(self.shortcut, nn.Sequential):  # conv1x1 -> BN: the conv sees the spikes
            return self._bn(self.shortcut[1], s.conv(self.shortcut[0]))
        if isinstance(self.shortcut, nn.BatchNorm2d):
            return s.apply(self.shortcut)
        return self.shortcut(s.x)


class BasicBlock(_SpikingBlock):
    """``conv3x3 -> BN -> neuron -> conv3x3 -> BN`` plus shortcut (conv1x1+BN, BN, or identity), then a neuron.

    Math per step ``t`` (convs/BNs over the flattened ``T*N`` batch)::

        u[t] = BN2(conv2(SN1(BN1(conv1(x[t]))))) + S(x[t]),   y = SN2(u)   (SN runs over t)

    Args:
        in_planes: input channels; planes: output channels; stride: stride of the first conv (and shortcut).
        spiking_neuron: node class (or factory), called as ``spiking_neuron(**neuron_kwargs, step_mode='m')``.
        norm: ``'bn'`` or ``'tdbn'`` (initialisation of the BN scales, see module docstring).
        identity_bn: BN alone on an identity shortcut (``False``: bare identity).
        compact: save the spike inputs of the convs and of the identity-shortcut BN bit-packed (the ``compact``
            memory mode, see ``sj_resnet.models.memory``); the input must then be spikes (0/1), as in a model.

    Shapes: ``[T, N, in_planes, H, W] -> [T, N, planes, H/stride, W/stride]``.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        spiking_neuron: Callable[..., nn.Module] | None = None,
        norm: str = "bn",
        identity_bn: bool = True,
        neuron_kwargs: dict[str, Any] | None = None,
        compact: bool = False,
    ) -> None:
        super().__init__()
        self.compact = bool(compact)
        nk = dict(neuron_kwargs or {})
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.sn1 = make_neuron(spiking_neuron, nk)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, identity_bn)
        self.sn2 = make_neuron(spiking_neuron, nk)
        v_th = neuron_threshold(self.sn1) if norm == "tdbn" else 1.0
        self._init_norms(norm, v_th, [self.bn1], self.bn2)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN at the end of the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x_seq: Tensor) -> Tensor:
        T, N = x_seq.shape[:2]
        s = self._spikes(x_seq.flatten(0, 1))
        out = self.sn1(self._bn(self.bn1, s.conv(self.conv1)).unflatten(0, (T, N)))
        out = self._bn(self.bn2, self._spikes(out.flatten(0, 1)).conv(self.conv2))
        return self.sn2((out + self._apply_shortcut(s)).unflatten(0, (T, N)))


class Bottleneck(_SpikingBlock):
    """``conv1x1 -> BN -> neuron -> conv3x3(stride) -> BN -> neuron -> conv1x1 -> BN`` plus shortcut, then a neuron.

    The stride sits on the 3x3 conv (torchvision's "ResNet v1.5"). Output channels are ``planes * 4``.
    Arguments as :class:`BasicBlock`. Shapes: ``[T, N, in_planes, H, W] -> [T, N, 4*planes, H/stride, W/stride]``.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        spiking_neuron: Callable[..., nn.Module] | None = None,
        norm: str = "bn",
        identity_bn: bool = True,
        neuron_kwargs: dict[str, Any] | None = None,
        compact: bool = False,
    ) -> None:
        super().__init__()
        self.compact = bool(compact)
        nk = dict(neuron_kwargs or {})
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.sn1 = make_neuron(spiking_neuron, nk)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.sn2 = make_neuron(spiking_neuron, nk)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride, identity_bn)
        self.sn3 = make_neuron(spiking_neuron, nk)
        v_th = neuron_threshold(self.sn1) if norm == "tdbn" else 1.0
        self._init_norms(norm, v_th, [self.bn1, self.bn2], self.bn3)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN at the end of the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x_seq: Tensor) -> Tensor:
        T, N = x_seq.shape[:2]
        s = self._spikes(x_seq.flatten(0, 1))
        out = self.sn1(self._bn(self.bn1, s.conv(self.conv1)).unflatten(0, (T, N)))
        out = self.sn2(self._bn(self.bn2, self._spikes(out.flatten(0, 1)).conv(self.conv2)).unflatten(0, (T, N)))
        out = self._bn(self.bn3, self._spikes(out.flatten(0, 1)).conv(self.conv3))
        return self.sn3((out + self._apply_shortcut(s)).unflatten(0, (T, N)))


def dense_repeat(rep: Tensor) -> Tensor:
    """A dense copy of ``rep [T, N, C, H, W]`` (e.g. :func:`batch_norm_repeated`'s stride-0 view over ``T``) in which
    every step keeps the layout of ``rep[0]``: NHWC steps stay NHWC (``channels_last``), so the blocks after the stem
    see the layout of the convolutions' weights. (``.contiguous()`` would make every step NCHW.) A ``rep`` that is
    already materialised (no stride-0 time dim: the naive-repeat fallback, ``T = 1``) is returned as it is."""
    if rep.stride(0) != 0:
        return rep
    return torch.cat([rep[0]] * rep.shape[0]).unflatten(0, rep.shape[:2])


def batch_norm_repeated(bn: nn.Module, y: Tensor, repeats: int) -> Tensor:
    """``bn`` applied to ``repeats`` identical copies of ``y [N, C, H, W]``, computed on one copy.

    Returns ``[repeats, N, C, H, W]`` (an expanded view). Exact, running statistics included: the batch mean and
    the biased variance of ``repeats`` copies equal those of one copy, so the output is ``bn`` on one copy; only
    the unbiased variance that goes into ``running_var`` differs (count ``repeats*N*H*W`` instead of ``N*H*W``),
    and it is updated here with the count of the repeated batch. A norm layer that is not a plain
    ``nn.BatchNorm2d`` (``SyncBatchNorm``, a user's norm) or a single-value-per-channel batch falls back to the
    naive repeat, which is exact by definition.
    """
    if repeats == 1:
        return bn(y).unsqueeze(0)
    per_channel = y.numel() // max(y.shape[1], 1)
    training = bn.training or getattr(bn, "running_mean", None) is None
    if type(bn) is not nn.BatchNorm2d or (training and per_channel < 2):
        return seq_apply(bn, y.unsqueeze(0).expand(repeats, *y.shape))
    if not training:
        return bn(y).unsqueeze(0).expand(repeats, *y.shape)
    out = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = (1.0 / bn.num_batches_tracked).to(bn.running_mean.dtype)
            else:
                factor = bn.momentum
            ys = y.detach()
            if ys.dtype not in (torch.float32, torch.float64):
                ys = ys.float()
            var, mean = torch.var_mean(ys, dim=(0, 2, 3), unbiased=False)
            n = per_channel * repeats
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), factor)
    return out.unsqueeze(0).expand(repeats, *y.shape)
