"""The smallest honest comparison of the neuron backends on your own hardware.

Compares, on one multi-step input ``x [T, N, F]`` (forward + backward, fresh state each call):

* ``ours torch``     — ``DecayFireNode(backend="torch")``: the fused torch autograd op (CPU and GPU);
* ``ours cupy``      — ``DecayFireNode(backend="cupy")``: the CUDA kernels (only with a GPU and CuPy installed);
* ``ours reference`` — ``DecayFireNode(backend="reference")``: the spec, a plain autograd loop over T;
* ``SJ LIFNode``     — SpikingJelly's ``LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0, Rect)``: the same
  neuron (``h = decay*v + x``, spike at ``h >= V_th``, hard reset to 0), run by SpikingJelly as a loop over T.

First a correctness check: every implementation's spikes must equal the reference's and its input gradient must
match within a float tolerance. Then timing with ``torch.utils.benchmark``, *interleaved*: each round times every
implementation once, in turn, so a busy machine slows all of them alike; the table shows medians over rounds and
the speed-up over SpikingJelly. For the full suite (shapes, dtypes, memory, whole ResNets) see ``benchmarks/`` and
``docs/benchmarks.md``.

Run:
    python docs/examples/compare_backends.py                       # T=8, N=32, F=4096, 7 rounds
    python docs/examples/compare_backends.py --device cuda --N 256
    python docs/examples/compare_backends.py --quick               # a few seconds
"""

from __future__ import annotations

import argparse
import statistics

import torch
from spikingjelly.activation_based import functional, neuron, surrogate
from torch.utils import benchmark

from sj_resnet import DecayFireNode

DECAY, V_TH = 0.25, 0.5


def make_nodes(device: torch.device) -> dict[str, torch.nn.Module]:
    """The implementations that can run on ``device``, by label."""
    rect = surrogate.Rect(alpha=1.0)  # STBP's rectangle surrogate, width 1 height 1
    nodes = {
        "ours torch": DecayFireNode(DECAY, V_TH, rect, step_mode="m", backend="torch"),
        "ours reference": DecayFireNode(DECAY, V_TH, rect, step_mode="m", backend="reference"),
        "SJ LIFNode": neuron.LIFNode(tau=1.0 / (1.0 - DECAY), decay_input=False, v_threshold=V_TH, v_reset=0.0,
                                     surrogate_function=rect, step_mode="m"),
    }
    if device.type == "cuda":
        cupy_node = DecayFireNode(DECAY, V_TH, rect, step_mode="m", backend="cupy")
        try:  # CuPy may be missing or unable to compile for this GPU: say so and go on without it
            cupy_node(torch.zeros(2, 2, device=device))
            nodes = {"ours cupy": cupy_node, **nodes}
        except Exception as err:  # noqa: BLE001 - any failure only means "not available here"
            print(f"(skipping the cupy backend: {type(err).__name__}: {str(err).splitlines()[0]})")
        functional.reset_net(cupy_node)
    return nodes


def run(node: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One independent sequence: reset, forward, backward of ``spikes.sum()``; returns spikes and ``dL/dx``."""
    functional.reset_net(node)
    x = x.detach().requires_grad_(True)
    spikes = node(x)
    spikes.sum().backward()
    return spikes.detach(), x.grad


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--N", type=int, default=32)
    p.add_argument("--F", type=int, default=4096, help="neurons per sample")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="a small input and 3 short rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.N, args.F, args.rounds = 16, 1024, 3
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.T, args.N, args.F, device=device)  # about a third of the neurons fire at each step
    nodes = make_nodes(device)

    # Correctness: same spikes as the reference, input gradients equal up to rounding.
    ref_spikes, ref_grad = run(nodes["ours reference"], x)
    for label, node in nodes.items():
        spikes, grad = run(node, x)
        same = torch.equal(spikes, ref_spikes)
        err = (grad - ref_grad).abs().max().item()
        ok = same and err <= 1e-5
        print(f"check {label:15s} spikes equal: {same}, max |grad - reference| = {err:.1e}  {'OK' if ok else 'FAIL'}")
        if not ok:
            raise SystemExit(f"{label} disagrees with the reference implementation")

    # Timing, interleaved: round r times every implementation once.
    timers = {label: benchmark.Timer("run(node, x)", globals={"run": run, "node": node, "x": x},
                                     num_threads=args.threads) for label, node in nodes.items()}
    times = {label: [] for label in nodes}
    for _ in range(args.rounds):
        for label, timer in timers.items():
            times[label].append(timer.blocked_autorange(min_run_time=0.05 if args.quick else 0.3).median)
    base = statistics.median(times["SJ LIFNode"])
    print(f"\nfwd+bwd, x [{args.T}, {args.N}, {args.F}] float32 on {device}, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'implementation':16s} {'ms':>9s} {'speed-up vs SJ':>15s}")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"{label:16s} {1e3 * med:9.3f} {base / med:14.2f}x")


if __name__ == "__main__":
    main()
