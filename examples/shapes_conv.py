"""A continuum CNN on colour images: the conv kernel family with 8 channels learns `shapes`.

The images of the bundled `shapes` data set (16×16, 3 colour channels; a disc, square, triangle
or cross at a random position, size and small rotation, brighter than a random smooth
background by 0.25-0.5 in every channel; the colour says nothing about the class) are lifted
pointwise and learnably from 3 to C = 8 channels, u(·, 0) = M ξ, and evolved by the
continuum network with a convolution kernel w_cc'(x, y, t) = k_cc'(x − y, t) of radius 2
pixels (MODEL.md §10; a lattice kernel on the pixel grid), u_t = tanh(∫ k(x − y, t) u(y, t) dy
+ b(x, t)) (MODEL.md §1); the readout integrates u(·, T) against learned functions and sums
over the channels. Adam trains it (discrete adjoint, explicit Euler in depth, MODEL.md §5).
The figure shows test images with their true and predicted classes and the learned kernel
k_cc'(z, t) on its displacement cells for a few channel pairs c, c' at the middle of the depth
interval.

Run ``python examples/shapes_conv.py [--fast] [--out DIR] [--json] [--threads K]``; it writes
``DIR/shapes_conv.png`` atomically (default DIR: ``<tmp>/pdenets-gallery``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _gallery
import numpy as np
import torch

from pdenets.config import Config
from pdenets.data import SHAPE_CLASSES, load_dataset_config
from pdenets.training import make_trainer
from pdenets.training.trainer import evaluate

NAME = Path(__file__).stem


def config(fast: bool) -> Config:
    """The measured configuration (docs/kernels.md); ``fast``: fewer images and epochs."""
    cfg = Config()
    cfg.data.name, cfg.data.image_size = "shapes", 16
    cfg.data.n_samples = 2000 if fast else 3000
    m = cfg.model
    m.kernel, m.channels, m.kernel_radius = "conv", 8, 0.125
    m.solver, m.steps = "euler", 4
    cfg.train.method = "adam"
    cfg.train.epochs = 25 if fast else 60
    return cfg


def main(argv=None) -> None:
    args = _gallery.parse_args(__doc__, argv)
    cfg = config(args.fast)
    ds = load_dataset_config(cfg.data)
    tr = make_trainer(cfg, ds, progress=False)
    t0 = time.perf_counter()
    res = tr.fit()
    seconds = time.perf_counter() - t0
    net = res.net
    with torch.no_grad():
        x_te, y_te = tr.data["test"]
        test = evaluate(net, x_te, y_te, "cross_entropy", tr.disc)
        train = evaluate(net, *tr.data["train"], "cross_entropy", tr.disc)
        pred = net(x_te, tr.disc).argmax(1).cpu().numpy()
    y_np = y_te.cpu().numpy()
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (y_np, pred), 1)
    kern = net.controls.kernel
    k = kern.k.detach().double().cpu().numpy()  # (knots, C, C, cells)
    knot = k.shape[0] // 2
    t_knot = (knot + (0.0 if kern.time.basis == "linear" else 0.5)) * kern.time.delta
    pairs = [(0, 0), (1, 1), (0, 1), (1, 0)]

    plt = _gallery.pyplot()
    fig = plt.figure(figsize=(12, 5.2))
    gs = fig.add_gridspec(2, 8, height_ratios=[1, 1], wspace=0.8, hspace=0.45)
    for j in range(8):  # test images with true / predicted class
        ax = fig.add_subplot(gs[0, j])
        ax.imshow(ds.x_test[j].transpose(1, 2, 0), interpolation="nearest")
        ok = pred[j] == y_np[j]
        ax.set_title(f"{SHAPE_CLASSES[y_np[j]]}\n→ {SHAPE_CLASSES[pred[j]]}", fontsize=9,
                     color="black" if ok else "red")
        ax.axis("off")
    r_px = kern.radius * ds.input_shape[0]
    side = kern.size[0]
    vmax = max(float(np.abs(k[knot, c, d]).max()) for c, d in pairs)
    for j, (c, d) in enumerate(pairs):  # the learned kernel on its displacement cells
        ax = fig.add_subplot(gs[1, 2 * j:2 * j + 2])
        im = ax.imshow(k[knot, c, d].reshape(side, side).T, origin="lower", cmap="RdBu_r",
                       vmin=-vmax, vmax=vmax, extent=(-r_px, r_px, -r_px, r_px))
        ax.set_title(f"k_{c}{d}(z, t = {t_knot:.2f})", fontsize=9)
        ax.set_xlabel("z₁ (pixels)")
        if j == 0:
            ax.set_ylabel("z₂ (pixels)")
    fig.colorbar(im, ax=fig.axes[-4:], shrink=0.8)
    fig.suptitle(f"continuum CNN (conv, C = {net.channels}) on shapes 16×16×3: test accuracy "
                 f"{100 * test['accuracy']:.1f} % after {cfg.train.epochs} epochs "
                 f"({seconds:.0f} s); top: test images, true → predicted class")
    figure = _gallery.save_figure(fig, args.out, NAME)

    payload = {"figure": str(figure), "epochs": cfg.train.epochs, "train_samples": len(ds.x_train),
               "test_samples": len(ds.x_test), "classes": list(SHAPE_CLASSES),
               "test_accuracy": test["accuracy"], "train_accuracy": train["accuracy"],
               "test_loss": test["loss"], "confusion": confusion.tolist(),
               "train_seconds": seconds, "channels": net.channels,
               "kernel_shape": list(k.shape),
               "kernel_pair_norms": [float(np.linalg.norm(k[:, c, d])) for c, d in pairs],
               "losses": [h["train_objective"] for h in res.history]}
    if args.json:
        print(json.dumps(payload))
    else:
        print(f"trained {cfg.train.epochs} epochs on {len(ds.x_train)} images in {seconds:.1f} s")
        print(f"test accuracy {100 * test['accuracy']:.1f} % (chance 25 %), train "
              f"{100 * train['accuracy']:.1f} %")
        print("confusion (rows: true " + ", ".join(SHAPE_CLASSES) + "):")
        for row in confusion:
            print("  " + " ".join(f"{v:4d}" for v in row))
        print(f"figure: {figure}")


if __name__ == "__main__":
    main()
