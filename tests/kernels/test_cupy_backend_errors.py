"""The ``cupy`` backend without a GPU: clear errors, clean import, the probe, the vector-width and header rules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

import pytest
import torch

from sj_resnet.neuron import decay_fire_multi_step
from sj_resnet.neuron.backends import cupy as cupy_backend
from sj_resnet.neuron.backends.cupy import contract, launch_plans
from sj_resnet.neuron.params import DecayFireParams

pytestmark = pytest.mark.cuda_cpu
HAS_CUPY = importlib.util.find_spec("cupy") is not None
P = DecayFireParams(v_threshold=0.5, surrogate_id=0, alpha=1.0, detach_reset=False, store_v_seq=False)


def test_package_imports_without_cupy():
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "import sj_resnet.neuron.backends.cupy as c\n"
        "assert callable(c.forward) and callable(c.backward)\n"
        "assert 'sj_resnet.neuron.backends.cupy.launcher' not in sys.modules\n"
        "import torch\n"
        "reason = c.probe(torch.device('cuda', 0))\n"
        "assert 'sj-resnet[cuda12]' in reason, reason\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_tensor_is_a_value_error():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"needs CUDA tensors.*backend='torch'"):
        cupy_backend.forward(x, None, torch.tensor(0.5), P, False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        cupy_backend.backward(x, None, x, None, torch.tensor(0.5), P, False, False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        decay_fire_multi_step(torch.zeros(2, 3), backend="cupy")


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn])
def test_unsupported_dtype_is_a_type_error(dtype):
    x = torch.zeros(2, 3).to(dtype)
    with pytest.raises(TypeError, match="float32/float16/bfloat16/float64"):
        cupy_backend.forward(x, None, torch.tensor(0.5), P, False)


def test_state_dtype_mismatch_is_a_type_error():
    launcher = types.SimpleNamespace(launch=lambda plan, dev: None, sm_count=lambda dev: 0)
    with pytest.raises(TypeError, match="v0 .* must be torch.float32"):
        contract.run_forward(torch.zeros(2, 3), torch.zeros(3, dtype=torch.float64), torch.tensor(0.5), P, False,
                             launcher)
    with pytest.raises(TypeError, match=r"saved \(saved_state='fp32'\) must be torch.float32"):
        contract.run_backward(None, None, torch.zeros(2, 3, dtype=torch.float16), None, torch.tensor(0.5), P, False,
                              False, launcher)


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed here")
def test_missing_cupy_names_the_extra():
    with pytest.raises(ImportError, match=r'sj-resnet\[cuda12\]".*sj-resnet\[cuda13\]'):
        cupy_backend.load_launcher()


def test_auto_never_picks_cupy_for_cpu_tensors():
    from sj_resnet.neuron import ops

    assert ops.resolve_backend("auto", torch.zeros(2, 3), True, "Rect") == "torch"


def test_probe_reports_a_broken_stack(host_kernels):
    """``run_probe`` passes with working kernels and names the reason of a failing compile or a wrong result."""
    cpu = torch.device("cpu")
    assert cupy_backend.run_probe(cpu, host_kernels) is None

    def fail(plan, device):
        raise RuntimeError("nvrtc: error: invalid value for --gpu-architecture")

    broken = types.SimpleNamespace(launch=fail, sm_count=lambda dev: 0)
    assert cupy_backend.run_probe(cpu, broken) == "RuntimeError: nvrtc: error: invalid value for --gpu-architecture"
    silent = types.SimpleNamespace(launch=lambda plan, dev: None, sm_count=lambda dev: 0)  # launches nothing
    assert "wrong values" in cupy_backend.run_probe(cpu, silent)
    assert "needs a CUDA device" in cupy_backend.probe("cpu")


def test_grid_and_vector_choice():
    assert launch_plans.grid_for(1, 1) == 1
    assert launch_plans.grid_for(launch_plans.BLOCK, 1) == 1
    assert launch_plans.grid_for(launch_plans.BLOCK + 1, 1) == 2
    assert launch_plans.grid_for(4 * launch_plans.BLOCK + 4, 4) == 2
    aligned = [(4096, 4), (8192, 4)]
    assert launch_plans.choose_vec("float32", 64, aligned, 0) == 4
    assert launch_plans.choose_vec("float32", 66, aligned, 0) == 1  # ragged
    assert launch_plans.choose_vec("float32", 64, [(4100, 4)], 0) == 1  # misaligned for 16-byte words
    assert launch_plans.choose_vec("float32", 64, [(0, 4), (4096, 4)], 0) == 4  # null pointers don't count
    assert launch_plans.choose_vec("float16", 64, [(4104, 2)], 0) == 4  # 8-byte words of fp16 are aligned
    assert launch_plans.choose_vec("float64", 64, aligned, 0) == 1


@pytest.mark.parametrize("sms", [1, 132])
def test_small_layers_run_one_neuron_per_thread(sms):
    """V > 1 only when n / V / BLOCK >= FILL_BLOCKS_PER_SM blocks per SM; below, one neuron per thread."""
    aligned = [(4096, 4)]
    edge = 4 * launch_plans.FILL_BLOCKS_PER_SM * sms * launch_plans.BLOCK  # smallest vectorised n
    assert launch_plans.choose_vec("bfloat16", edge, aligned, sms) == 4
    assert launch_plans.choose_vec("bfloat16", edge - 4, aligned, sms) == 1
    big, small = launch_plans.grid_for(edge, 4), launch_plans.grid_for(edge - 4, 1)
    assert big == launch_plans.FILL_BLOCKS_PER_SM * sms and small > 3 * big


def test_small_layer_host_run_takes_the_scalar_path(host_kernels):
    import kernel_host

    many_sms = kernel_host.HostKernels(host_kernels.path, host_kernels.names, sms=1000)
    x = torch.rand(3, 4, 64)  # n = 256: vectorisable, but far below 2 blocks per SM of 1000 SMs
    s, v, _ = contract.run_forward(x, None, torch.tensor(0.5), P, False, many_sms)
    s4, v4, _ = contract.run_forward(x, None, torch.tensor(0.5), P, False, host_kernels)
    assert ", 1, 0>" in many_sms.launches[-1].name and ", 4, 0>" in host_kernels.launches[-1].name
    assert torch.equal(s, s4) and torch.equal(v, v4)


def _fake_toolkit(root, version: int):
    inc = root / "include"
    inc.mkdir(parents=True)
    for name in ("cuda_fp16.h", "cuda_bf16.h"):
        (inc / name).write_text("")
    (inc / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION {version}\n")
    return inc


def test_headers_match_the_nvrtc_version(tmp_path):
    c126 = _fake_toolkit(tmp_path / "cuda-12.6", 12060)
    c128 = _fake_toolkit(tmp_path / "cuda-12.8", 12080)
    c130 = _fake_toolkit(tmp_path / "cuda-13.0", 13000)
    dirs = [c130, c128, c126]
    assert launch_plans.header_version(c128) == (12, 8)
    assert launch_plans.pick_include_dir(dirs, (12, 8)) == c128
    assert launch_plans.pick_include_dir(dirs, (12, 9)) == c128  # newest not above NVRTC's
    assert launch_plans.pick_include_dir(dirs, (12, 7)) == c126  # 12.8 headers are newer than NVRTC 12.7
    assert launch_plans.pick_include_dir(dirs, (12, 4)) == c128  # none older: same major, newest
    assert launch_plans.pick_include_dir(dirs, (13, 0)) == c130
    assert launch_plans.pick_include_dir(dirs, (11, 8)) == c130  # no match: the first candidate
    assert launch_plans.pick_include_dir(dirs, None) == c130
    assert launch_plans.pick_include_dir([], (12, 8)) is None


def test_compile_options_are_complete():
    opts = launch_plans.compile_options()
    assert f"-DSJR_BLOCK={launch_plans.BLOCK}" in opts
    assert f"-I{launch_plans.KERNEL_DIR}" in opts
    assert any(o.startswith("-DSJR_SOURCE_HASH=") for o in opts)
    assert len(launch_plans.all_name_expressions()) == len(set(launch_plans.all_name_expressions()))
