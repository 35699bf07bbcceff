"""Two GPU checks the unit tests are too small for: 64-bit indexing, and spike flips on continuous inputs.

Usage::

    python -m benchmarks.gpu.stress_checks {index64,flips} --out DIR [--dry-run]

``index64``: bfloat16, T = 2, n = 2^30 + 4 neurons per step (vector path: n % 4 == 0) and n = 2^30 + 1 (scalar
path), so element offsets ``t * n + i`` pass 2^31. Dyadic inputs (k/32, decay 1/2) make every value exact;
the first and last 2^20 neurons of each step must equal the ``torch`` backend run on those slices bit for bit
(spikes, ``v_last``, saved ``h``) and ``grad_x``/``grad_v0`` to 1e-6.
``flips``: continuous (non-dyadic) inputs through ``decay_fire_multi_step`` with a learned per-channel decay,
every surrogate, float32 and bfloat16: spikes are compared with the float64 reference on the same (rounded)
inputs; a flip is allowed only where the float64 membrane is within 1e-4 of the threshold. Also reports the
gradient errors of ``x`` and the decay against the float64 reference.
Each writes ``<check>.json`` and ``<check>.md`` into ``--out`` and exits 1 when a check fails. ``--dry-run`` runs
tiny sizes on the CPU with the ``torch`` backend (the script is tested without a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks import common
from sj_resnet.neuron.params import DecayFireParams
from sj_resnet.neuron.surrogates import SURROGATES

V_TH = 0.5


def _params(sid: int = 2, alpha: float = 2.0) -> DecayFireParams:
    return DecayFireParams(v_threshold=V_TH, surrogate_id=sid, alpha=alpha, detach_reset=False, store_v_seq=False)


def _dyadic(shape, device, dtype, gen, lo=-16, hi=26) -> torch.Tensor:
    return (torch.randint(lo, hi, shape, generator=gen, device=device, dtype=torch.int32).to(torch.float32) / 32).to(
        dtype)


def index64(device: torch.device, backend: str, dry: bool) -> dict:
    """The 64-bit indexing case (see the module docstring)."""
    from sj_resnet.neuron.backends import get_backend

    tested, ref = get_backend(backend), get_backend("torch")
    base, window = (2**12, 2**8) if dry else (2**30, 2**20)
    rows, ok = [], True
    for n, path in ((base + 4, "vector"), (base + 1, "scalar")):
        gen = torch.Generator(device=device).manual_seed(n % 1000)
        x = _dyadic((2, n), device, torch.bfloat16, gen)
        v0 = _dyadic((n,), device, torch.float32, gen, -8, 16)
        gs = _dyadic((2, n), device, torch.bfloat16, gen, -8, 8)
        decay = torch.tensor(0.5, device=device)
        spike, v_last, h = tested.forward(x, v0, decay, _params(), True)
        gx, gv0, _ = tested.backward(gs, None, h, v0, decay, _params(), True, False)
        for where, sl in (("first", slice(0, window)), ("last", slice(n - window, n))):
            s2, v2, h2 = ref.forward(x[:, sl].contiguous(), v0[sl].contiguous(), decay, _params(), True)
            g2 = ref.backward(gs[:, sl].contiguous(), None, h2, v0[sl].contiguous(), decay, _params(), True, False)
            exact = torch.equal(spike[:, sl], s2) and torch.equal(v_last[sl], v2) and torch.equal(h[:, sl], h2)
            gx_err = (gx[:, sl].float() - g2[0].float()).abs().max().item()
            gv0_err = (gv0[sl] - g2[1]).abs().max().item()
            passed = exact and gx_err <= 1e-6 and gv0_err <= 1e-6
            ok &= passed
            rows.append({"n": n, "path": path, "neurons": where, "exact_forward": exact, "grad_x_err": gx_err,
                         "grad_v0_err": gv0_err, "pass": passed})
            print(f"  n={n} ({path}) {where} {window}: forward exact {exact}, grad_x err {gx_err:.2g}, "
                  f"grad_v0 err {gv0_err:.2g} -> {'PASS' if passed else 'FAIL'}", flush=True)
        del x, v0, gs, spike, v_last, h, gx, gv0
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "pass": ok}


def flips(device: torch.device, backend: str, dry: bool) -> dict:
    """Spike flips and gradient errors on continuous inputs with a learned per-channel decay."""
    from sj_resnet.neuron import decay_fire_multi_step
    from sj_resnet.neuron.reference import decay_fire_reference

    T, shape = (4, (2, 8, 4, 4)) if dry else (8, (16, 64, 16, 16))
    gen = torch.Generator(device=device).manual_seed(0)
    x64 = torch.randn((T, *shape), generator=gen, device=device, dtype=torch.float64) * 0.5 + 0.2
    decay64 = torch.rand(shape[1], generator=gen, device=device, dtype=torch.float64) * 0.8 + 0.1
    g64 = torch.randn((T, *shape), generator=gen, device=device, dtype=torch.float64)
    rows, ok = [], True
    for dtype in (torch.float32, torch.bfloat16):
        x = x64.to(dtype)
        xr = x.double().requires_grad_(True)
        for spec in SURROGATES:
            sg = spec.sj_class()
            xt = x.clone().requires_grad_(True)
            decay = decay64.float().requires_grad_(True)
            s, _, _ = decay_fire_multi_step(xt, None, decay, V_TH, sg, backend=backend)
            (s.to(torch.float64) * g64).sum().backward()
            dr = decay64.clone().requires_grad_(True)
            xr.grad = None
            sr, _, vr = decay_fire_reference(xr, None, dr, V_TH, sg, False)
            (sr * g64).sum().backward()
            with torch.no_grad():  # the float64 membrane before reset: h[t] = decay * v[t-1] + x[t]
                v_prev = torch.cat([torch.zeros_like(vr[:1]), vr[:-1]])
                h64 = dr.view(1, 1, -1, *([1] * (x.dim() - 3))) * v_prev + xr
            flipped = s.double() != sr.detach()
            away = (h64 - V_TH).abs() > 1e-4
            bad = int((flipped & away).sum())
            gx_err = ((xt.grad.double() - xr.grad).norm() / xr.grad.norm()).item()
            gd_err = ((decay.grad.double() - dr.grad).norm() / dr.grad.norm()).item()
            passed = bad == 0
            ok &= passed
            rows.append({"dtype": common.dtype_name(dtype), "surrogate": spec.name, "spikes": s.numel(),
                         "flips": int(flipped.sum()), "flips_away_from_threshold": bad, "grad_x_rel_err": gx_err,
                         "grad_decay_rel_err": gd_err, "pass": passed})
            print(f"  {common.dtype_name(dtype)} {spec.name:18s} flips {int(flipped.sum())} of {s.numel()} "
                  f"({bad} away from the threshold), grad_x rel err {gx_err:.2g}, grad_decay rel err {gd_err:.2g}",
                  flush=True)
    return {"rows": rows, "pass": ok}


CHECKS = {"index64": index64, "flips": flips}


def markdown(check: str, payload: dict) -> str:
    rows = payload["rows"]
    keys = list(rows[0]) if rows else []
    lines = [f"{check} on **{payload['machine']['device_name']}** (backend {payload['backend']}): "
             f"{'PASS' if payload['pass'] else '**FAIL**'}", "", "| " + " | ".join(keys) + " |",
             "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("check", choices=sorted(CHECKS))
    p.add_argument("--out", type=Path, default=Path("gpu_out"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, torch backend")
    args = p.parse_args(argv)
    if args.dry_run:
        device, backend = torch.device("cpu"), "torch"
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --dry-run", file=sys.stderr)
            return 2
        device, backend = torch.device("cuda"), "cupy"
    result = CHECKS[args.check](device, backend, args.dry_run)
    payload = {"check": args.check, "backend": backend, "dry_run": args.dry_run,
               "machine": common.machine_info(device), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.check}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{args.check}.md").write_text(markdown(args.check, payload))
    print(f"{args.check}: {'PASS' if result['pass'] else 'FAIL'}; wrote {args.out / (args.check + '.json')}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
