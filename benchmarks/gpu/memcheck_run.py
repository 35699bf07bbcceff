"""Small forward/backward runs of the ``cupy`` backend for ``compute-sanitizer --tool memcheck``.

Run as ``compute-sanitizer --tool memcheck --error-exitcode 3 python -m benchmarks.gpu.memcheck_run``
with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so every torch tensor is its own exact-size ``cudaMalloc``
(an access past a tensor's end then leaves the allocation and memcheck reports it); CuPy's memory pool
is switched off too. Shapes leave partial last blocks and take the vector and the scalar path; every
dtype and surrogate, detach_reset, store_v_seq and the saved kind both ways, per-layer decay on contiguous
inputs with a fresh state and expanded or absent gradients, per-channel decay on channels_last inputs with a
carried state.
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
    from sj_resnet.neuron.backends.cupy import launch_plans, load_launcher
    from sj_resnet.neuron.params import DecayFireParams

    dev = torch.device("cuda")
    if "--plant" in sys.argv:
        x = torch.randn(3, 1000, device=dev)
        decay = torch.tensor(0.5, device=dev)
        spike, h, v = torch.empty_like(x), torch.empty_like(x), torch.empty(1000, device=dev)
        plan = launch_plans.forward_launch(
            "float32", 1, launch_plans.SAVE_STATE, x=x.data_ptr(), v0=0, decay=decay.data_ptr(),
            spike=spike.data_ptr(), saved=h.data_ptr(), v_out=v.data_ptr(), v_threshold=0.5, n=1064, T=3,
            channel_stride=1, channels=1, v_every_step=False,
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
                if per_channel:  # channels_last steps: in place, channel stride 1
                    x = torch.randn((shape[0], shape[1], *shape[3:], shape[2]), device=dev).to(dtype).movedim(-1, 2)
                carried = per_channel
                v0 = torch.randn(shape[1:], device=dev, dtype=sdt) * 0.1 if carried else None
                decay = (torch.rand(shape[2], device=dev, dtype=sdt) if per_channel
                         else torch.tensor(0.5, device=dev, dtype=sdt))
                for store in (False, True):
                    for saved_state in ("fp32", "fp16"):
                        p = DecayFireParams(v_threshold=0.5, surrogate_id=0, alpha=1.5, detach_reset=False,
                                            store_v_seq=store, saved_state=saved_state)
                        backend.forward(x, v0, decay, p, False)
                        s, vo, saved = backend.forward(x, v0, decay, p, True)
                        gs = torch.randn(shape, device=dev).to(dtype)
                        gv = torch.randn(vo.shape, device=dev, dtype=sdt)
                        for sid in range(8):
                            for detach in (False, True):
                                q = DecayFireParams(v_threshold=0.5, surrogate_id=sid, alpha=1.5, detach_reset=detach,
                                                    store_v_seq=store, saved_state=saved_state)
                                grads = (gs, gv) if sid % 2 else (torch.ones((), device=dev, dtype=dtype).expand(
                                    s.shape), None)
                                backend.backward(*grads, saved, v0, decay, q, carried, True)
                                runs += 1
    torch.cuda.synchronize()
    print(f"memcheck driver: {runs} backward runs done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
