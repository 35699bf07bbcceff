"""``--memory`` on the command line: validated by the memory module's parser, stored in the model spec."""

from __future__ import annotations

import pytest

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
