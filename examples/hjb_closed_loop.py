"""HJB: the closed-form value function, its grid approximation and the closed loop.

The reduced problem of MODEL.md §8 with two width nodes (midpoint rule, ω = ½) and one sample:
w ≡ 0, σ = identity, bias control, so ∂_t u = b, with cost (α/2)∫‖b‖²_ω dt + ½‖u(T) − y‖²_ω.
Its value function and optimal feedback are known in closed form,

    V(t, v) = ‖v − y‖²_ω / (2 (1 + (T − t)/α)),    b*(t, v) = −(v − y)/(α + T − t),

and the optimal trajectory runs straight towards y: u(t) − y = (v₀ − y)(α + T − t)/(α + T).
``pdenets.hjb.solve_hjb`` (Lax–Friedrichs, a monotone scheme converging to the viscosity
solution) approximates V on state grids of increasing resolution: the error falls at first
order. ``closed_loop`` runs the forward problem under the grid feedback θ*(t, u(t)); its cost is
never below the optimum V(0, v₀) and approaches it, and its trajectory follows the exact one.

MODEL.md §8 (HJB, optimal feedback), §4 (running and terminal cost).

    python examples/hjb_closed_loop.py --out DIR [--fast] [--json]
"""

from __future__ import annotations

import _gallery
import numpy as np
import torch

import pdenets as pn
from pdenets.hjb import HJBOptions, ReducedProblem, StateGrid, closed_loop, solve_hjb

ALPHA, T = 0.5, 1.0
TARGET = np.array([0.25, -0.25])
V0 = np.array([0.75, 0.5])
STARTS = np.array([[-0.75, 0.75], [0.0, -0.9], [0.9, -0.8], [-0.8, -0.6]])
OMEGA = np.array([0.5, 0.5])  # midpoint weights of two nodes


def exact_value(t: float, v: np.ndarray) -> np.ndarray:
    """V(t, v) of MODEL.md §8 with ω-weighted norms."""
    r = v - TARGET
    return (r * r) @ OMEGA / (2 * (1 + (T - t) / ALPHA))


def main(argv=None) -> None:
    args = _gallery.parse_args(__doc__, argv)
    points = (17, 33) if args.fast else (21, 41, 81)
    prob = ReducedProblem(pn.Standard("identity"), pn.Midpoint(2), samples=1, controls="b",
                          alpha=ALPHA, T=T, target=[TARGET.tolist()])
    # error measured on an interior box |v − y|∞ ≤ ½ (values near the box boundary carry the
    # boundary extrapolation error)
    s = np.linspace(-0.5, 0.5, 11)
    probe = np.stack(np.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2) + TARGET
    v_exact = exact_value(0.0, probe)
    rows, sols = [], []
    for n in points:
        sol = solve_hjb(prob, StateGrid(-1.0, 1.0, n, prob.D),
                        HJBOptions(scheme="lax-friedrichs", snapshots=11))
        err = float(np.abs(sol.value(0.0, torch.tensor(probe)).numpy() - v_exact).max())
        cl = closed_loop(sol, V0.tolist(), steps=100)
        rows.append({"points": n, "h": 2.0 / (n - 1), "max_value_error": err,
                     "value_v0": float(sol.value(0.0, torch.tensor(V0))[0]),
                     "closed_loop_cost": cl.cost,
                     "terminal_state": cl.states[-1].tolist()})
        sols.append((sol, cl))
    V_opt = float(exact_value(0.0, V0))
    uT_exact = (TARGET + (V0 - TARGET) * ALPHA / (ALPHA + T)).tolist()

    plt = _gallery.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    line = np.linspace(-1.0, 1.0, 201)
    pts = np.stack([line, np.full_like(line, V0[1])], 1)
    a1.plot(line, exact_value(0.0, pts), "k-", lw=2, label="exact V(0, ·)")
    for (sol, _), r in zip(sols, rows):
        a1.plot(line, sol.value(0.0, torch.tensor(pts)).numpy(), "--",
                label=f"grid {r['points']}², h = {r['h']:.3g}")
    a1.set_xlabel(f"v₁ (v₂ = {V0[1]})")
    a1.set_ylabel("V(0, v)")
    a1.set_title("value function: Lax–Friedrichs vs closed form", fontsize=9)
    a1.legend(fontsize=7)
    ts = np.linspace(0.0, T, 101)
    finest = sols[-1][0]
    start_errors = []
    for i, start in enumerate(STARTS):
        exact_path = TARGET + np.outer((ALPHA + T - ts) / (ALPHA + T), start - TARGET)
        st = closed_loop(finest, start.tolist(), steps=100).states.numpy()
        start_errors.append(float(np.abs(st - exact_path).max()))
        a2.plot(exact_path[:, 0], exact_path[:, 1], "k-", lw=3, alpha=0.3,
                label="exact optima" if i == 0 else None)
        a2.plot(st[:, 0], st[:, 1], "m--", label=f"closed loop, grid {rows[-1]['points']}²"
                if i == 0 else None)
        a2.plot(*start, "ko", ms=4)
    for (_, cl), r in zip(sols, rows):
        st = cl.states.numpy()
        a2.plot(st[:, 0], st[:, 1], "--", label=f"from v₀, grid {r['points']}²")
    a2.plot(*V0, "bo", label="v₀")
    a2.plot(*TARGET, "r*", ms=12, label="target y")
    a2.set_xlabel("u(x₁)")
    a2.set_ylabel("u(x₂)")
    a2.set_title(f"closed loop under θ*(t, u): cost {rows[-1]['closed_loop_cost']:.6f}"
                 f" vs V(0, v₀) = {V_opt:.6f}", fontsize=9)
    a2.legend(fontsize=7)
    a2.set_aspect("equal")
    a2.set_xlim(-1.05, 1.05)
    a2.set_ylim(-1.05, 1.05)
    path = _gallery.save_figure(fig, args.out, "hjb_closed_loop")

    lines = [f"exact V(0, v0) = {V_opt:.8f}, exact u(T) = {uT_exact}",
             f"{'points':>6} {'h':>8} {'max |V − V_exact|':>18} {'V(0, v0)':>10} "
             f"{'closed-loop cost':>17}",
             *(f"{r['points']:>6} {r['h']:>8.4f} {r['max_value_error']:>18.3e} "
               f"{r['value_v0']:>10.6f} {r['closed_loop_cost']:>17.8f}" for r in rows),
             f"max |closed-loop path − exact optimal path| from {len(STARTS)} other starts"
             f" (grid {points[-1]}²): {max(start_errors):.2e}",
             f"figure: {path}"]
    _gallery.report(args, lines, {"alpha": ALPHA, "T": T, "target": TARGET.tolist(),
                                  "v0": V0.tolist(), "exact_value_v0": V_opt,
                                  "exact_terminal_state": uT_exact, "grids": rows,
                                  "start_path_errors": start_errors,
                                  "figure": str(path)})


if __name__ == "__main__":
    main()
