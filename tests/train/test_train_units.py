"""Unit tests of the training pieces: schedule, samplers, firing-rate hooks, TET loss, config precedence."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron
from torch import nn

from sj_resnet.train import config as cfgmod
from sj_resnet.train.data import ResumableSampler, ShardSampler
from sj_resnet.train.engine import compute_loss
from sj_resnet.train.firing import FiringRateMonitor
from sj_resnet.train.modeling import parse_surrogate
from sj_resnet.train.recipes import DATASET_DEFAULTS, RECIPES
from sj_resnet.train.schedule import WarmupCosine


def test_warmup_cosine_shape():
    f = WarmupCosine(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # (0 + 1) / 10
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_resumable_sampler_skips_exactly():
    ds = list(range(103))
    a = ResumableSampler(ds, num_replicas=2, rank=1, seed=7)
    a.set_epoch(3)
    full = list(a)
    a.set_start(20)
    assert list(a) == full[20:] and len(a) == len(full) - 20
    b = ResumableSampler(ds, num_replicas=2, rank=1, seed=7)
    b.set_epoch(4)
    assert list(b) != full  # a new permutation each epoch
    r0 = ResumableSampler(ds, num_replicas=2, rank=0, seed=7)
    r0.set_epoch(3)
    assert set(r0) | set(full) == set(ds)


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = neuron.IFNode(v_threshold=1.0, step_mode="m")
        self.b = neuron.IFNode(v_threshold=1.0, step_mode="m")

    def forward(self, x):
        return self.b(self.a(x) * 2.0)


def test_firing_monitor_counts_spikes():
    m = _Toy()
    mon = FiringRateMonitor(m)
    assert mon.names == ["a", "b"]
    x = torch.zeros(2, 4, 5)  # [T, N, F]
    x[:, :, :2] = 1.0  # 2 of 5 features fire at every step in layer a
    functional.reset_net(m)
    m(x)
    rates, mean = mon.summary(reduce=False)
    assert rates["a"] == pytest.approx(0.4) and rates["b"] == pytest.approx(0.4)
    assert mean == pytest.approx(0.4)
    mon.reset()
    functional.reset_net(m)
    m(torch.zeros(2, 4, 5))
    assert mon.summary(reduce=False)[0]["a"] == 0.0


def test_tet_loss_matches_formula():
    torch.manual_seed(0)
    out = torch.randn(4, 3, 5)
    y = torch.tensor([0, 2, 4])
    cfg = cfgmod.TrainConfig(loss="tet", tet_lambda=0.2, tet_means=1.0)
    loss, logits = compute_loss(out, y, cfg)
    ce = sum(nn.functional.cross_entropy(out[t], y) for t in range(4)) / 4
    mse = ((out - 1.0) ** 2).mean()
    assert loss.item() == pytest.approx((0.8 * ce + 0.2 * mse).item(), rel=1e-6)
    assert torch.allclose(logits, out.mean(0))
    with pytest.raises(RuntimeError, match="return_sequence"):
        compute_loss(out[0], y, cfg)


def test_config_precedence_and_recipes():
    c = cfgmod.resolve({})
    assert c.dataset == "digits" and c.model == DATASET_DEFAULTS["digits"]["model"]
    c = cfgmod.resolve({"lr": 0.5, "epochs": 3})
    assert c.lr == 0.5 and c.epochs == 3
    c = cfgmod.resolve({"recipe": "tdbn-cifar10-resnet19"})
    assert c.dataset == "cifar10" and c.model == "resnet19" and c.norm == "tdbn" and c.surrogate == "rect:1.0"
    c = cfgmod.resolve({"recipe": "tdbn-cifar10-resnet19", "T": 6})
    assert c.T == 6
    for name, recipe in RECIPES.items():
        assert set(recipe) <= cfgmod.FIELDS, name
        cfgmod.resolve({"recipe": name})


@pytest.mark.parametrize(
    ("explicit", "match"),
    [
        ({"lr": -1.0}, "--lr"),
        ({"opt": "lamb"}, "--opt"),
        ({"surrogate": "nope"}, "surrogate"),
        ({"surrogate": "atan:x"}, "alpha"),
        ({"epochs": 2, "warmup_epochs": 5.0}, "warmup"),
        ({"decay": 1.5}, "decay"),
        ({"recipe": "resnet-9000"}, "recipe"),
        ({"label_smoothing": 1.0}, "label-smoothing"),
    ],
)
def test_config_rejects_bad_values(explicit, match):
    with pytest.raises(cfgmod.ConfigError, match=match):
        cfgmod.resolve(explicit)


def test_resume_conflict_names_the_option():
    stored = cfgmod.resolve({}).to_dict()
    with pytest.raises(cfgmod.ConfigError, match="--width"):
        cfgmod.resolve({"width": 3}, stored)
    assert cfgmod.resolve({"workers": 2}, stored).workers == 2  # harmless options may change


def test_parse_surrogate():
    from spikingjelly.activation_based import surrogate

    sg = parse_surrogate("ATan:3")
    assert isinstance(sg, surrogate.ATan) and sg.alpha == 3.0
    assert isinstance(parse_surrogate("rect"), surrogate.Rect)
    assert parse_surrogate("erf").alpha == surrogate.Erf().alpha  # no ':alpha': the class's default
    assert parse_surrogate("erf:0.5").alpha == 0.5


def test_every_choice_has_one_owner():
    """The CLI's choices are the owners' objects (no copies): datasets, optimizers, losses, AMP modes and memory
    formats from train/config.py, norms and readouts from models/choices.py, backends and saved-state kinds from
    neuron/choices.py; the config checks with the same lists, and the neuron and models use them too."""
    from sj_resnet.cli import build_parser
    from sj_resnet.models import BasicBlock, SpikingResNet
    from sj_resnet.models import choices as model_choices
    from sj_resnet.neuron import DecayFireNode
    from sj_resnet.neuron import choices as neuron_choices
    from sj_resnet.neuron.ops import check_decay

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # argparse keeps sub-parsers nowhere public
    choices = {a.dest: a.choices for a in train._actions if a.choices is not None}
    owners = {"dataset": cfgmod.DATASETS, "norm": model_choices.NORMS, "readout": model_choices.READOUTS,
              "backend": neuron_choices.BACKENDS, "saved_state": neuron_choices.SAVED_STATES,
              "opt": cfgmod.OPTIMIZERS, "loss": cfgmod.LOSSES, "amp": cfgmod.AMP_MODES,
              "memory_format": cfgmod.MEMORY_FORMATS}
    assert set(choices) == set(owners) | {"recipe"} and choices["recipe"] == sorted(RECIPES)
    for dest, owner in owners.items():
        assert choices[dest] is owner, dest
    assert list(DATASET_DEFAULTS) == list(cfgmod.DATASETS)
    for name, owner in (("norm", model_choices.NORMS), ("readout", model_choices.READOUTS),
                        ("backend", neuron_choices.BACKENDS), ("saved_state", neuron_choices.SAVED_STATES)):
        with pytest.raises(cfgmod.ConfigError, match=f"--{name.replace('_', '-')} must be one of {', '.join(owner)}"):
            cfgmod.resolve({name: "nope"})
    # the packages accept exactly their owners' values
    for backend in neuron_choices.BACKENDS:
        assert DecayFireNode(backend=backend).backend == backend
    for saved_state in neuron_choices.SAVED_STATES:
        assert DecayFireNode(saved_state=saved_state).saved_state == saved_state
    with pytest.raises(ValueError, match="unknown backend"):
        DecayFireNode(backend="nope")
    for norm in model_choices.NORMS:
        for readout in model_choices.READOUTS:
            net = SpikingResNet(BasicBlock, [1], width=2, norm=norm, readout=readout, num_classes=2)
            assert (net.norm, net.readout) == (norm, readout)
    for decay in (0.0, 1e-9, 0.5, 1.0, 1.0 + 1e-9, float("nan")):  # the config's decay range is the neuron's
        neuron_ok = config_ok = True
        try:
            check_decay(decay)
        except ValueError:
            neuron_ok = False
        try:
            cfgmod.resolve({"decay": decay})
        except cfgmod.ConfigError:
            config_ok = False
        assert neuron_ok == config_ok == neuron_choices.decay_in_range(decay), decay


def test_the_cli_builds_models_with_strict_state():
    """The training and evaluation loops run with SpikingResNet.strict_state on (they reset before every batch)."""
    from sj_resnet.train.modeling import build_model, model_spec

    cfg = cfgmod.resolve({"width": 4, "T": 2})
    model = build_model(model_spec(cfg, num_classes=10, in_channels=1))
    assert model.strict_state is True
    assert build_model(model_spec(cfg, num_classes=10, in_channels=1), strict_state=False).strict_state is False
