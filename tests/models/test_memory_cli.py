"""``--memory`` and ``--saved-state`` on the command line: validated by their owners' parsers, stored in the model
spec, the run's config.json and summary.json, and reaching the model's neurons."""

from __future__ import annotations

import json

import pytest
import torch

from sj_resnet.cli import main
from sj_resnet.train.config import ConfigError, resolve
from sj_resnet.train.modeling import build_model, model_spec


def test_memory_option_is_normalised_and_reaches_the_model():
    cfg = resolve({"dataset": "fake", "memory": " Checkpoint ", "width": 4, "T": 2})
    assert cfg.memory == "checkpoint:1"
    spec = model_spec(cfg, num_classes=3, in_channels=3)
    assert spec["kwargs"]["memory"] == "checkpoint:1"
    cfg = resolve({"dataset": "fake", "memory": "compact", "width": 4, "T": 2})
    assert str(build_model(model_spec(cfg, 3, 3)).memory) == "compact"
    assert resolve({"dataset": "fake"}).memory == "standard"


def test_bad_memory_option_is_a_one_line_error(capsys):
    with pytest.raises(ConfigError, match="unknown memory mode 'fast'"):
        resolve({"dataset": "fake", "memory": "fast"})
    assert main(["train", "--dataset", "fake", "--memory", "checkpoint:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sj-resnet: error: checkpoint level must be one of (1, 2, 3, 4)") and "\n" not in err


def _neuron_states(model) -> set[str]:
    from sj_resnet.neuron import DecayFireNode

    nodes = [m for m in model.modules() if isinstance(m, DecayFireNode)]
    assert len(nodes) == 17  # resnet18_cifar: stem + 2 per block x 8
    return {n.saved_state for n in nodes}


@pytest.mark.parametrize(
    "memory,saved_state,expected",
    [("standard", None, "fp32"), ("compact", None, "fp16"), ("compact", "fp32", "fp32"), ("standard", "fp16", "fp16"),
     ("checkpoint", "fp16", "fp16")],
)
def test_saved_state_option_reaches_every_neuron(memory, saved_state, expected):
    """``--saved-state`` defaults to the memory mode's choice; given, it wins (compact + fp32 keeps the fp32 neuron
    state with bit-packed spikes)."""
    explicit = {"dataset": "fake", "memory": memory, "width": 4, "T": 2}
    if saved_state is not None:
        explicit["saved_state"] = saved_state
    cfg = resolve(explicit)
    assert cfg.saved_state == expected
    spec = model_spec(cfg, num_classes=3, in_channels=3)
    assert spec["kwargs"]["saved_state"] == expected
    model = build_model(spec)
    assert str(model.memory) == str(cfg.memory) and _neuron_states(model) == {expected}


def test_bad_saved_state_is_a_one_line_error(capsys):
    with pytest.raises(ConfigError, match=r"^--saved-state must be one of fp32, fp16; got 'fp8'$"):
        resolve({"dataset": "fake", "saved_state": "fp8"})
    with pytest.raises(SystemExit):
        main(["train", "--saved-state", "fp8"])
    assert "argument --saved-state: invalid choice: 'fp8'" in capsys.readouterr().err


def test_a_compact_run_with_fp32_neuron_state_records_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "fake", "--width", "4", "--T", "2", "--threads", "1", "--no-tensorboard",
            "--no-plot", "--epochs", "1", "--batch-size", "16", "--limit-train-batches", "2",
            "--limit-eval-batches", "1", "--memory", "compact", "--saved-state", "fp32", "-o", str(out)]
    assert main(args) == 0
    assert "memory=compact, saved_state=fp32" in capsys.readouterr().out  # the run header
    config = json.loads((out / "config.json").read_text())["config"]
    summary = json.loads((out / "summary.json").read_text())
    assert config["saved_state"] == summary["saved_state"] == summary["config"]["saved_state"] == "fp32"
    assert summary["model_spec"]["kwargs"]["saved_state"] == "fp32"
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert _neuron_states(build_model(ck["model_spec"])) == {"fp32"}
