"""The ``cupy`` backend's behaviour on a machine without a GPU or without CuPy: clear errors, clean import."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from sj_resnet.neuron import decay_fire_multi_step
from sj_resnet.neuron.backends import cupy as cupy_backend
from sj_resnet.neuron.backends.cupy import kernels
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
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_tensor_is_a_value_error():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"needs CUDA tensors.*backend='torch'"):
        cupy_backend.forward(x, torch.zeros(3), torch.tensor(0.5), P, False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        cupy_backend.backward(x, torch.zeros(3), x, torch.zeros(3), torch.tensor(0.5), P, False, False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        decay_fire_multi_step(torch.zeros(2, 3), backend="cupy")


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn])
def test_unsupported_dtype_is_a_type_error(dtype):
    x = torch.zeros(2, 3).to(dtype)
    with pytest.raises(TypeError, match="float32/float16/bfloat16/float64"):
        cupy_backend.forward(x, torch.zeros(3), torch.tensor(0.5), P, False)


def test_state_dtype_mismatch_is_a_type_error():
    from sj_resnet.neuron.backends.cupy import runner

    with pytest.raises(TypeError, match="v0 must be torch.float32"):
        runner.run_forward(torch.zeros(2, 3), torch.zeros(3, dtype=torch.float64), torch.tensor(0.5), 0.5, False,
                           lambda plan, dev: None)


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed here")
def test_missing_cupy_names_the_extra():
    with pytest.raises(ImportError, match=r'sj-resnet\[cuda12\]".*sj-resnet\[cuda13\]'):
        cupy_backend.load_launcher()


def test_auto_never_picks_cupy_for_cpu_tensors():
    from sj_resnet.neuron import ops

    assert ops.resolve_backend("auto", torch.zeros(2, 3), True, "Rect") == "torch"


def test_grid_and_vector_choice():
    assert kernels.grid_for(1, 1) == 1
    assert kernels.grid_for(kernels.BLOCK, 1) == 1
    assert kernels.grid_for(kernels.BLOCK + 1, 1) == 2
    assert kernels.grid_for(4 * kernels.BLOCK + 4, 4) == 2
    aligned = [(4096, 4), (8192, 4)]
    assert kernels.choose_vec("float32", 64, 1, 1, aligned) == 4
    assert kernels.choose_vec("float32", 66, 1, 1, aligned) == 1  # ragged
    assert kernels.choose_vec("float32", 64, 1, 1, [(4100, 4)]) == 1  # misaligned for 16-byte words
    assert kernels.choose_vec("float16", 64, 1, 1, [(4104, 2)]) == 4  # 8-byte words of fp16 are aligned
    assert kernels.choose_vec("float32", 64, 6, 4, aligned) == 1  # per-channel: inner % 4 != 0
    assert kernels.choose_vec("float32", 64, 8, 4, aligned) == 4
    assert kernels.choose_vec("float64", 64, 1, 1, aligned) == 1


def test_compile_options_are_complete():
    opts = kernels.compile_options()
    assert f"-DSJR_BLOCK={kernels.BLOCK}" in opts
    assert f"-I{kernels.KERNEL_DIR}" in opts
    assert any(o.startswith("-DSJR_SOURCE_HASH=") for o in opts)
    assert len(kernels.all_name_expressions()) == len(set(kernels.all_name_expressions()))
