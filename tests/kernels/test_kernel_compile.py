"""Compile-time checks of the CUDA sources, no GPU needed.

* nvcc ``-cubin`` for sm_80 and sm_90 of every shipped instantiation with ``-Werror all-warnings -Xptxas -v``;
  ptxas must report no spills, no stack frame and at most ``launch_plans.REGISTER_BUDGET`` registers per kernel.
* NVRTC (the compiler CuPy's RawModule uses at run time) with exactly ``launch_plans.compile_options()``: every
  name expression compiles and lowers to a symbol, and a few single module groups compile exactly as the
  loader builds them.
* The PTX of vector-path kernels moves data in vector words, the scalar fallback does not.
* The ``SJR_SURROGATE_*`` ids of ``surrogates.cuh`` equal the Python table's.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import re
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import kernel_host
import pytest

from sj_resnet.neuron.backends.cupy import launch_plans
from sj_resnet.neuron.surrogates import SURROGATES

pytestmark = pytest.mark.cuda_cpu
ARCHS = ("sm_80", "sm_90")


def _nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        cand = Path(os.environ.get(var, "/nonexistent")) / "bin" / "nvcc"
        if cand.is_file():
            return str(cand)
    return shutil.which("nvcc")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """``{mangled kernel: {registers, spill_stores, spill_loads, stack}}`` from ``ptxas -v`` output."""
    stats: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            stats[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stats[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            stats[current]["registers"] = int(m.group(1))
    return stats


def instantiation_unit(names: list[str]) -> str:
    """A translation unit that includes ``decay_fire.cu`` and instantiates each name (by taking its address)."""
    refs = ",\n".join(f"    reinterpret_cast<const void*>(&{n})" for n in names)
    head = '#include "decay_fire.cu"\nextern const void* const sjr_all[];\n'
    return f"{head}const void* const sjr_all[] = {{\n{refs}\n}};\n"


@pytest.fixture(scope="module")
def nvcc_builds(kernel_build_dir):
    nvcc = _nvcc()
    if nvcc is None:
        kernel_host.missing_tool("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    names = launch_plans.all_name_expressions()
    unit = kernel_build_dir / "nvcc_all.cu"
    unit.write_text(instantiation_unit(names))
    defines = [o for o in launch_plans.compile_options() if o.startswith(("-D", "-I"))]

    def build(arch: str) -> subprocess.CompletedProcess:
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-v",
               *defines, str(unit), "-o", str(kernel_build_dir / f"nvcc_all_{arch}.cubin")]
        return subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=len(ARCHS)) as pool:
        results = dict(zip(ARCHS, pool.map(build, ARCHS), strict=True))
    return names, results


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_cubin_no_spills_within_register_budget(nvcc_builds, arch):
    names, results = nvcc_builds
    proc = results[arch]
    assert proc.returncode == 0, f"nvcc failed for {arch}:\n{proc.stderr[-6000:]}"
    stats = parse_ptxas(proc.stderr)
    assert len(stats) == len(names), f"ptxas compiled {len(stats)} kernels, expected {len(names)}"
    bad = {k: s for k, s in stats.items() if s.get("spill_stores") or s.get("spill_loads") or s.get("stack")}
    assert not bad, f"{arch}: spills or stack frames in {bad}"
    over = {k: s["registers"] for k, s in stats.items() if s["registers"] > launch_plans.REGISTER_BUDGET}
    assert not over, f"{arch}: kernels over the {launch_plans.REGISTER_BUDGET}-register budget: {over}"


def test_ptxas_parser_sees_spills():
    """The parser must report a spill when ptxas prints one (so the test above can fail)."""
    log = (
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 64 registers, used 0 barriers, 360 bytes cmem[0]\n"
    )
    assert parse_ptxas(log) == {"_Z1kPf": {"stack": 8, "spill_stores": 8, "spill_loads": 4, "registers": 64}}


# --------------------------------------------------------------------------------------------------
# NVRTC
# --------------------------------------------------------------------------------------------------


def nvrtc_compile(names: list[str], arch_option: str) -> tuple[bytes, dict[str, str], str]:
    """Compile ``decay_fire.cu`` with NVRTC as CuPy's RawModule does: our options, then the ones CuPy appends,
    then the architecture. Returns ``(ptx or cubin, lowered names, log)``.

    NVRTC runs in a spawned child process: once its builtins library is loaded into a process, torch's zip
    serialisation there breaks (``torch.save``/``torch.load`` fail with "record size ... does not match"), which
    made unrelated tests fail when they ran after this file in the same session.
    """
    if importlib.util.find_spec("cuda.bindings") is None:
        kernel_host.missing_tool("cuda-bindings (cuda.bindings.nvrtc) is not installed")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_nvrtc_compile_here, names, arch_option).result()


def _nvrtc_compile_here(names: list[str], arch_option: str) -> tuple[bytes, dict[str, str], str]:
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(launch_plans.read_source().encode(), b"decay_fire.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    try:
        for name in names:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, name.encode())
            assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
        opts = [o.encode() for o in (*launch_plans.compile_options(), *launch_plans.CUPY_APPENDED_OPTIONS, arch_option)]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log_text = log.rstrip(b"\x00 ").decode(errors="replace")
        assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"NVRTC failed:\n{log_text[-6000:]}"
        lowered = {}
        for name in names:
            err, low = nvrtc.nvrtcGetLoweredName(prog, name.encode())
            assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, name
            lowered[name] = low.decode()
        if "compute_" in arch_option:
            _, size = nvrtc.nvrtcGetPTXSize(prog)
            out = b" " * size
            nvrtc.nvrtcGetPTX(prog, out)
        else:
            _, size = nvrtc.nvrtcGetCUBINSize(prog)
            out = b" " * size
            nvrtc.nvrtcGetCUBIN(prog, out)
        return out, lowered, log_text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.fixture(scope="module")
def nvrtc_ptx():
    names = launch_plans.all_name_expressions()
    ptx, lowered, log = nvrtc_compile(names, "--gpu-architecture=compute_80")
    assert "warning" not in log.lower(), log
    return ptx.rstrip(b"\x00").decode(), lowered


def test_nvrtc_compiles_every_instantiation_with_runtime_options(nvrtc_ptx):
    ptx, lowered = nvrtc_ptx
    assert len(set(lowered.values())) == len(launch_plans.all_name_expressions())
    for name, symbol in lowered.items():
        assert f".entry {symbol}(" in ptx, f"{name} ({symbol}) missing from the PTX"


@pytest.mark.parametrize(
    "group",
    [
        launch_plans.forward_module_names("float32"),
        launch_plans.forward_module_names("bfloat16"),
        launch_plans.backward_module_names("float16", 2, False, False),
        launch_plans.backward_module_names("float64", 0, True, True),
    ],
    ids=["fwd-f32", "fwd-bf16", "bwd-f16-atan", "bwd-f64-rect-detach-half-saved"],
)
def test_nvrtc_module_group_to_cubin(group):
    """One cache unit compiled to a cubin exactly as the loader asks for it (CuPy adds the arch)."""
    cubin, lowered, _ = nvrtc_compile(list(group), "--gpu-architecture=sm_90")
    assert cubin[:4] == b"\x7fELF" and len(lowered) == len(group)


def _entries(ptx: str) -> dict[str, str]:
    parts = re.split(r"\n(?=\.(?:weak|visible) \.entry )", ptx)
    out = {}
    for part in parts[1:]:
        m = re.match(r"\.(?:weak|visible) \.entry (\w+)\(", part)
        out[m.group(1)] = part
    return out


def test_vector_path_moves_vector_words(nvrtc_ptx):
    ptx, lowered = nvrtc_ptx
    entries = _entries(ptx)
    checked = 0
    for dt in ("float32", "float16", "bfloat16"):
        vec = launch_plans.DTYPES[dt].vec
        for name in (launch_plans.forward_name(dt, vec, launch_plans.SAVE_HALF),
                     launch_plans.backward_name(dt, vec, 2, False, True)):
            body = entries[lowered[name]]
            assert re.search(r"ld\.global(\.nc)?\.v[24]\.", body), f"{name}: no vector load"
            assert re.search(r"st\.global\.v[24]\.", body), f"{name}: no vector store"
            checked += 1
        scalar = entries[lowered[launch_plans.forward_name(dt, 1, launch_plans.SAVE_STATE)]]
        assert not re.search(r"(ld|st)\.global(\.nc)?\.v[24]\.", scalar), f"{dt} scalar path uses vector words"
    assert checked == 6


def test_surrogate_ids_match_python_table():
    text = (launch_plans.KERNEL_DIR / "surrogates.cuh").read_text()
    defined = {
        m.group(1).replace("_", ""): int(m.group(2))
        for m in re.finditer(r"#define SJR_SURROGATE_(\w+) (\d+)", text)
    }
    expected = {spec.name.upper(): spec.sid for spec in SURROGATES}
    assert defined == expected
    assert f"#define SJR_NUM_SURROGATES {len(SURROGATES)}" in text
