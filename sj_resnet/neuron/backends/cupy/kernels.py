"""What the CUDA kernels are and how they are launched: one place shared by the CuPy loader and the tests.

Nothing here imports CuPy, so the CPU tests (nvcc/NVRTC compiles, host-shim execution) use exactly the
instantiation names, compile options and grid computation the GPU launcher uses.

Kernels (``decay_fire.cu``)::

    sjr::decay_fire_forward<X, V, STORE_V_SEQ>
    sjr::decay_fire_backward<X, V, SID, DETACH_RESET, STORE_V_SEQ>

``X`` is the input C++ type (``float``, ``__half``, ``__nv_bfloat16``, ``double``), ``V`` the neurons per
thread (1, or the dtype's vector width when every pointer is aligned), ``SID`` the surrogate id of
``surrogates.SURROGATES``. A launch is ``ceil(n / V / BLOCK)`` blocks of ``BLOCK`` threads, one thread per
``V`` neurons of one time step (n = neurons per step).
"""

from __future__ import annotations

import hashlib
import math
import os
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


def _b(flag: bool) -> str:
    return "true" if flag else "false"


def forward_name(dtype: str, vec: int, store_v_seq: bool) -> str:
    """The C++ name expression of one forward instantiation."""
    return f"sjr::decay_fire_forward<{DTYPES[dtype].ctype}, {vec}, {_b(store_v_seq)}>"


def backward_name(dtype: str, vec: int, sid: int, detach_reset: bool, store_v_seq: bool) -> str:
    """The C++ name expression of one backward instantiation."""
    return f"sjr::decay_fire_backward<{DTYPES[dtype].ctype}, {vec}, {sid}, {_b(detach_reset)}, {_b(store_v_seq)}>"


def forward_module_names(dtype: str, store_v_seq: bool) -> tuple[str, ...]:
    """The instantiations of one forward module (scalar and vector path), cached per (device, dtype, flags)."""
    return tuple(forward_name(dtype, v, store_v_seq) for v in _vecs(dtype))


def backward_module_names(dtype: str, sid: int, detach_reset: bool, store_v_seq: bool) -> tuple[str, ...]:
    """The instantiations of one backward module, cached per (device, dtype, surrogate, flags)."""
    return tuple(backward_name(dtype, v, sid, detach_reset, store_v_seq) for v in _vecs(dtype))


def _vecs(dtype: str) -> tuple[int, ...]:
    vec = DTYPES[dtype].vec
    return (1, vec) if vec > 1 else (1,)


def all_name_expressions(dtypes: Iterable[str] = tuple(DTYPES)) -> list[str]:
    """Every instantiation the package can launch (what the compile tests build)."""
    names: list[str] = []
    for dt in dtypes:
        for store in (False, True):
            names += forward_module_names(dt, store)
            for sid in SURROGATE_IDS:
                for detach in (False, True):
                    names += backward_module_names(dt, sid, detach, store)
    return names


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


def cuda_include_dirs() -> list[str]:
    """Directories holding ``cuda_fp16.h``/``cuda_bf16.h``: the toolkit, else the NVIDIA pip wheels."""
    candidates: list[Path] = []
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    try:
        import nvidia  # the namespace package of the NVIDIA wheels (nvidia-cuda-runtime, nvidia-cuda-nvrtc)

        for root in nvidia.__path__:
            candidates += [Path(root) / "cu13" / "include", Path(root) / "cuda_runtime" / "include"]
    except ImportError:
        pass
    found: list[str] = []
    for path in candidates:
        if (path / "cuda_fp16.h").is_file() and str(path) not in found:
            found.append(str(path))
            break
    return found


#: options CuPy's RawModule appends after ours (``cupy.cuda.compiler._compile_with_cache_cuda``; NVRTC honours
#: the last occurrence), besides ``-I`` paths and ``-arch`` for the device. Flushing fp32 denormals to zero only
#: changes gradients far below any tolerance; the NVRTC tests compile with these too.
CUPY_APPENDED_OPTIONS = ("-ftz=true",)


def compile_options() -> tuple[str, ...]:
    """The NVRTC options of every runtime compile (CuPy adds ``-arch`` and ``CUPY_APPENDED_OPTIONS``)."""
    return (
        "--std=c++17",
        f"-DSJR_BLOCK={BLOCK}",
        f"-DSJR_MIN_BLOCKS={MIN_BLOCKS}",
        f"-DSJR_SOURCE_HASH={source_hash()}",
        f"-I{KERNEL_DIR}",
        *(f"-I{d}" for d in cuda_include_dirs()),
    )


# --------------------------------------------------------------------------------------------------
# Launch plans.
# --------------------------------------------------------------------------------------------------

#: kinds of launch arguments: a device pointer, or a scalar passed by value.
ARG_KINDS = ("ptr", "f32", "f64", "i32", "i64")


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``name`` (a name expression), a 1-D grid and block, and typed arguments."""

    name: str
    grid: int
    block: int
    args: tuple[tuple[str, int | float], ...]
    module: tuple[str, ...]  # the instantiations compiled together with this one (the cache unit)


def choose_vec(dtype: str, n: int, inner: int, channels: int, pointers: Sequence[tuple[int, int]]) -> int:
    """Neurons per thread: the dtype's vector width if every ``(pointer, itemsize)`` allows it, else 1.

    The vector path needs ``n % V == 0`` (no ragged thread), each pointer aligned to the word it is
    moved in (``min(16, V * itemsize)`` bytes), and, for per-channel decay, ``inner % V == 0`` so the
    ``V`` neurons of a thread share one channel.
    """
    vec = DTYPES[dtype].vec
    if vec == 1 or n % vec or (channels > 1 and inner % vec):
        return 1
    for ptr, itemsize in pointers:
        if ptr % min(MAX_WORD_BYTES, vec * itemsize):
            return 1
    return vec


def grid_for(n: int, vec: int) -> int:
    """Blocks for ``n`` neurons at ``vec`` per thread (the last block may be partial)."""
    return max(1, math.ceil(math.ceil(n / vec) / BLOCK))


def forward_launch(
    dtype: str,
    vec: int,
    store_v_seq: bool,
    *,
    x: int,
    v0: int,
    decay: int,
    spike: int,
    h_seq: int,
    v_out: int,
    v_threshold: float,
    n: int,
    T: int,
    inner: int,
    channels: int,
) -> Launch:
    """The forward launch; pointers are raw addresses of contiguous tensors."""
    sk = DTYPES[dtype].scalar_kind
    args = (
        ("ptr", x),
        ("ptr", v0),
        ("ptr", decay),
        ("ptr", spike),
        ("ptr", h_seq),
        ("ptr", v_out),
        (sk, float(v_threshold)),
        ("i64", n),
        ("i32", T),
        ("i64", inner),
        ("i32", channels),
    )
    return Launch(
        forward_name(dtype, vec, store_v_seq), grid_for(n, vec), BLOCK, args, forward_module_names(dtype, store_v_seq)
    )


def backward_launch(
    dtype: str,
    vec: int,
    sid: int,
    detach_reset: bool,
    store_v_seq: bool,
    *,
    grad_spike: int,
    grad_v: int,
    h_seq: int,
    v0: int,
    decay: int,
    grad_x: int,
    grad_v0: int,
    decay_partial: int,
    v_threshold: float,
    alpha: float,
    n: int,
    T: int,
    inner: int,
    channels: int,
) -> Launch:
    """The backward launch; ``decay_partial`` is 0 (nullptr) when no decay gradient is wanted."""
    sk = DTYPES[dtype].scalar_kind
    args = (
        ("ptr", grad_spike),
        ("ptr", grad_v),
        ("ptr", h_seq),
        ("ptr", v0),
        ("ptr", decay),
        ("ptr", grad_x),
        ("ptr", grad_v0),
        ("ptr", decay_partial),
        (sk, float(v_threshold)),
        (sk, float(alpha)),
        ("i64", n),
        ("i32", T),
        ("i64", inner),
        ("i32", channels),
    )
    return Launch(
        backward_name(dtype, vec, sid, detach_reset, store_v_seq),
        grid_for(n, vec),
        BLOCK,
        args,
        backward_module_names(dtype, sid, detach_reset, store_v_seq),
    )
