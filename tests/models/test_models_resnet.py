"""SpikingResNet and its builders: shapes, structure, exactness of the static stem, gradients, state, neurons."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torchvision
from spikingjelly.activation_based import functional, neuron, surrogate
from torch import nn

from sj_resnet import DecayFireNode, ParametricDecayFireNode
from sj_resnet.models import (
    BasicBlock,
    Bottleneck,
    SpikingResNet,
    create_model,
    list_models,
    resnet18,
    resnet18_cifar,
    resnet19,
    resnet34,
    resnet50,
)

# builder -> (tiny input size, default stem, blocks per stage, block class)
BUILDERS = {
    "resnet18": (32, "imagenet", [2, 2, 2, 2], BasicBlock),
    "resnet34": (32, "imagenet", [3, 4, 6, 3], BasicBlock),
    "resnet50": (32, "imagenet", [3, 4, 6, 3], Bottleneck),
    "resnet101": (32, "imagenet", [3, 4, 23, 3], Bottleneck),
    "resnet152": (32, "imagenet", [3, 8, 36, 3], Bottleneck),
    "resnet19": (16, "cifar", [3, 3, 2], BasicBlock),
    "resnet18_cifar": (16, "cifar", [2, 2, 2, 2], BasicBlock),
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_list_models_has_every_builder():
    assert list_models() == sorted(BUILDERS)


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shapes_every_builder(name, T, run):
    size, stem, layers, block = BUILDERS[name]
    m = create_model(name, T=T, width=4, num_classes=5)
    assert m.stem_kind == stem and [len(s) for s in m.stages()] == layers
    assert all(type(b) is block for s in m.stages() for b in s)
    x = torch.rand(2, 3, size, size)
    assert run(m, x).shape == (2, 5)
    assert run(m, torch.rand(T, 2, 3, size, size)).shape == (2, 5)
    m.return_sequence = True
    assert run(m, x).shape == (T, 2, 5)
    assert run(m, torch.rand(T, 2, 3, size, size)).shape == (T, 2, 5)


@pytest.mark.parametrize("builder, stem", [(resnet18, "cifar"), (resnet18_cifar, "imagenet"), (resnet19, "imagenet")])
def test_stem_can_be_overridden(builder, stem, run):
    m = builder(stem=stem, width=4, num_classes=3, in_channels=2, T=2)
    if stem == "cifar":
        assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, nn.Identity)
    else:
        assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2) and isinstance(m.maxpool, nn.MaxPool2d)
    assert m.conv1.in_channels == 2
    assert run(m, torch.rand(2, 2, 2, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_param_count_is_torchvision_plus_identity_shortcut_bns(name):
    tv = getattr(torchvision.models, name)(num_classes=10)
    # torchvision has a bare identity wherever downsample is None; we put a BN (weight + bias) there.
    identity_bn = sum(
        2 * (b.conv3 if hasattr(b, "conv3") else b.conv2).out_channels
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4)
        for b in layer
        if b.downsample is None
    )
    assert identity_bn > 0
    ours = create_model(name, num_classes=10)
    assert n_params(ours) == n_params(tv) + identity_bn
    assert n_params(create_model(name, num_classes=10, identity_bn=False)) == n_params(tv)
    n_identity = sum(isinstance(b.shortcut, nn.BatchNorm2d) for s in ours.stages() for b in s)
    assert n_identity == sum(b.downsample is None for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4)
                             for b in layer)


def test_identity_shortcuts_have_their_bn():
    for m in (resnet18(width=4), resnet50(width=4), resnet19(width=4)):
        for stage in m.stages():
            for i, b in enumerate(stage):
                if i > 0:
                    assert type(b.shortcut) is nn.BatchNorm2d
                else:
                    assert isinstance(b.shortcut, nn.Sequential | nn.BatchNorm2d)
        bare = type(m)(type(m.layer1[0]), [len(s) for s in m.stages()], width=4, identity_bn=False)
        assert all(isinstance(b.shortcut, nn.Identity | nn.Sequential) for s in bare.stages() for b in s)


def test_resnet19_matches_tdbn_tet_definition():
    m = resnet19(num_classes=10)
    assert [s[0].conv1.out_channels for s in m.stages()] == [128, 256, 512]
    assert [len(s) for s in m.stages()] == [3, 3, 2]
    assert m.conv1.out_channels == 128 and m.conv1.kernel_size == (3, 3)
    assert (m.fc_hidden.in_features, m.fc_hidden.out_features) == (512, 256)
    assert (m.fc.in_features, m.fc.out_features) == (256, 10)
    assert isinstance(m.sn_hidden, DecayFireNode)
    assert isinstance(m.layer1[0].shortcut, nn.BatchNorm2d)  # 128 -> 128: identity with its BN
    tet = resnet19(num_classes=10, stem_channels=64)  # TET's public code: 64-channel stem
    assert isinstance(tet.layer1[0].shortcut, nn.Sequential)
    narrow = resnet19(width=8)
    assert narrow.fc_hidden.out_features == 16  # 2*width, 256 at width 128


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_static_stem_once_equals_naive_repeat(stem):
    """Computing the stem conv+BN once and repeating it == feeding T copies as a sequence (outputs, gradients,
    BN running statistics)."""
    T = 3
    once = resnet18(width=4, num_classes=4, T=T, stem=stem).double()
    naive = copy.deepcopy(once)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    for model, inp in ((once, x), (naive, x.unsqueeze(0).expand(T, *x.shape).contiguous())):
        functional.reset_net(model)
        model(inp).square().sum().backward()
    functional.reset_net(once)
    functional.reset_net(naive)
    for (k, a), (_, b) in zip(once.state_dict().items(), naive.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=lambda s, k=k: f"{k}: {s}")
    for (k, a), (_, b) in zip(once.named_parameters(), naive.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda s, k=k: f"grad of {k}: {s}")
    once.eval()
    naive.eval()
    functional.reset_net(once)
    functional.reset_net(naive)
    torch.testing.assert_close(once(x), naive(x.unsqueeze(0).expand(T, *x.shape)))


@pytest.mark.parametrize(
    "build",
    [
        lambda: resnet18_cifar(width=4, num_classes=3, T=2),
        lambda: resnet19(width=4, num_classes=3, T=2, norm="tdbn", v_threshold=0.2),  # hidden FC must fire
        lambda: resnet50(width=4, num_classes=3, T=2, identity_bn=False),
        lambda: resnet18(width=4, num_classes=3, T=2, spiking_neuron=ParametricDecayFireNode),
    ],
    ids=["resnet18_cifar", "resnet19-tdbn", "resnet50-no-identity-bn", "resnet18-parametric"],
)
def test_gradients_reach_every_parameter(build, run):
    m = build()
    size = 32 if m.stem_kind == "imagenet" else 16
    out = run(m, torch.rand(4, 3, size, size))
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    dead = [k for k, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
            or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient reaches {dead}"


def test_reset_net_gives_the_same_output_twice(run):
    m = resnet18_cifar(width=4, num_classes=3, T=2).eval()
    x = torch.rand(2, 3, 16, 16)
    y1 = run(m, x)
    carried = m(x)  # no reset: the membrane carries over and changes the result
    assert not torch.equal(carried, y1)
    torch.testing.assert_close(run(m, x), y1, rtol=0, atol=0)


def test_spikingjelly_lifnode_equals_decayfirenode():
    """STBP == LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0, Rect): same logits and gradients."""
    decay, v_th = 0.25, 0.5
    ours = resnet18_cifar(width=4, num_classes=3, T=3, decay=decay, v_threshold=v_th).double()
    lif = resnet18_cifar(
        width=4, num_classes=3, T=3, spiking_neuron=neuron.LIFNode, tau=1.0 / (1.0 - decay), decay_input=False,
        v_reset=0.0, v_threshold=v_th, surrogate_function=surrogate.Rect(alpha=1.0),
    ).double()
    assert isinstance(lif.layer2[1].sn2, neuron.LIFNode) and lif.layer2[1].sn2.step_mode == "m"
    lif.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    outs = []
    for m in (ours, lif):
        functional.reset_net(m)
        y = m(x)
        y.sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(ours.conv1.weight.grad, lif.conv1.weight.grad)


def test_neuron_kwargs_reach_every_neuron():
    m = resnet19(width=4, decay=0.5, v_threshold=0.3, backend="reference", detach_reset=True)
    nodes = [x for x in m.modules() if isinstance(x, DecayFireNode)]
    assert len(nodes) == 1 + 2 * 8 + 1  # stem, two per block, hidden FC
    assert all(n.decay == 0.5 and n.v_threshold == 0.3 and n.backend == "reference" and n.detach_reset
               and n.step_mode == "m" for n in nodes)


@pytest.mark.parametrize("readout", ["sum", "mean"])
@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet19"])
def test_return_sequence_reduces_to_the_logits(name, readout, run):
    m = create_model(name, width=4, num_classes=3, T=4, readout=readout).eval()
    with torch.no_grad():
        m.fc.bias.uniform_(-1, 1)
    x = torch.rand(2, 3, 16, 16)
    logits = run(m, x)
    m.return_sequence = True
    seq = run(m, x)
    torch.testing.assert_close(m.reduce_time(seq), logits)
    torch.testing.assert_close(seq.sum(0) if readout == "sum" else seq.mean(0), logits)


def test_readouts_differ_by_a_factor_T(run):
    m = resnet18_cifar(width=4, num_classes=3, T=4).eval()
    x = torch.rand(2, 3, 16, 16)
    y_sum = run(m, x)
    m.readout = "mean"
    y_mean = run(m, x)
    b = m.fc.bias
    torch.testing.assert_close(y_sum - b, 4 * (y_mean - b))


def test_input_errors(run):
    m = resnet18_cifar(width=4, num_classes=3, T=4)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\] or a sequence"):
        m(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="in_channels=1"):
        m(torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="float"):
        m(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"transpose\(0, 1\)"):
        m(torch.rand(2, 4, 3, 16, 16))  # [N, T, C, H, W]
    with pytest.raises(ValueError, match="model.T = 6"):
        m(torch.rand(6, 2, 3, 16, 16))
    m.T = 6
    assert run(m, torch.rand(6, 2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"T": 0}, "T must be"),
        ({"norm": "ln"}, "norm must be"),
        ({"readout": "max"}, "readout must be"),
        ({"stem": "tiny"}, "stem must be"),
        ({"width": 0}, "width must be"),
        ({"step_mode": "s"}, "multi-step"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet18_cifar(**{"width": 4, **kwargs})


def test_unknown_keyword_names_the_neuron():
    with pytest.raises(TypeError, match="DecayFireNode.*spelling"):
        resnet18_cifar(width=4, num_clases=3)


def test_create_model_unknown_name_suggests():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("resnet81")
    assert isinstance(create_model("resnet18_cifar", width=4), SpikingResNet)


def test_zero_init_residual():
    m = resnet34(width=4, zero_init_residual=True, norm="tdbn")
    for s in m.stages():
        for b in s:
            assert torch.count_nonzero(b.last_bn().weight) == 0
            if isinstance(b.shortcut, nn.BatchNorm2d):
                assert torch.count_nonzero(b.shortcut.weight) == b.shortcut.num_features


def test_state_dict_round_trip(run):
    m = resnet19(width=4, num_classes=3, T=2, spiking_neuron=ParametricDecayFireNode, init_decay=0.3)
    run(m, torch.rand(4, 3, 16, 16))  # move the BN running statistics
    keys = m.state_dict().keys()
    assert "layer1.1.shortcut.running_var" in keys and "layer1.0.sn1.w" in keys
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = resnet19(width=4, num_classes=3, T=2, spiking_neuron=ParametricDecayFireNode, init_decay=0.3)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    m.eval()
    fresh.eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(run(fresh, x), run(m, x), rtol=0, atol=0)


def test_surrogate_module_is_not_shared_between_layers():
    m = resnet18_cifar(width=4, surrogate_function=surrogate.ATan(alpha=3.0))
    sgs = [n.surrogate_function for n in m.modules() if isinstance(n, DecayFireNode)]
    assert len({id(s) for s in sgs}) == len(sgs) and all(s.alpha == 3.0 for s in sgs)


@pytest.mark.parametrize("name", ["resnet18", "resnet19"])
def test_bf16_autocast_forward_backward(name, run):
    m = create_model(name, width=4, num_classes=3, T=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = run(m, torch.rand(2, 3, 32, 32))
    assert y.shape == (2, 3) and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert m.bn1.running_var.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
