"""``sj-resnet eval``: rebuild the network stored in a checkpoint, score it, report per-layer firing rates.

The checkpoint's ``model_spec`` rebuilds the exact network; its ``config`` supplies the dataset unless the
command line overrides one of :data:`~sj_resnet.train.config.EVAL_FIELDS` (the number of classes and input
channels must match). Where the data lives and whether to download it come from the command line only
(``--data-dir``, ``--download``), never from the checkpoint: a file from elsewhere must not choose paths on this
machine or start a download. Device, process group, threads and data come from the same set-up code as training
(:mod:`sj_resnet.train.runtime`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt_io
from . import distributed
from .config import COMMAND_LINE_ONLY, EVAL_FIELDS, ConfigError, TrainConfig, validate
from .engine import evaluate
from .firing import FiringRateMonitor
from .modeling import build_model, check_backend, count_parameters, resolve_memory_format
from .rundir import check_output_file
from .runtime import build_data, start_runtime


def eval_config(stored: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's config with the command line's ``overrides`` (only :data:`EVAL_FIELDS` may change).

    The device and :data:`COMMAND_LINE_ONLY` fields (data location, download) never come from the checkpoint."""
    bad = sorted(set(overrides) - EVAL_FIELDS)
    if bad:
        raise ConfigError(f"sj-resnet eval does not take {', '.join('--' + b.replace('_', '-') for b in bad)}")
    values = {k: v for k, v in stored.items()
              if k in TrainConfig.__dataclass_fields__ and k not in COMMAND_LINE_ONLY}
    values["device"] = "auto"  # where the checkpoint was trained says nothing about this machine
    values.update(overrides)
    return validate(TrainConfig(**values))


def run_eval(checkpoint: str, overrides: dict[str, Any], output: str | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (file or run directory); ``overrides`` are config fields given on the command line."""
    if output is not None:
        check_output_file(output)  # before the evaluation, not after it
    path = ckpt_io.resolve_path(checkpoint)
    ck = ckpt_io.read(path, map_location="cpu", require_training_state=False)
    cfg = eval_config(ck["config"], overrides)
    rt = start_runtime(cfg)
    try:
        check_backend(cfg.backend, rt.device)
        spec = json.loads(json.dumps(ck["model_spec"]))
        spec["kwargs"]["backend"] = cfg.backend
        data = build_data(cfg, rt)
        bundle, kw = data.bundle, spec["kwargs"]
        if (bundle.num_classes, bundle.in_channels) != (kw["num_classes"], kw["in_channels"]):
            raise ConfigError(
                f"{cfg.dataset} has {bundle.num_classes} classes / {bundle.in_channels} input channels but the "
                f"checkpoint's model has {kw['num_classes']} / {kw['in_channels']}; evaluate it on the dataset it was "
                "trained on"
            )
        model = build_model(spec, memory_format=resolve_memory_format(cfg.memory_format, rt.device)).to(rt.device)
        weights = ck.get("eval_model") or ck["model"]  # the EMA weights of an --ema-decay run
        ckpt_io.load_model_state(model, weights, str(path))
        ev = evaluate(model, model, data.test_loader, cfg, rt.device, bundle.sequence, FiringRateMonitor(model),
                      cfg.limit_eval_batches, show_progress=rt.is_main)
        result = {
            "checkpoint": str(path),
            "epoch": ck.get("epoch"),
            "dataset": bundle.description,
            "model_spec": spec,
            "parameters": count_parameters(model),
            "samples": ev.samples,
            "loss": ev.loss,
            "acc1": ev.acc1,
            "acc5": ev.acc5,
            "firing_rate_mean": ev.firing_mean,
            "firing_rates": ev.firing,
            "seconds": ev.seconds,
        }
        if rt.is_main:
            print(format_eval(result), flush=True)
            if output:
                tmp = Path(output).with_name(f".{Path(output).name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps(result, indent=2) + "\n")
                tmp.replace(output)
        return result
    finally:
        distributed.cleanup()


def format_eval(r: dict[str, Any]) -> str:
    """The human-readable report of :func:`run_eval`: accuracy, loss, and a bar per spiking layer's rate."""
    lines = [
        f"checkpoint {r['checkpoint']} (epoch {r['epoch']}), {r['model_spec']['name']}, "
        f"{r['parameters'] / 1e6:.3f} M params",
        f"data: {r['dataset']}",
        f"acc@1 {100 * r['acc1']:.2f}%  acc@5 {100 * r['acc5']:.2f}%  loss {r['loss']:.4f}  ({r['samples']} samples, "
        f"{r['seconds']:.1f} s)",
        f"firing rates (fraction of neuron-steps that spike; mean {r['firing_rate_mean']:.4f}):",
    ]
    width = max((len(n) for n in r["firing_rates"]), default=10)
    for name, rate in r["firing_rates"].items():
        bar = "#" * int(round(40 * min(1.0, rate)))
        lines.append(f"  {name:<{width}}  {rate:.4f}  {bar}")
    return "\n".join(lines)
