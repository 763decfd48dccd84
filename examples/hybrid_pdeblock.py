"""A hybrid model: convolution → PDEBlock → linear head on the 8×8 digits, plain PyTorch loop.

The continuum block (MODEL.md §1: the image is the field u(·, 0) on the pixel cells of [0,1]²,
evolved to u(·, T) and read back on the same pixels) sits between ordinary layers like a
residual stage. It trains in float32 with ``torch.optim.Adam``; its exact control penalty
(MODEL.md §4) is added to the cross-entropy; its gradient is the discrete adjoint (MODEL.md §5).
After training the block is re-discretized at twice the width and steps (MODEL.md §2) and the
test accuracy is measured again: the controls are functions, so the trained model barely
changes. The figure shows the training loss and the test accuracy per epoch.

Run ``python examples/hybrid_pdeblock.py [--fast] [--out DIR] [--json] [--threads K]``; it writes
``DIR/hybrid_pdeblock.png`` atomically (default DIR: ``<tmp>/pdenets-gallery``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import pdenets as pn

NAME = Path(__file__).stem
FAST_ENV = "PDENETS_GALLERY_FAST"


def fail(message: str) -> None:
    print(f"{NAME}.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"{NAME}.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "pdenets-gallery",
                   help="directory for the figure (default: %(default)s)")
    p.add_argument("--fast", action="store_true",
                   help=f"small sizes for the test suite (also: {FAST_ENV}=1)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1; 0 = torch's default)")
    args = p.parse_args(argv)
    args.fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")
    if args.threads < 0:
        fail(f"--threads must be >= 0, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out} exists and is not a directory")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --out {args.out}: {e.strerror}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def digits() -> tuple[torch.Tensor, ...]:
    """sklearn's 8×8 digits scaled to [0, 1], images (B, 1, 8, 8); stratified 25 % test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.25, random_state=0,
                                              stratify=d.target)
    return (torch.as_tensor(x_tr), torch.as_tensor(y_tr), torch.as_tensor(x_te),
            torch.as_tensor(y_te))


def build(seed: int = 0) -> tuple[nn.Sequential, pn.PDEBlock]:
    torch.manual_seed(seed)
    block = pn.PDEBlock((8, 8), T=1.0, intervals=2, control_size=5, steps=4, seed=seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 1),  # (B, 1, 8, 8)
        block,                                                          # (B, 1, 8, 8)
        nn.Flatten(), nn.Linear(64, 10),
    )
    return model, block


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main(argv=None) -> None:
    args = parse_args(argv)
    x_tr, y_tr, x_te, y_te = digits()
    epochs, batch = (3, 64) if args.fast else (20, 64)
    if args.fast:
        x_tr, y_tr = x_tr[:512], y_tr[:512]
    model, block = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses, test_acc = [], []
    for _ in range(epochs):  # a plain PyTorch training loop
        model.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(batch):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]) \
                + block.regularization(alpha=1e-4, beta=1e-4)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        test_acc.append(accuracy(model, x_te, y_te))
    coarse = block.discretization
    acc = test_acc[-1]
    with torch.no_grad():
        ref = model(x_te)
        block.discretize(width=16, steps=2 * coarse.steps)  # 2× width and depth, same controls
        fine = model(x_te)
        acc_fine = float((fine.argmax(1) == y_te).float().mean())
        gap = float((fine - ref).norm() / ref.norm())

    plt = _pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8))
    a0.semilogy(np.arange(1, len(losses) + 1), losses, lw=1)
    a0.set_xlabel("iteration")
    a0.set_ylabel("training loss (cross-entropy + penalty)")
    a0.set_title("Conv → PDEBlock → Linear on digits (float32)")
    a1.plot(np.arange(1, epochs + 1), test_acc, "o-", label="trained discretization")
    a1.plot([epochs], [acc_fine], "s", label="2× width and steps")
    a1.set_xlabel("epoch")
    a1.set_ylabel("test accuracy")
    a1.set_ylim(0, 1)
    a1.legend(loc="lower right")
    fig.tight_layout()
    figure = _save(fig, args.out)

    payload = {"figure": str(figure), "epochs": epochs, "losses": losses, "test_accuracy": acc,
               "test_accuracy_per_epoch": test_acc, "test_accuracy_refined": acc_fine,
               "relative_output_change_refined": gap, "parameters": sum(
                   p.numel() for p in model.parameters())}
    if args.json:
        print(json.dumps(payload))
    else:
        print(f"trained {epochs} epochs, final training loss {losses[-1]:.4f}")
        print(f"test accuracy: {acc:.4f} at {coarse.width!r}, {coarse.steps} steps")
        print(f"test accuracy: {acc_fine:.4f} at 2x width and steps "
              f"(logits change {gap:.2e} relative)")
        print(f"figure: {figure}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    """Render to ``out/NAME.png`` through a temporary file and :func:`os.replace` (atomic)."""
    import matplotlib.pyplot as plt

    target = out / f"{NAME}.png"
    fd, tmp = tempfile.mkstemp(prefix=f".{NAME}-", suffix=".png.tmp", dir=out)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return target


if __name__ == "__main__":
    main()
