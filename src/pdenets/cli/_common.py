"""Private helpers shared by CLI commands: JSON output, output directories, inputs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._outputs import Output
from ..errors import PdenetsError


def emit(args, payload: dict, text: str) -> None:
    """Print exactly one JSON object (``--json``) or the human-readable ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_jsonable))
    else:
        print(text)


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch intra-op threads for the command (0, the default: one per
    available core not kept busy by other processes, see :mod:`pdenets._threads`).

    :func:`pdenets.cli.build_parser` adds it to every command that does not define its own
    (``pdenets hjb`` does, with the same name and 0 = default); :func:`pdenets.cli.main`
    applies it with :func:`pdenets._threads.apply_threads` before the command runs.
    """
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch CPU threads (default 0: one per available core that other "
                   "processes leave free, from the load average; 1 is steadiest on a busy "
                   "machine)")


def add_out_arguments(p: argparse.ArgumentParser, default: str | None, *, claim: bool = True,
                      help: str | None = None) -> None:
    """``--out DIR`` (default ``default``) and ``--overwrite`` for a command that writes files.

    With ``claim`` (the default), :func:`claimed_output` checks, locks and probes ``--out``
    before the command computes (see :mod:`pdenets._outputs`); commands whose default output
    is only known later (``train``, ``plot``) pass ``claim=False`` and claim it themselves.
    """
    p.add_argument("--out", default=default,
                   help=help or f"output directory (default: {default})")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing directory that pdenets did not create for this "
                   "command; only pdenets' own files in it are replaced, other files stay")
    p.set_defaults(_out_command=command_name(p) if claim else None)


def command_name(p: argparse.ArgumentParser) -> str:
    """The command of a sub-parser as recorded in output markers, e.g. ``"analyze hessian"``."""
    return " ".join(p.prog.split()[1:]) or p.prog


@contextlib.contextmanager
def claimed_output(args) -> Iterator[None]:
    """Claim the ``--out`` of a command registered with :func:`add_out_arguments` (safe
    target, lock, writable probe) for the duration of the command; a no-op for others."""
    command = getattr(args, "_out_command", None)
    out = getattr(args, "out", None)
    if command is None or out is None:
        yield
        return
    target = Output(out, command, overwrite=getattr(args, "overwrite", False))
    with target.claim():
        args._output = target
        try:
            yield
        finally:
            del args._output


@contextlib.contextmanager
def output_directory(args, out: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary directory for the command's output files; on success they are
    committed into ``out`` (default ``args.out``) without touching files pdenets did not
    write; on failure ``out`` is left untouched (see :mod:`pdenets._outputs`)."""
    out = args.out if out is None else out
    target = getattr(args, "_output", None)
    if target is not None and target.path == Path(os.path.abspath(out)).resolve():
        with target.staging() as tmp:
            yield tmp
        return
    command = getattr(args, "_out_command", None) or getattr(args, "command", None) or "pdenets"
    with atomic_directory(out, overwrite=getattr(args, "overwrite", False),
                          command=command) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False,
                     command: str = "pdenets") -> Iterator[Path]:
    """Claim ``out`` and yield a temporary sibling directory whose files are committed into
    ``out`` on success (:class:`pdenets._outputs.Output`); on any exception ``out`` is left
    untouched, so a failed command never leaves a directory that looks complete."""
    target = Output(out, command, overwrite=overwrite)
    with target.claim(), target.staging() as tmp:
        yield tmp


def load_array(path: str | os.PathLike, name: str = "input") -> np.ndarray:
    """Load a numeric array from ``.npy``, ``.npz`` (key ``x``/``X``/``inputs``, else its only
    array), ``.csv`` or ``.txt`` with the one hardened reader, :func:`pdenets.data.load_array`
    (headers checked before loading; complex, non-numeric, empty and non-finite data
    refused)."""
    from ..data import load_array as read

    return read(path, name)


def check_result(value, what: str) -> None:
    """Raise :class:`PdenetsError` when a result (tensor, array or number) holds NaN or Inf.

    Commands call it once per result, after the computation (never inside solver steps)."""
    import math

    import torch

    if value is None:
        return
    if isinstance(value, float | int):
        bad = 0 if math.isfinite(value) else 1
    else:
        t = torch.as_tensor(value)
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
    if bad:
        raise PdenetsError(f"{what} contain(s) {bad} NaN or Inf value(s): the computation "
                           f"diverged or overflowed (try smaller inputs, more depth steps, "
                           f"float64, or check the model)")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
