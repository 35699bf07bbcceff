"""``saved_state='fp16'`` saturates ``|h - V_th| > 65504`` to ``±65504`` in the CUDA kernels exactly as in the torch
backend (host runs of the unmodified kernel text).

``__float2half_rn`` alone gives ``±inf`` there; backward's ``h = V_th + d`` is then infinite and
``(1 - o) - h * sg`` (and the decay gradient's ``h * (1 - o)``) NaN. The checks: spikes and ``v`` equal the
reference exactly; the saved ``d`` equals the torch backend's bit for bit (``±65504`` where ``|h - V_th| > 65504``,
the sign still the spike's); all gradients finite and equal to the torch backend's (every surrogate,
``detach_reset`` both ways, fp32 and bf16 inputs, vector and scalar path, fresh and carried state).
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import surrogate
from test_kernel_host import V_TH, close, launched_vec, params

from sj_resnet.neuron.backends import torch_fused
from sj_resnet.neuron.backends.cupy import contract
from sj_resnet.neuron.reference import decay_fire_reference
from sj_resnet.neuron.surrogates import SURROGATES

pytestmark = pytest.mark.cuda_cpu
HALF_MAX = 65504.0
# |h - V_th| around these: below, just above and far above float16's range, and near float32's largest value
MAGNITUDES = (6e4, 7e4, 1e6, 3e38)
DECAY = 0.0625  # |h| <= max|x| / (1 - decay) = 3.2e38 < 3.4e38: every h stays finite (asserted below); exact products


def _huge_inputs(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """``[T=4, n]``: each neuron sees one magnitude of ``MAGNITUDES`` (or an ordinary value) with a random sign per
    step, so fired, not fired and carried huge potentials all occur."""
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor([*MAGNITUDES, 0.25, 0.75], dtype=torch.float64)
    mag = choices[torch.arange(n) % len(choices)].expand(4, n)
    sign = torch.where(torch.rand(4, n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    return (mag * sign + V_TH).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [96, 95], ids=["vec", "scalar"])
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
def test_fp16_state_saturates_like_the_torch_backend(host_kernels, dtype, n, carried):
    x = _huge_inputs(dtype, n, seed=n)
    v0 = torch.where(torch.arange(n) % 2 == 0, 7e4, -1e6).float() if carried else None
    decay = torch.tensor(DECAY)
    p = params(saved_state="fp16")
    spike, v_last, d = contract.run_forward(x, v0, decay, p, True, host_kernels)
    assert launched_vec(host_kernels.launches[-1].name) == (4 if n % 4 == 0 else 1)
    v0_ref = torch.zeros(n) if v0 is None else v0
    ref_s, ref_v, ref_vseq = decay_fire_reference(x, v0_ref, decay, V_TH, surrogate.Rect(), False)
    assert torch.equal(spike, ref_s) and torch.equal(v_last, ref_v)
    # the torch backend saturates (its clamp really acts: these potentials are far outside float16)
    t_spike, t_v, t_d = torch_fused.forward(x, v0, decay, p, True)
    assert torch.equal(t_spike, ref_s) and torch.equal(t_v, ref_v)
    h = decay * torch.cat([v0_ref[None], ref_vseq[:-1]]) + x.float()  # the pre-reset potentials
    assert torch.isfinite(h).all() and (h - V_TH).abs().max() > 1e38
    beyond = (h - V_TH).abs() > HALF_MAX
    assert beyond.any() and (~beyond).any()
    assert (t_d.float().abs()[beyond] == HALF_MAX).all() and torch.isfinite(t_d.float()).all()
    # the kernels' d: bit for bit the torch backend's (the sign bit is the spike decision in both)
    assert torch.equal(d.view(torch.int16), t_d.view(torch.int16))
    assert torch.equal(torch.signbit(d), spike == 0)

    g = torch.Generator().manual_seed(5)
    gs = torch.randn(x.shape, generator=g).to(dtype)
    gv = torch.randn(n, generator=g)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for spec in SURROGATES:
        sg = spec.sj_class()
        for detach in (False, True):
            p = params(spec.sid, float(sg.alpha), detach, saved_state="fp16")
            got = contract.run_backward(gs, gv, d, v0, decay, p, carried, True, host_kernels)
            want = torch_fused.backward(gs, gv, t_d, v0, decay, p, carried, True)
            what = f"{spec.name} detach={detach}"
            for name, a, b in zip(("x", "v0", "decay"), got, want, strict=True):
                if b is None:
                    assert a is None
                    continue
                assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"grad_{name} {what} not finite"
                close(a, b, tol, f"grad_{name} {what}")
