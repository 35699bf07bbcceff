"""Compile every CUDA module of the ``cupy`` backend in parallel into CuPy's disk cache (``CUPY_CACHE_DIR``).

Usage: ``python -m benchmarks.gpu.warm_cache [--jobs N]``. The launcher compiles a module on first use, one
at a time; a fresh machine running the GPU tests would spend minutes in NVRTC. This step compiles all
``launch_plans.all_module_groups()`` (the forward of each dtype, the backward of each dtype x surrogate x
detach_reset x saved kind) in ``N`` processes with exactly the launcher's options, so later processes load
them from disk. ``gpu_check.sh`` runs it before the tests; carry the cache folder to the next run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def compile_group(names: tuple[str, ...]) -> float:
    """Compile one module (on the current device) and return the seconds it took."""
    import cupy

    from sj_resnet.neuron.backends.cupy import launch_plans, launcher

    t0 = time.perf_counter()
    module = cupy.RawModule(code=launch_plans.read_source(),
                            options=launch_plans.compile_options(launcher.nvrtc_version()),
                            name_expressions=list(names))
    module.get_function(names[0])  # compiles (or loads from the disk cache) and loads the module
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    from sj_resnet.neuron.backends.cupy import launch_plans

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    args = p.parse_args(argv)
    groups = launch_plans.all_module_groups()
    print(f"warm_cache: {len(groups)} modules, {args.jobs} processes, CUPY_CACHE_DIR="
          f"{os.environ.get('CUPY_CACHE_DIR', '~/.cupy/kernel_cache')}", flush=True)
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        seconds = list(pool.map(compile_group, groups))
    print(f"warm_cache: done in {time.perf_counter() - t0:.1f} s (slowest module {max(seconds):.1f} s, "
          f"sum {sum(seconds):.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
