"""Small forward/backward runs of the ``cupy`` backend for ``compute-sanitizer --tool memcheck``.

Run as ``compute-sanitizer --tool memcheck --error-exitcode 3 python -m benchmarks.gpu.memcheck_run``
with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so every torch tensor is its own exact-size ``cudaMalloc``
(an access past a tensor's end then leaves the allocation and memcheck reports it); CuPy's memory pool
is switched off too. Shapes leave partial last blocks and take the vector and the scalar path; every
dtype and surrogate, detach_reset and store_v_seq both ways, per-layer and per-channel decay.
``--plant`` launches one forward claiming 64 neurons more than the buffers hold: memcheck must fail it
(proof that the sanitizer is watching).
"""

from __future__ import annotations

import os
import sys

import torch


def main() -> int:
    import cupy

    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
        print("warning: PYTORCH_NO_CUDA_MEMORY_CACHING=1 is not set; out-of-bounds accesses inside torch's "
              "cached blocks go unnoticed", file=sys.stderr)
    from sj_resnet.neuron.backends import cupy as backend
    from sj_resnet.neuron.backends.cupy import kernels, load_launcher

    dev = torch.device("cuda")
    if "--plant" in sys.argv:
        x = torch.randn(3, 1000, device=dev)
        v0 = torch.zeros(1000, device=dev)
        decay = torch.tensor(0.5, device=dev)
        spike, h, v = torch.empty_like(x), torch.empty_like(x), torch.empty_like(v0)
        plan = kernels.forward_launch(
            "float32", 1, False, x=x.data_ptr(), v0=v0.data_ptr(), decay=decay.data_ptr(), spike=spike.data_ptr(),
            h_seq=h.data_ptr(), v_out=v.data_ptr(), v_threshold=0.5, n=1064, T=3, inner=1, channels=1,
        )
        load_launcher().launch(plan, dev)
        torch.cuda.synchronize()
        return 0
    runs = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        for shape in ((3, 2, 4, 6, 6), (4, 3, 5, 7, 3)):  # 288 (vector path) and 315 (scalar) neurons per step
            for per_channel in (False, True):
                x = torch.randn(shape, device=dev).to(dtype)
                v0 = torch.randn(shape[1:], device=dev, dtype=sdt) * 0.1
                decay = (torch.rand(shape[2], device=dev, dtype=sdt) if per_channel
                         else torch.tensor(0.5, device=dev, dtype=sdt))
                for store in (False, True):
                    s, vo, h = backend.forward(x, v0, decay, 0.5, store)
                    gs = torch.randn(shape, device=dev).to(dtype)
                    gv = torch.randn(vo.shape, device=dev, dtype=sdt)
                    for sid in range(8):
                        for detach in (False, True):
                            backend.backward(gs, gv, h, v0, decay, 0.5, sid, 1.5, detach, store, True)
                            runs += 1
    torch.cuda.synchronize()
    print(f"memcheck driver: {runs} backward runs done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
