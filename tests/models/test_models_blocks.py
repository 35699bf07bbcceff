"""Blocks: shortcut variants, 3D-BN layout, tdBN initialisation, the exact repeated-BN of the static stem."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from spikingjelly.activation_based import functional, neuron
from torch import nn

from sj_resnet.models import BasicBlock, Bottleneck
from sj_resnet.models.blocks import batch_norm_repeated, make_neuron


def _spikes(T, N, C, H, W):
    return (torch.rand(T, N, C, H, W) < 0.3).float()


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("identity_bn", [True, False])
def test_shortcut_kinds(block_cls, identity_bn):
    exp = block_cls.expansion
    same = block_cls(4 * exp, 4, 1, identity_bn=identity_bn)
    down = block_cls(4 * exp, 8, 2, identity_bn=identity_bn)
    wider = block_cls(2, 4, 1, identity_bn=identity_bn)  # channel change at stride 1
    if identity_bn:
        assert type(same.shortcut) is nn.BatchNorm2d and same.shortcut.num_features == 4 * exp
        assert same.has_identity_bn
    else:
        assert isinstance(same.shortcut, nn.Identity) and not same.has_identity_bn
    for b, cout, stride in ((down, 8 * exp, 2), (wider, 4 * exp, 1)):
        conv, bn = b.shortcut
        assert conv.kernel_size == (1, 1) and conv.stride == (stride, stride) and conv.out_channels == cout
        assert isinstance(bn, nn.BatchNorm2d)


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
def test_identity_bn_sees_the_incoming_spikes_and_changes_the_output(block_cls):
    c = 4 * block_cls.expansion
    block = block_cls(c, 4, 1)
    bare = copy.deepcopy(block)
    bare.shortcut = nn.Identity()
    seen = {}
    block.shortcut.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    x = _spikes(3, 2, c, 6, 6)
    functional.reset_net(block)
    y = block(x)
    assert y.shape == x.shape
    assert torch.equal(seen["inp"], x.flatten(0, 1))  # BN on the identity, over (T, N, H, W)
    # The BN is really on the path: a shortcut without it gives a different sum.
    functional.reset_net(bare)
    assert not torch.equal(bare(x), y)


def test_block_bn_equals_batchnorm3d_output_and_running_stats():
    """BN over the flattened [T*N, C, H, W] == BatchNorm3d over [N, C, T, H, W] (the source's 3D-BN)."""
    T, N, C = 4, 3, 6
    block = BasicBlock(C, C, 1).double()
    with torch.no_grad():
        block.bn1.weight.uniform_(0.5, 1.5)
        block.bn1.bias.uniform_(-0.5, 0.5)
    bn3d = nn.BatchNorm3d(C).double()
    bn3d.load_state_dict(block.bn1.state_dict())
    seen = {}
    block.bn1.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    functional.reset_net(block)
    block(_spikes(T, N, C, 5, 5).double())
    x5 = seen["inp"].unflatten(0, (T, N)).permute(1, 2, 0, 3, 4)  # [N, C, T, H, W]
    ref = bn3d(x5).permute(2, 0, 1, 3, 4).flatten(0, 1)
    torch.testing.assert_close(seen["out"], ref)
    torch.testing.assert_close(block.bn1.running_mean, bn3d.running_mean)
    torch.testing.assert_close(block.bn1.running_var, bn3d.running_var)


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("v_th", [0.5, 1.0])
def test_tdbn_init(block_cls, v_th):
    c = 4 * block_cls.expansion
    same = block_cls(c, 4, 1, norm="tdbn", neuron_kwargs={"v_threshold": v_th})
    down = block_cls(c, 8, 2, norm="tdbn", neuron_kwargs={"v_threshold": v_th})
    a = 1 / math.sqrt(2)
    inner = [same.bn1] if block_cls is BasicBlock else [same.bn1, same.bn2]
    for bn in inner:
        torch.testing.assert_close(bn.weight, torch.full_like(bn.weight, v_th))
    for bn in (same.last_bn(), same.shortcut, down.last_bn(), down.shortcut[1]):
        torch.testing.assert_close(bn.weight, torch.full_like(bn.weight, a * v_th))
        assert torch.count_nonzero(bn.bias) == 0
    plain = block_cls(c, 4, 1, norm="bn", neuron_kwargs={"v_threshold": v_th})
    assert torch.all(plain.last_bn().weight == 1) and torch.all(plain.shortcut.weight == 1)


def test_tdbn_reads_the_threshold_of_a_spikingjelly_node():
    b = BasicBlock(4, 4, 1, spiking_neuron=neuron.LIFNode, norm="tdbn")  # LIFNode's default V_th = 1.0
    torch.testing.assert_close(b.bn2.weight, torch.full((4,), 1 / math.sqrt(2)))


def test_make_neuron_errors():
    with pytest.raises(ValueError, match="multi-step"):
        make_neuron(neuron.LIFNode, {"step_mode": "s"})
    with pytest.raises(TypeError, match="LIFNode.*spelling"):
        make_neuron(neuron.LIFNode, {"taux": 2.0})
    assert make_neuron(neuron.LIFNode, {"step_mode": "m"}).step_mode == "m"


def _naive(bn, y, T):
    return bn(y.unsqueeze(0).expand(T, *y.shape).flatten(0, 1)).unflatten(0, (T, y.shape[0]))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_batch_norm_repeated_is_exact(momentum, T):
    bn = nn.BatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
    ref_bn = copy.deepcopy(bn)
    for step in range(3):  # several updates: the cumulative average (momentum=None) uses num_batches_tracked
        y = (torch.randn(2, 3, 4, 4, dtype=torch.float64) * (step + 1)).requires_grad_()
        y_ref = y.detach().clone().requires_grad_()
        out = batch_norm_repeated(bn, y, T)
        ref = _naive(ref_bn, y_ref, T)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        out.backward(g)
        ref.backward(g)
        torch.testing.assert_close(y.grad, y_ref.grad)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 3
    bn.eval()
    ref_bn.eval()
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(batch_norm_repeated(bn, y, T), _naive(ref_bn, y, T))


def test_batch_norm_repeated_running_var_uses_the_repeated_count():
    """The unbiased running variance must use T*N*H*W, not N*H*W (a plain bn(y) would get this wrong)."""
    bn = nn.BatchNorm2d(1, momentum=1.0).double()
    y = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)  # N*H*W = 2, biased var 0.25
    batch_norm_repeated(bn, y, 3)
    n = 6
    torch.testing.assert_close(bn.running_var, torch.tensor([0.25 * n / (n - 1)], dtype=torch.float64))


def test_batch_norm_repeated_falls_back_for_other_norms_and_tiny_batches():
    class MyBN(nn.BatchNorm2d):
        pass

    bn, ref = MyBN(2), nn.BatchNorm2d(2)
    y = torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(batch_norm_repeated(bn, y, 4), _naive(ref, y, 4))
    torch.testing.assert_close(bn.running_var, ref.running_var)
    one = torch.randn(1, 2, 1, 1)  # one value per channel: only the repeated batch has statistics
    bn2, ref2 = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    torch.testing.assert_close(batch_norm_repeated(bn2, one, 3), _naive(ref2, one, 3))
