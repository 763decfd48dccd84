"""Benchmark of the HJB grid solver (MODEL.md §8): throughput and peak memory against D and n.

For each state dimension D (= width nodes, one sample) and points per dimension n, one solve of
a short horizon (about ``--steps`` CFL steps) runs in a fresh subprocess, which reports

* grid points × time steps per second (the solver's own timer, excluding start-up),
* the peak resident memory added by the solve (``resource.getrusage`` high-water mark minus the
  mark before the solve; torch's CPU allocations are invisible to tracemalloc),
* the solver's a-priori estimate (``pdenets.hjb.estimate_memory``).

Two Hamiltonians: ``tanh`` (w and b controls, discrete control set + Newton per row) and
``affine`` (σ = identity, bias control, closed-form infimum). The table ends with the largest n
per D that the default memory limit admits — where the grid solver stops scaling.

``--figures`` prints the acceptance figures of issue 16 instead: the sampled method on the
closed form in D = 8, 32, 128 (error, samples, time); V(0, v0) of the CLI example
examples/hjb_closed_form.toml with each grid scheme; the tanh problems with D = 16 and 64
(sampled value and closed loop vs the direct method from random starts: median and worst
relative difference); CPU thread scaling (1 vs 2 threads, closed form on 161², fresh
subprocesses). ``--gpu-speedup`` times the grid solver on CUDA against the CPU (run by
benchmarks/device_check.sh).

Usage::

    python benchmarks/bench_hjb.py --quick          # < 60 s
    python benchmarks/bench_hjb.py --figures --quick
    python benchmarks/bench_hjb.py --gpu-speedup
    python benchmarks/bench_hjb.py                  # full sweep
    python benchmarks/bench_hjb.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

QUICK = {
    "tanh": {1: [1601], 2: [41, 81], 3: [17, 33], 4: [9, 13]},
    "affine": {2: [81], 4: [13]},
}
FULL = {
    "tanh": {1: [401, 1601, 6401], 2: [41, 81, 161, 321], 3: [17, 33, 49, 65],
             4: [9, 13, 17, 21, 25]},
    "affine": {1: [1601, 6401], 2: [161, 321], 3: [33, 65], 4: [17, 25]},
}


def _problem(kind: str, D: int, steps: int, n: int):
    import pdenets as pn
    from pdenets.hjb import ReducedProblem, StateGrid

    grid = StateGrid(-1.0, 1.0, n, D)
    h = 2.0 / (n - 1)
    if kind == "tanh":
        # |f_d| <= 1 for tanh, so the CFL step is 0.9 h / D: T gives about `steps` steps
        T = steps * 0.9 * h / D
        prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(D), 1, "wb", alpha=0.2, T=T,
                              target=[0.3] * D)
    else:
        # speeds |b*_d| = |p_d|/(α ω_d) <= |v_d − y_d| / α · (1 + ...) ~ 2.6 D at t = T
        T = steps * 0.9 * h / (2.6 * D * D)
        prob = ReducedProblem(pn.Standard("identity"), pn.Midpoint(D), 1, "b", alpha=0.5,
                              T=T, target=[0.3] * D)
    return prob, grid


def child(spec: dict) -> dict:
    """Run one configuration (in a fresh process) and return its measurements."""
    import torch

    from pdenets.hjb import HJBOptions, estimate_memory, solve_hjb

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    prob, grid = _problem(spec["kind"], spec["D"], spec["steps"], spec["n"])
    opts = HJBOptions(snapshots=2, threads=spec["threads"] if spec.get("force") else None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sol = solve_hjb(prob, grid, opts)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **spec, "points": grid.size, "time_steps": sol.stats["steps"],
        "seconds": sol.stats["seconds"], "rate": sol.stats["point_steps_per_second"],
        "estimate_mib": estimate_memory(prob, grid, opts) / 2**20,
        "peak_mib": max(rss1 - rss0, 0) / 1024.0,  # ru_maxrss is in KiB on Linux
        "threads_used": torch.get_num_threads(),
    }


def limits_table() -> list[dict]:
    """Largest points per dimension admitted by the default memory limit, per D (tanh)."""
    import pdenets as pn
    from pdenets.hjb import HJBOptions, ReducedProblem, _default_memory_limit, estimate_memory

    limit = _default_memory_limit()
    rows = []
    for D in range(1, 7):
        prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(D), 1, "wb")
        lo, hi = 3, 10**7
        while lo < hi:  # largest n with estimate <= limit (snapshots=11)
            mid = (lo + hi + 1) // 2
            est = estimate_memory(prob, _Fake(mid, D), HJBOptions())  # type: ignore[arg-type]
            if est <= limit:
                lo = mid
            else:
                hi = mid - 1
        rows.append({"D": D, "max_points_per_dim": lo, "grid_points": lo**D,
                     "limit_gib": limit / 2**30})
    return rows


class _Fake:
    """A stand-in with the attributes :func:`estimate_memory` reads (no allocation)."""

    def __init__(self, n: int, D: int) -> None:
        self.size, self.D, self.shape = n**D, D, (n,) * D


def _closed_form_problem(D: int):
    import torch

    import pdenets as pn
    from pdenets.hjb import ReducedProblem

    y = torch.linspace(-0.3, 0.3, D, dtype=torch.float64)
    return ReducedProblem(pn.Standard("identity"), pn.Midpoint(D), 1, "b", 0.5, 1.0, target=y)


def figures(quick: bool) -> dict:
    """The acceptance figures of issue 16 (module docstring)."""
    import tomllib
    from pathlib import Path

    import torch

    import pdenets as pn
    from pdenets.hjb import (
        HJBOptions,
        ReducedProblem,
        SampledOptions,
        StateGrid,
        closed_form_value,
        closed_loop,
        direct_method,
        solve_hjb,
        solve_sampled,
    )

    out: dict = {"closed_form": [], "cli_example": [], "tanh": [], "threads": []}
    gen = torch.Generator().manual_seed(0)
    for D in (8, 32) if quick else (8, 32, 128):
        prob = _closed_form_problem(D)
        t0 = time.perf_counter()
        sol = solve_sampled(prob, SampledOptions(starts=16, validation=8, intervals=8, steps=1,
                                                 rounds=2, hidden=16, fit_iter=100))
        sec = time.perf_counter() - t0
        vs = -1 + 2 * torch.rand(64, D, generator=gen, dtype=torch.float64)
        ex = closed_form_value(0.0, vs, prob.target[0], 0.5, 1.0, prob.weights)
        rel = ((sol.value(0.0, vs) - ex).abs() / ex)
        cl = [closed_loop(sol, vs[k], steps=20).cost / float(ex[k]) - 1 for k in range(3)]
        out["closed_form"].append({"D": D, "max_rel_error": float(rel.max()),
                                   "trajectories": sol.stats["trajectories"],
                                   "data_points": sol.stats["data_points"], "seconds": sec,
                                   "closed_loop_max_rel_excess": max(abs(c) for c in cl)})
        print(f"closed form D={D:4d}: max rel error {float(rel.max()):.2e} on 64 states, "
              f"closed loop {max(abs(c) for c in cl):.2e}, {sol.stats['trajectories']} "
              f"trajectories ({sol.stats['data_points']} points), {sec:.1f} s", flush=True)
    cfg = tomllib.loads((Path(__file__).parents[1] / "examples" / "hjb_closed_form.toml")
                        .read_text())
    pr = cfg["problem"]
    prob = ReducedProblem(pn.Standard("identity"), pn.Midpoint(pr["width"]), 1, "b",
                          pr["alpha"], pr["T"], target=pr["target"])
    grid = StateGrid(cfg["grid"]["lo"], cfg["grid"]["hi"], cfg["grid"]["points"], prob.D)
    v0 = torch.tensor(pr["v0"], dtype=torch.float64)
    exact = float(closed_form_value(0.0, v0, prob.target[0], prob.alpha, prob.T, prob.weights))
    for scheme in ("lax-friedrichs", "semi-lagrangian", "eno2-rk2", "weno5-rk3"):
        sol = solve_hjb(prob, grid, HJBOptions(scheme=scheme, cfl=0.9))
        V0 = float(sol.value(0.0, v0))
        out["cli_example"].append({"scheme": scheme, "V0": V0, "exact": exact,
                                   "rel_error": abs(V0 - exact) / exact,
                                   "seconds": sol.stats["seconds"]})
        print(f"CLI example {scheme:16s}: V0 = {V0:.6f} (exact {exact:.6f}, "
              f"error {abs(V0 - exact) / exact:.2%}), {sol.stats['seconds']:.2f} s", flush=True)
    for B, N in ((2, 8),) if quick else ((2, 8), (4, 16)):
        D = B * N
        prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(N), B, "wb", alpha=0.2, T=1.0,
                              target=0.4 * torch.randn(B, N, generator=gen,
                                                       dtype=torch.float64))
        t0 = time.perf_counter()
        sol = solve_sampled(prob, SampledOptions(lo=-0.8, hi=0.8, starts=32, validation=8,
                                                 intervals=8, steps=2, rounds=2, hidden=32))
        sec = time.perf_counter() - t0
        rv, rc = [], []
        for _ in range(3 if quick else 6):
            v = -0.8 + 1.6 * torch.rand(D, generator=gen, dtype=torch.float64)
            ref = direct_method(prob, v, intervals=16, steps=32).cost
            rv.append(abs(float(sol.value(0.0, v)) - ref) / ref)
            rc.append((closed_loop(sol, v, steps=32).cost - ref) / ref)
        rv_t, rc_t = torch.tensor(rv), torch.tensor(rc)
        row = {"D": D, "B": B, "N": N, "seconds": sec, "trajectories":
               sol.stats["trajectories"], "validation_error": sol.stats["validation_error"],
               "value_median": float(rv_t.median()), "value_worst": float(rv_t.max()),
               "closed_loop_median": float(rc_t.median()), "closed_loop_worst":
               float(rc_t.abs().max())}
        out["tanh"].append(row)
        print(f"tanh D={D:3d} (B={B}, N={N}): value vs direct median {row['value_median']:.2e} "
              f"worst {row['value_worst']:.2e}; closed loop vs direct median "
              f"{row['closed_loop_median']:.2e} worst {row['closed_loop_worst']:.2e}; "
              f"{row['trajectories']} trajectories, {sec:.1f} s", flush=True)
    for threads, force in ((1, True), (2, False), (2, True)):
        # force=False: torch set to 2 threads, the solver's default policy (threads=None)
        spec = {"kind": "affine", "D": 2, "n": 161, "steps": 20, "threads": threads,
                "force": force}
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                             capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        out["threads"].append({"threads": threads, "forced": force, "seconds": r["seconds"],
                               "rate": r["rate"]})
        how = "forced" if force else "default policy"
        print(f"torch threads={threads} ({how}): closed form 161^2, {r['time_steps']} steps in "
              f"{r['seconds']:.3f} s ({r['rate']:.3g} pt-steps/s)", flush=True)
    return out


def gpu_speedup() -> dict:
    """Grid solver (weno5-rk3 and lax-friedrichs, tanh, D = 2 on 161², D = 3 on 41³) on
    CUDA against the CPU (one thread); prints the speed-up and the largest difference."""
    import torch

    import pdenets as pn
    from pdenets.hjb import HJBOptions, ReducedProblem, StateGrid, solve_hjb

    rows = []
    for D, n in ((2, 161), (3, 41)):
        prob = ReducedProblem(pn.Standard("tanh"), pn.Midpoint(D), 1, "wb", alpha=0.2, T=0.2,
                              target=[0.3] * D)
        grid = StateGrid(-1.0, 1.0, n, D)
        for scheme in ("lax-friedrichs", "weno5-rk3"):
            cpu = solve_hjb(prob, grid, HJBOptions(scheme=scheme, snapshots=2, threads=1))
            solve_hjb(prob, grid, HJBOptions(scheme=scheme, snapshots=2, device="cuda"))
            gpu = solve_hjb(prob, grid, HJBOptions(scheme=scheme, snapshots=2, device="cuda"))
            diff = float((cpu.values - gpu.values).abs().max())
            r = {"D": D, "n": n, "scheme": scheme, "cpu_s": cpu.stats["seconds"],
                 "gpu_s": gpu.stats["seconds"],
                 "speedup": cpu.stats["seconds"] / gpu.stats["seconds"], "max_diff": diff}
            rows.append(r)
            print(f"GPU grid speed-up D={D} n={n} {scheme}: CPU {r['cpu_s']:.2f} s, "
                  f"{torch.cuda.get_device_name(0)} {r['gpu_s']:.2f} s, x{r['speedup']:.1f}, "
                  f"max |diff| {diff:.1e}", flush=True)
    return {"rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sweep (< 60 s)")
    ap.add_argument("--steps", type=int, default=None,
                    help="time steps per solve, about (default 10; 6 with --quick)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--figures", action="store_true",
                    help="acceptance figures of issue 16 (sampled method, schemes, threads)")
    ap.add_argument("--gpu-speedup", action="store_true",
                    help="time the grid solver on CUDA against the CPU")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.figures or args.gpu_speedup:
        res = figures(args.quick) if args.figures else gpu_speedup()
        if args.json:
            print(json.dumps(res))
        return 0
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sweep = QUICK if args.quick else FULL
    if args.steps is None:
        args.steps = 6 if args.quick else 10
    rows = []
    t0 = time.perf_counter()
    for kind, per_d in sweep.items():
        for D, ns in per_d.items():
            for n in ns:
                spec = {"kind": kind, "D": D, "n": n, "steps": args.steps,
                        "threads": args.threads}
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                if not args.json:
                    r = rows[-1]
                    print(f"{kind:6s} D={D} n={n:5d} P={r['points']:>9d} steps={r['time_steps']:3d}"
                          f" {r['seconds']:7.2f}s {r['rate']:12.4g} pt-steps/s "
                          f"est {r['estimate_mib']:8.1f} MiB  peak +{r['peak_mib']:8.1f} MiB",
                          flush=True)
    lim = limits_table()
    elapsed = time.perf_counter() - t0
    # where it stops scaling: throughput per kind relative to its best
    notes = []
    for kind in sweep:
        rk = [r for r in rows if r["kind"] == kind]
        best = max(r["rate"] for r in rk)
        slow = [r for r in rk if r["rate"] < 0.5 * best]
        if slow:
            notes.append(f"{kind}: throughput falls below half its best ({best:.3g} pt-steps/s) "
                         "at " + ", ".join(f"D={r['D']} n={r['n']}" for r in slow))
        else:
            notes.append(f"{kind}: throughput within 2x of its best ({best:.3g} pt-steps/s) "
                         "for all sizes run")
    if args.json:
        print(json.dumps({"rows": rows, "limits": lim, "notes": notes, "seconds": elapsed}))
        return 0
    print("\nlargest grid admitted by the default memory limit "
          f"({lim[0]['limit_gib']:.3g} GiB), tanh, 11 snapshots:")
    for r in lim:
        cap = " (search cap)" if r["max_points_per_dim"] >= 10**7 else ""
        print(f"  D={r['D']}: n <= {r['max_points_per_dim']} per dimension{cap} "
              f"({r['grid_points']:.3g} points)")
    print("\n" + "\n".join(notes))
    print(f"\n(total {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
