"""The CuPy kernels on a real GPU: large sizes against the torch backend, streams, graphs, autocast,
torch.compile, the device guard, and no host synchronisation. Marker ``gpu``; skipped without CUDA + CuPy.

Inputs are dyadic rationals (k/32) with decays in {1/4, 1/2, 3/4, 1}, so every membrane value is exact in
float32 and both implementations must agree bit for bit on spikes and ``h`` (FMA or not).
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate

from sj_resnet import DecayFireNode, ParametricDecayFireNode, decay_fire_multi_step
from sj_resnet.neuron.backends import cupy as cupy_backend
from sj_resnet.neuron.backends import torch_fused
from sj_resnet.neuron.params import DecayFireParams
from sj_resnet.neuron.surrogates import SURROGATES

pytestmark = pytest.mark.gpu
DEV = "cuda"
V_TH = 0.5


def dyadic(shape, lo=-16, hi=26, dtype=torch.float32, seed=0, device=DEV):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randint(lo, hi, tuple(shape), generator=g, device=device).to(torch.float64) / 32).to(dtype)


def close(actual, expected, tol, what):
    expected = expected.to(actual.dtype)
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"


def P(sid=0, alpha=1.0, detach=False, store_v_seq=False, saved_state="fp32") -> DecayFireParams:
    return DecayFireParams(v_threshold=V_TH, surrogate_id=sid, alpha=alpha, detach_reset=detach,
                           store_v_seq=store_v_seq, saved_state=saved_state)


TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("per_channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("store_v_seq", [False, True], ids=["vlast", "vseq"])
def test_large_against_torch_backend(dtype, per_channel, store_v_seq):
    T, shape = 8, (16, 64, 33, 31)  # 1 047 552 neurons per step; inner = 1023: vectors span channels
    if not per_channel:
        shape = (16, 64, 32, 32)  # vector path
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = dyadic((T, *shape), dtype=dtype, seed=1)
    v0 = dyadic(shape, -8, 16, dtype=sdt, seed=2)
    if per_channel:
        choices = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=sdt, device=DEV)
        decay = choices[torch.arange(shape[1], device=DEV) % 4]
    else:
        decay = torch.tensor(0.75, dtype=sdt, device=DEV)
    for saved_state in ("fp32", "fp16"):
        p = P(store_v_seq=store_v_seq, saved_state=saved_state)
        s, vo, h = cupy_backend.forward(x, v0, decay, p, True)
        s2, vo2, h2 = torch_fused.forward(x, v0, decay, p, True)
        assert torch.equal(s, s2) and torch.equal(vo, vo2)
        assert torch.equal(h, h2) if saved_state == "fp32" else torch.equal(torch.signbit(h), torch.signbit(h2))
        si, voi, none = cupy_backend.forward(x, v0, decay, p, False)  # inference: spikes and state only
        assert none is None and torch.equal(si, s) and torch.equal(voi, vo)
        gs = torch.randn(x.shape, device=DEV, dtype=torch.float32).to(dtype)
        gv = torch.randn(vo.shape, device=DEV, dtype=sdt)
        for spec in SURROGATES:
            alpha = float(spec.sj_class().alpha)
            for detach in (False, True):
                q = P(spec.sid, alpha, detach, store_v_seq, saved_state)
                a = cupy_backend.backward(gs, gv, h, v0, decay, q, True, True)
                b = torch_fused.backward(gs, gv, h2, v0, decay, q, True, True)
                what = f"{spec.name} detach={detach} saved={saved_state}"
                close(a[0], b[0], TOL[dtype], f"grad_x {what}")
                close(a[1], b[1], TOL[dtype] if dtype == torch.float64 else 2e-5, f"grad_v0 {what}")
                close(a[2], b[2], 1e-3, f"grad_decay {what}")


def test_channels_last_in_place_and_expanded_grads():
    x = dyadic((4, 8, 16, 16, 32), seed=13).permute(0, 1, 4, 2, 3)  # [T, N, C=32, H, W], every step channels_last
    decay = torch.tensor([0.25, 0.5, 0.75, 1.0] * 8, device=DEV)
    p = P(2, 2.0)
    s, v, h = cupy_backend.forward(x, None, decay, p, True)
    ref = torch_fused.forward(x.contiguous(), None, decay, p, True)
    assert s.stride() == x.stride() and torch.equal(s, ref[0]) and torch.equal(h, ref[2])
    ones = torch.ones((), device=DEV).expand(x.shape)
    a = cupy_backend.backward(ones, None, h, None, decay, p, False, True)
    b = torch_fused.backward(torch.ones_like(ref[2]), None, ref[2], None, decay, p, False, True)
    close(a[0], b[0], 2e-5, "grad_x")
    close(a[2], b[2], 1e-4, "grad_decay")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fp16_state_saturates_like_the_torch_backend(dtype):
    """|h - V_th| beyond float16's range is saved as +-65504 (never inf), exactly like the torch backend."""
    n = 1 << 20
    mags = torch.tensor([6e4, 7e4, 1e6, 3e38, 0.25, 0.75], device=DEV, dtype=torch.float64)
    sign = torch.where(torch.rand(4, n, device=DEV) < 0.5, -1.0, 1.0).double()
    x = (mags[torch.arange(n, device=DEV) % 6] * sign + V_TH).to(dtype)
    decay = torch.tensor(0.0625, device=DEV)  # |h| < 3e38 / (1 - decay) stays finite
    p = P(saved_state="fp16")
    s, v, d = cupy_backend.forward(x, None, decay, p, True)
    s2, v2, d2 = torch_fused.forward(x, None, decay, p, True)
    assert torch.equal(s, s2) and torch.equal(v, v2) and torch.equal(d.view(torch.int16), d2.view(torch.int16))
    assert (d.float().abs() == 65504).any() and torch.isfinite(d.float()).all()
    gs = torch.randn(x.shape, device=DEV).to(dtype)
    for spec in SURROGATES:
        for detach in (False, True):
            q = P(spec.sid, float(spec.sj_class().alpha), detach, saved_state="fp16")
            a = cupy_backend.backward(gs, None, d, None, decay, q, False, True)
            b = torch_fused.backward(gs, None, d2, None, decay, q, False, True)
            assert torch.isfinite(a[0]).all() and torch.isfinite(a[2]).all(), f"{spec.name} detach={detach}"
            close(a[0], b[0], 2e-5 if dtype == torch.float32 else 2e-2, f"grad_x {spec.name} detach={detach}")
            close(a[2], b[2], 1e-3, f"grad_decay {spec.name} detach={detach}")


def test_non_contiguous_and_misaligned_inputs():
    base = dyadic((6, 9, 40, 13), seed=3)
    x = base.transpose(2, 3)  # non-contiguous
    v0 = torch.zeros(x.shape[1:], device=DEV)
    decay = torch.tensor(0.5, device=DEV)
    ref = torch_fused.forward(x, v0, decay, P(), True)
    got = cupy_backend.forward(x, v0, decay, P(), True)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    flat = dyadic((6 * 64 + 1,), seed=4)[1:].view(6, 64)  # data pointer 4 bytes past alignment
    ref = torch_fused.forward(flat, torch.zeros(64, device=DEV), decay, P(store_v_seq=True), True)
    got = cupy_backend.forward(flat, torch.zeros(64, device=DEV), decay, P(store_v_seq=True), True)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))


def test_streams_are_respected():
    """Work queued on side streams right behind the producer of x: a launch on the wrong stream would race."""
    streams = [torch.cuda.Stream() for _ in range(3)]
    src = [dyadic((8, 1 << 18), seed=10 + i) for i in range(3)]
    torch.cuda.synchronize()
    outs = []
    for stream, x in zip(streams, src, strict=True):
        with torch.cuda.stream(stream):
            y = x.clone()
            for _ in range(20):  # keep the stream busy so a racing kernel would read stale data
                y.mul_(2.0).mul_(0.5)
            y.add_(0.0)
            outs.append(decay_fire_multi_step(y, backend="cupy", decay=0.5)[0])
    torch.cuda.synchronize()
    for x, s in zip(src, outs, strict=True):
        assert torch.equal(s, decay_fire_multi_step(x, backend="torch", decay=0.5)[0])


def test_cuda_graph_capture():
    """A launch on PyTorch's current stream is capturable (a launch elsewhere would fail the capture)."""
    x = dyadic((4, 4096), seed=5)
    decay = torch.tensor(0.5, device=DEV)
    v0 = torch.zeros(4096, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up compiles and loads the module outside the capture
        cupy_backend.forward(x, v0, decay, P(), True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        s, v, h = cupy_backend.forward(x, v0, decay, P(), True)
    x.copy_(dyadic((4, 4096), seed=6))
    graph.replay()
    torch.cuda.synchronize()
    ref = torch_fused.forward(x, v0, decay, P(), True)
    assert torch.equal(s, ref[0]) and torch.equal(h, ref[2])


def test_no_host_synchronisation():
    x = dyadic((4, 3, 16, 8, 8), seed=7).requires_grad_()
    decay = torch.full((16,), 0.5, device=DEV, requires_grad=True)
    s, v, _ = decay_fire_multi_step(x, None, decay, V_TH, surrogate.ATan(), backend="cupy")  # warm up
    (s.sum() + v.sum()).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        s, v, _ = decay_fire_multi_step(x, None, decay, V_TH, surrogate.ATan(), backend="cupy")
        (s.sum() + v.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_autocast_bf16_through_a_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(DEV)
    img = torch.randn(4 * 2, 3, 16, 16, device=DEV)
    grads = {}
    for backend in ("torch", "cupy"):
        conv.zero_grad()
        with torch.autocast(torch.device(DEV).type, dtype=torch.bfloat16):
            y = conv(img).view(4, 2, 16, 16, 16)
            s, v, _ = decay_fire_multi_step(y, None, 0.5, V_TH, surrogate.ATan(), backend=backend)
        assert s.dtype == torch.bfloat16 and v.dtype == torch.float32
        (s.float().sum() + v.sum()).backward()
        grads[backend] = (s, conv.weight.grad.clone())
    assert torch.equal(grads["torch"][0], grads["cupy"][0])
    close(grads["cupy"][1], grads["torch"][1], 2e-2, "conv weight grad")


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    x = dyadic((4, 8, 32, 4, 4), seed=8).requires_grad_()
    decay = torch.full((32,), 0.75, device=DEV, requires_grad=True)

    def f(x, decay):
        s, v_last, _ = decay_fire_multi_step(x, None, decay, V_TH, surrogate.Sigmoid(), False, False, "cupy")
        return s, v_last

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    s, v = compiled(x, decay)
    (s.sum() + v.square().sum()).backward()
    g = (x.grad.clone(), decay.grad.clone())
    x.grad = decay.grad = None
    s2, v2 = f(x, decay)
    (s2.sum() + v2.square().sum()).backward()
    assert torch.equal(s, s2)
    close(v, v2, 1e-6, "v_last")
    close(g[0], x.grad, 2e-5, "grad_x")
    close(g[1], decay.grad, 1e-4, "grad_decay")


def test_nodes_cupy_matches_torch():
    torch.manual_seed(0)
    x = dyadic((6, 4, 8, 5, 5), seed=9)
    for make in (lambda b: DecayFireNode(step_mode="m", backend=b, surrogate_function=surrogate.ATan()),
                 lambda b: ParametricDecayFireNode(0.5, num_channels=8, step_mode="m", backend=b)):  # sigmoid(0) = 0.5
        outs = {}
        for backend in ("torch", "cupy"):
            node = make(backend).to(DEV)
            xi = x.clone().requires_grad_()
            s = node(xi)
            s.sum().backward()
            params = [p.grad.clone() for p in node.parameters()]
            outs[backend] = (s, xi.grad, params)
            functional.reset_net(node)
        assert torch.equal(outs["torch"][0], outs["cupy"][0])
        close(outs["cupy"][1], outs["torch"][1], 2e-5, "grad_x")
        for a, b in zip(outs["cupy"][2], outs["torch"][2], strict=True):
            close(a, b, 1e-4, "parameter grad")


@pytest.mark.gpu2
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_guard_on_second_gpu():
    import cupy

    torch.cuda.set_device(0)
    x = dyadic((4, 2, 8, 8), seed=11, device="cuda:1")
    s, v, _ = decay_fire_multi_step(x, None, 0.5, backend="cupy")
    assert s.device == torch.device("cuda:1")
    assert torch.cuda.current_device() == 0 and cupy.cuda.runtime.getDevice() == 0
    ref = decay_fire_multi_step(x, None, 0.5, backend="torch")
    assert torch.equal(s, ref[0]) and torch.equal(v, ref[1])


def test_device_guard_keeps_current_device():
    import cupy

    before = (torch.cuda.current_device(), cupy.cuda.runtime.getDevice())
    decay_fire_multi_step(dyadic((2, 64), seed=12), backend="cupy")
    assert (torch.cuda.current_device(), cupy.cuda.runtime.getDevice()) == before
