"""Forward throughput: achieved FLOP rate of the solve ÷ FLOP rate of a same-shape GEMM.

The solve at batch B, width N, S steps of an s-stage explicit method performs S·s matrix
products (B×N)·(N×N) = 2·B·N² flops each (the rest — activation, bias, stage combinations,
kernel interpolation — is O(B·N) or O(N²) per stage and is *not* counted, so it shows up as a
ratio below 1). Both rates are measured in this process, best of ``repeats``.

Usage: ``python -m benchmarks.bench_forward [--batch 1024 --width 256 --steps 64] [--json]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import pdenets as pn


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def forward_ratio(batch=1024, width=256, steps=64, dtype=torch.float32, solver="euler",
                  repeats=5, device="cpu") -> dict:
    """Measure the forward FLOP-rate ratio; returns a dict of figures."""
    torch.manual_seed(0)
    net = pn.ContinuumNetwork.create(16, 10, control_size=16, intervals=8, seed=0,
                                     dtype=dtype).to(device)
    disc = pn.Discretization(pn.Midpoint(width), pn.make_solver(solver), steps)
    xi = torch.randn(batch, 16, dtype=dtype, device=device)
    a = torch.randn(batch, width, dtype=dtype, device=device)
    m = torch.randn(width, width, dtype=dtype, device=device)
    out = torch.empty(batch, width, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def gemm():
        for _ in range(steps):
            torch.mm(a, m, out=out)
        sync()

    def solve():
        with torch.no_grad():
            net(xi, disc)
        sync()

    stages = len(disc.solver.c) if hasattr(disc.solver, "c") else 1
    flops = 2.0 * batch * width**2 * steps * stages
    t_gemm = best_time(gemm, repeats) * stages
    t_solve = best_time(solve, repeats)
    return {
        "batch": batch, "width": width, "steps": steps, "solver": solver,
        "dtype": str(dtype).replace("torch.", ""), "device": device,
        "gemm_gflops": flops / t_gemm / 1e9, "solve_gflops": flops / t_solve / 1e9,
        "ratio": t_gemm / t_solve, "solve_seconds": t_solve,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = []
    for dtype in (torch.float32, torch.float64):
        for solver in ("euler", "rk4"):
            rows.append(forward_ratio(a.batch, a.width, a.steps, dtype, solver, device=a.device))
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'dtype':8} {'solver':6} {'GEMM GF/s':>10} {'solve GF/s':>11} {'ratio':>6}")
    for r in rows:
        print(f"{r['dtype']:8} {r['solver']:6} {r['gemm_gflops']:10.1f} {r['solve_gflops']:11.1f} "
              f"{r['ratio']:6.2f}")


if __name__ == "__main__":
    main()
