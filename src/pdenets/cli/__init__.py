"""The ``pdenets`` command-line tool.

Each sub-command lives in its own module of this package, exposing ``register(subparsers)``.
Conventions shared by all commands:

* bad input raises :class:`~pdenets.errors.PdenetsError`; :func:`main` prints a one-line
  ``pdenets: error: ...`` message on stderr and exits with status 2 — and so do usage errors
  (unknown options and choices, malformed numbers), through :class:`Parser`;
* every size is checked against a memory and time estimate before work starts
  (:mod:`pdenets._limits`); every command accepts ``--allow-large`` to skip these checks;
* results are checked once per command: NaN or Inf in a result is an error, not an output;
* every command accepts ``--threads N`` (torch CPU threads; 0, the default, picks one per
  core that other processes leave free — :mod:`pdenets._threads`), applied before it runs;
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
import math
import sys

from .. import _limits
from ..errors import PdenetsError

#: sub-command modules, in --help order
COMMANDS = ("simulate", "train", "evaluate", "predict", "plot", "analyze", "hjb", "bench")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line ``pdenets: error: ...`` (exit 2);
    sub-command parsers inherit the class."""

    def error(self, message: str):
        cmd = self.prog.removeprefix("pdenets").strip()
        where = f"{cmd}: " if cmd else ""
        help_hint = f" (see pdenets {cmd + ' ' if cmd else ''}--help)"
        print(f"pdenets: error: {where}{message}{help_hint}", file=sys.stderr)
        raise SystemExit(2)


def _leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers of runnable (sub-)sub-commands, i.e. those without sub-commands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
            yield from _leaf_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
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
    from ._common import add_threads_argument

    for p in _leaf_parsers(parser):
        if p is not parser and "--threads" not in p._option_string_actions:
            add_threads_argument(p)
        if p is not parser and "--allow-large" not in p._option_string_actions:
            p.add_argument("--allow-large", action="store_true",
                           help="skip the memory and time checks of sizes (see "
                           "pdenets._limits; also: PDENETS_ALLOW_LARGE=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pdenets`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    for key, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            parser.error(f"argument --{key.replace('_', '-')}: must be a finite number, "
                         f"got {value}")
    import torch

    from .. import _threads
    from ._common import claimed_output

    # --threads is applied for the command and undone after it (main() may run in-process)
    saved_threads = torch.get_num_threads()
    try:
        if hasattr(args, "threads"):
            _threads.apply_threads(args.threads)
        # sizes are checked against the limits unless --allow-large; --out is checked, locked
        # and probed before computing
        with _limits.allow_large(bool(getattr(args, "allow_large", False))), \
                claimed_output(args):
            code = int(args.func(args) or 0)
        _leave_torchrun_worker(code)
        return code
    except PdenetsError as e:
        print(f"pdenets: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except MemoryError:
        print("pdenets: error: out of memory (the sizes passed the estimates of "
              "pdenets._limits but the machine could not provide the memory)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pdenets: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"pdenets: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    finally:
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)


def _leave_torchrun_worker(code: int) -> None:
    """A ``torchrun`` worker (``WORLD_SIZE`` > 1) that ran its process group ends here, without
    the interpreter's C++ teardown (:func:`pdenets.training.distributed.leave`)."""
    from ..training import distributed as _distributed

    if _distributed.env_world() > 1:
        _distributed.leave(code)


def _one_line(msg: str) -> str:
    return " ".join(msg.split("\n")).strip()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
