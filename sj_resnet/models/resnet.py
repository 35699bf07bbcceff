"""Spiking ResNets with a BatchNorm on every shortcut: ``SpikingResNet`` and its builders.

Data flow::

    x [N, C, H, W] (static image)  --stem conv+BN once, repeated T times (exact)--+
    x [T, N, C, H, W] (event data) --stem conv+BN per step------------------------+--> neuron [-> maxpool]
        -> stages of blocks ([T, N, C, H, W] spikes; convs/BNs see [T*N, C, H, W])
        -> global average pool [T, N, C] [-> hidden FC + neuron (ResNet-19)]
        -> readout: sum over T (default) or mean -> FC -> logits [N, classes]
           (return_sequence=True: FC per step -> [T, N, classes]; readout-reduced over T it equals the logits)

Models are multi-step internally; call ``spikingjelly.activation_based.functional.reset_net(model)`` before
every batch (``strict_state=True`` turns a forgotten reset into an error; ``with model.continue_sequence():``
continues a sequence on purpose). Builders follow torchvision: ``resnet18(*, weights=None, progress=True,
**kwargs)``, keyword arguments as :class:`SpikingResNet` (those it does not know go to the neuron class).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import BasicBlock, Bottleneck, batch_norm_repeated, dense_repeat, init_bn, make_neuron, neuron_threshold
from .choices import NORMS, READOUTS, STEMS, MemoryMode, parse_memory
from .memory import SpikeInput, apply_checkpoint, check_spiking, compact_neuron_kwargs
from .registry import WeightsEntry, register_model
from .weights import load_weights, resolve_weights

__all__ = [
    "SpikingResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet19",
    "resnet18_cifar",
]


def _default_neuron() -> type[nn.Module]:
    from ..neuron import DecayFireNode

    return DecayFireNode


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


class SpikingResNet(nn.Module):
    """A multi-step spiking ResNet whose every shortcut has a BatchNorm (see ``blocks.py``).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]``; stage ``i`` has ``width * 2**i`` planes
            (stride 1 for the first stage, 2 after).
        T: time steps a static ``[N, C, H, W]`` input is repeated over (sequences must have ``T`` steps).
        num_classes: classifier outputs.
        in_channels: input channels (3 for RGB, 2 for DVS polarity frames).
        width: planes of the first stage (64 in torchvision; smaller for quick CPU runs).
        stem: ``'imagenet'`` (conv7x7/2 -> BN -> neuron -> maxpool3x3/2) or ``'cifar'`` (conv3x3/1 -> BN -> neuron).
        stem_channels: stem output channels; default ``width``.
        hidden_fc: if set, a ``Linear(C, hidden_fc)`` + neuron per step before the classifier (ResNet-19's FC 256).
        spiking_neuron: node class or factory, called as ``spiking_neuron(**neuron_kwargs, step_mode='m')``; any
            SpikingJelly ``BaseNode`` subclass works. Default :class:`sj_resnet.DecayFireNode`.
        norm: ``'bn'`` (gamma=1) or ``'tdbn'`` (gamma=alpha*V_th, Zheng et al. 2021).
        identity_bn: BN alone on identity shortcuts (default); ``False`` gives the bare identity of SpikingJelly/SEW.
        zero_init_residual: zero the scale of each block's last BN (torchvision's option).
        readout: ``'sum'`` (default: sum of the pooled features over time) or ``'mean'``.
        return_sequence: return per-step logits ``[T, N, classes]`` (for TET-style losses); see :meth:`forward`.
        memory: what training keeps for backward (``sj_resnet.models.memory``, ``docs/models.md``):
            ``'standard'``; ``'compact'`` (spike inputs of convs and shortcut BNs bit-packed, fp16 neuron state,
            no recomputation); ``'checkpoint[:LEVEL]'`` (SpikingJelly's ``optimize_memory`` on every block).
        strict_state: raise in :meth:`forward` when a call starts on the membrane state that an earlier call left
            behind (a forgotten ``functional.reset_net(model)``: the state would silently carry across batches).
            Continuing a sequence on purpose (streaming a long event sequence in chunks) is
            ``with model.continue_sequence(): model(chunk)``. Off by default, as in SpikingJelly; the
            ``sj-resnet`` training and evaluation loops turn it on.
        **neuron_kwargs: passed to ``spiking_neuron``, e.g. ``decay=0.25, v_threshold=0.5, backend='torch'``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        T: int = 4,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        stem_channels: int | None = None,
        hidden_fc: int | None = None,
        spiking_neuron: Callable[..., nn.Module] | None = None,
        norm: str = "bn",
        identity_bn: bool = True,
        zero_init_residual: bool = False,
        readout: str = "sum",
        return_sequence: bool = False,
        memory: str = "standard",
        strict_state: bool = False,
        **neuron_kwargs: Any,
    ) -> None:
        super().__init__()
        if not (isinstance(block, type) and issubclass(block, nn.Module) and hasattr(block, "expansion")):
            raise TypeError(f"block must be BasicBlock or Bottleneck (a block class with .expansion), got {block!r}")
        if not layers or any(_check_int(n, "each entry of layers") < 1 for n in layers):
            raise ValueError(f"layers must be a non-empty list of block counts, got {layers!r}")
        self.T = _check_int(T, "T")
        num_classes = _check_int(num_classes, "num_classes")
        self.in_channels = _check_int(in_channels, "in_channels")
        width = _check_int(width, "width")
        self.stem_kind = _check_choice(stem, "stem", STEMS)
        self.norm = _check_choice(norm, "norm", NORMS)
        self.readout = _check_choice(readout, "readout", READOUTS)
        self.return_sequence = bool(return_sequence)
        self.memory: MemoryMode = parse_memory(memory)
        self.strict_state = bool(strict_state)
        self._continuing = 0  # depth of continue_sequence() contexts
        stem_channels = width if stem_channels is None else _check_int(stem_channels, "stem_channels")
        spiking_neuron = _default_neuron() if spiking_neuron is None else spiking_neuron
        nk = compact_neuron_kwargs(spiking_neuron, neuron_kwargs) if self.memory.compact else dict(neuron_kwargs)
        block_kwargs = {"compact": True} if self.memory.compact else {}

        # Stem. The conv+BN run on [N, C, H, W] (static input, once) or [T*N, C, H, W] (sequence).
        if self.stem_kind == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.sn1 = make_neuron(spiking_neuron, nk)
        v_th = neuron_threshold(self.sn1) if self.norm == "tdbn" else 1.0
        init_bn(self.bn1, self.norm, v_th)

        # Stages.
        in_planes = stem_channels
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(
                    block(in_planes, planes, stride, spiking_neuron, self.norm, identity_bn, nk, **block_kwargs)
                )
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.num_stages = len(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.num_features = in_planes

        # Head.
        if hidden_fc is not None:
            hidden_fc = _check_int(hidden_fc, "hidden_fc")
            self.fc_hidden: nn.Module | None = nn.Linear(in_planes, hidden_fc)
            self.sn_hidden: nn.Module | None = make_neuron(spiking_neuron, nk)
            in_planes = hidden_fc
        else:
            self.fc_hidden = None
            self.sn_hidden = None
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn().weight)
        if self.memory.compact:
            self._check_spiking()
        if self.memory.name == "checkpoint":
            if self.memory.level == 1:
                apply_checkpoint(self, 1, self._example_forward)
            else:  # levels 2-4 measure CUDA memory on a real batch: applied at the first training step
                self._checkpoint_hook = self.register_forward_pre_hook(self._checkpoint_first_batch)

    # ----------------------------------------------------------------------------------------------

    def stages(self) -> list[nn.Sequential]:
        """The residual stages ``layer1 .. layerK``."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        _check_int(self.T, "model.T")
        if not x.is_floating_point():
            raise TypeError(f"input must be floating point, got {x.dtype}; convert it first, e.g. x.float() / 255")
        if x.dim() not in (4, 5):
            raise ValueError(
                f"input must be a static image batch [N, C, H, W] or a sequence [T, N, C, H, W], got shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[-3] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[-3]} channels (dim {x.dim() - 3} of shape {tuple(x.shape)}) but the model was "
                f"built with in_channels={self.in_channels}; build it with in_channels={x.shape[-3]} or fix the layout"
            )
        if x.dim() == 5 and x.shape[0] != self.T:
            hint = (
                " It looks like [N, T, C, H, W] (SpikingJelly's event datasets batch that way): pass x.transpose(0, 1)."
                if x.shape[1] == self.T
                else f" To run {x.shape[0]} steps, set model.T = {x.shape[0]}."
            )
            raise ValueError(f"sequence input has {x.shape[0]} steps (dim 0 of {tuple(x.shape)}) but T={self.T}.{hint}")

    def forward_stem(self, x: Tensor) -> Tensor:
        """Stem: ``[N, C, H, W]`` or ``[T, N, C, H, W]`` -> spikes ``[T, N, stem_channels, H', W']``.

        A static input's conv+BN run once and are repeated over ``T`` (exact, BN running statistics included,
        see ``blocks.batch_norm_repeated``); a sequence's run on every step.
        """
        if x.dim() == 4:
            # dense: the repeat is a stride-0 view, and a third-party node may .view() its input
            y = dense_repeat(batch_norm_repeated(self.bn1, self.conv1(x), self.T))
        else:
            T, N = x.shape[:2]
            y = self.bn1(self.conv1(x.flatten(0, 1))).unflatten(0, (T, N))
        s = self.sn1(y)
        return SpikeInput(s.flatten(0, 1), self.memory.compact).max_pool(self.maxpool).unflatten(0, s.shape[:2])

    def _check_spiking(self) -> None:
        check_spiking(self.sn1, "the stem neuron")
        for name, m in self.named_modules():
            if isinstance(m, BasicBlock | Bottleneck):
                for child_name, child in m.named_children():
                    if child_name.startswith("sn"):
                        check_spiking(child, f"{name}.{child_name}")

    def _checkpoint_first_batch(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook for ``checkpoint:2-4``: optimise on the first training batch, then remove itself."""
        if not (self.training and torch.is_grad_enabled()):
            return
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"memory='{self.memory}' rewrites the model on its first training batch, which torch.compile cannot "
                "trace; run one training step before compiling, or use checkpoint:1"
            )
        self._checkpoint_hook.remove()
        x = args[0]
        apply_checkpoint(self, self.memory.level, lambda m: m(x))

    def _example_forward(self, model: nn.Module) -> Tensor:
        """A small forward pass for SpikingJelly's memopt probe (which records each block's input)."""
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
        return model(torch.zeros(1, self.in_channels, 32, 32))

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and stages, then global average pooling: returns ``[T, N, num_features]`` (per-step rates)."""
        self._check_input(x)
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return x.mean(dim=(3, 4))

    @contextlib.contextmanager
    def continue_sequence(self) -> Iterator[SpikingResNet]:
        """Let the forwards inside this context start on the state left by the previous call (``strict_state``).

        For a long sequence fed in chunks: ``reset_net(model)``, ``model(chunk0)``, then
        ``with model.continue_sequence(): model(chunk1); model(chunk2)``. Without ``strict_state`` a no-op.
        """
        self._continuing += 1
        try:
            yield self
        finally:
            self._continuing -= 1

    def carried_state(self) -> list[str]:
        """Names of the stateful submodules (SpikingJelly ``MemoryModule``) whose state is not its reset value,
        i.e. was left by an earlier forward; empty right after ``functional.reset_net(model)``."""
        from spikingjelly.activation_based import base

        carried = []
        for name, m in self.named_modules():
            if not isinstance(m, base.MemoryModule):
                continue
            for key, value in m._memories.items():
                initial = m._memories_rv[key]
                if isinstance(initial, Tensor):
                    fresh = isinstance(value, Tensor) and value.shape == initial.shape and torch.equal(value, initial)
                else:
                    fresh = not isinstance(value, Tensor) and value == initial
                if not fresh:
                    carried.append(f"{name}.{key}" if name else key)
        return carried

    def _check_fresh_state(self) -> None:
        if torch.compiler.is_compiling():
            # the check runs eagerly, as a graph break; wrapped here, not at import, which would load torch._dynamo
            return torch.compiler.disable(type(self)._fresh_state_check)(self)
        return self._fresh_state_check()

    def _fresh_state_check(self) -> None:
        carried = self.carried_state()
        if carried:
            more = f" and {len(carried) - 3} more" if len(carried) > 3 else ""
            raise RuntimeError(
                f"strict_state: this forward would start on the membrane state left by the previous call "
                f"({', '.join(carried[:3])}{more}). Call spikingjelly.activation_based.functional.reset_net(model) "
                "before each new batch, or use `with model.continue_sequence():` to continue a sequence on purpose"
            )

    def reduce_time(self, y_seq: Tensor) -> Tensor:
        """The readout's reduction over time (dim 0): ``sum`` or ``mean``."""
        return y_seq.sum(0) if self.readout == "sum" else y_seq.mean(0)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` or ``[T, N, C, H, W]`` -> logits ``[N, num_classes]`` (``[T, N, num_classes]`` with
        ``return_sequence``).

        Logits: ``fc(reduce_t f[t])`` with ``f[t]`` the pooled features (after the hidden FC + neuron, if any) and
        ``reduce`` the readout (sum or mean over ``t``). Per-step output ``y[t] = W f[t] + b / T`` for
        ``readout='sum'`` and ``W f[t] + b`` for ``'mean'``, so that ``reduce_time(y) == logits`` exactly (up to
        rounding); for TET's loss (CE on every ``y[t]``, prediction = mean over t) use ``readout='mean'``.
        """
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.strict_state and not self._continuing:
            self._check_fresh_state()
        f = self.forward_features(x)
        if self.fc_hidden is not None:
            f = self.sn_hidden(self.fc_hidden(f))
        if not self.return_sequence:
            return self.fc(self.reduce_time(f))
        bias = self.fc.bias
        if bias is not None and self.readout == "sum":
            bias = bias / f.shape[0]
        return nn.functional.linear(f, self.fc.weight, bias)

    def extra_repr(self) -> str:
        return (
            f"T={self.T}, stem={self.stem_kind!r}, norm={self.norm!r}, readout={self.readout!r}, "
            f"return_sequence={self.return_sequence}, memory='{self.memory}'"
            + (", strict_state=True" if self.strict_state else "")
        )


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def _resnet(
    arch: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    defaults: dict[str, Any],  # values may be callables of the merged kwargs
    weights: str | WeightsEntry | None,
    progress: bool,
    **kwargs: Any,
) -> SpikingResNet:
    entry = resolve_weights(weights, arch)
    if entry is not None:
        for key, value in entry.kwargs.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(
                    f"{key}={kwargs[key]!r} conflicts with the weights, which need {key}={value!r}; drop the argument"
                )
            kwargs[key] = value
    for key, value in defaults.items():  # a callable default is computed from the arguments so far
        if key not in kwargs:
            kwargs[key] = value(kwargs) if callable(value) else value
    model = SpikingResNet(block, layers, **kwargs)
    if entry is not None:
        load_weights(model, entry, progress=progress)
    return model


_BUILDER_DOC = """{title}

    Args:
        weights: ``None``, a registered weights name (``sj_resnet.models.list_weights('{arch}')``) or a
            ``WeightsEntry``; builder arguments the weights need are filled in.
        progress: show a download progress bar.
        **kwargs: :class:`SpikingResNet` arguments — ``T=4, num_classes=1000, in_channels=3, width={width},
            stem='{stem}', spiking_neuron=DecayFireNode, norm='bn', identity_bn=True, zero_init_residual=False,
            readout='sum', return_sequence=False, strict_state=False, memory='standard'`` (or ``'compact'``,
            ``'checkpoint[:LEVEL]'``) — and neuron arguments (``decay``, ``v_threshold``, ``surrogate_function``,
            ``backend``, ...).
    """


def _doc(title: str, arch: str, width: int, stem: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        fn.__doc__ = _BUILDER_DOC.format(title=title, arch=arch, width=width, stem=stem)
        return fn

    return deco


@register_model
@_doc("Spiking ResNet-18 (BasicBlock, [2, 2, 2, 2]), ImageNet stem.", "resnet18", 64, "imagenet")
def resnet18(*, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any) -> SpikingResNet:
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], {"stem": "imagenet"}, weights, progress, **kwargs)


@register_model
@_doc("Spiking ResNet-34 (BasicBlock, [3, 4, 6, 3]), ImageNet stem.", "resnet34", 64, "imagenet")
def resnet34(*, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any) -> SpikingResNet:
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], {"stem": "imagenet"}, weights, progress, **kwargs)


@register_model
@_doc("Spiking ResNet-50 (Bottleneck, [3, 4, 6, 3]), ImageNet stem.", "resnet50", 64, "imagenet")
def resnet50(*, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any) -> SpikingResNet:
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], {"stem": "imagenet"}, weights, progress, **kwargs)


@register_model
@_doc("Spiking ResNet-101 (Bottleneck, [3, 4, 23, 3]), ImageNet stem.", "resnet101", 64, "imagenet")
def resnet101(*, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any) -> SpikingResNet:
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], {"stem": "imagenet"}, weights, progress, **kwargs)


@register_model
@_doc("Spiking ResNet-152 (Bottleneck, [3, 8, 36, 3]), ImageNet stem.", "resnet152", 64, "imagenet")
def resnet152(*, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any) -> SpikingResNet:
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], {"stem": "imagenet"}, weights, progress, **kwargs)


@register_model
@_doc(
    "ResNet-19 of tdBN (Zheng et al. 2021) / TET (Deng et al. 2022) for CIFAR: CIFAR stem, BasicBlock [3, 3, 2] on "
    "128/256/512 planes, average pool, FC 512->256 + neuron, FC 256->classes.\n\n"
    "    The stem has ``width`` (128) channels as in tdBN's architecture table; TET's public code uses a 64-channel "
    "stem\n    (and so a conv1x1 shortcut in the first block): pass ``stem_channels=64`` for that variant.",
    "resnet19",
    128,
    "cifar",
)
def resnet19(*, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any) -> SpikingResNet:
    # hidden_fc defaults to 2*width (256 at the paper's width 128), so narrowed models stay proportional.
    defaults = {"stem": "cifar", "width": 128, "hidden_fc": lambda kw: 2 * kw["width"]}
    return _resnet("resnet19", BasicBlock, [3, 3, 2], defaults, weights, progress, **kwargs)


@register_model
@_doc("Spiking ResNet-18 for 32x32 inputs: CIFAR stem (conv3x3/1, no maxpool), BasicBlock [2, 2, 2, 2].",
      "resnet18_cifar", 64, "cifar")
def resnet18_cifar(
    *, weights: str | WeightsEntry | None = None, progress: bool = True, **kwargs: Any
) -> SpikingResNet:
    return _resnet("resnet18_cifar", BasicBlock, [2, 2, 2, 2], {"stem": "cifar"}, weights, progress, **kwargs)

