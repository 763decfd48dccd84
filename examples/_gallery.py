"""Shared helpers of the gallery scripts in ``examples/`` (not an example itself).

Every gallery script accepts ``--out DIR`` (default: ``<tmp>/pdenets-gallery``), ``--fast``
(smaller sizes for the test suite; also switched on by the environment variable
``PDENETS_GALLERY_FAST=1``), ``--json`` (print exactly one JSON object on stdout instead of
the text report) and ``--threads`` (torch intra-op threads, default 1). It writes exactly one
file, ``DIR/<script name>.png``, atomically: the figure is rendered into a temporary file in
``DIR`` and renamed over the target with :func:`os.replace`, so a failed run leaves no
half-written figure behind. Bad arguments print one line ``<script>: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FAST_ENV = "PDENETS_GALLERY_FAST"


def default_out() -> Path:
    """The default output directory: ``pdenets-gallery`` in the system's temporary directory."""
    return Path(tempfile.gettempdir()) / "pdenets-gallery"


def fail(prog: str, message: str) -> None:
    """Print ``prog: error: message`` on stderr and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(doc: str | None, argv: Sequence[str] | None = None,
               prog: str | None = None) -> argparse.Namespace:
    """Parse the common gallery options and prepare ``args.out`` (created if missing).

    Parameters
    ----------
    doc : str or None
        The script's module docstring (its first line becomes the description).
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).
    prog : str, optional
        Program name for messages (default the script's file name).
    """
    prog = prog or Path(sys.argv[0]).name
    title = (doc or "").strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(prog=prog, description=title)
    p.add_argument("--out", type=Path, default=default_out(),
                   help="directory for the figure (default: %(default)s)")
    p.add_argument("--fast", action="store_true",
                   help=f"small sizes for the test suite (also: {FAST_ENV}=1)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1; 0 = torch's default)")
    args = p.parse_args(argv)
    args.prog = prog
    args.fast = args.fast or os.environ.get(FAST_ENV, "") not in ("", "0")
    if args.threads < 0:
        fail(prog, f"--threads must be >= 0, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        fail(prog, f"--out {args.out} exists and is not a directory")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(prog, f"cannot create --out {args.out}: {e.strerror}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def save_figure(fig: Any, out: Path, name: str) -> Path:
    """Render a matplotlib figure to ``out/name.png`` atomically and close it.

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib.pyplot as plt

    target = out / f"{name}.png"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".png.tmp", dir=out)
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


def report(args: argparse.Namespace, lines: list[str], payload: dict[str, Any]) -> None:
    """Print the text report, or (``--json``) exactly one JSON object with ``payload``."""
    if args.json:
        print(json.dumps(payload))
    else:
        print("\n".join(lines))


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
