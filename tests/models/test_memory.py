"""Memory modes: parsing, bit packing, exact gradients of the packed spikes, the BN bound, checkpointing."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from spikingjelly.activation_based import functional, neuron
from torch import nn

from sj_resnet import DecayFireNode
from sj_resnet.models import BasicBlock, Bottleneck, blocks, create_model
from sj_resnet.models import memory as mem
from sj_resnet.models.memory import (
    BN_INPUT_REL_ERROR,
    MemoryMode,
    SpikeInput,
    compact_batch_norm,
    pack_bits,
    parse_memory,
    unpack_bits,
)

# ------------------------------------------------------------------------------------------------
# parse_memory
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, MemoryMode("standard")),
        ("standard", MemoryMode("standard")),
        ("compact", MemoryMode("compact")),
        (" Compact ", MemoryMode("compact")),
        ("checkpoint", MemoryMode("checkpoint", 1)),
        ("checkpoint:3", MemoryMode("checkpoint", 3)),
    ],
)
def test_parse_memory(spec, expected):
    assert parse_memory(spec) == expected
    assert parse_memory(str(expected)) == expected  # str() round-trips (what configs store)


@pytest.mark.parametrize("spec", ["fast", "checkpoint:0", "checkpoint:5", "checkpoint:x", "compact:1", "standard:"])
def test_parse_memory_rejects_with_the_spellings(spec):
    with pytest.raises(ValueError, match="checkpoint"):
        parse_memory(spec)


def test_parse_memory_rejects_non_strings():
    with pytest.raises(TypeError, match="memory must be a string"):
        parse_memory(3)


# ------------------------------------------------------------------------------------------------
# pack_bits / unpack_bits
# ------------------------------------------------------------------------------------------------


def test_pack_all_256_byte_patterns_exactly():
    patterns = ((torch.arange(256).unsqueeze(1) >> torch.arange(7, -1, -1)) & 1).float()  # row b: bits of b
    packed = pack_bits(patterns)
    assert torch.equal(packed.bits.long(), torch.arange(256))  # first element in the high bit
    assert torch.equal(unpack_bits(packed), patterns)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 7), (2, 3, 5, 9), (0, 4)])
def test_pack_roundtrip_shapes_dtypes(shape, dtype):
    x = (torch.rand(shape) > 0.6).to(dtype)
    packed = pack_bits(x)
    assert packed.nbytes == (x.numel() + 7) // 8 and packed.bits.dtype == torch.uint8
    y = unpack_bits(packed)
    assert y.dtype == dtype and y.shape == x.shape and torch.equal(y, x)
    assert unpack_bits(packed, torch.float32).dtype == torch.float32


def test_pack_channels_last_keeps_the_layout():
    x = (torch.rand(2, 5, 3, 4) > 0.5).float().contiguous(memory_format=torch.channels_last)
    y = unpack_bits(pack_bits(x))
    assert torch.equal(y, x) and y.stride() == x.stride()


def test_pack_rejects_a_non_dense_view():
    with pytest.raises(ValueError, match="contiguous"):
        pack_bits(torch.zeros(4, 6)[:, ::2])


# ------------------------------------------------------------------------------------------------
# compact: exactness of the packed spike inputs
# ------------------------------------------------------------------------------------------------


def _exact_compact(monkeypatch) -> dict:
    """Compact with only the exact parts on: BN inputs saved in full, fp32 neuron state (where the node has one)."""
    monkeypatch.setattr(blocks, "compact_batch_norm", lambda bn, x: bn(x))
    return {"saved_state": "fp32"} if mem._takes_saved_state(DecayFireNode) else {}


def _grads(model: nn.Module, x: torch.Tensor, amp: bool = False) -> dict[str, torch.Tensor]:
    functional.reset_net(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone() for n, p in model.named_parameters()}


def _twins(name: str, memory: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    ref = create_model(name, num_classes=5, backend="torch", **kwargs)
    other = create_model(name, num_classes=5, backend="torch", memory=memory, **kwargs)
    other.load_state_dict(ref.state_dict())
    return ref, other


@pytest.mark.parametrize(
    "name, size, kwargs",
    [
        ("resnet18_cifar", 12, {"width": 8}),  # identity BN and conv1x1 shortcuts
        ("resnet18", 32, {"width": 8}),  # ImageNet stem: max-pool over spikes
        ("resnet50", 32, {"width": 4}),  # Bottleneck
        ("resnet18_cifar", 12, {"width": 8, "identity_bn": False}),
    ],
)
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_compact_spike_packing_gradients_are_bit_identical(monkeypatch, name, size, kwargs, amp):
    kwargs = {**kwargs, **_exact_compact(monkeypatch)}
    ref, compact = _twins(name, "compact", T=2, **kwargs)
    x = torch.rand(3, 3, size, size)
    g_ref, g_compact = _grads(ref, x, amp), _grads(compact, x, amp)
    for k, g in g_ref.items():
        assert torch.equal(g, g_compact[k]), k
    for (k, a), b in zip(ref.state_dict().items(), compact.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # BN running statistics too


def _neuron_outputs_alive(model: nn.Module, x: torch.Tensor, amp: bool = False) -> tuple[int, int]:
    """(spike tensors still referenced after the forward, neuron layers): what the graph keeps in full."""
    refs = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: refs.append(weakref.ref(out)))
        for m in model.modules()
        if isinstance(m, neuron.BaseNode)
    ]
    functional.reset_net(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    for h in handles:
        h.remove()
    gc.collect()
    alive = sum(r() is not None for r in refs)
    del out
    return alive, len(refs)


@pytest.mark.parametrize("name, size", [("resnet18_cifar", 12), ("resnet18", 32), ("resnet50", 32)])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_compact_keeps_no_spike_tensor_in_full(name, size, amp):
    width = 4 if name == "resnet50" else 8
    ref, compact = _twins(name, "compact", T=2, width=width)
    x = torch.rand(2, 3, size, size)
    alive_ref, n = _neuron_outputs_alive(ref, x, amp)
    alive_compact, _ = _neuron_outputs_alive(compact, x, amp)
    # standard: the spikes of every neuron but the last (it feeds the average pool, which saves nothing) are saved
    # in full by the conv/BN/max-pool after it
    assert alive_ref == n - 1
    assert alive_compact == 0  # compact: only their bits are


def test_spike_input_packs_once_for_conv_and_identity_bn():
    x = (torch.rand(4, 6, 5, 5) > 0.5).float()
    conv, bn = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
    s = SpikeInput(x, compact=True)
    (s.conv(conv) + s.apply(bn)).sum().backward()
    assert len(s._packed) == 1


def test_spike_input_is_a_no_op_without_grad_or_when_standard():
    x = (torch.rand(2, 3, 4, 4) > 0.5).float()
    conv = nn.Conv2d(3, 3, 1, bias=False)
    assert not SpikeInput(x, compact=False).compact
    with torch.no_grad():
        assert not SpikeInput(x, compact=True).compact
    assert torch.equal(SpikeInput(x, compact=True).conv(conv), conv(x))


def test_compact_max_pool_narrows_the_indices():
    x = (torch.rand(2, 3, 12, 12) > 0.5).float()
    pool = nn.MaxPool2d(3, 2, 1)
    saved = []
    s = SpikeInput(x, compact=True)
    real_pack = s._hooks

    def spy(narrow=None):
        hooks = real_pack(narrow)
        pack = hooks.pack_hook

        def wrapped(t):
            out = pack(t)
            saved.append(out)
            return out

        hooks.pack_hook = wrapped
        return hooks

    s._hooks = spy
    w = torch.randn(2, 3, 6, 6)
    (s.max_pool(pool) * w).sum()  # nothing requires grad: max_pool2d saves nothing
    x.requires_grad_(True)
    s = SpikeInput(x, compact=True)
    s._hooks = spy
    y = s.max_pool(pool)
    y.backward(w)
    g_ref = torch.autograd.grad((pool(x) * w).sum(), x)[0]
    assert torch.equal(x.grad, g_ref)
    kinds = {type(v).__name__: v for v in saved}
    assert set(kinds) == {"PackedBits", "_Narrowed"} and kinds["_Narrowed"].values.dtype == torch.int16


def test_compact_refuses_a_non_spiking_neuron():
    class ReLUNode(nn.ReLU):
        def __init__(self, **kwargs):
            super().__init__()

    with pytest.raises(ValueError, match="not a SpikingJelly node with a spiking surrogate"):
        create_model("resnet18_cifar", width=4, memory="compact", spiking_neuron=ReLUNode)


def test_compact_with_a_spikingjelly_lif_node_is_exact(monkeypatch):
    _exact_compact(monkeypatch)
    kw = {"width": 4, "T": 2, "spiking_neuron": neuron.LIFNode, "tau": 2.0, "decay_input": False, "v_reset": 0.0}
    ref = create_model("resnet18_cifar", num_classes=5, **kw)
    compact = create_model("resnet18_cifar", num_classes=5, memory="compact", **kw)
    compact.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 8, 8)
    g_ref, g_c = _grads(ref, x), _grads(compact, x)
    assert all(torch.equal(g, g_c[k]) for k, g in g_ref.items())


def test_compact_sets_the_fp16_neuron_state_when_the_node_has_one():
    model = create_model("resnet18_cifar", width=4, memory="compact")
    states = {getattr(m, "saved_state", None) for m in model.modules() if isinstance(m, neuron.BaseNode)}
    expected = "fp16" if mem._takes_saved_state(DecayFireNode) else None
    assert states == {expected}


def test_block_repr_and_model_repr_name_the_mode():
    assert "memory='compact'" in repr(create_model("resnet18_cifar", width=4, memory="compact"))
    assert BasicBlock(4, 4, compact=True).compact and not Bottleneck(4, 2).compact


# ------------------------------------------------------------------------------------------------
# compact: the BN input in fp16 (bounded error)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 30.0], ids=["centred", "mean-30-std"])
def test_compact_batch_norm_forward_exact_gradients_within_the_bound(shift):
    torch.manual_seed(1)
    x0 = torch.randn(6, 5, 7, 7) * torch.tensor([0.01, 1.0, 3.0, 100.0, 1.0]).view(1, 5, 1, 1) + shift
    bn_ref, bn_c = nn.BatchNorm2d(5), nn.BatchNorm2d(5)
    with torch.no_grad():
        bn_ref.weight.uniform_(-2, 2)
        bn_ref.bias.uniform_(-1, 1)
    bn_c.load_state_dict(bn_ref.state_dict())
    g = torch.randn_like(x0)
    x_ref, x_c = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    y_ref, y_c = bn_ref(x_ref), compact_batch_norm(bn_c, x_c)
    assert torch.equal(y_ref, y_c)
    assert torch.equal(bn_ref.running_mean, bn_c.running_mean) and torch.equal(bn_ref.running_var, bn_c.running_var)
    y_ref.backward(g)
    y_c.backward(g)

    # The bound (docs/models.md): x_hat' = x_hat (1 + e), |e| <= 2**-11 (+ fp32 rounding), so
    #   |d grad_gamma| <= 2**-11 sum|g x_hat|,   grad_beta exact,
    #   |d grad_x|     <= 2**-10 |gamma| invstd (|x_hat| mean|g x_hat| + mean|g x_hat|)  (per element).
    dims = (0, 2, 3)
    var, mean = torch.var_mean(x0.double(), dim=dims, keepdim=True, correction=0)
    invstd = (var + bn_ref.eps).rsqrt()
    x_hat = (x0.double() - mean) * invstd
    gx = (g.double() * x_hat).abs()
    slack = 1.05
    tol_gamma = slack * BN_INPUT_REL_ERROR * gx.sum(dims) + 1e-5 * gx.sum(dims)
    assert ((bn_c.weight.grad - bn_ref.weight.grad).abs() <= tol_gamma).all()
    assert torch.equal(bn_c.bias.grad, bn_ref.bias.grad)
    gamma = bn_ref.weight.detach().double().view(1, -1, 1, 1).abs()
    tol_x = slack * 2 * BN_INPUT_REL_ERROR * gamma * invstd * (x_hat.abs() + 1) * gx.mean(dims, keepdim=True)
    fp32_round = 1e-5 * (x_ref.grad.double().abs() + gamma * invstd * g.double().abs().mean(dims, keepdim=True))
    assert ((x_c.grad.double() - x_ref.grad.double()).abs() <= tol_x + fp32_round).all()
    # and the bound is not vacuous: the error is visible but far below the gradients themselves
    assert (x_c.grad - x_ref.grad).abs().max() < 1e-2 * x_ref.grad.abs().max()


def test_compact_batch_norm_passes_through_when_it_cannot_help():
    bn = nn.BatchNorm2d(3)
    x16 = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    bn16 = nn.BatchNorm2d(3).to(torch.bfloat16)
    assert torch.equal(compact_batch_norm(bn16, x16), bn16(x16))
    bn.eval()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert torch.equal(compact_batch_norm(bn, x), bn(x))


def test_compact_model_gradients_close_to_standard():
    """Whole model, every compaction on (BN fp16 input, fp16 neuron state where available)."""
    ref, compact = _twins("resnet18_cifar", "compact", T=2, width=8)
    x = torch.rand(4, 3, 12, 12)
    g_ref, g_c = _grads(ref, x), _grads(compact, x)
    num = sum(((g_c[k] - g).double() ** 2).sum() for k, g in g_ref.items()) ** 0.5
    den = sum((g.double() ** 2).sum() for g in g_ref.values()) ** 0.5
    assert 0 < num / den < 2e-2


# ------------------------------------------------------------------------------------------------
# checkpoint
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size, width", [("resnet18_cifar", 12, 8), ("resnet50", 32, 4)])
def test_checkpoint_gradients_are_bit_identical(name, size, width):
    ref, ckpt = _twins(name, "checkpoint", T=2, width=width)
    wrapped = [n for n, _ in ckpt.named_modules() if n.endswith("_checkpoint_wrapped_module")]
    assert len(wrapped) == sum(len(s) for s in ref.stages())  # every block, nothing else
    assert list(ckpt.state_dict()) == list(ref.state_dict())  # same keys: weights load either way
    x = torch.rand(3, 3, size, size)
    for _ in range(2):  # twice: buffers and neuron states are committed once per forward
        g_ref, g_ckpt = _grads(ref, x), _grads(ckpt, x)
        for k, g in g_ref.items():
            assert torch.equal(g, g_ckpt[k]), k
    for (k, a), b in zip(ref.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_levels_2_to_4_need_cuda():
    model = create_model("resnet18_cifar", width=4, T=2, memory="checkpoint:2")
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))  # no training step: nothing happens yet
    with pytest.raises(ValueError, match="measures CUDA memory"):
        model(torch.rand(1, 3, 8, 8))
