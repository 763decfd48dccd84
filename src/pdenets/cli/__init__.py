"""The ``pdenets`` command-line tool.

Each sub-command lives in its own module of this package, exposing ``register(subparsers)``.
Conventions shared by all commands:

* bad input raises :class:`~pdenets.errors.PdenetsError`; :func:`main` prints a one-line
  ``pdenets: error: ...`` message on stderr and exits with status 2;
* a command that reports figures accepts ``--json`` and then prints exactly one JSON object on
  stdout (progress and messages go to stderr);
* output files are written atomically, into a temporary directory whose files are moved into
  ``--out`` when complete, so a failed command leaves no partial output; ``--out`` is checked
  and locked before the command computes, and files pdenets did not write are never removed
  (see :mod:`pdenets._outputs`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import PdenetsError

#: sub-command modules, in --help order
COMMANDS = ("simulate", "train", "evaluate", "predict", "plot", "analyze", "hjb", "bench")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="pdenets",
        description="The PDE model of deep neural networks: simulate, train, analyze "
        "continuum ResNets (see MODEL.md).",
    )
    parser.add_argument("--version", action="version", version=f"pdenets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pdenets`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from ._common import claimed_output

    try:
        with claimed_output(args):  # check, lock and probe --out before computing
            return int(args.func(args) or 0)
    except PdenetsError as e:
        print(f"pdenets: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pdenets: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"pdenets: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
