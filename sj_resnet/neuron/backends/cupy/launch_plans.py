"""Launch plans of the CUDA kernels: instantiation names, compile options, vector-path rule, grid, arguments.

One place shared by the CuPy launcher and the CPU tests.

Nothing here imports CuPy, so the CPU tests (nvcc/NVRTC compiles, host-shim execution) use exactly the
instantiation names, compile options and grid computation the GPU launcher uses.

Kernels (``decay_fire.cu``)::

    sjr::decay_fire_forward<X, V, SAVE>
    sjr::decay_fire_backward<X, V, SID, DETACH_RESET, HALF_SAVED>

``X`` is the input C++ type (``float``, ``__half``, ``__nv_bfloat16``, ``double``; in backward the type of
``grad_spike``/``grad_x``), ``V`` the neurons per thread (1, or the dtype's vector width, see ``choose_vec``),
``SAVE`` what forward saves (``SAVE_NONE`` inference, ``SAVE_STATE`` h, ``SAVE_HALF`` float16 ``h - v_th``),
``SID`` the surrogate id of ``surrogates.SURROGATES``. ``store_v_seq``, a zero state and absent gradients are
run-time arguments (null pointers), not instantiations. A launch is ``ceil(n / V / BLOCK)`` blocks of
``BLOCK`` threads, one thread per ``V`` neurons of one time step (n = neurons per step).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ...surrogates import SURROGATES

KERNEL_DIR = Path(__file__).resolve().parent
SOURCE_FILE = KERNEL_DIR / "decay_fire.cu"
HEADER_FILES = (KERNEL_DIR / "surrogates.cuh",)
#: threads per block; also compiled into ``__launch_bounds__``.
BLOCK = 256
#: ``__launch_bounds__`` min blocks per SM: 4 x 256 threads caps registers at 64 per thread (full-speed streaming).
MIN_BLOCKS = 4
#: register budget asserted by the ptxas test (64 = 4 resident blocks of 256 threads).
REGISTER_BUDGET = 64
#: the largest vector word (bytes) a thread loads or stores at once.
MAX_WORD_BYTES = 16


@dataclass(frozen=True)
class KernelDType:
    """One supported input dtype: its C++ type, state type and vector width."""

    name: str  # torch dtype name, e.g. "float16"
    ctype: str  # C++ input type
    itemsize: int
    state_ctype: str  # "float" or "double"
    state_itemsize: int
    vec: int  # neurons per thread on the vector path

    @property
    def scalar_kind(self) -> str:
        """The launch-argument kind of a state-typed scalar (``v_th``, ``alpha``)."""
        return "f64" if self.state_ctype == "double" else "f32"


DTYPES: dict[str, KernelDType] = {
    "float32": KernelDType("float32", "float", 4, "float", 4, 4),
    "float16": KernelDType("float16", "__half", 2, "float", 4, 4),
    "bfloat16": KernelDType("bfloat16", "__nv_bfloat16", 2, "float", 4, 4),
    "float64": KernelDType("float64", "double", 8, "double", 8, 1),  # fp64 is for checks: scalar path only
}
SURROGATE_IDS = tuple(spec.sid for spec in SURROGATES)


#: what a forward saves for backward: kernel template values of ``SAVE`` (``decay_fire.cu``).
SAVE_NONE, SAVE_STATE, SAVE_HALF = 0, 1, 2
#: ``DecayFireParams.saved_state`` -> the forward's ``SAVE`` value when a gradient is needed.
SAVE_OF_STATE_KIND = {"fp32": SAVE_STATE, "fp16": SAVE_HALF}


def _b(flag: bool) -> str:
    return "true" if flag else "false"


def forward_name(dtype: str, vec: int, save: int) -> str:
    """The C++ name expression of one forward instantiation (``save``: ``SAVE_NONE/STATE/HALF``)."""
    return f"sjr::decay_fire_forward<{DTYPES[dtype].ctype}, {vec}, {save}>"


def backward_name(dtype: str, vec: int, sid: int, detach_reset: bool, half_saved: bool) -> str:
    """The C++ name expression of one backward instantiation."""
    return f"sjr::decay_fire_backward<{DTYPES[dtype].ctype}, {vec}, {sid}, {_b(detach_reset)}, {_b(half_saved)}>"


def forward_module_names(dtype: str) -> tuple[str, ...]:
    """The instantiations of one forward module (every save kind, scalar and vector path), cached per
    (device, dtype)."""
    return tuple(forward_name(dtype, v, save) for save in (SAVE_NONE, SAVE_STATE, SAVE_HALF) for v in _vecs(dtype))


def backward_module_names(dtype: str, sid: int, detach_reset: bool, half_saved: bool) -> tuple[str, ...]:
    """The instantiations of one backward module, cached per (device, dtype, surrogate, flags)."""
    return tuple(backward_name(dtype, v, sid, detach_reset, half_saved) for v in _vecs(dtype))


def _vecs(dtype: str) -> tuple[int, ...]:
    vec = DTYPES[dtype].vec
    return (1, vec) if vec > 1 else (1,)


def all_module_groups(dtypes: Iterable[str] = tuple(DTYPES)) -> list[tuple[str, ...]]:
    """Every cache unit (module) the launcher can compile, in a fixed order."""
    groups: list[tuple[str, ...]] = []
    for dt in dtypes:
        groups.append(forward_module_names(dt))
        for sid in SURROGATE_IDS:
            for detach in (False, True):
                for half in (False, True):
                    groups.append(backward_module_names(dt, sid, detach, half))
    return groups


def all_name_expressions(dtypes: Iterable[str] = tuple(DTYPES)) -> list[str]:
    """Every instantiation the package can launch (what the compile tests build)."""
    return [name for group in all_module_groups(dtypes) for name in group]


# --------------------------------------------------------------------------------------------------
# Sources and compile options.
# --------------------------------------------------------------------------------------------------


def read_source() -> str:
    """The text of ``decay_fire.cu`` (what RawModule compiles; headers come in through ``-I KERNEL_DIR``)."""
    return SOURCE_FILE.read_text()


@cache
def source_hash() -> str:
    """Hash of the kernel source and its headers; an option, so CuPy's on-disk cache sees header edits."""
    h = hashlib.sha256()
    for path in (SOURCE_FILE, *HEADER_FILES):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def header_version(include_dir: Path) -> tuple[int, int] | None:
    """The CUDA version ``(major, minor)`` of a toolkit include directory (``CUDART_VERSION`` of its
    ``cuda_runtime_api.h``), or None when the directory does not say."""
    api = include_dir / "cuda_runtime_api.h"
    if not api.is_file():
        return None
    m = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", api.read_text(errors="replace"))
    if m is None:
        return None
    v = int(m.group(1))
    return v // 1000, (v % 1000) // 10


def _candidate_include_dirs() -> list[Path]:
    candidates: list[Path] = []
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    candidates += sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)
    try:
        import nvidia  # the namespace package of the NVIDIA wheels (nvidia-cuda-runtime, nvidia-cuda-nvrtc)

        for root in nvidia.__path__:
            candidates += [Path(root) / "cu13" / "include", Path(root) / "cuda_runtime" / "include"]
    except ImportError:
        pass
    out: list[Path] = []
    for path in candidates:
        if (path / "cuda_fp16.h").is_file() and (path / "cuda_bf16.h").is_file() and path not in out:
            out.append(path)
    return out


def pick_include_dir(candidates: Sequence[Path], nvrtc_version: tuple[int, int] | None) -> Path | None:
    """The directory whose ``cuda_fp16.h``/``cuda_bf16.h`` match the NVRTC that compiles the kernels.

    Headers newer than the compiler use builtins it does not know, so: the same major version with the newest
    minor not above NVRTC's; else the same major; else (unknown NVRTC, or no match) the first candidate.
    """
    if not candidates:
        return None
    if nvrtc_version is not None:
        versions = [(header_version(c), c) for c in candidates]
        same_major = [(v, c) for v, c in versions if v is not None and v[0] == nvrtc_version[0]]
        not_newer = [(v, c) for v, c in same_major if v <= nvrtc_version]
        for pool in (not_newer, same_major):
            if pool:
                return max(pool, key=lambda vc: vc[0])[1]
    return candidates[0]


def cuda_include_dirs(nvrtc_version: tuple[int, int] | None = None) -> list[str]:
    """The directory holding ``cuda_fp16.h``/``cuda_bf16.h`` for ``nvrtc_version`` (the NVRTC CuPy loads:
    ``cupy.cuda.nvrtc.getVersion()``; None: the first found), as a one-element list (empty: none found)."""
    found = pick_include_dir(_candidate_include_dirs(), nvrtc_version)
    return [] if found is None else [str(found)]


#: options CuPy's RawModule appends after ours (``cupy.cuda.compiler._compile_with_cache_cuda``; NVRTC honours
#: the last occurrence), besides ``-I`` paths and ``-arch`` for the device. Flushing fp32 denormals to zero only
#: changes gradients far below any tolerance; the NVRTC tests compile with these too.
CUPY_APPENDED_OPTIONS = ("-ftz=true",)


def compile_options(nvrtc_version: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The NVRTC options of every runtime compile (CuPy adds ``-arch`` and ``CUPY_APPENDED_OPTIONS``)."""
    return (
        "--std=c++17",
        f"-DSJR_BLOCK={BLOCK}",
        f"-DSJR_MIN_BLOCKS={MIN_BLOCKS}",
        f"-DSJR_SOURCE_HASH={source_hash()}",
        f"-I{KERNEL_DIR}",
        *(f"-I{d}" for d in cuda_include_dirs(nvrtc_version)),
    )


# --------------------------------------------------------------------------------------------------
# Launch plans.
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``name`` (a name expression), a 1-D grid and block, and typed arguments
    (kinds: ``ptr`` a device address (0 = nullptr), ``f32``/``f64``/``i32``/``i64`` a scalar by value)."""

    name: str
    grid: int
    block: int
    args: tuple[tuple[str, int | float], ...]
    module: tuple[str, ...]  # the instantiations compiled together with this one (the cache unit)
    arg_names: tuple[str, ...] = ()  # the kernel's parameter names, for inspection (tests, sanitizer runs)

    def arg(self, name: str) -> int | float:
        """The value of kernel argument ``name``."""
        return self.args[self.arg_names.index(name)][1]


#: a launch with fewer than this many blocks per SM on the vector path uses one neuron per thread instead.
FILL_BLOCKS_PER_SM = 2


def choose_vec(dtype: str, n: int, pointers: Sequence[tuple[int, int]], sm_count: int) -> int:
    """Neurons per thread: the dtype's vector width ``V`` if the layout, the pointers and the size allow it, else 1.

    The vector path needs ``n % V == 0`` (no ragged thread), each ``(pointer, itemsize)`` aligned to the word
    it is moved in (``min(16, V * itemsize)`` bytes; null pointers are skipped), and enough work to fill the
    device: ``n / V / BLOCK >= FILL_BLOCKS_PER_SM * sm_count`` (a small layer gets ``V`` times more blocks from one
    neuron per thread). The layout does not matter: each lane reads the decay of its own channel, so a
    per-channel decay on ``channels_last`` (channel stride 1) takes the vector path too.
    """
    vec = DTYPES[dtype].vec
    if vec == 1 or n % vec:
        return 1
    if n // vec < FILL_BLOCKS_PER_SM * sm_count * BLOCK:
        return 1
    for ptr, itemsize in pointers:
        if ptr and ptr % min(MAX_WORD_BYTES, vec * itemsize):
            return 1
    return vec


def grid_for(n: int, vec: int) -> int:
    """Blocks for ``n`` neurons at ``vec`` per thread (the last block may be partial)."""
    return max(1, math.ceil(math.ceil(n / vec) / BLOCK))


def forward_launch(
    dtype: str,
    vec: int,
    save: int,
    *,
    x: int,
    v0: int,
    decay: int,
    spike: int,
    saved: int,
    v_out: int,
    v_threshold: float,
    n: int,
    T: int,
    channel_stride: int,
    channels: int,
    v_every_step: bool,
) -> Launch:
    """The forward launch; pointers are raw addresses (``v0`` 0: zero state; ``saved`` 0 with ``SAVE_NONE``)."""
    sk = DTYPES[dtype].scalar_kind
    named = (
        ("x", "ptr", x),
        ("v0", "ptr", v0),
        ("decay", "ptr", decay),
        ("spike", "ptr", spike),
        ("saved", "ptr", saved),
        ("v_out", "ptr", v_out),
        ("v_th", sk, float(v_threshold)),
        ("n", "i64", n),
        ("T", "i32", T),
        ("channel_stride", "i64", channel_stride),
        ("channels", "i32", channels),
        ("v_every_step", "i32", int(v_every_step)),
    )
    return Launch(forward_name(dtype, vec, save), grid_for(n, vec), BLOCK, tuple((k, v) for _, k, v in named),
                  forward_module_names(dtype), tuple(name for name, _, _ in named))


@dataclass(frozen=True)
class GradIn:
    """An incoming gradient as the backward kernel reads it: ``ptr[t * tstride + i * nstride]``.

    ``ptr`` 0 is "no gradient"; ``nstride`` is 1 (one value per neuron) or 0 (one value per step, an expanded
    tensor read without being expanded); ``tstride`` is the step stride in elements (0: the same for every step).
    """

    ptr: int = 0
    tstride: int = 0
    nstride: int = 1


def backward_launch(
    dtype: str,
    vec: int,
    sid: int,
    detach_reset: bool,
    half_saved: bool,
    *,
    grad_spike: GradIn,
    grad_v: GradIn,
    gv_every_step: bool,
    saved: int,
    v0: int,
    decay: int,
    grad_x: int,
    grad_v0: int,
    decay_partial: int,
    v_threshold: float,
    alpha: float,
    n: int,
    T: int,
    channel_stride: int,
    channels: int,
) -> Launch:
    """The backward launch; ``grad_v0`` / ``decay_partial`` / ``v0`` are 0 (nullptr) when not wanted / zero."""
    sk = DTYPES[dtype].scalar_kind
    named = (
        ("grad_spike", "ptr", grad_spike.ptr),
        ("gs_tstride", "i64", grad_spike.tstride),
        ("gs_nstride", "i32", grad_spike.nstride),
        ("grad_v", "ptr", grad_v.ptr),
        ("gv_tstride", "i64", grad_v.tstride),
        ("gv_nstride", "i32", grad_v.nstride),
        ("gv_every_step", "i32", int(gv_every_step)),
        ("saved", "ptr", saved),
        ("v0", "ptr", v0),
        ("decay", "ptr", decay),
        ("grad_x", "ptr", grad_x),
        ("grad_v0", "ptr", grad_v0),
        ("decay_partial", "ptr", decay_partial),
        ("v_th", sk, float(v_threshold)),
        ("alpha", sk, float(alpha)),
        ("n", "i64", n),
        ("T", "i32", T),
        ("channel_stride", "i64", channel_stride),
        ("channels", "i32", channels),
    )
    return Launch(
        backward_name(dtype, vec, sid, detach_reset, half_saved),
        grid_for(n, vec),
        BLOCK,
        tuple((k, v) for _, k, v in named),
        backward_module_names(dtype, sid, detach_reset, half_saved),
        tuple(name for name, _, _ in named),
    )
