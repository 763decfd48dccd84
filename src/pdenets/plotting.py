"""Plots (matplotlib, Agg backend): fields over width × depth, training curves, etc.

Every function writes a PNG atomically and returns nothing.
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    from .modelfile import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_field(u, ts, nodes, shape, path, title: str = "u(x,t)") -> None:
    """Heatmap of one field over width × depth; in 2-D also images at depth slices.

    Parameters
    ----------
    u : array, shape (n_t, N)
    ts : array, shape (n_t,)
    nodes : array, shape (N, d)
    shape : tuple or None
        Grid shape (tensor grids); 2-D images are drawn when it has two entries.
    """
    u, ts = np.asarray(u), np.asarray(ts)
    two_d = shape is not None and len(shape) == 2
    ncols = 5 if two_d else 0
    fig = plt.figure(figsize=(11, 4.2) if two_d else (7, 4.2))
    ax = fig.add_subplot(1, 2, 1) if two_d else fig.add_subplot(1, 1, 1)
    if nodes.shape[1] == 1:
        order = np.argsort(nodes[:, 0])
        extent = (float(nodes[order[0], 0]), float(nodes[order[-1], 0]), ts[0], ts[-1])
        im = ax.imshow(u[:, order], aspect="auto", origin="lower", extent=extent, cmap="RdBu_r")
        ax.set_xlabel("neuron x")
    else:
        im = ax.imshow(u, aspect="auto", origin="lower", cmap="RdBu_r",
                       extent=(0, u.shape[1], ts[0], ts[-1]))
        ax.set_xlabel("neuron index (row-major over x₁, x₂)")
    ax.set_ylabel("depth t")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    if two_d:
        picks = np.unique(np.linspace(0, len(ts) - 1, ncols).round().astype(int))
        vmax = float(np.abs(u).max()) or 1.0
        for j, k in enumerate(picks):
            a = fig.add_subplot(2, 2 * ncols, ncols + 1 + j + (ncols if j >= ncols else 0))
            a.imshow(u[k].reshape(shape), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            a.set_title(f"t={ts[k]:.2f}", fontsize=8)
            a.axis("off")
    save_figure(fig, path)


def plot_curves(history: list[dict], path, title: str = "training") -> None:
    """Training objective, validation loss and validation accuracy against epochs."""
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].semilogy(ep, [r["train_objective"] for r in history], label="train objective J")
    axes[0].semilogy(ep, [r["val_loss"] for r in history], label="validation loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    acc = [r["val_accuracy"] for r in history]
    if all(a == a for a in acc):
        axes[1].plot(ep, [100 * a for a in acc], color="C2")
        axes[1].set_ylabel("validation accuracy (%)")
    axes[1].set_xlabel("epoch")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_depth_slices(net, x, labels, disc, path, n_slices: int = 5) -> None:
    """The field u(·, t) at depth slices for a few inputs (rows) — images in 2-D."""
    import torch

    ts = [k * net.T / disc.steps for k in
          np.unique(np.linspace(0, disc.steps, n_slices).round().astype(int))]
    with torch.no_grad():
        sol = net.solve(x, disc, saveat=ts)
    grid = sol.grid
    us = sol.us.cpu().numpy()[..., :grid.n]  # channel 0 of a C-channel state (MODEL.md §10)
    B = us.shape[1]
    fig, axes = plt.subplots(B, len(ts), figsize=(1.9 * len(ts), 1.9 * B), squeeze=False)
    for i in range(B):
        vmax = float(np.abs(us[:, i]).max()) or 1.0
        for j, t in enumerate(ts):
            ax = axes[i, j]
            if grid.dim == 2 and grid.shape is not None:
                ax.imshow(us[j, i].reshape(grid.shape), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
                ax.axis("off")
            else:
                order = np.argsort(grid.nodes[:, 0].cpu().numpy())
                ax.plot(grid.nodes[order, 0].cpu().numpy(), us[j, i][order])
                ax.set_ylim(-1.05 * vmax, 1.05 * vmax)
                ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(f"t = {t:.2f}", fontsize=8)
        axes[i, 0].set_ylabel(f"label {labels[i]}", fontsize=8)
    fig.suptitle("u(x, t) at depth slices", fontsize=10)
    save_figure(fig, path)


def plot_decision_regions(net, ds, path, resolution: int = 200) -> None:
    """Decision regions of a classifier on 2-feature data, with the test points."""
    import torch

    x = np.concatenate([ds.x_train, ds.x_test])
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], resolution),
                         np.linspace(lo[1], hi[1], resolution))
    pts = torch.as_tensor(np.stack([g0.ravel(), g1.ravel()], 1),
                          dtype=next(net.parameters()).dtype)
    with torch.no_grad():
        pred = net(pts).argmax(1).cpu().numpy().reshape(g0.shape)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.contourf(g0, g1, pred, alpha=0.3, cmap="coolwarm")
    ax.scatter(ds.x_test[:, 0], ds.x_test[:, 1], c=ds.y_test, s=8, cmap="coolwarm",
               edgecolors="k", linewidths=0.2)
    ax.set_title(f"decision regions ({ds.name}, test points)", fontsize=10)
    save_figure(fig, path)


def plot_run(out, net, ds, history, cfg=None, n_inputs: int = 4) -> list[str]:
    """All plots of a training run into directory ``out``; returns the file names.

    ``ds`` may be None (curves only); ``n_inputs`` test inputs are shown in ``field.png``.
    """
    from pathlib import Path

    import torch

    out = Path(out)
    files = []
    if history:
        title = f"{ds.name if ds else out.name}: {cfg.train.method if cfg else ''}"
        plot_curves(history, out / "curves.png", title)
        files.append("curves.png")
    if ds is None:
        return files
    k = max(0, min(n_inputs, len(ds.x_test)))
    if k:
        x = torch.as_tensor(ds.x_test[:k], dtype=next(net.parameters()).dtype)
        plot_depth_slices(net, x, list(ds.y_test[:k]), net.discretization, out / "field.png")
        files.append("field.png")
    if ds.input_shape == (2,) and ds.task == "classification":
        plot_decision_regions(net, ds, out / "decision_regions.png")
        files.append("decision_regions.png")
    return files
