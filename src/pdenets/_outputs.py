"""Output directories: never destroy a user's files, one writer per output, atomic results.

Every command that writes files (``simulate``, ``train``, each ``analyze`` analysis, ``hjb``,
``plot``) goes through :class:`Output`:

* **Safe targets.** ``--out`` may not be the current directory or one of its ancestors, an
  existing file that is not a directory, or a dangling symbolic link — not even with
  ``--overwrite``. An existing, non-empty directory is accepted only when pdenets' marker
  file (:data:`MARKER`) in it says that the same command wrote it (so ``make demo`` can run
  twice), or with ``--overwrite``. Either way only pdenets' own files are replaced: files that
  the marker does not list (a user's ``thesis.tex``, a ``sub/`` directory) always stay.
* **Marker.** ``.pdenets-output.json`` records the command and, for each file it wrote, the
  size and modification time. A re-run of the same command removes a file of the previous run
  that it does not write again only if the marker lists it and the file is unchanged.
* **One writer per output.** :class:`OutputLock` holds a non-blocking ``fcntl.flock`` on the
  lock file ``.NAME.lock`` beside ``OUT`` (the training run also locks ``OUT.partial``), so a
  second command on the same output fails at once with a clear error.
* **Check before computing.** :meth:`Output.claim` runs the checks, creates missing parent
  directories, takes the locks and probes that ``OUT`` can be written, before the command
  computes anything.
* **Atomic results.** A command writes into a temporary sibling directory
  (:meth:`Output.staging`); :meth:`Output.commit` renames it to ``OUT`` when ``OUT`` does not
  exist (atomic), and otherwise moves its files into ``OUT`` one by one with ``os.replace``
  (each atomic), the marker written first (listing old and new files) and last (the final
  list). Files are written by :func:`atomic_write_bytes` and get the usual permissions of the
  process umask (``0666 & ~umask``, directories ``0777 & ~umask``).

Temporary names (``.NAME.XXXXXXXX.tmp`` files, ``.OUT.XXXXXXXX.partial`` directories) are
never carried into ``OUT``; leftovers of a killed command are removed by the next one that holds
the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from .errors import PdenetsError

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: name of the marker file that pdenets writes into every output directory
MARKER = ".pdenets-output.json"
MARKER_FORMAT = "pdenets-output"

_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file (``.NAME.XXXXXXXX.tmp``) of an atomic write."""
    return bool(_TEMP_FILE.match(name))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (same-directory temporary file, fsync, rename).

    The file gets the usual mode ``0666 & ~umask`` (not the ``0600`` of ``mkstemp``). With
    ``make_parents=False`` a missing parent directory is an error instead of being created.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_temp_files(directory: Path) -> None:
    """Remove leftover temporary files (:func:`is_temp_name`) anywhere under ``directory``."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if is_temp_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))


def _safe_rel(name: object) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    p = PurePosixPath(name)
    return (not p.is_absolute() and all(part not in ("", ".", "..") for part in p.parts)
            and str(p) == name and name != MARKER)


def read_marker(directory: Path) -> dict | None:
    """The marker of ``directory`` as ``{"command": str, "files": {rel: (size, mtime_ns)}}``,
    or None when it has none or an unreadable one (then nothing in it counts as pdenets')."""
    try:
        d = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("format") != MARKER_FORMAT:
        return None
    command, files = d.get("command"), d.get("files")
    if not isinstance(command, str) or not isinstance(files, dict):
        return None
    ok = {}
    for name, st in files.items():
        if (_safe_rel(name) and isinstance(st, list) and len(st) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in st)):
            ok[name] = (st[0], st[1])
    return {"command": command, "files": ok}


def _write_marker(directory: Path, command: str, files: dict[str, tuple[int, int]]) -> None:
    from ._version import __version__

    doc = {"format": MARKER_FORMAT, "version": 1, "command": command,
           "pdenets": __version__, "files": {k: list(v) for k, v in sorted(files.items())}}
    atomic_write_bytes(directory / MARKER, (json.dumps(doc, indent=1) + "\n").encode(),
                       make_parents=False)


def _cannot_write(shown: str, e: OSError) -> PdenetsError:
    return PdenetsError(f"cannot write output directory {shown!r}: {e.strerror or e}")


# ------------------------------------------------------------------------------------------
# lock


class OutputLock:
    """Exclusive, non-blocking lock on an output path: ``fcntl.flock`` on ``.NAME.lock`` beside it.

    The lock file is removed on release. To get the unlink race right, :meth:`acquire` checks
    after locking that the file it locked is still the one at the lock path (same inode) and
    otherwise retries; :meth:`release` unlinks the path while still holding the lock.
    """

    def __init__(self, path: Path, shown: str | None = None) -> None:
        self.path = Path(path)
        self.shown = shown or str(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise _cannot_write(self.shown, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _cannot_write(self.shown, e) from None
                raise PdenetsError(
                    f"output {self.shown!r} is in use by another pdenets command"
                    f"{self._holder()} (lock {str(self.lock_path)!r}); wait for it to finish "
                    f"or choose another --out") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released (and unlinked) it meanwhile: lock the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def _holder(self) -> str:
        try:
            pid = int(self.lock_path.read_text().strip())
        except (OSError, ValueError):
            return ""
        return f" (pid {pid})"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------------------
# output directory


class Output:
    """The output directory ``out`` of a command (see the module docstring).

    Parameters
    ----------
    out : path
        The ``--out`` directory.
    command : str
        The command, e.g. ``"simulate"`` or ``"analyze stability"``; stored in the marker.
    overwrite : bool
        Accept an existing non-empty directory that pdenets did not write for ``command``.
    accept : sequence of str
        Further commands whose marked output ``command`` may write into without
        ``overwrite`` (``plot`` writes into ``train``'s run directory).
    mode : ``"replace"`` or ``"add"``
        ``"replace"``: the output is this run's files; files of the previous run of the same
        command that are not written again are removed (if the marker lists them and they are
        unchanged). ``"add"``: the files are added to those the marker lists, which stay.
    """

    def __init__(self, out: str | os.PathLike, command: str, *, overwrite: bool = False,
                 accept: Sequence[str] = (), mode: str = "replace") -> None:
        self.shown = str(out)
        self.given = Path(os.path.abspath(Path(out).expanduser()))
        self.path = self.given.resolve()
        self.command = command
        self.overwrite = overwrite
        self.accept = tuple(accept)
        self.mode = mode
        self._locks: list[OutputLock] = []
        self._made: list[Path] = []

    # -- checks -------------------------------------------------------------------------
    def check_target(self) -> None:
        """Refuse the current directory, its ancestors, non-directories and dangling links."""
        p, shown = self.path, self.shown
        real = p.resolve()
        cwd = Path.cwd().resolve()
        if real == cwd or real in cwd.parents:
            where = "the current directory" if real == cwd else "an ancestor of the current " \
                "directory"
            raise PdenetsError(f"--out {shown!r} is {where}; pdenets writes its results into a "
                               f"directory of their own: give a new directory name")
        if os.path.lexists(self.given) and not self.given.exists():
            raise PdenetsError(f"--out {shown!r} is a dangling symbolic link")
        if p.exists() and not p.is_dir():
            raise PdenetsError(f"--out {shown!r} is an existing file, not a directory; "
                               f"pdenets never replaces it: choose another --out")

    def check_contents(self) -> None:
        """Refuse an existing, non-empty directory that pdenets did not write for this
        command, unless ``overwrite``."""
        p = self.path
        if not p.is_dir():
            return
        try:
            entries = sorted(e for e in os.listdir(p)
                             if not (e.startswith(MARKER + ".") and is_temp_name(e)))
        except OSError as e:
            raise _cannot_write(self.shown, e) from None
        if not entries or self.overwrite:
            return
        marker = read_marker(p)
        if marker is not None and marker["command"] in (self.command, *self.accept):
            return
        if marker is not None:
            why = f"was written by `pdenets {marker['command']}`"
        else:
            shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3
                                                               else "")
            why = f"holds files pdenets did not write ({shown})"
        raise PdenetsError(
            f"--out {self.shown!r} is an existing directory that {why}; choose another --out, "
            f"or pass --overwrite to write `pdenets {self.command}`'s files into it (other "
            f"files in it are kept)")

    # -- claim ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def claim(self, also: Iterable[str | os.PathLike] = ()) -> Iterator[Output]:
        """Check the target, create its parent directories, lock it (and the paths ``also``)
        and probe that it can be written — before the command computes anything.

        Parent directories created here are removed again (when still empty) on exit.
        """
        try:
            self.check_target()
            self._make_parents()
            for q in (self.path, *(Path(os.path.abspath(a)) for a in also)):
                lock = OutputLock(q, self.shown if q == self.path else str(q))
                lock.acquire()
                self._locks.append(lock)
            self.check_contents()
            self._probe()
            self._clean_stale_staging()
            yield self
        finally:
            for lock in reversed(self._locks):
                lock.release()
            self._locks = []
            for d in reversed(self._made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            self._made = []

    def _make_parents(self) -> None:
        missing = []
        q = self.path.parent
        while not q.exists() and q != q.parent:
            missing.append(q)
            q = q.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise _cannot_write(self.shown, OSError(errno.ENOTDIR, "Not a directory")) \
                        from None
                continue
            except OSError as e:
                raise _cannot_write(self.shown, e) from None
            self._made.append(d)
        if not self.path.parent.is_dir():
            raise _cannot_write(self.shown, OSError(errno.ENOTDIR, "Not a directory"))

    def _probe(self) -> None:
        target = self.path if self.path.is_dir() else self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", suffix=".tmp", dir=target)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise _cannot_write(self.shown, e) from None

    def _staging_re(self) -> re.Pattern:
        return re.compile(rf"^\.{re.escape(self.path.name)}\.[a-z0-9_]{{8}}\.partial$")

    def _clean_stale_staging(self) -> None:
        """Remove staging directories left by a killed command on this output (we hold its
        lock, so no other pdenets command is using them)."""
        pat = self._staging_re()
        with contextlib.suppress(OSError):
            for e in os.scandir(self.path.parent):
                if pat.match(e.name) and e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)

    # -- staging and commit ---------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """Yield a temporary sibling directory; when the block succeeds its files are
        committed into ``OUT`` (:meth:`commit`), otherwise it is removed and ``OUT`` is left
        untouched."""
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial",
                                        dir=self.path.parent))
        except OSError as e:
            raise _cannot_write(self.shown, e) from None
        try:
            yield tmp
            self.commit(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, src: Path, files: Iterable[str] | None = None,
               last: Sequence[str] = ()) -> list[str]:
        """Move the finished files of ``src`` into ``OUT``; returns their relative names.

        ``files`` (default: every file under ``src``, temporary names excepted) are the
        files pdenets wrote; ``last`` are moved after the others (the training checkpoint, so
        that a run killed while its files are moved can still be resumed). When ``OUT`` does
        not exist, ``src`` is renamed to it (atomic); otherwise the files are moved one by
        one and the marker is updated (first with the old and new files, last with the
        final list).
        """
        self.check_target()
        self.check_contents()
        remove_temp_files(src)
        names = sorted(_walk(src)) if files is None else [f for f in files if (src / f).is_file()]
        for f in names:
            if not _safe_rel(f):
                raise PdenetsError(f"internal error: bad output file name {f!r}")
        names = [f for f in names if f not in last] + [f for f in last if f in names]
        stats = {f: _stat(src / f) for f in names}
        if not self.path.exists():
            os.chmod(src, 0o777 & ~current_umask())  # mkdtemp makes 0700
            _write_marker(src, self.command, stats)
            try:
                os.rename(src, self.path)
                return names
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self.check_target()  # someone else created OUT meanwhile: merge into it
                self.check_contents()
        self._merge(src, names, stats)
        return names

    def _merge(self, src: Path, names: list[str], stats: dict[str, tuple[int, int]]) -> None:
        out = self.path
        for f in names:  # refuse conflicts before changing anything
            t = out / f
            for parent in list(PurePosixPath(f).parents)[:-1]:
                q = out / parent
                if q.is_symlink() or (q.exists() and not q.is_dir()):
                    raise PdenetsError(f"cannot write {f!r} into {self.shown!r}: {str(q)!r} is "
                                       f"not a directory")
            if t.is_dir() and not t.is_symlink():
                raise PdenetsError(f"cannot write {f!r} into {self.shown!r}: a directory of "
                                   f"that name exists")
        old = read_marker(out)
        compatible = old is not None and old["command"] in (self.command, *self.accept)
        old_files = old["files"] if old is not None and compatible else {}
        if self.mode == "add" and compatible:
            assert old is not None
            command, final = old["command"], {**old_files, **stats}
            stale: list[str] = []
        else:
            command, final = self.command, dict(stats)
            same = old is not None and old["command"] == self.command
            stale = [f for f in old_files if f not in stats] if same else []
        for e in os.listdir(out):  # a marker write killed earlier
            if e.startswith(MARKER + ".") and is_temp_name(e):
                with contextlib.suppress(OSError):
                    os.unlink(out / e)
        _write_marker(out, command, {**old_files, **stats})
        for f in names:
            t = out / f
            t.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src / f, t)
        for f in stale:
            t = out / f
            with contextlib.suppress(OSError):
                if (t.parent.resolve() == out.resolve().joinpath(*PurePosixPath(f).parts[:-1])
                        and t.is_file() and not t.is_symlink()
                        and _stat(t) == old_files[f]):
                    t.unlink()
                    continue
            if t.exists():  # changed since pdenets wrote it: keep it, no longer pdenets' file
                print(f"pdenets: kept {str(t)!r} (changed since the previous run wrote it)",
                      file=sys.stderr)
        _write_marker(out, command, final)


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def _walk(src: Path) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(src):
        for name in files:
            if name == MARKER or is_temp_name(name):
                continue
            out.append(Path(root, name).relative_to(src).as_posix())
    return out
