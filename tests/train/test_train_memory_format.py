"""``--memory-format``: channels_last weights and activations compute the same step as the contiguous layout."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from train_helpers import TINY, cli

from sj_resnet.train.config import MEMORY_FORMATS, ConfigError, resolve
from sj_resnet.train.modeling import build_model, model_spec, resolve_memory_format


def test_auto_is_channels_last_on_the_cpu_and_contiguous_on_cuda():
    assert MEMORY_FORMATS == ("auto", "channels_last", "contiguous")
    assert resolve_memory_format("auto", torch.device("cpu")) == torch.channels_last
    assert resolve_memory_format("auto", torch.device("cuda")) == torch.contiguous_format
    for device in ("cpu", "cuda"):
        assert resolve_memory_format("channels_last", torch.device(device)) == torch.channels_last
        assert resolve_memory_format("contiguous", torch.device(device)) == torch.contiguous_format


def _step(memory: str, fmt: torch.memory_format, in_channels: int):
    cfg = resolve({"width": 8, "T": 3, "memory": memory})
    torch.manual_seed(0)
    model = build_model(model_spec(cfg, num_classes=10, in_channels=in_channels), memory_format=fmt)
    layouts = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda _m, _i, out: layouts.append(
                out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()))
    torch.manual_seed(1)
    x, y = torch.randn(6, in_channels, 12, 12), torch.randint(0, 10, (6,))
    functional.reset_net(model)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, layouts


@pytest.mark.parametrize("memory", ["standard", "compact"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_channels_last_step_matches_contiguous(memory, in_channels):
    loss_c, grads_c, layouts_c = _step(memory, torch.contiguous_format, in_channels)
    loss_l, grads_l, layouts_l = _step(memory, torch.channels_last, in_channels)
    assert layouts_l and all(layouts_l)  # every conv and BN output is NHWC (not merely ambiguous)
    assert not any(layouts_c)
    torch.testing.assert_close(loss_l, loss_c, rtol=1e-5, atol=1e-6)
    for name, g in grads_c.items():
        torch.testing.assert_close(grads_l[name], g, rtol=1e-3, atol=1e-5, msg=name)
    # weights stay NHWC through the optimizer's in-place update
    model = build_model(model_spec(resolve({"width": 8, "T": 2}), 10, 1), memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] == 3
                and m.weight.shape[1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_cli_option_header_and_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "1", "--limit-train-batches", "2", "--memory-format", "contiguous",
               "-o", run) == 0
    assert "contiguous layout" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["config"]["memory_format"] == "contiguous"
    # eval may choose its own layout (EVAL_FIELDS): the same accuracy up to the convolutions' rounding
    out = tmp_path / "eval.json"
    assert cli("eval", "--checkpoint", run, "--memory-format", "channels_last", "--threads", "1",
               "--output", out) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(out.read_text())["acc1"] == pytest.approx(summary["final"]["test_acc1"], abs=2 / 360)
    with pytest.raises(ConfigError, match="--memory-format"):
        resolve({"memory_format": "nhwc"})  # the same check for a config that did not come from argparse
