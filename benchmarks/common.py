"""Shared helpers of the benchmark scripts: interleaved timing, saved-for-backward bytes, peak memory,
machine description and result files.

Timing method. Every script compares implementations *interleaved*: after a warm-up, each round runs every
implementation once (the order rotates from round to round so none always runs first), and the statistic is
the median over rounds. On a shared or throttling machine, load changes hit all implementations of a round
alike, so the ratios of medians are much more stable than the absolute times. On the CPU a sample is
``time.perf_counter`` around ``inner`` calls; on CUDA it is a pair of CUDA events around the same calls.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The STBP neuron every benchmark compares: leak 0.25, threshold 0.5, rectangular surrogate of width 1 (alpha 1).
STBP_DECAY, STBP_V_TH, STBP_ALPHA = 0.25, 0.5, 1.0


# --------------------------------------------------------------------------------------------------
# The compared neurons
# --------------------------------------------------------------------------------------------------


def sj_surrogate(name: str) -> torch.nn.Module:
    """``'Rect'`` -> SpikingJelly ``Rect(alpha=STBP_ALPHA)`` (the STBP surrogate); ``'ATan'`` -> its default ATan."""
    from spikingjelly.activation_based import surrogate

    if name not in ("Rect", "ATan"):
        raise ValueError(f"benchmarks compare the Rect and ATan surrogates, not {name!r}")
    return surrogate.Rect(alpha=STBP_ALPHA) if name == "Rect" else surrogate.ATan()


def sj_stbp_lif_kwargs(surrogate_name: str) -> dict:
    """Keyword arguments that make SpikingJelly 2.0's ``LIFNode`` the STBP neuron: ``h = decay * v + x`` needs
    ``tau = 1 / (1 - decay)`` with ``decay_input=False``, hard reset to 0."""
    return dict(tau=1.0 / (1.0 - STBP_DECAY), decay_input=False, v_threshold=STBP_V_TH, v_reset=0.0,
                surrogate_function=sj_surrogate(surrogate_name))


def min_traffic_bytes(T: int, n: int, dtype: torch.dtype, with_backward: bool) -> int:
    """Bytes a fused kernel must move for the benchmark's call (fresh state, ``v_last`` only, the loss through the
    spikes, constant decay, fp32 state saved): ``traffic.forward_bytes`` / ``training_step_bytes`` of
    ``sj_resnet.neuron.backends.cupy.traffic``, the formula the kernel byte-count tests assert."""
    from sj_resnet.neuron.backends.cupy import traffic

    e = torch.empty((), dtype=dtype).element_size()
    if with_backward:
        return traffic.training_step_bytes(T, n, e).total
    return traffic.forward_bytes(T=T, n=n, x_size=e, state_size=4, saved_size=4, v0=False, store_v_seq=False).total


# --------------------------------------------------------------------------------------------------
# Machine and files
# --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str) -> str:
    """``'Intel(R) Xeon(R) Processor'`` -> ``'intel-xeon-processor'``."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def device_slug(device: torch.device) -> str:
    """``cpu-<cpu model>`` or ``cuda-<gpu model>``, used in result file names."""
    return f"{device.type}-{slug(device_name(device))}"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def git_state() -> dict:
    """Commit of the checkout; whether the benchmarked code (``sj_resnet/neuron``, ``/models``) had local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sj_resnet/neuron", "sj_resnet/models"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head or None, "sj_resnet_dirty": bool(dirty)}


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: hardware, load, library versions."""
    info = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spikingjelly": _version("spikingjelly"),
        "sj_resnet": _version("sj-resnet"),
        "cupy": _version("cupy-cuda12x") or _version("cupy-cuda13x") or _version("cupy"),
        "triton": _version("triton"),
        "loadavg_start": list(os.getloadavg()),
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **git_state(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
    return info


def today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")


def result_path(kind: str, device: torch.device, out_dir: Path | None = None, threads: int | None = None) -> Path:
    """``benchmarks/results/<kind>-<device slug>[-<threads>t]-<date>[-<n>].json`` (threads when set explicitly).

    A file that already exists is never replaced: a second run on the same day gets ``-2``, ``-3``, ... (the
    docs generator picks the newest run by the time stamp inside each file, not by its name).
    """
    tag = f"-{threads}t" if threads and device.type == "cpu" else ""
    stem = f"{kind}-{device_slug(device)}{tag}-{today()}"
    folder = out_dir or RESULTS_DIR
    path, n = folder / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.json"
    return path


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload.setdefault("machine", {})["loadavg_end"] = list(os.getloadavg())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(obj):
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, (torch.device, Path)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def parse_dtype(name: str) -> torch.dtype:
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(table)}")
    return table[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


def parse_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], inner: int, device: torch.device) -> float:
    """Seconds per call of ``fn``, averaged over ``inner`` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int = 15,
    warmup: int = 2,
    min_sample_s: float = 0.0,
    max_inner: int = 1000,
    time_budget_s: float | None = None,
) -> dict[str, dict]:
    """Median seconds per call of each function, measured round by round.

    Each round times every function once (rotated order). ``inner`` calls per sample are chosen per
    function so that a sample lasts about ``min_sample_s`` (1 call when 0). ``time_budget_s`` stops early
    (after at least 3 rounds) when the rounds would exceed it. Returns per name ``{"median_s", "min_s",
    "iqr_s", "rounds", "inner", "samples_s"}`` (``samples_s`` in round order, for per-round ratios).
    """
    names = list(fns)
    inner = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        synchronize(device)
        one = time_calls(fns[name], 1, device)
        inner[name] = 1 if min_sample_s <= 0 else int(min(max_inner, max(1, math.ceil(min_sample_s / max(one, 1e-9)))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name].append(time_calls(fns[name], inner[name], device))
        if time_budget_s is not None and r >= 2:
            per_round = (time.perf_counter() - t_start) / (r + 1)
            if (time.perf_counter() - t_start) + per_round > time_budget_s:
                break
    out = {}
    for name in names:
        s = sorted(samples[name])
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
        out[name] = {
            "median_s": statistics.median(s),
            "min_s": s[0],
            "iqr_s": q[2] - q[0],
            "rounds": len(s),
            "inner": inner[name],
            "samples_s": samples[name],
        }
    return out


def ratio_stats(num: list[float], den: list[float]) -> float:
    """Median of per-round ratios (more robust to load drift than a ratio of medians)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def saved_bytes(fn: Callable[[], object], exclude: tuple[torch.Tensor, ...] = ()) -> dict:
    """Bytes that autograd keeps for backward while running ``fn``.

    Every tensor packed by ``torch.autograd.graph.saved_tensors_hooks`` is mapped to its storage; each
    distinct storage counts once with its full ``nbytes`` (views of one buffer are not double counted).
    ``bytes_excl_inputs`` leaves out the storages of ``exclude`` (e.g. the input sequence, which a network
    keeps alive anyway when the layer before the neuron saved it). ``fn`` must keep its outputs alive
    until it returns (it is run once; the graph is freed afterwards).
    """
    storages: dict[int, int] = {}
    counts = [0]

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        counts[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    total = sum(storages.values())
    return {
        "bytes": total,
        "bytes_excl_inputs": sum(b for p, b in storages.items() if p not in excluded),
        "tensors_saved": counts[0],
        "storages": len(storages),
    }


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated above the starting level while ``fn`` runs.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: replays the allocation/free events recorded by
    ``torch.profiler`` (``profile_memory=True``) in time order and takes the running maximum.
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:
        return None
    events.sort()
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, rounds: int = 20) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted), CUDA only."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    res = interleaved_medians({"copy": lambda: dst.copy_(src)}, device, rounds=rounds, warmup=3)
    return 2 * src.numel() * 4 / res["copy"]["median_s"]


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
