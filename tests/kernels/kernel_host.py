"""Build the CUDA kernel text for the host (g++ + host_shim.cuh) and run it through ctypes, like CuPy would.

``build_host_library(names, out_dir)`` compiles ``decay_fire.cu`` *unmodified* together with
``host_shim.cuh`` into a shared library with one ``extern "C"`` wrapper per kernel instantiation
(``name`` = the same C++ name expression the CuPy launcher compiles). ``HostKernels`` has the interface of
the CuPy ``launcher`` module (``launch(plan, device)``, ``sm_count(device)``): it runs every (block, thread) of
``plan``'s grid with the plan's typed arguments, so ``contract.run_forward/run_backward`` drive it exactly as
they drive the GPU. Every global access of the kernels is logged by the shim (``SJR_ON_LOAD/STORE``);
``HostKernels.traffic`` holds the log of the last launch as ``(address, bytes, is_store)`` rows.
The compile flags are the runtime's NVRTC ``-D``/``-I`` options (``launch_plans.compile_options()``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from sj_resnet.neuron.backends.cupy import launch_plans
from sj_resnet.neuron.backends.cupy.launch_plans import Launch

SHIM = launch_plans.KERNEL_DIR / "host_shim.cuh"
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
_CTYPE_OF_KIND = {
    "ptr": ctypes.c_void_p, "f32": ctypes.c_float, "f64": ctypes.c_double, "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
}
# Exposes sjr::surrogate_grad<SID, S> for the twin test: out[i] = sg_SID(x[i]; a).
_SURROGATE_PROBE = """
template <typename S>
static void sjr_sg(int sid, const S* x, S* out, long long n, S a) {
    for (long long i = 0; i < n; ++i) {
        switch (sid) {
            case 0: out[i] = sjr::surrogate_grad<0, S>(x[i], a); break;
            case 1: out[i] = sjr::surrogate_grad<1, S>(x[i], a); break;
            case 2: out[i] = sjr::surrogate_grad<2, S>(x[i], a); break;
            case 3: out[i] = sjr::surrogate_grad<3, S>(x[i], a); break;
            case 4: out[i] = sjr::surrogate_grad<4, S>(x[i], a); break;
            case 5: out[i] = sjr::surrogate_grad<5, S>(x[i], a); break;
            case 6: out[i] = sjr::surrogate_grad<6, S>(x[i], a); break;
            case 7: out[i] = sjr::surrogate_grad<7, S>(x[i], a); break;
            default: out[i] = S(-1);
        }
    }
}
extern "C" void sjr_sg_f32(int sid, const float* x, float* out, long long n, float a) { sjr_sg(sid, x, out, n, a); }
extern "C" void sjr_sg_f64(int sid, const double* x, double* out, long long n, double a) { sjr_sg(sid, x, out, n, a); }
extern "C" int sjr_num_surrogates() { return SJR_NUM_SURROGATES; }
extern "C" void sjr_traffic_enable(int on) { sjr_host::traffic_enabled = on != 0; sjr_host::traffic_log.clear(); }
extern "C" long long sjr_traffic_size() { return (long long)sjr_host::traffic_log.size(); }
extern "C" void sjr_traffic_copy(unsigned long long* address, unsigned int* bytes, unsigned int* is_store) {
    for (size_t i = 0; i < sjr_host::traffic_log.size(); ++i) {
        address[i] = sjr_host::traffic_log[i].address;
        bytes[i] = sjr_host::traffic_log[i].bytes;
        is_store[i] = sjr_host::traffic_log[i].is_store;
    }
    sjr_host::traffic_log.clear();
}
"""


def missing_tool(reason: str) -> None:
    """Skip a test whose tool (nvcc, NVRTC, g++, libasan) is missing; fail instead when
    ``SJR_REQUIRE_CUDA_TOOLS=1`` (set it in CI so a lost toolchain cannot turn the checks into skips)."""
    if os.environ.get("SJR_REQUIRE_CUDA_TOOLS") == "1":
        pytest.fail(f"{reason} (SJR_REQUIRE_CUDA_TOOLS=1)")
    pytest.skip(reason)


def host_compile_flags() -> list[str]:
    """g++ flags: the runtime's ``-D``/``-I`` NVRTC options (CUDA headers as system headers) + strict warnings."""
    flags = ["-std=c++17", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas"]
    cuda_dirs = set(launch_plans.cuda_include_dirs())
    for opt in launch_plans.compile_options():
        if opt.startswith("-D"):
            flags.append(opt)
        elif opt.startswith("-I"):
            flags += ["-isystem", opt[2:]] if opt[2:] in cuda_dirs else [opt]
    return flags


def _sources(names: list[str], parts: int) -> list[str]:
    head = '#include "host_shim.cuh"\n#include "decay_fire.cu"\n'
    chunks = [names[i::parts] for i in range(parts)]
    out = []
    for p, chunk in enumerate(chunks):
        body = [head]
        for name in chunk:
            i = names.index(name)
            body.append(
                f'extern "C" void sjr_k{i}(unsigned grid, unsigned block, void** params) '
                f"{{ sjr_host::launch(&{name}, dim3(grid), dim3(block), params); }}\n"
            )
        if p == 0:
            body.append(_SURROGATE_PROBE)
        out.append("".join(body))
    return out


def build_host_library(names: list[str], out_dir: Path, *, sanitize: bool = False, opt: str = "-O1") -> Path:
    """Compile the kernels ``names`` for the host into ``out_dir`` (reused when sources and flags match)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++) found")
    flags = [*host_compile_flags(), opt, *(SANITIZE_FLAGS if sanitize else ())]
    parts = 2 if len(names) > 8 else 1
    sources = _sources(names, parts)
    key = hashlib.sha256(
        json.dumps([names, flags, sources, launch_plans.source_hash(), SHIM.read_text()]).encode()
    ).hexdigest()[:16]
    lib = out_dir / f"sjr_host_{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    objs = []

    def compile_one(p: int) -> Path:
        src = out_dir / f"sjr_host_{key}_{p}.cpp"
        src.write_text(sources[p])
        obj = src.with_suffix(".o")
        subprocess.run([cxx, *flags, "-c", str(src), "-o", str(obj)], check=True, capture_output=True, text=True)
        return obj

    with ThreadPoolExecutor(max_workers=min(parts, os.cpu_count() or 1)) as pool:
        try:
            objs = list(pool.map(compile_one, range(parts)))
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"host build failed:\n{exc.stderr[-6000:]}") from exc
    tmp = lib.with_suffix(".tmp.so")
    link = [cxx, "-shared", *(SANITIZE_FLAGS if sanitize else ()), *map(str, objs), "-o", str(tmp)]
    subprocess.run(link, check=True, capture_output=True, text=True)
    tmp.rename(lib)
    (out_dir / f"sjr_host_{key}.json").write_text(json.dumps(names))
    return lib


class HostKernels:
    """ctypes front of a host library with the CuPy launcher's interface; records each plan and, with
    ``count_bytes``, the last launch's global-memory accesses (``traffic``)."""

    def __init__(self, lib: Path, names: list[str], *, sms: int = 0, count_bytes: bool = True):
        self.path, self.names = lib, names
        self.lib = ctypes.CDLL(str(lib))
        self.index = {name: i for i, name in enumerate(names)}
        self.launches: list[Launch] = []
        self.sms = sms
        self._log: tuple = (0, None, None, None)
        for fn in (self.lib.sjr_sg_f32, self.lib.sjr_sg_f64, self.lib.sjr_traffic_enable, self.lib.sjr_traffic_copy):
            fn.restype = None
        self.lib.sjr_traffic_size.restype = ctypes.c_longlong
        self.lib.sjr_traffic_enable(ctypes.c_int(int(count_bytes)))

    def sm_count(self, device: torch.device) -> int:
        """The streaming multiprocessors the vector-width rule sees (``sms``; 0 turns the small-layer rule off, so
        small test sizes take the vector path)."""
        return self.sms

    def launch(self, plan: Launch, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"host kernels run on CPU tensors, got {device}")
        if plan.name not in self.index:
            raise KeyError(f"{plan.name} is not in this host library")
        fn = getattr(self.lib, f"sjr_k{self.index[plan.name]}")
        values = [_CTYPE_OF_KIND[kind](value) for kind, value in plan.args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        fn.restype = None
        fn(ctypes.c_uint(plan.grid), ctypes.c_uint(plan.block), params)
        self.launches.append(plan)
        count = int(self.lib.sjr_traffic_size())
        address = (ctypes.c_ulonglong * count)()
        nbytes = (ctypes.c_uint * count)()
        is_store = (ctypes.c_uint * count)()
        self.lib.sjr_traffic_copy(address, nbytes, is_store)
        self._log = (count, address, nbytes, is_store)

    @property
    def traffic(self) -> torch.Tensor:
        """The last launch's accesses as ``[accesses, 3]`` int64 rows ``(address, bytes, is_store)``."""
        count, address, nbytes, is_store = self._log
        if count == 0:
            return torch.zeros(0, 3, dtype=torch.int64)
        cols = [torch.frombuffer(address, dtype=torch.int64), torch.frombuffer(nbytes, dtype=torch.int32),
                torch.frombuffer(is_store, dtype=torch.int32)]
        return torch.stack([c.to(torch.int64) for c in cols], dim=1)

    def surrogate_grad(self, sid: int, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """``sjr::surrogate_grad<sid>`` of the CUDA twin, evaluated on the host for a float32/float64 tensor."""
        x = x.contiguous()
        out = torch.empty_like(x)
        if x.dtype == torch.float32:
            self.lib.sjr_sg_f32(sid, ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                                ctypes.c_int64(x.numel()), ctypes.c_float(alpha))
        elif x.dtype == torch.float64:
            self.lib.sjr_sg_f64(sid, ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                                ctypes.c_int64(x.numel()), ctypes.c_double(alpha))
        else:
            raise TypeError(x.dtype)
        return out

    def num_surrogates(self) -> int:
        return int(self.lib.sjr_num_surrogates())
