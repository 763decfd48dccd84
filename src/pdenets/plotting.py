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
