"""Output of ``pdenets hjb`` (:mod:`pdenets.cli.hjb`): the report lines, the files and the plots.

The text report of V(0, v0), the closed-loop cost, the exact value (closed-form case, MODEL.md
§8) and the direct-method cost; ``closed_loop.npz``, ``summary.json`` and the other ``.npz``
files, each written atomically (:func:`pdenets._outputs.atomic_write_bytes`); and the plots
``value.png``, ``feedback.png``, ``trajectories.png`` of the grid method and ``trajectories.png``
of the sampled method.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from .._outputs import atomic_write_bytes
from ..hjb import HJBSolution, StateGrid, closed_form_value


def _report_lines(V0: float, main, exact: float | None, direct_cost: float | None,
                  intervals: int) -> list[str]:
    lines = [
        f"V(0, v0)            = {V0:.8g}",
        f"closed-loop cost    = {main.cost:.8g}  (running {main.running:.6g}, "
        f"terminal {main.terminal:.6g})",
    ]
    if exact is not None:
        lines.append(f"exact V(0, v0)      = {exact:.8g}  (error {abs(V0 - exact):.3g})")
    if direct_cost is not None:
        lines.append(f"direct method       = {direct_cost:.8g}  ({intervals} intervals)")
    return lines


def _write_loops(tmp: Path, loops, starts) -> None:
    _write_npz(tmp / "closed_loop.npz", t=loops[0].ts.numpy(),
               states=np.stack([c.states.numpy() for c in loops]),
               starts=np.stack([s.numpy() for s in starts]),
               cost=np.asarray([c.cost for c in loops]))


def _write_summary(tmp: Path, payload: dict) -> None:
    atomic_write_bytes(tmp / "summary.json",
                       (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


def _write_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _slice_index(grid: StateGrid, v0: torch.Tensor, shape) -> tuple:
    """Index of a 2-D slice (dims 0, 1) through the grid point nearest v0 (other dims)."""
    idx: list = [slice(None), slice(None)]
    for d in range(2, grid.D):
        n = shape[d]
        frac = float((v0[d] - grid.lo[d]) / (grid.hi[d] - grid.lo[d]))
        idx.append(int(min(max(round(frac * (n - 1)), 0), n - 1)))
    return tuple(idx)


def _plots(tmp: Path, sol: HJBSolution, v0, depth_idx, fb, loops, closed_form: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    grid, prob = sol.grid, sol.problem
    axes = [a.numpy() for a in grid.axes()]
    times = sol.times.numpy()
    # value
    if grid.D == 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for k in depth_idx:
            ax.plot(axes[0], sol.values[k].numpy(), label=f"t = {times[k]:.2f}")
            if closed_form:
                ex = closed_form_value(float(times[k]), grid.points(), prob.target[0],
                                       prob.alpha, prob.T, prob.weights).numpy()
                ax.plot(axes[0], ex, "k:", lw=0.8)
        ax.set_xlabel("state v")
        ax.set_ylabel("V(t, v)")
        ax.legend(fontsize=8)
        ax.set_title("value function" + (" (dotted: exact)" if closed_form else ""), fontsize=9)
    else:
        sl = _slice_index(grid, v0, grid.shape)
        fig, axs = plt.subplots(1, len(depth_idx), figsize=(4.0 * len(depth_idx), 3.4),
                                squeeze=False, layout="constrained")
        for a, k in zip(axs[0], depth_idx):
            im = a.imshow(sol.values[k][sl].numpy().T, origin="lower", aspect="auto",
                          extent=(axes[0][0], axes[0][-1], axes[1][0], axes[1][-1]))
            a.set_title(f"V, t = {times[k]:.2f}", fontsize=9)
            a.set_xlabel("v₁")
            a.set_ylabel("v₂")
            fig.colorbar(im, ax=a)
        if grid.D > 2:
            fig.suptitle("slice through v0 in dimensions 3..D", fontsize=8)
    save_figure(fig, tmp / "value.png")
    # feedback
    sub_shape = fb[0]["shape"]
    if grid.D == 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        x = fb[0]["points"][:, 0]
        for f, k in zip(fb, depth_idx):
            for i in range(prob.N):
                if "b" in prob.controls:
                    ax.plot(x, f["b"][:, i], label=f"b*_{i}, t = {times[k]:.2f}")
                if "w" in prob.controls:
                    ax.plot(x, f["w"][:, i, 0], "--", label=f"w*_{i}0, t = {times[k]:.2f}")
        ax.set_xlabel("state v")
        ax.set_ylabel("feedback θ*(t, v)")
        ax.legend(fontsize=7, ncol=2)
    else:
        sl = _slice_index(grid, v0, sub_shape)
        pts = fb[0]["points"].reshape(*sub_shape, grid.D)[sl]
        fig, axs = plt.subplots(1, len(fb), figsize=(4.4 * len(fb), 3.6), squeeze=False,
                                layout="constrained")
        q = max(1, math.ceil(max(pts.shape[:2]) / 17))
        for a, f, k in zip(axs[0], fb, depth_idx):
            vel = f["velocity"].reshape(*sub_shape, grid.D)[sl]
            key = "b" if "b" in prob.controls else "w"
            ctrl = f[key].reshape(*sub_shape, -1)[sl][..., 0]
            im = a.pcolormesh(pts[..., 0], pts[..., 1], ctrl, shading="auto", cmap="RdBu_r")
            a.quiver(pts[::q, ::q, 0], pts[::q, ::q, 1], vel[::q, ::q, 0], vel[::q, ::q, 1],
                     angles="xy", width=0.004)
            a.set_title(f"{key}*₁ (colour), f(v, θ*) (arrows), t = {times[k]:.2f}",
                        fontsize=8)
            a.set_xlabel("v₁")
            a.set_ylabel("v₂")
            fig.colorbar(im, ax=a)
    save_figure(fig, tmp / "feedback.png")
    # trajectories
    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    for j, c in enumerate(loops):
        st = c.states.numpy()
        for d in range(grid.D):
            axs[0].plot(c.ts.numpy(), st[:, d], color=f"C{d % 10}", lw=1.6 if j == 0 else 0.8,
                        alpha=1.0 if j == 0 else 0.6, label=f"v_{d + 1}" if j == 0 else None)
    axs[0].set_xlabel("depth t")
    axs[0].set_ylabel("closed-loop state")
    axs[0].legend(fontsize=7)
    if grid.D == 1:
        axs[1].plot(axes[0], sol.values[0].numpy(), "k-", lw=1)
        for c in loops:
            v = float(c.states[0, 0])
            axs[1].plot([v], [float(sol.value(0.0, c.states[0]))], "o")
        axs[1].set_xlabel("v")
        axs[1].set_ylabel("V(0, v)")
    else:
        sl = _slice_index(grid, v0, grid.shape)
        axs[1].contour(axes[0], axes[1], sol.values[0][sl].numpy().T, 15, linewidths=0.6)
        for c in loops:
            st = c.states.numpy()
            axs[1].plot(st[:, 0], st[:, 1], "-")
            axs[1].plot(st[0, 0], st[0, 1], "o", ms=4)
        axs[1].set_xlabel("v₁")
        axs[1].set_ylabel("v₂")
    axs[1].set_title(f"closed loop under θ*(t, v); cost from v0 = {loops[0].cost:.5g}",
                     fontsize=9)
    save_figure(fig, tmp / "trajectories.png")


def _plot_sampled(tmp: Path, sol, loops, closed_form: bool) -> None:
    """trajectories.png of the sampled method: the closed-loop states over depth, and the
    learned V(t, u(t)) along each closed loop (dotted: the exact value in the closed-form
    case)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    prob = sol.problem
    fig, axs = plt.subplots(1, 2, figsize=(10.5, 4), layout="constrained")
    for j, c in enumerate(loops):
        ts, st = c.ts.numpy(), c.states.numpy()
        for d in range(min(prob.D, 10)):
            axs[0].plot(ts, st[:, d], color=f"C{d % 10}", lw=1.4 if j == 0 else 0.7,
                        alpha=1.0 if j == 0 else 0.6, label=f"v_{d + 1}" if j == 0 else None)
        V = [float(sol.value(float(t), c.states[k])[0]) for k, t in enumerate(c.ts.tolist())]
        axs[1].plot(ts, V, color=f"C{j % 10}", label="v0" if j == 0 else f"start {j}")
        if closed_form:
            ex = [float(closed_form_value(float(t), c.states[k], prob.target[0], prob.alpha,
                                          prob.T, prob.weights))
                  for k, t in enumerate(c.ts.tolist())]
            axs[1].plot(ts, ex, "k:", lw=0.9)
    axs[0].set_xlabel("depth t")
    axs[0].set_ylabel("closed-loop state" + (" (first 10 entries)" if prob.D > 10 else ""))
    axs[0].legend(fontsize=7, ncol=2)
    axs[1].set_xlabel("depth t")
    axs[1].set_ylabel("learned V(t, u(t))")
    axs[1].legend(fontsize=7)
    axs[0].set_title(f"closed loop under the learned feedback, D = {prob.D}; cost from v0 = "
                     f"{loops[0].cost:.5g}", fontsize=9)
    axs[1].set_title("value along the closed loops" + (" (dotted: exact)" if closed_form
                                                        else ""), fontsize=9)
    save_figure(fig, tmp / "trajectories.png")
