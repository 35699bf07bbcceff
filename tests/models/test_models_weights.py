"""Weights registry and loading: local files (SHA-256 checked), file:// URLs through torch.hub, clear errors."""

from __future__ import annotations

import pytest
import torch

from sj_resnet import ParametricDecayFireNode
from sj_resnet.models import (
    WEIGHTS,
    WeightsEntry,
    WeightsError,
    WeightsMismatchError,
    create_model,
    list_models,
    list_weights,
    register_weights,
    resnet18_cifar,
    resnet19,
    sha256_file,
)

KW = {"width": 4, "num_classes": 3, "T": 2}


@pytest.fixture
def saved(tmp_path):
    """A trained-looking tiny resnet18_cifar saved to disk; returns (model, path, entry)."""
    model = resnet18_cifar(**KW)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.layer1[1].shortcut.running_var.fill_(2.0)
    path = tmp_path / "tiny-resnet18-cifar.pth"
    torch.save(model.state_dict(), path)
    entry = WeightsEntry(str(path), sha256_file(path), arch="resnet18_cifar", kwargs=dict(KW),
                         meta={"dataset": "test", "T": 2, "accuracy": None, "recipe": "random"})
    return model, path, entry


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=lambda s, k=k: f"{k}: {s}")


def test_local_file_loads_and_fills_builder_kwargs(saved):
    model, _, entry = saved
    loaded = resnet18_cifar(weights=entry)  # width / num_classes / T come from the entry
    assert loaded.T == 2 and loaded.fc.out_features == 3
    _same(model, loaded)
    _same(model, create_model("resnet18_cifar", weights=entry))


def test_bad_hash_is_a_clear_error(saved):
    _, path, entry = saved
    wrong = WeightsEntry(str(path), "0" * 64, arch="resnet18_cifar", kwargs=dict(KW))
    with pytest.raises(WeightsError, match="SHA-256.*corrupt"):
        resnet18_cifar(weights=wrong)


def test_truncated_file_is_a_clear_error(saved, tmp_path):
    _, path, _ = saved
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[:100])
    entry = WeightsEntry(str(bad), sha256_file(bad), kwargs=dict(KW))  # the hash fits, the content does not
    with pytest.raises(WeightsError, match="not a readable torch state dict"):
        resnet18_cifar(weights=entry)
    missing = WeightsEntry(str(tmp_path / "nope.pth"), "a" * 64)
    with pytest.raises(WeightsError, match="does not exist"):
        resnet18_cifar(weights=missing, **KW)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        resnet18_cifar(weights=WeightsEntry(str(path), sha256_file(path)), **KW)


def test_wrong_arch_is_refused(saved):
    _, _, entry = saved
    with pytest.raises(WeightsMismatchError, match="for 'resnet18_cifar' but the builder is 'resnet19'"):
        resnet19(weights=entry)


@pytest.mark.parametrize(
    "other, expect",
    [
        ({"identity_bn": False}, r"unexpected keys \(\d+\): layer1\.0\.shortcut\.weight"),
        ({"spiking_neuron": ParametricDecayFireNode}, r"missing keys \(\d+\): sn1\.w"),
        ({"width": 8}, r"shape mismatches .*conv1\.weight \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"),
    ],
    ids=["no-identity-bn", "parametric-neuron", "width"],
)
def test_mismatched_architecture_lists_the_keys(saved, other, expect):
    _, path, entry = saved
    anonymous = WeightsEntry(str(path), entry.sha256)  # no arch/kwargs: the keys themselves must be checked
    with pytest.raises(WeightsMismatchError, match=expect):
        resnet18_cifar(weights=anonymous, **{**KW, **other})


def test_conflicting_explicit_argument(saved):
    _, _, entry = saved
    with pytest.raises(ValueError, match="num_classes=5 conflicts with the weights"):
        resnet18_cifar(weights=entry, num_classes=5)
    resnet18_cifar(weights=entry, num_classes=3)  # agreeing is fine


@pytest.fixture
def registered(saved):
    """``saved``'s entry registered as 'tiny-test' through the public API, and unregistered afterwards."""
    register_weights("tiny-test", saved[2])
    try:
        yield saved
    finally:
        WEIGHTS.pop("tiny-test", None)


def test_registered_name(registered):
    model, _, entry = registered
    assert "tiny-test" in list_weights("resnet18_cifar") and "tiny-test" not in list_weights("resnet19")
    _same(model, resnet18_cifar(weights="tiny-test"))
    with pytest.raises(ValueError, match="already registered"):
        register_weights("tiny-test", WeightsEntry(entry.url, "b" * 64))
    with pytest.raises(ValueError, match="unknown weights 'nope'"):
        resnet18_cifar(weights="nope")
    with pytest.raises(TypeError, match="WeightsEntry"):
        resnet18_cifar(weights=3)


def test_registry_starts_without_fake_entries():
    # docs/models.md: no trained weights are published yet; publishing some must update the docs and this test
    assert WEIGHTS == {} and list_weights() == []


def test_training_checkpoint_with_prefixes(saved, tmp_path):
    model, _, _ = saved
    wrapped = {"epoch": 3, "model": {"module._orig_mod." + k: v for k, v in model.state_dict().items()}}
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    _same(model, resnet18_cifar(weights=WeightsEntry(str(path), sha256_file(path)), **KW))


def test_url_goes_through_torch_hub_with_hash_check(saved, tmp_path):
    model, path, entry = saved
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        url_entry = WeightsEntry(path.as_uri(), entry.sha256, arch="resnet18_cifar", kwargs=dict(KW))
        assert url_entry.is_url and not entry.is_url
        _same(model, resnet18_cifar(weights=url_entry, progress=False))
        cached = list((tmp_path / "hub" / "checkpoints").iterdir())
        assert [p.name for p in cached] == [f"tiny-resnet18-cifar-{entry.sha256}.pth"]
        bad = WeightsEntry(path.as_uri(), "f" * 64, arch="resnet18_cifar", kwargs=dict(KW))
        with pytest.raises(WeightsError, match="does not match its registered SHA-256"):
            resnet18_cifar(weights=bad, progress=False)
    finally:
        torch.hub.set_dir(old)


def test_entry_validation():
    with pytest.raises(ValueError, match="64 hex digits"):
        WeightsEntry("w.pth", "abc")
    with pytest.raises(ValueError, match="URL or a file path"):
        WeightsEntry("", "a" * 64)


def test_list_models_filters_by_pattern():
    assert list_models("resnet1*") == ["resnet101", "resnet152", "resnet18", "resnet18_cifar", "resnet19"]
    assert list_models("*cifar") == ["resnet18_cifar"] and list_models("vgg*") == []


def test_training_checkpoint_loads_its_evaluated_weights(saved, tmp_path):
    """A training checkpoint's 'eval_model' (the EMA of an --ema-decay run) wins over its raw 'model' weights."""
    model, _, _ = saved
    raw = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    path = tmp_path / "last.pt"
    torch.save({"format": "sj_resnet.train/1", "model": raw, "eval_model": model.state_dict()}, path)
    _same(model, resnet18_cifar(weights=WeightsEntry(str(path), sha256_file(path)), **KW))
