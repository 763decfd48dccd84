"""Figure 1 — forward efficiency: FLOP rate of the solve ÷ FLOP rate of a same-shape GEMM.

The solve at batch B, width N, S steps of an s-stage explicit method performs S·s matrix
products (B×N)·(N×N) = 2·B·N² flops each (the rest — activation, bias, stage combinations,
kernel interpolation — is O(B·N) or O(N²) per stage and is *not* counted, so it shows up as a
ratio below 1). Both rates are measured in this process, best of ``repeats`` after a warm-up.
Target: ratio ≥ 0.7 at B = 1024, N = 256, S = 64 (float32 and float64).

Usage: ``python -m benchmarks.bench_forward [--batch 1024 --width 256 --steps 64] [--json]``
"""

from __future__ import annotations

import json

import torch

from ._common import FULL, Sizes, apply_threads, best_time, make_net, script_parser, sync


def forward_ratio(batch=1024, width=256, steps=64, dtype=torch.float32, solver="euler",
                  repeats=5, device="cpu") -> dict:
    """Measure the forward FLOP-rate ratio; returns a dict of figures (``ratio`` and more)."""
    torch.manual_seed(0)
    net, disc = make_net(width, dtype, device, solver, steps)
    xi = torch.randn(batch, 16, dtype=dtype, device=device)
    a = torch.randn(batch, width, dtype=dtype, device=device)
    m = torch.randn(width, width, dtype=dtype, device=device)
    out = torch.empty(batch, width, dtype=dtype, device=device)

    def gemm():
        for _ in range(steps):
            torch.mm(a, m, out=out)
        sync(device)

    def solve():
        with torch.no_grad():
            net(xi, disc)
        sync(device)

    stages = len(disc.solver.c) if hasattr(disc.solver, "c") else 1
    flops = 2.0 * batch * width**2 * steps * stages
    t_gemm = best_time(gemm, repeats, device) * stages
    t_solve = best_time(solve, repeats, device)
    return {
        "batch": batch, "width": width, "steps": steps, "solver": solver,
        "dtype": str(dtype).replace("torch.", ""), "device": str(device),
        "gemm_gflops": flops / t_gemm / 1e9, "solve_gflops": flops / t_solve / 1e9,
        "ratio": t_gemm / t_solve, "solve_seconds": t_solve,
    }


def run(sizes: Sizes = FULL, device: str = "cpu") -> dict:
    """Figure 1 for the suite: ``{"f32": ratio, "f64": ratio, "rows": [...]}`` (Euler is the
    headline — it *is* the ResNet; other solvers of ``sizes.fwd_solvers`` are in ``rows``)."""
    rows = []
    for dtype in (torch.float32, torch.float64):
        for solver in sizes.fwd_solvers:
            rows.append(forward_ratio(sizes.fwd_batch, sizes.fwd_width, sizes.fwd_steps, dtype,
                                      solver, sizes.fwd_repeats, device))
    head = {r["dtype"]: r["ratio"] for r in rows if r["solver"] == sizes.fwd_solvers[0]}
    return {"f32": head["float32"], "f64": head["float64"], "solver": sizes.fwd_solvers[0],
            "rows": rows}


def main(argv=None) -> None:
    p = script_parser(__doc__)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    apply_threads(a)
    rows = []
    for dtype in (torch.float32, torch.float64):
        for solver in ("euler", "rk4"):
            rows.append(forward_ratio(a.batch, a.width, a.steps, dtype, solver, a.repeats,
                                      a.device))
    if a.json:
        print(json.dumps(rows))
        return
    print(f"B={a.batch} N={a.width} S={a.steps} device={a.device} threads="
          f"{torch.get_num_threads()} (best of {a.repeats})")
    print(f"{'dtype':8} {'solver':6} {'GEMM GF/s':>10} {'solve GF/s':>11} {'ratio':>6}")
    for r in rows:
        print(f"{r['dtype']:8} {r['solver']:6} {r['gemm_gflops']:10.1f} {r['solve_gflops']:11.1f} "
              f"{r['ratio']:6.2f}")


if __name__ == "__main__":
    main()
