"""Size limits: memory and time estimates checked before any work is started.

Every size a user can give (depth steps, saved depths, width nodes, samples, batch sizes, grid
points, the horizon/step ratio of the HJB solver, the shapes in array-file headers, ...) is
turned into an *estimate* of the memory (bytes) and the work (floating-point operations) it
implies, and the estimate is compared with two limits before anything is allocated:

* **memory**: :data:`MEMORY_FRACTION` (one half) of the machine's physical memory, as reported
  by ``os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")`` (8 GiB where that is
  unavailable);
* **time**: :data:`TIME_BUDGET_SECONDS` (6 hours) at a conservative :data:`FLOP_RATE` of
  5·10⁹ floating-point operations per second, i.e. 1.08·10¹⁴ operations (the default digits
  training is estimated at 6.6·10¹¹ operations, ~2 min at that rate; it takes ~35 s).
  Every right-hand-side evaluation of the forward problem (MODEL.md §2) is charged its
  matrix products
  (2·B·N² for B inputs on N width nodes) plus :data:`EVAL_OVERHEAD_FLOPS` (the Python and
  dispatch overhead of one evaluation, about 20 µs, expressed in operations at that rate), so a
  tiny network with 10⁹ depth steps is refused as surely as a huge one.

The estimates are deliberately simple upper-bound-style formulas (documented at each function);
they decide only whether a run is *absurd*, not how fast it will be. An explicit override skips
both checks: the ``--allow-large`` option of every command, the environment variable
``PDENETS_ALLOW_LARGE=1`` (Python API), or the :func:`allow_large` context manager.

A refused size raises :class:`SizeLimitError` naming the option, the estimate and the limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import PdenetsError

#: environment variable that disables the size checks (any value but "", "0", "false", "no")
ENV_VAR = "PDENETS_ALLOW_LARGE"
#: fraction of the physical memory a single command may plan to use
MEMORY_FRACTION = 0.5
#: conservative rate of floating-point operations per second (one core: ~2·10¹⁰ in the
#: matrix products of a 256-node width grid)
FLOP_RATE = 5e9
#: wall-clock budget of one command at :data:`FLOP_RATE`
TIME_BUDGET_SECONDS = 6 * 3600.0
#: overhead of one right-hand-side evaluation (Python, kernel dispatch: ~20 µs), in
#: operations at :data:`FLOP_RATE`
EVAL_OVERHEAD_FLOPS = 1e5
#: the hint appended to every refusal
HINT = "pass --allow-large (Python API: set PDENETS_ALLOW_LARGE=1) to run it anyway"

_override: contextvars.ContextVar[bool] = contextvars.ContextVar("pdenets_allow_large",
                                                                  default=False)


class SizeLimitError(PdenetsError):
    """A size whose memory or time estimate exceeds the limits of this module."""


# ---------------------------------------------------------------------------------------------
# limits and the override
# ---------------------------------------------------------------------------------------------
def physical_memory() -> int:
    """Bytes of physical memory (``os.sysconf``), or 8 GiB where it cannot be read."""
    try:
        n = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
        if n > 0:
            return n
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        pass
    return 8 * 2**30  # pragma: no cover


def memory_limit() -> int:
    """Bytes a command may plan to allocate: :data:`MEMORY_FRACTION` of physical memory."""
    return int(MEMORY_FRACTION * physical_memory())


def flop_budget() -> float:
    """Floating-point operations a command may plan: the time budget at the rate."""
    return FLOP_RATE * TIME_BUDGET_SECONDS


def override_active() -> bool:
    """True inside :func:`allow_large` or when ``PDENETS_ALLOW_LARGE`` is set (not 0/false)."""
    if _override.get():
        return True
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return env not in ("", "0", "false", "no", "off")


@contextlib.contextmanager
def allow_large(enabled: bool = True) -> Iterator[None]:
    """Within the block, skip the size checks when ``enabled`` (the ``--allow-large`` option)."""
    token = _override.set(bool(enabled) or _override.get())
    try:
        yield
    finally:
        _override.reset(token)


# ---------------------------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """An estimate: ``nbytes`` of peak memory and ``flops`` floating-point operations."""

    nbytes: float = 0.0
    flops: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.nbytes + other.nbytes, self.flops + other.flops)

    def times(self, memory: float = 1.0, work: float = 1.0) -> Cost:
        """Memory scaled by ``memory``, work by ``work``."""
        return Cost(self.nbytes * memory, self.flops * work)


def solver_stages(solver) -> int:
    """Right-hand-side evaluations per step of a depth solver (explicit RK: its stages)."""
    tableau = getattr(solver, "tableau", None)
    stages = getattr(tableau, "stages", None)
    return max(1, stages) if isinstance(stages, int) else 2


def solve_cost(*, nodes: float, batch: float, steps: float, stages: int = 4,
               knots: float = 2, control_nodes: float = 0, itemsize: int = 8,
               saves: float = 0, tape: bool = False) -> Cost:
    """Estimate of one forward solve (MODEL.md §2) of ``batch`` inputs on ``nodes`` width nodes.

    Memory: the kernel schedule (``knots`` matrices N×N and their N×Nc factors), two
    interpolated kernels, the state and ``stages + 4`` stage vectors (B×N each) and ``saves``
    saved states; with ``tape`` (autograd records the solve for a gradient) also, per
    evaluation, an interpolated kernel and three B×N vectors.
    Work: per evaluation 2·B·N² (the integral operator) + 3·N² (kernel interpolation) +
    20·B·N (activation, updates) + :data:`EVAL_OVERHEAD_FLOPS`, for ``steps × stages``
    evaluations, plus the schedule (2·N·Nc² + 2·N²·Nc per knot); ``tape`` triples the work
    (forward + backward).
    """
    N, B, S = float(nodes), float(batch), float(steps)
    Nc = float(control_nodes) or N
    evals = S * stages
    per_eval = 2 * B * N * N + 3 * N * N + 20 * B * N + EVAL_OVERHEAD_FLOPS
    flops = evals * per_eval + knots * (2 * N * Nc * Nc + 2 * N * N * Nc)
    words = knots * (N * N + N * Nc) + N * Nc + 2 * N * N + B * N * (stages + 4) + saves * B * N
    if tape:
        flops *= 3
        words += evals * (N * N + 3 * B * N)
    return Cost(itemsize * words, flops)


def count(value: float) -> float:
    """``value`` as a float, +inf where it overflows (for products of huge sizes)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def power(base: float, exponent: float) -> float:
    """``base ** exponent`` as a float, +inf on overflow (grid sizes n^D)."""
    try:
        return math.pow(float(base), float(exponent))
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``, sizes from 1 GiB on in GiB; +inf → ``'inf GiB'``."""
    if not math.isfinite(n):
        return "inf GiB"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _describe(option: str, value) -> str:
    return option if value is None else f"{option} = {value}"


def check_memory(nbytes: float, option: str, what: str, value=None) -> None:
    """Raise :class:`SizeLimitError` when ``nbytes`` exceeds :func:`memory_limit`.

    ``option`` names the size responsible (``--steps``, ``train.batch_size``, ...), ``value``
    its value (shown when given), ``what`` the task (``"the forward solve"``).
    """
    if override_active():
        return
    limit = memory_limit()
    if not nbytes <= limit:  # NaN counts as too large
        raise SizeLimitError(
            f"{_describe(option, value)}: {what} needs about {format_bytes(nbytes)} of memory, "
            f"more than the limit of {format_bytes(limit)} ({MEMORY_FRACTION:g} of the "
            f"{format_bytes(physical_memory())} of physical memory); {HINT}")


def check_flops(flops: float, option: str, what: str, value=None) -> None:
    """Raise :class:`SizeLimitError` when ``flops`` exceeds :func:`flop_budget`."""
    if override_active():
        return
    budget = flop_budget()
    if not flops <= budget:
        hours = flops / FLOP_RATE / 3600
        raise SizeLimitError(
            f"{_describe(option, value)}: {what} needs about {flops:.2g} floating-point "
            f"operations (~{hours:.3g} h at a conservative {FLOP_RATE:.0e} operations/s), more "
            f"than the budget of {TIME_BUDGET_SECONDS / 3600:g} h; {HINT}")


def check_cost(cost: Cost, option: str, what: str, value=None) -> None:
    """:func:`check_memory` and :func:`check_flops` of an estimate."""
    check_memory(cost.nbytes, option, what, value)
    check_flops(cost.flops, option, what, value)


def check_int(value, option: str, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) ≥ ``minimum``; else :class:`PdenetsError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PdenetsError(f"{option} must be an integer, got {value!r}")
    if value < minimum:
        raise PdenetsError(f"{option} must be an integer >= {minimum}, got {value}")
    return value


def check_array_bytes(shape: tuple[int, ...], itemsize: int, option: str, what: str) -> None:
    """Refuse an array of ``shape`` whose ``itemsize``-byte elements exceed the memory limit
    (e.g. an ``.npy`` header claiming 10⁵×10⁵ values)."""
    n = 1.0
    for s in shape:
        n *= count(s)
    check_memory(n * itemsize * 2, option, what,
                 "x".join(map(str, shape)) if shape else None)  # the file and a float64 copy


def network_cost(net, disc, batch: float, *, saves: float = 0, tape: bool = False) -> Cost:
    """:func:`solve_cost` of ``net`` (a :class:`~pdenets.network.ContinuumNetwork`) at the
    discretization ``disc`` for ``batch`` inputs. Only sizes are read (nothing is allocated):
    N = the product of the rule's nodes per axis, the solver's stages, ``disc.steps`` (the
    first-step guess of adaptive solvers, whose own ``max_steps`` caps them), the controls'
    knots K and control nodes Nc (from ``w`` of shape (K, Nc, Nc)) and the parameters' dtype."""
    N = 1.0
    for s in disc.width.sizes:
        N *= count(s)
    w = getattr(getattr(net, "controls", None), "w", None)
    knots, nc = (float(w.shape[0]), float(w.shape[-1])) if w is not None and w.dim() == 3 \
        else (2.0, N)
    p = next(iter(net.parameters()), None)
    itemsize = p.element_size() if p is not None else 8
    return solve_cost(nodes=N, batch=count(batch), steps=count(disc.steps),
                      stages=solver_stages(disc.solver), knots=knots, control_nodes=nc,
                      itemsize=itemsize, saves=count(saves), tape=tape)


def check_network(net, disc, batch: float, what: str, sizes: str, *, saves: float = 0,
                  tape: bool = False, work: float = 1.0, memory: float = 1.0) -> Cost:
    """Refuse a computation of ``work`` forward solves (``memory`` × the memory of one) of
    ``net`` at ``disc`` for ``batch`` inputs when its estimate exceeds the limits; ``sizes``
    names the options and values responsible (e.g. ``"--steps 10, --width 64, 2 inputs"``)."""
    cost = network_cost(net, disc, batch, saves=saves, tape=tape).times(memory, work)
    check_cost(cost, sizes, what)
    return cost


#: samples, features per axis and d of the bundled datasets (pdenets.data)
_BUILTIN_SIZES = {"digits": (1797, 8, 2), "breast_cancer": (569, 30, 1), "wine": (178, 13, 1),
                  "iris": (150, 4, 1)}


def training_cost(cfg) -> Cost:
    """Estimate of ``pdenets train`` with the :class:`~pdenets.config.Config` ``cfg``.

    Samples n: the bundled sizes, ``data.n_samples`` for synthetic data, ``train.batch_size``
    for a data file (unknown before it is read). Width nodes N: ``model.width`` per axis (d = 2
    for digits), else the automatic width (the image, or max(32, features) nodes); control
    nodes ``model.control_size`` likewise (automatic: ≤ 16 + 1 per axis).

    Memory: one recorded batch of ``train.batch_size`` inputs (:func:`solve_cost` with
    ``tape``; the size asked for, even beyond n), or an evaluation batch of
    ``train.eval_batch_size``, plus the controls with optimizer state (×4) and the data
    (n × N float64 values, ×4).

    Work: ``train.epochs`` × passes over the data (1 for adam/sgd, 1.25 ×
    ``lbfgs_iterations`` for L-BFGS, inner + readout steps + 3 for MSA, twice the level
    method's for multilevel) × the recorded solves of all batches, plus an evaluation of
    the validation part per epoch.
    """
    d, m, t = cfg.data, cfg.model, cfg.train
    n: float
    feats: float
    if d.name in _BUILTIN_SIZES:
        n, feats, dim = (float(v) for v in _BUILTIN_SIZES[d.name])
    elif d.name in ("spirals", "moons", "circles"):
        n, feats, dim = count(d.n_samples), 2.0, 1.0
    else:  # a data file: unknown until read
        n, feats, dim = count(t.batch_size), 32.0, 1.0
    per_axis = count(m.width) if m.width else float(feats if dim == 2 else max(32, feats))
    N = per_axis**dim
    Nc = (count(m.control_size) if m.control_size else 17.0) ** dim
    knots = count(m.intervals) + 1
    from .integrators import SOLVERS

    solver = SOLVERS.get(m.solver)
    stages = solver_stages(solver) if solver is not None else 4
    itemsize = 8 if cfg.dtype == "float64" else 4

    def passes(method: str) -> float:
        if method == "lbfgs":
            return 1.25 * count(t.lbfgs_iterations)
        if method == "msa":
            return count(t.msa_inner_steps) + count(t.msa_readout_steps) + 3
        return 1.0

    method = t.level_method if t.method == "multilevel" else t.method
    p = passes(method) * (2 if t.method == "multilevel" else 1)
    B = count(t.batch_size)
    if method == "lbfgs":  # full batch: the training part of the data at once
        B = max(B, n)
    batch = solve_cost(nodes=N, batch=min(B, n), steps=m.steps, stages=stages, knots=knots,
                       control_nodes=Nc, itemsize=itemsize, tape=True)
    batches = max(1.0, math.ceil(n / B)) if math.isfinite(n / B) else math.inf
    full = solve_cost(nodes=N, batch=B, steps=m.steps, stages=stages, knots=knots,
                      control_nodes=Nc, itemsize=itemsize, tape=True)
    evaluation = solve_cost(nodes=N, batch=min(n, count(t.eval_batch_size)), steps=m.steps,
                            stages=stages, knots=knots, control_nodes=Nc, itemsize=itemsize)
    eval_memory = solve_cost(nodes=N, batch=count(t.eval_batch_size), steps=m.steps,
                             stages=stages, knots=knots, control_nodes=Nc,
                             itemsize=itemsize).nbytes
    params = 4.0 * itemsize * knots * (Nc * Nc + Nc)
    data = 4.0 * 8 * n * max(N, feats**dim)
    nbytes = max(full.nbytes, eval_memory) + params + data
    epochs = count(t.epochs)
    flops = epochs * (p * batches * batch.flops + evaluation.flops * max(1.0, 0.1 * n / max(
        1.0, count(t.eval_batch_size))))
    return Cost(nbytes, flops)


#: the configuration keys that scale :func:`training_cost`
TRAINING_SIZES = ("train.batch_size", "train.eval_batch_size", "train.epochs", "model.width",
                  "model.steps", "model.control_size", "model.intervals", "data.n_samples",
                  "train.lbfgs_iterations", "train.msa_inner_steps", "train.msa_readout_steps")


def check_training(cfg) -> None:
    """Refuse a training configuration whose :func:`training_cost` exceeds the limits.

    The message names the sizes responsible: those changed from their defaults whose reset
    alone brings the estimate within the limits (else all changed sizes, else the main ones).
    """
    import copy

    cost = training_cost(cfg)
    if override_active() or (cost.nbytes <= memory_limit() and cost.flops <= flop_budget()):
        return
    default = type(cfg)()  # the defaults (no import of .config: it imports this module)

    def get(c, key):
        section, name = key.split(".")
        return getattr(getattr(c, section), name)

    changed = [k for k in TRAINING_SIZES if get(cfg, k) != get(default, k)]
    culprits = []
    for key in changed:
        trial = copy.deepcopy(cfg)
        section, name = key.split(".")
        setattr(getattr(trial, section), name, get(default, key))
        c = training_cost(trial)
        if c.nbytes <= memory_limit() and c.flops <= flop_budget():
            culprits.append(key)
    keys = culprits or changed or ["train.batch_size", "train.epochs", "model.steps"]
    sizes = ", ".join(f"{k} = {get(cfg, k)}" for k in keys)
    check_cost(cost, sizes, "the training run")
