"""The neuron implementations the benchmarks compare, behind one small interface.

Every implementation computes the STBP decay-and-fire neuron over a multi-step input ``x [T, *]``
(``h = decay*v + x``, ``o = H(h - V_th)``, ``v = h*(1 - o)``, zero initial state) and returns the spikes;
``make_runner`` gives a callable that resets the state and runs one sequence, so every call is one
independent sequence, for every implementation alike:

The neuron's constants and SpikingJelly set-up are ``benchmarks/common.py``'s (``STBP_*``, ``sj_surrogate``,
``sj_stbp_lif_kwargs``), shared with the ResNet benchmark:

- ``ours_reference`` / ``ours_torch`` / ``ours_cupy``: ``sj_resnet.DecayFireNode(step_mode='m', backend=...)``
  with ``surrogate.Rect(1.0)`` (``cupy`` only for CUDA tensors with CuPy installed).
- ``sj_rect``: SpikingJelly 2.0 ``LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0.0,
  surrogate_function=Rect(1.0), step_mode='m')`` (``common.sj_stbp_lif_kwargs``) — the same neuron. SpikingJelly
  has no kernel for Rect: it runs its Python/autograd loop over T on every device.
- ``sj_atan``: the same ``LIFNode`` with ``surrogate.ATan()`` — a *different surrogate* (its backward
  differs), measured because it is SpikingJelly's fast path (Triton kernel on CUDA, ``torch.ops.sj_lif``
  loop on the CPU).
- ``sj_flexsn``: SpikingJelly 2.0 ``neuron.FlexSN`` with an STBP core (``surrogate.rect`` inside), SpikingJelly's
  generic "write a step function, get a kernel" path (Triton on CUDA when it can trace the core, a torch
  loop on the CPU).
- ``*_compiled``: ``torch.compile`` of the runner (optional; compile time is not counted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .common import STBP_ALPHA, STBP_DECAY, STBP_V_TH, sj_stbp_lif_kwargs, sj_surrogate


@dataclass(frozen=True)
class NeuronImpl:
    key: str
    label: str
    surrogate: str  # 'Rect' (same neuron as ours) or 'ATan' (different surrogate gradient)
    family: str  # 'ours' or 'sj'
    cuda_only: bool = False
    note: str = ""


IMPLS: dict[str, NeuronImpl] = {
    i.key: i
    for i in (
        NeuronImpl("ours_reference", "ours reference", "Rect", "ours", note="plain autograd loop (the spec)"),
        NeuronImpl("ours_torch", "ours torch", "Rect", "ours", note="fused torch.autograd op"),
        NeuronImpl("ours_cupy", "ours cupy", "Rect", "ours", cuda_only=True, note="CUDA kernels via CuPy"),
        NeuronImpl("sj_rect", "SJ LIFNode Rect", "Rect", "sj", note="SpikingJelly loop (no kernel for Rect)"),
        NeuronImpl(
            "sj_atan",
            "SJ LIFNode ATan",
            "ATan",
            "sj",
            note="different surrogate; SpikingJelly's fast path (Triton on CUDA)",
        ),
        NeuronImpl("sj_flexsn", "SJ FlexSN STBP", "Rect", "sj", note="FlexSN with an STBP core"),
    )
}
COMPILABLE = ("ours_torch", "ours_reference", "sj_rect")


def cupy_backend_usable() -> bool:
    """True when the ``cupy`` backend module exists and CuPy sees a GPU."""
    from sj_resnet.neuron import backends

    if not backends.cupy_available():
        return False
    try:
        backends.get_backend("cupy")
    except Exception:
        return False
    return True


def available(key: str, device: torch.device) -> tuple[bool, str]:
    """Whether implementation ``key`` (``*_compiled`` allowed) can run on ``device``, and why not."""
    base = key.removesuffix("_compiled")
    if base not in IMPLS:
        raise ValueError(f"unknown implementation {key!r}; choose from {list_keys()}")
    impl = IMPLS[base]
    if impl.cuda_only and device.type != "cuda":
        return False, "CUDA only"
    if base == "ours_cupy" and not cupy_backend_usable():
        return False, "CuPy or the cupy backend is not available"
    return True, ""


def list_keys() -> list[str]:
    return [*IMPLS, *(f"{k}_compiled" for k in COMPILABLE)]


def label(key: str) -> str:
    base = key.removesuffix("_compiled")
    return IMPLS[base].label + (" (compiled)" if key.endswith("_compiled") else "")


def surrogate_of(key: str) -> str:
    return IMPLS[key.removesuffix("_compiled")].surrogate


def stbp_core(decay: float = STBP_DECAY, v_threshold: float = STBP_V_TH, alpha: float = STBP_ALPHA) -> Callable:
    """A FlexSN core for the STBP neuron: ``(x, v) -> (spike, v_next)``; captures only floats."""
    from spikingjelly.activation_based import surrogate

    def stbp_step(x: Tensor, v: Tensor):
        h = decay * v + x
        spike = surrogate.rect.apply(h - v_threshold, alpha)
        return spike, h * (1.0 - spike)

    return stbp_step


def build_module(key: str) -> torch.nn.Module:
    """The neuron module behind implementation ``key`` (without ``_compiled``), in multi-step mode."""
    from spikingjelly.activation_based import neuron

    if key.startswith("ours_"):
        from sj_resnet import DecayFireNode

        backend = key.removeprefix("ours_")
        return DecayFireNode(decay=STBP_DECAY, v_threshold=STBP_V_TH, surrogate_function=sj_surrogate("Rect"),
                             step_mode="m", backend=backend)
    if key in ("sj_rect", "sj_atan"):
        return neuron.LIFNode(step_mode="m", **sj_stbp_lif_kwargs(IMPLS[key].surrogate))
    if key == "sj_flexsn":
        from spikingjelly.activation_based.neuron.flexsn import FlexSN

        return FlexSN(core=stbp_core(), num_states=1, step_mode="m")
    raise ValueError(f"unknown implementation {key!r}")


def make_runner(key: str, device: torch.device) -> tuple[Callable[[Tensor], Tensor], torch.nn.Module]:
    """``(run, module)``: ``run(x_seq)`` resets the neuron and returns the spikes of one sequence."""
    base = key.removesuffix("_compiled")
    module = build_module(base).to(device)

    def run(x_seq: Tensor) -> Tensor:
        return module(x_seq)

    if key.endswith("_compiled"):
        # each configuration is a new module and shape: raise dynamo's recompile limit so that a long sweep
        # never silently falls back to eager after the default 8 recompilations
        import torch._dynamo.config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 512))
        run = torch.compile(run, dynamic=False)

    def reset_and_run(x_seq: Tensor) -> Tensor:
        module.reset()
        return run(x_seq)

    return reset_and_run, module


def flexsn_implementation(module: torch.nn.Module) -> str | None:
    """Which FlexSN path ran (``'triton'`` / ``'hop'`` on CUDA, ``'torch loop'`` on CPU), if known."""
    cap = getattr(module, "_triton_capability", None)
    if cap is None:
        return None
    if not cap:
        return "torch loop"
    return "triton" if all(cap.values()) else "hop"


def float64_reference(x: Tensor, grad_spike: Tensor, surrogate: str) -> tuple[Tensor, Tensor]:
    """Spikes and ``dL/dx`` for ``L = sum(spikes * grad_spike)`` in float64 (the spec, ``decay_fire_reference``)."""
    from sj_resnet import decay_fire_reference

    xd = x.detach().double().requires_grad_(True)
    v0 = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
    spikes, _, _ = decay_fire_reference(xd, v0, STBP_DECAY, STBP_V_TH, sj_surrogate(surrogate), False)
    (spikes * grad_spike.double()).sum().backward()
    return spikes.detach(), xd.grad
