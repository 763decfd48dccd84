"""Intra-op threads and the OpenMP wait policy: the one place that picks them (issue 13, item 5).

pdenets' CPU work runs in torch's intra-op thread pool, which (in the torch builds we ship
against) is libgomp's OpenMP runtime; MKL's GEMMs use the same runtime. Two choices decide how
a run behaves on a machine whose cores are also used by other processes:

**The wait policy.** Between parallel regions libgomp's worker threads *spin* (by default
about 300 000 iterations, milliseconds) before they sleep, and at the end of every region the
master waits for the slowest worker. On a busy core a spinning thread eats the time slice its
partner needs, so each of the many small parallel regions of a training step can stall for a
scheduler tick. ``OMP_WAIT_POLICY=PASSIVE`` makes idle workers sleep at once. libgomp reads the
variable (and ``GOMP_SPINCOUNT``) once, when the library is loaded, i.e. at ``import torch``:
setting it afterwards has no effect. :func:`set_openmp_env` therefore runs when this
module is imported — the first import of ``pdenets/__init__.py``, before pdenets imports
torch; both the console script (``pdenets.cli:main``) and ``python -m pdenets`` import the
package first. It only fills in variables the user did not set (``OMP_WAIT_POLICY=ACTIVE``
keeps spinning) and does nothing when torch was imported before pdenets (:func:`wait_policy`
then reports ``"unknown"`` unless the variable was already set).

**The thread count.** :func:`default_threads` gives one thread per *available* core that is
not already busy: the cores this process may run on (``os.sched_getaffinity``, capped by a
cgroup CPU quota) minus the 1-minute load average, rounded, at least 1. The CLI applies it
(``--threads 0``, the default, on every command) before a command runs; ``--threads N`` forces
N. Library users keep torch's own default unless they call :func:`apply_threads`.

Measured on the 2-core development machine (digits, default ``pdenets train`` configuration,
seconds per training epoch, 3 epochs after a warm-up, each case in a fresh process; other
users' jobs kept the load average at 4–5, "+ spinner" adds one process spinning on a core):

=========================  ===============  ===============
case                       load 4–5         load 4–5 + spinner
=========================  ===============  ===============
1 thread, default policy   0.36–0.41        0.56–0.57
1 thread, PASSIVE          0.52–0.58        0.46–0.55
2 threads, default policy  2.6–5.4          4.8–29
2 threads, PASSIVE         0.44–1.9         0.20–0.28
=========================  ===============  ===============

Two spinning threads on a busy machine cost 10–60× a single thread; the passive policy brings
two threads back to within the noise of one, and one thread is the steady choice whenever the
load average says the cores are taken — which is what :func:`default_threads` picks.
"""

from __future__ import annotations

import math
import os
import sys

#: environment variables set (if unset) before the OpenMP runtime loads
OPENMP_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}

#: upper bound accepted for ``--threads``
MAX_THREADS = 1024

_policy_at_load: str | None = None


def set_openmp_env(environ: dict[str, str] | None = None) -> bool:
    """Fill in :data:`OPENMP_ENV` (``OMP_WAIT_POLICY=PASSIVE``) where the user set nothing.

    Must run before ``import torch`` loads the OpenMP runtime (see the module docstring).

    Parameters
    ----------
    environ : dict, optional
        The environment to update (default ``os.environ``; tests pass a dict).

    Returns
    -------
    bool
        True when the variables were set in time: torch was not yet imported (for
        ``os.environ``) — False when torch was already loaded, so the runtime keeps the policy
        it started with.
    """
    global _policy_at_load
    env = os.environ if environ is None else environ
    if environ is None and "torch" in sys.modules:
        if _policy_at_load is None:
            _policy_at_load = env.get("OMP_WAIT_POLICY", "unknown")
        return False
    for key, value in OPENMP_ENV.items():
        env.setdefault(key, value)
    if environ is None and _policy_at_load is None:
        _policy_at_load = env["OMP_WAIT_POLICY"]
    return True


# importing this module (first thing pdenets/__init__.py does) fills in the OpenMP variables
set_openmp_env()


def wait_policy() -> str:
    """The OpenMP wait policy this process's runtime started with: the value of
    ``OMP_WAIT_POLICY`` when pdenets was imported (``"unknown"`` if torch was imported first
    without it)."""
    if _policy_at_load is not None:
        return _policy_at_load
    return os.environ.get("OMP_WAIT_POLICY", "unknown")


def _cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """Cores allowed by a cgroup v2 CPU quota (``"quota period"``), None without a quota."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (``os.sched_getaffinity``, else
    ``os.cpu_count()``), capped by a cgroup v2 CPU quota (rounded up); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, averaged), None where unavailable."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """Intra-op threads for a run: one per available core not already busy.

    ``round(cores - load)`` clamped to ``[1, cores]``: 2 on an idle 2-core machine, 1 once
    other processes keep about one core busy (load ≥ 0.5 there), all cores when the load is
    unknown.

    Parameters
    ----------
    cores : int, optional
        Available cores (default :func:`available_cores`).
    load : float, optional
        Load average of the other processes (default :func:`load_average`).
    """
    cores = available_cores() if cores is None else max(1, int(cores))
    load = load_average() if load is None else load
    if load is None or not math.isfinite(load):
        return cores
    return max(1, min(cores, math.floor(cores - max(0.0, load) + 0.5)))


def resolve_threads(threads: int) -> int:
    """The thread count ``--threads`` asks for: ``threads`` itself, or
    :func:`default_threads` for 0.

    Raises
    ------
    ConfigError
        For a negative count or one above :data:`MAX_THREADS`.
    """
    from .errors import ConfigError

    if isinstance(threads, bool) or not isinstance(threads, int):
        raise ConfigError(f"--threads must be an integer, got {threads!r}")
    if not 0 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be between 0 (default: one per free core) and "
                          f"{MAX_THREADS}, got {threads}")
    return threads or default_threads()


#: whether the current thread count was chosen automatically (``--threads 0``)
_auto = False

#: values per training step (batch × width nodes × channels) below which one intra-op thread
#: is faster than several: the parallel regions of such small operations cost more than they
#: split (digits, 64 × 64 × 1: an epoch took 3× as long with 2 threads as with 1, idle 2 cores)
SMALL_WORK = 1 << 16


def apply_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads to :func:`resolve_threads` ``(threads)``; returns the count.
    """
    import torch

    global _auto
    n = resolve_threads(threads)
    _auto = threads == 0
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def threads_for_work(threads: int, work: int) -> int:
    """The thread count for a run of ``work`` values per step: 1 below :data:`SMALL_WORK`,
    else ``threads``."""
    return 1 if work < SMALL_WORK else threads


def fit_to_work(work: int) -> int:
    """Lower an automatically chosen thread count (``--threads 0``) for a small run
    (:func:`threads_for_work`); an explicit ``--threads N`` is kept. Returns the count."""
    import torch

    n = torch.get_num_threads()
    if _auto:
        m = threads_for_work(n, work)
        if m != n:
            torch.set_num_threads(m)
        return m
    return n


def describe() -> dict:
    """Threads, wait policy, available cores and load average, for reports."""
    import torch

    return {"threads": torch.get_num_threads(), "wait_policy": wait_policy(),
            "available_cores": available_cores(), "load_average": load_average()}
