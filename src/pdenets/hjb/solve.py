"""The grid solver of the HJB equation (MODEL.md §8): options, memory estimate, the march.

:func:`solve_hjb` marches V backward from V(T) = Φ with a :class:`~pdenets.hjb.schemes.Scheme`
(by name or object, ``HJBOptions.scheme``) in CFL-adaptive steps that land on the
``snapshots`` equidistant depths at which V is stored. Everything is vectorized over the grid
(torch, float64) and processed in chunks of grid points; the memory need is estimated (and
checked against ``max_memory``) before any grid-sized allocation.

Devices and threads: ``HJBOptions.device`` runs the march on that device (``"cuda"``: the
problem and grid are copied there; the stored snapshots come back to the CPU, so the
:class:`HJBSolution` is a CPU object either way). On the CPU the march's kernels work on
chunks of a few thousand points, where OpenMP intra-op parallelism does not pay: worse, the
worker threads busy-wait between the many small kernels, and on a machine with more runnable
processes than cores that made 2 threads 15–30× slower than 1. ``HJBOptions.threads = None``
(default) therefore runs the march with one intra-op thread when chunks are below
:data:`PARALLEL_MIN_POINTS` points (torch's setting otherwise) and restores the setting
afterwards; an integer forces that many threads.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

from .._checks import check_finite, check_positive
from ..errors import PdenetsError
from ._tensors import _DTYPE
from .grid import StateGrid
from .hamiltonian import candidates_per_dim
from .problem import ReducedProblem
from .schemes import MarchContext, Scheme, get_scheme
from .solution import HJBSolution

_CHUNK_BYTES = 48 * 2**20
#: chunks of at least this many grid points use torch's intra-op threads (``threads=None``)
PARALLEL_MIN_POINTS = 1 << 17


def _default_memory_limit() -> int:
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        phys = 8 * 2**30
    return int(min(4 * 2**30, 0.5 * phys))


@dataclass(frozen=True)
class HJBOptions:
    """Options of :func:`solve_hjb`.

    Attributes
    ----------
    scheme : str or Scheme
        A registered scheme name (``"lax-friedrichs"``, ``"semi-lagrangian"``, …; see
        :func:`pdenets.hjb.schemes.register_scheme`) or a :class:`Scheme` instance. The field
        keeps what was given; :attr:`scheme_object` is the scheme itself.
    cfl : float
        CFL number (≤ 1 for the monotone Lax–Friedrichs scheme; any value for
        semi-Lagrangian).
    snapshots : int
        Number (≥ 2) of equidistant depths, including 0 and T, at which V is stored.
    max_memory : int or None
        Bytes the solve may use (estimated before any allocation); default
        min(4 GiB, half the physical memory).
    inner_points : int
        Candidates per dimension of the discrete control set (non-affine Hamiltonians).
    newton_iters : int
        Newton polishing steps of the inner minimization.
    max_steps : int
        Budget of time steps.
    device : str
        Device of the march (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …).
    threads : int or None
        Intra-op threads of the march on the CPU; None: one for chunks below
        :data:`PARALLEL_MIN_POINTS` points, else torch's setting (module docstring).
    """

    scheme: str | Scheme = "lax-friedrichs"
    cfl: float = 0.9
    snapshots: int = 11
    max_memory: int | None = None
    inner_points: int = 7
    newton_iters: int = 8
    max_steps: int = 1_000_000
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        scheme = get_scheme(self.scheme)
        check_positive(self.cfl, "cfl")
        scheme.check_cfl(float(self.cfl))
        check_positive(self.snapshots, "snapshots", integer=True)
        if self.snapshots < 2:
            raise PdenetsError(f"snapshots must be >= 2 (t = 0 and T), got {self.snapshots}")
        if self.max_memory is not None:
            check_positive(self.max_memory, "max_memory")
        check_positive(self.inner_points, "inner_points", integer=True)
        if isinstance(self.newton_iters, bool) or not isinstance(self.newton_iters, int) \
                or self.newton_iters < 0:
            raise PdenetsError(f"newton_iters must be an integer >= 0, got {self.newton_iters!r}")
        check_positive(self.max_steps, "max_steps", integer=True)
        if self.threads is not None:
            check_positive(self.threads, "threads", integer=True)
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise PdenetsError(f"unknown device {self.device!r}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise PdenetsError(f"device {self.device!r} requested but CUDA is not available")
        if dev.type not in ("cpu", "cuda"):
            raise PdenetsError(f"device must be 'cpu' or 'cuda[:k]', got {self.device!r}")

    @property
    def scheme_object(self) -> Scheme:
        """The :class:`Scheme` selected by ``scheme``."""
        return get_scheme(self.scheme)


def _candidates(problem: ReducedProblem, opts: HJBOptions) -> int:
    if problem.affine:
        return 1
    return candidates_per_dim(problem.B, opts.inner_points) ** problem.B


def _per_point_bytes(problem: ReducedProblem, opts: HJBOptions) -> int:
    """Bytes of chunk temporaries per grid point (inner minimization and fluxes)."""
    B, N, D = problem.B, problem.N, problem.D
    K = _candidates(problem, opts)
    inner = N * B * (4 * K + 30) + N * B * B * (2 * K + 6)
    return 8 * (inner + 20 * D + 3 * N * N + 16)


def _chunk_size(problem: ReducedProblem, opts: HJBOptions, grid: StateGrid) -> int:
    return int(max(256, min(grid.size, _CHUNK_BYTES // _per_point_bytes(problem, opts))))


def estimate_memory(problem: ReducedProblem, grid: StateGrid, opts: HJBOptions) -> int:
    """Estimated peak bytes of :func:`solve_hjb` (grid arrays, snapshots, chunk temporaries)."""
    P, D = grid.size, grid.D
    extra = opts.scheme_object.grid_arrays
    grid_arrays = 8 * P * (6 + 3 * D + opts.snapshots + extra)
    chunk = _chunk_size(problem, opts, grid) * _per_point_bytes(problem, opts)
    return int(grid_arrays + chunk)


def solve_hjb(
    problem: ReducedProblem, grid: StateGrid, options: HJBOptions | None = None
) -> HJBSolution:
    """Solve the HJB equation of MODEL.md §8 backward from V(T) = Φ on ``grid``.

    Parameters
    ----------
    problem : ReducedProblem
    grid : StateGrid
        Box and grid in R^D (D must equal ``problem.D``).
    options : HJBOptions, optional

    Returns
    -------
    HJBSolution

    Raises
    ------
    PdenetsError
        If the grid dimension does not match, or the estimated memory exceeds
        ``options.max_memory`` (raised before any grid-sized allocation), or the step budget
        is exhausted.
    """
    opts = options or HJBOptions()
    if not isinstance(problem, ReducedProblem):
        raise PdenetsError(f"problem must be a ReducedProblem, got {problem!r}")
    if grid.D != problem.D:
        raise PdenetsError(f"the state grid is {grid.D}-D but the problem has D = B·N = "
                           f"{problem.B}·{problem.N} = {problem.D}")
    need = estimate_memory(problem, grid, opts)
    limit = opts.max_memory or _default_memory_limit()
    if need > limit:
        raise PdenetsError(
            f"HJB grid of {' x '.join(map(str, grid.shape))} = {grid.size:.4g} points in "
            f"D = {grid.D} needs about {need / 2**30:.3g} GiB, more than the limit "
            f"{limit / 2**30:.3g} GiB; use fewer points per dimension, fewer snapshots, a "
            f"smaller D, or raise max_memory"
        )
    dev = torch.device(opts.device)
    chunk = _chunk_size(problem, opts, grid)
    threads = opts.threads
    if threads is None:
        threads = 1 if chunk < PARALLEL_MIN_POINTS else torch.get_num_threads()
    saved_threads = torch.get_num_threads()
    if dev.type == "cpu" and threads != saved_threads:
        torch.set_num_threads(threads)
    try:
        return _march(problem.to(dev), grid.to(dev), opts, chunk, threads, problem, grid)
    finally:
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)


def _march(problem: ReducedProblem, grid: StateGrid, opts: HJBOptions, chunk: int,
           threads: int, user_problem: ReducedProblem, user_grid: StateGrid) -> HJBSolution:
    """The backward march of :func:`solve_hjb` on the device of ``problem`` and ``grid``."""
    t_start = time.perf_counter()
    dev = grid.device
    P, D = grid.size, grid.D
    spans = [(s, min(s + chunk, P)) for s in range(0, P, chunk)]
    V = torch.empty(P, dtype=_DTYPE, device=dev)
    bound = torch.zeros(D, dtype=_DTYPE, device=dev) if problem.sup_psi is not None else None
    coords = [grid.points(s, e) for s, e in spans]
    for (s, e), x in zip(spans, coords):
        V[s:e] = problem.terminal_cost(x)
        if bound is not None:
            sb = problem.speed_bound(x)
            assert sb is not None  # sup_psi is set
            bound = torch.maximum(bound, sb.amax(0))
    check_finite(V, "terminal cost on the grid")
    S = opts.snapshots
    T = problem.T
    snap_t = [T * j / (S - 1) for j in range(S)]
    values = torch.empty((S, *grid.shape), dtype=_DTYPE)
    values[S - 1] = V.reshape(grid.shape).cpu()
    scheme = opts.scheme_object
    ctx = MarchContext(problem, grid, float(opts.cfl), opts.inner_points, opts.newton_iters,
                       spans, coords, bound, T)
    t = T
    j = S - 2  # next snapshot to reach, going backward
    steps = 0
    max_speed = 0.0
    while j >= 0:
        ctx.t = t
        plan = scheme.stable_dt(ctx, V)
        if not (plan.dt > 0.0 and math.isfinite(plan.dt)):
            raise PdenetsError(f"HJB: scheme {scheme.name!r} gave the step {plan.dt!r} at "
                               f"t = {t:.6g}; check the box, alpha and cfl")
        dt, t_new, j_hit = _clip_step(plan.dt, t, snap_t, j)
        V = scheme.step(ctx, V, dt, plan)
        max_speed = max(max_speed, float(plan.speed.max()))
        t = t_new
        steps += 1
        if not bool(torch.isfinite(V).all()):
            raise PdenetsError(f"HJB: non-finite values at t = {t:.6g} ({scheme.name}); "
                               "check the box, alpha and cfl")
        if j_hit is not None:
            values[j_hit] = V.reshape(grid.shape).cpu()
            j = j_hit - 1
        if steps >= opts.max_steps and j >= 0:
            raise PdenetsError(f"HJB: more than max_steps = {opts.max_steps} time steps "
                               f"(t = {t:.6g}); coarsen the grid or raise max_steps")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t_start
    stats = {
        "steps": steps, "seconds": seconds, "grid_points": P,
        "point_steps_per_second": P * steps / max(seconds, 1e-12),
        "memory_estimate": estimate_memory(user_problem, user_grid, opts), "max_speed": max_speed,
        "chunk": chunk, "scheme": scheme.name, "device": str(dev),
        "threads": threads if dev.type == "cpu" else None,
    }
    times = torch.tensor(snap_t, dtype=_DTYPE)
    return HJBSolution(user_problem, user_grid, opts, times, values, stats)


def _clip_step(dt: float, t: float, snap_t: list[float], j: int):
    """Backward step of at most ``dt`` from ``t``: the remaining interval to the next snapshot
    depth ``snap_t[j]`` is split into equal steps, so steps never exceed ``dt`` and land on it.
    Returns ``(step, new t, j if the snapshot is reached else None)``."""
    rest = t - snap_t[j]
    n = max(1, math.ceil(rest / dt * (1 - 1e-12)))
    if n == 1:
        return rest, snap_t[j], j
    return rest / n, t - rest / n, None
