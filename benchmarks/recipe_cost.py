"""Training-step cost of digits recipe knobs, side by side: ms per training sample for each configuration.

Each configuration is the digits default (``sj_resnet.train.recipes.DATASET_DEFAULTS['digits']``: model, neuron,
readout, AdamW settings) on 1-channel ``S×S`` inputs with the knobs below changed, timed as forward, backward and
AdamW step on a fixed random batch, no data loading. After 3 warm-up steps per configuration, every round runs
4 steps of each configuration in rotating order; the statistic is the median over rounds and the ratio to the
first configuration. Use it to price a recipe change before training with it (``docs/training.md``, round 3).

Usage::

    python -m benchmarks.recipe_cost w=24 w=16 w=24,T=3 w=16,b=128 --threads 2 --rounds 5

A configuration is ``key=value`` pairs joined by commas: ``w`` width, ``T`` time steps, ``s`` input side,
``b`` batch (defaults: the digits default's), ``mem`` memory mode (standard), ``cl`` channels_last (1, the
command's layout on a CPU; ``cl=0`` contiguous). The optimizer is the command's (``train.schedule.build_optimizer``:
AdamW, fused).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from sj_resnet.models import create_model
from sj_resnet.train.config import resolve
from sj_resnet.train.modeling import parse_surrogate
from sj_resnet.train.recipes import DATASET_DEFAULTS
from sj_resnet.train.schedule import build_optimizer

DIGITS = DATASET_DEFAULTS["digits"]
KEYS = {"w": DIGITS["width"], "T": DIGITS["T"], "s": DIGITS["image_size"], "b": DIGITS["batch_size"],
        "mem": "standard", "cl": 1}


def parse_config(spec: str) -> dict:
    """``'w=16,T=3'`` -> the full configuration (defaults from :data:`KEYS`)."""
    cfg = dict(KEYS)
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS or not value:
            raise SystemExit(f"benchmarks.recipe_cost: bad configuration item {item!r}; keys: {', '.join(KEYS)}")
        cfg[key] = type(KEYS[key])(value)
    return cfg


def make_step(cfg: dict, seed: int = 0):
    """A closure running one training step of ``cfg`` on a fixed random batch."""
    torch.manual_seed(seed)
    model = create_model(DIGITS["model"], width=cfg["w"], T=cfg["T"], num_classes=10, in_channels=1,
                         readout=DIGITS["readout"], decay=DIGITS["decay"], v_threshold=DIGITS["v_threshold"],
                         surrogate_function=parse_surrogate(DIGITS["surrogate"]), memory=cfg["mem"])
    x = torch.randn(cfg["b"], 1, cfg["s"], cfg["s"])
    if cfg["cl"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg["b"],))
    opt = build_optimizer(model.parameters(), resolve({}))  # the digits default's AdamW, as the command builds it

    def step() -> None:
        functional.reset_net(model)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="configurations, the first is the reference (e.g. w=24 w=16,T=3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="steps per configuration per round")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfgs = [parse_config(c) for c in args.configs]
    steps = [make_step(c) for c in cfgs]
    for step in steps:
        for _ in range(3):
            step()
    samples: list[list[float]] = [[] for _ in cfgs]
    order = list(range(len(cfgs)))
    for _ in range(args.rounds):
        order = order[1:] + order[:1]
        for i in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[i]()
            samples[i].append((time.perf_counter() - t0) / (args.steps * cfgs[i]["b"]))
    base = statistics.median(samples[0])
    print(f"{args.threads} thread(s), {args.rounds} rounds; ms per training sample (median), ratio to the first")
    for spec, s in zip(args.configs, samples, strict=True):
        m = statistics.median(s)
        print(f"  {spec:24s} {m * 1e3:7.2f} ms  {m / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
