"""Runs the host-built kernels under AddressSanitizer/UBSan (started by test_kernel_sanitize.py).

Usage: ``python sanitize_driver.py LIB [--plant]``; the library's name list sits beside it as ``.json``.
The normal run drives forward (inference and training, both saved kinds) and backward (dense, absent and
expanded gradients, fresh and carried state) through ``contract`` on shapes with partial last blocks, on the
vector and the scalar path; ``--plant`` launches one forward claiming one neuron more than the buffers
hold, which the sanitizer must report (proof that it is watching).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_host  # noqa: E402

from sj_resnet.neuron.backends.cupy import contract, launch_plans  # noqa: E402
from sj_resnet.neuron.params import DecayFireParams  # noqa: E402


def _params(sid: int, detach: bool, store: bool, saved_state: str) -> DecayFireParams:
    return DecayFireParams(v_threshold=0.5, surrogate_id=sid, alpha=2.0, detach_reset=detach, store_v_seq=store,
                           saved_state=saved_state)


def main() -> int:
    lib = Path(sys.argv[1])
    names = json.loads(lib.with_suffix(".json").read_text())
    host = kernel_host.HostKernels(lib, names, count_bytes=False)
    gen = torch.Generator().manual_seed(0)
    if "--plant" in sys.argv:
        x = torch.randn(3, 5, 8, generator=gen)
        decay = torch.tensor(0.5)
        spike, h, v = torch.empty_like(x), torch.empty_like(x), torch.empty(5, 8)
        plan = launch_plans.forward_launch(
            "float32", 1, launch_plans.SAVE_STATE, x=x.data_ptr(), v0=0, decay=decay.data_ptr(),
            spike=spike.data_ptr(), saved=h.data_ptr(), v_out=v.data_ptr(), v_threshold=0.5, n=41, T=3,
            channel_stride=1, channels=1, v_every_step=False,
        )
        host.launch(plan, x.device)
        return 0
    shapes = [(3, 2, 4, 5, 4), (4, 3, 5, 3, 3), (2, 1, 3, 7)]
    count = 0
    for dtype in (torch.float32, torch.float16):
        for shape in shapes:
            for per_channel in (False, True):
                for store in (False, True):
                    for misalign in (False, True):
                        x = torch.randn(shape, generator=gen).to(dtype)
                        if misalign:
                            buf = torch.empty(x.numel() + 1, dtype=dtype)
                            buf[1:].copy_(x.flatten())
                            x = buf[1:].view(shape)
                        carried = misalign == store
                        v0 = torch.randn(shape[1:], generator=gen) * 0.1 if carried else None
                        decay = torch.rand(shape[2]) if per_channel else torch.tensor(0.5)
                        saved_state = "fp16" if per_channel == misalign else "fp32"
                        s, vo, _ = contract.run_forward(x, v0, decay, _params(0, False, store, "fp32"), False, host)
                        s, vo, saved = contract.run_forward(x, v0, decay, _params(0, False, store, saved_state), True,
                                                            host)
                        gs = torch.randn(shape, generator=gen).to(dtype)
                        gv = torch.randn(vo.shape, generator=gen)
                        for sid in (0, 2, 7):
                            for detach in (False, True):
                                p = _params(sid, detach, store, saved_state)
                                grads = (gs, gv) if (sid + detach) % 3 else (None, torch.ones(()).expand(vo.shape))
                                contract.run_backward(*grads, saved, v0, decay, p, carried, True, host)
                                count += 1
    vec_paths = sum(1 for plan in host.launches if plan.name.split("<")[1].split(",")[1].strip() != "1")
    print(f"sanitized backward runs: {count}; launches: {len(host.launches)}; vector-path launches: {vec_paths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
