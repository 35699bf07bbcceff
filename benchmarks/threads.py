"""The CPU thread policy of ``sj-resnet train``, measured: OpenMP wait policy × threads × background load.

Each configuration runs the real command (``sj-resnet train``, the default digits recipe, a few epochs) in a
fresh process, so OpenMP reads its environment at start exactly as a user's run does, and records the
training throughput (img/s) of every epoch after the first (the first includes warm-up). Background load is
one or more busy loops (``nice -n 19`` unless ``--burner-nice`` says otherwise), started for a block of runs and
stopped after it. The configurations of one load level are interleaved (the order rotates between repetitions),
so slow drifts of a shared host hit all of them alike.

Usage::

    python -m benchmarks.threads          # 3 epochs, 1 repetition, writes benchmarks/results/threads-*.json
    python -m benchmarks.threads --epochs 4 --repeat 2 --loads 0 1 2 --waits default passive spin10000

Wait policies: ``default`` (libgomp's: spin ~300 000 iterations at a barrier, then sleep; the CLI is started
with torch already loaded so that it cannot set a policy), ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: sleep at
once), ``spinN`` (``GOMP_SPINCOUNT=N``, then sleep).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sj_resnet.train.threads import SPIN_COUNT_ENV, WAIT_POLICY_ENV

from . import common

# The CLI driver: torch is imported first, so `prefer_wait_policy` cannot change the policy the parent chose.
_DRIVER = "import sys, torch; from sj_resnet.cli import main; sys.exit(main(sys.argv[1:]))"
_BURNER = "while True: pass"


def wait_env(wait: str) -> dict[str, str]:
    """Environment variables for one wait policy name."""
    env = {k: v for k, v in os.environ.items() if k not in (WAIT_POLICY_ENV, SPIN_COUNT_ENV)}
    if wait == "passive":
        env[WAIT_POLICY_ENV] = "PASSIVE"
    elif wait.startswith("spin"):
        env[SPIN_COUNT_ENV] = str(int(wait[4:]))
    elif wait != "default":
        raise SystemExit(f"benchmarks.threads: unknown wait policy {wait!r}; use default, passive or spinN")
    return env


def run_once(wait: str, threads: int, epochs: int, out: Path, extra: list[str] = ()) -> dict:
    """One training command; its per-epoch img/s and wall/CPU time of the whole process."""
    argv = ["train", "--epochs", str(epochs), "--threads", str(threads), "--no-tensorboard", "--no-plot",
            "-o", str(out), *extra]
    t0 = time.perf_counter()
    r0 = os.times()
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *argv], env=wait_env(wait),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks.threads: the run failed ({wait}, {threads} threads):\n{proc.stderr[-2000:]}")
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    img_s = [float(r["train_img_s"]) for r in rows]
    return {"img_s": img_s, "epoch_s": [float(r["epoch_s"]) for r in rows], "wall_s": wall,
            "cpu_s": (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system),
            "final_acc1": float(rows[-1]["test_acc1"])}


def summarize(results: list[dict]) -> list[dict]:
    """Median steady-state img/s per (load, wait policy, threads), in the order first seen."""
    groups: dict[tuple, list[float]] = {}
    for r in results:
        groups.setdefault((r["load"], r["wait"], r["threads"]), []).append(r["steady_img_s"])
    return [{"load": k[0], "wait": k[1], "threads": k[2], "img_s": statistics.median(v), "runs": len(v)}
            for k, v in groups.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--waits", nargs="+", default=["default", "passive"])
    p.add_argument("--loads", type=int, nargs="+", default=[0, 1],
                   help="numbers of busy loops beside the runs")
    p.add_argument("--burner-nice", type=int, default=19, help="nice value of the busy loops (19: lowest priority)")
    p.add_argument("--train-args", default="", help="extra options of the train command, e.g. '--width 24'")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default: benchmarks/results/threads-*.json)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        raise SystemExit("benchmarks.threads: --epochs must be >= 2 (the first epoch is warm-up)")
    for w in args.waits:
        wait_env(w)

    device = torch.device("cpu")
    machine = common.machine_info(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="sjr-threads-") as tmp:
        for load in args.loads:
            burner = ["nice", "-n", str(args.burner_nice), sys.executable, "-c", _BURNER]
            burners = [subprocess.Popen(burner) for _ in range(load)]
            try:
                configs = [(w, t) for w in args.waits for t in args.threads]
                for rep in range(args.repeat):
                    k = rep % len(configs)
                    for wait, threads in configs[k:] + configs[:k]:
                        out = Path(tmp) / f"l{load}-{wait}-{threads}-{rep}"
                        res = run_once(wait, threads, args.epochs, out, args.train_args.split())
                        steady = statistics.median(res["img_s"][1:])
                        print(f"load {load} (nice {args.burner_nice})  {wait:>12}  {threads} thr  img/s {steady:6.1f}  "
                              f"wall {res['wall_s']:6.1f} s  cpu {res['cpu_s']:6.1f} s", flush=True)
                        results.append({"load": load, "wait": wait, "threads": threads, "rep": rep,
                                        "steady_img_s": steady, **res})
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
    summary = summarize(results)
    for row in summary:
        print(f"load {row['load']}  {row['wait']:>12}  {row['threads']} thr  median img/s {row['img_s']:6.1f}  "
              f"({row['runs']} runs)")
    path = args.out or common.result_path("threads", device)
    common.write_json(path, {"benchmark": "threads", "machine": machine, "epochs": args.epochs,
                             "train_args": args.train_args,
                             "burner_nice": args.burner_nice, "summary": summary, "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
