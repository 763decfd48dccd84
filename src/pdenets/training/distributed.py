"""Data-parallel training on ``torch.distributed`` (MODEL.md §4–5): :class:`Distributed`,
:func:`spawn`, :func:`from_env`.

W processes (*ranks*) train one network together; rank r of W computes the gradient of its
share of every minibatch and one ``all_reduce`` sums the shares, so every step is the step of
the 1-process run with the same *global* batch (to rounding):

* **Same global batches.** Every rank holds the whole data set (the seeded splits of
  :mod:`pdenets.data`) and the same initial network (same seed), and draws the epoch's
  permutation and the augmentations (:meth:`Trainer.augment
  <pdenets.training.Trainer.augment>`) of the *global* minibatch from the same seeded generator;
  rank r then takes the contiguous share ``[r n / W, (r+1) n / W)`` of the n samples
  (:meth:`Distributed.shard`) — a ``DistributedSampler`` that reproduces the 1-process batch
  order and augmentations exactly, and resumes exactly (the generator is checkpointed).
* **Gradients.** J of MODEL.md §4 on a batch of n samples is the mean data loss plus the
  regularization R(θ). Rank r evaluates the objective on its n_r samples (any gradient strategy
  of §5: autograd, the checkpointed discrete adjoint or the continuous adjoint) and weights it
  into its share ``J_r = (n_r / n)·J(shard)`` (:meth:`Distributed.loss`); as Σ_r n_r = n,
  Σ_r J_r = J(global batch), with R counted once (not W times). The gradients of the shares
  are *summed* by one ``all_reduce`` of a flat buffer (:meth:`Distributed.reduce_gradients`,
  which also sums the shares' values); then gradient clipping, Adam, SGD or L-BFGS (whose
  closure reduces likewise, so every rank follows the same line search) update identical
  parameters identically on every rank.
* **Evaluation** (validation every epoch, the final metrics) is sharded the same way and its
  sums are all-reduced (:meth:`Distributed.evaluate`): every rank gets the same numbers, so
  model selection and early stopping are decided identically everywhere.
* **Writing.** Only rank 0 touches the results directory (logs, checkpoints, model, plots,
  the output lock); the others never open a path under it. On ``--resume`` rank 0 reads the
  checkpoint and sends its bytes (and the run's configuration) to the other ranks
  (:meth:`Distributed.share`), so a multi-node run needs the directory on rank 0's node only.

Processes are started either by :func:`spawn` (``pdenets train --nproc N``: N local workers
with ``torch.multiprocessing``) or by ``torchrun`` (:func:`from_env` reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The backend is gloo for
``device = "cpu"`` and NCCL for ``device = "cuda"`` (rank r on ``cuda:LOCAL_RANK``).

The methods that do their own sweeps over the data (``msa``) are refused with W > 1
(:func:`check_method`); ``adam``, ``sgd`` and ``lbfgs`` are supported, and ``multilevel`` with
a supported ``train.level_method`` (each level trains with that method, data-parallel).
"""

from __future__ import annotations

import gc
import math
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import torch

from ..errors import ConfigError, PdenetsError

if TYPE_CHECKING:
    from .methods import Method
    from .trainer import Trainer

__all__ = ["Distributed", "spawn", "from_env", "env_rank", "env_world", "check_method",
           "SUPPORTED_METHODS"]

#: ``train.method`` values that data-parallel training supports
SUPPORTED_METHODS = ("adam", "sgd", "lbfgs")


def _dist():
    import torch.distributed as dist

    return dist


#: whether this process created (and closed) a process group
_GROUP_USED = False


def leave(code: int) -> None:
    """End a process that ran a process group with exit status ``code``, without the C++
    teardown of interpreter exit: gloo's threads, torn down there, aborted a worker now and
    then ("terminate called without an active exception", SIGABRT) after its run had finished
    and written everything. Does nothing (returns) in a process that used no group."""
    if not _GROUP_USED:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise PdenetsError(f"environment variable {name}={raw!r} is not an integer") from None


def env_world() -> int:
    """``WORLD_SIZE`` of the environment (as ``torchrun`` sets it; 1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` of the environment (as ``torchrun`` sets it; 0 when unset)."""
    return _env_int("RANK", 0)


def check_method(method: str | type[Method] | Method, cfg: Any = None) -> None:
    """Refuse an optimization method that data-parallel training does not support.

    Supported are the methods whose epoch is the minibatch loop or the full-batch L-BFGS loop
    of :mod:`pdenets.training.methods` (``adam``, ``sgd``, ``lbfgs``), and a method that
    delegates its epochs to one of them (:meth:`Method.delegate
    <pdenets.training.methods.Method.delegate>` for the configuration ``cfg``: ``multilevel``
    with ``train.level_method``); ``msa`` (and any method with an epoch of its own) raises
    :class:`~pdenets.errors.ConfigError`.
    """
    from .methods import LBFGS, Method, get_method

    cls = get_method(method) if isinstance(method, str) else (
        method if isinstance(method, type) else type(method))
    inner = cls.delegate(cfg) if cfg is not None else None
    if inner is not None:
        check_method(inner)
        return
    if cls.train_epoch not in (Method.train_epoch, LBFGS.train_epoch):
        raise ConfigError(
            f"train.method = {cls.name!r} does not support data-parallel training "
            f"(--nproc > 1 or torchrun); use one of {', '.join(SUPPORTED_METHODS)}, or train "
            f"in one process")


def _backend(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


class Distributed:
    """The data-parallel context of one process: its ``rank`` among ``world`` processes.

    ``Distributed()`` (the default of :class:`~pdenets.training.Trainer`) is the 1-process
    context: every operation is the identity and the trainer runs exactly as without it. A
    context of W > 1 processes comes from :meth:`init`, :func:`from_env` or :func:`spawn`, with
    a ``torch.distributed`` process group (see the module docstring for the scheme).

    Parameters
    ----------
    rank, world : int
        This process's rank and the number of processes (0 ≤ rank < world).
    local_rank : int
        The rank on this machine (selects ``cuda:local_rank`` under NCCL).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None for the 1-process context.
    owns_group : bool
        Whether :meth:`close` destroys the process group (it was created by :meth:`init`).
    """

    def __init__(self, rank: int = 0, world: int = 1, *, local_rank: int = 0,
                 backend: str | None = None, owns_group: bool = False) -> None:
        if not (isinstance(world, int) and world >= 1 and 0 <= rank < world):
            raise PdenetsError(f"Distributed: need 0 <= rank < world, got rank {rank}, "
                               f"world {world}")
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.backend = backend
        self.owns_group = owns_group
        if backend == "nccl":
            self.comm_device = torch.device("cuda", local_rank)
        else:
            self.comm_device = torch.device("cpu")

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world={self.world}, backend={self.backend!r})"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one process that writes files."""
        return self.rank == 0

    # -- set-up -------------------------------------------------------------------------------
    @classmethod
    def init(cls, rank: int, world: int, *, init_method: str = "env://", device: str = "cpu",
             local_rank: int | None = None) -> Distributed:
        """Join (or create) the process group of ``world`` processes as ``rank``.

        The backend is gloo for ``device = "cpu"`` and NCCL for ``"cuda"`` (this process then
        uses ``cuda:local_rank``; a fixed ``"cuda:k"`` is refused, since every rank needs its
        own GPU). An already initialized default process group is adopted (and not destroyed
        by :meth:`close`).
        """
        dist = _dist()
        local_rank = rank if local_rank is None else local_rank
        backend = _backend(device)
        if not dist.is_available():
            raise PdenetsError("data-parallel training needs torch.distributed, which this "
                               "PyTorch build lacks")
        if backend == "nccl":
            if str(device) != "cuda":
                raise ConfigError(f"device: data-parallel training on GPUs needs device = "
                                  f"'cuda' (rank r uses cuda:LOCAL_RANK), got {device!r}")
            if not dist.is_nccl_available():
                raise PdenetsError("data-parallel training on CUDA needs the NCCL backend, "
                                   "which this PyTorch build lacks")
            if local_rank >= torch.cuda.device_count():
                raise PdenetsError(f"local rank {local_rank} has no GPU "
                                   f"({torch.cuda.device_count()} CUDA device(s) here)")
            torch.cuda.set_device(local_rank)
        elif not dist.is_gloo_available():
            raise PdenetsError("data-parallel training on CPU needs the gloo backend, which "
                               "this PyTorch build lacks")
        if dist.is_initialized():
            if dist.get_world_size() != world or dist.get_rank() != rank:
                raise PdenetsError(f"the initialized process group is rank "
                                   f"{dist.get_rank()} of {dist.get_world_size()}, not "
                                   f"{rank} of {world}")
            return cls(rank, world, local_rank=local_rank, backend=dist.get_backend(),
                       owns_group=False)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
        return cls(rank, world, local_rank=local_rank, backend=backend, owns_group=True)

    def close(self) -> None:
        """Destroy the process group if :meth:`init` created it, and collect what still refers
        to it (see :func:`leave`)."""
        if self.owns_group:
            global _GROUP_USED
            _GROUP_USED = True
            dist = _dist()
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False
            gc.collect()

    def check(self, trainer: Trainer) -> None:
        """Refuse a trainer this context cannot run (see :func:`check_method`)."""
        if self.world > 1:
            check_method(trainer.method, trainer.cfg)

    # -- the training step --------------------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This rank's contiguous share ``[r n / W, (r+1) n / W)`` of a global batch of ``n``
        samples (all of it in one process). The shares partition the batch; their sizes
        differ by at most one."""
        if self.world == 1:
            return slice(None)
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """This rank's share J_r of J on the global batch (x, y) (one process: J itself,
        :meth:`Trainer.loss <pdenets.training.Trainer.loss>`).

        ``J_r = (n_r / n)·J(x_r, y_r)`` with (x_r, y_r) = the rank's :meth:`shard` and n_r
        its size. J of MODEL.md §4 is the mean data loss D plus the regularization R, so
        Σ_r J_r = Σ_r (n_r / n)·D_r + (Σ_r n_r / n)·R = D(x, y) + R = J(x, y): the mean over
        the global batch, with R counted once (a rank without samples contributes 0).
        """
        if self.world == 1:
            return trainer.loss(x, y)
        n = len(x)
        part = self.shard(n)
        k = part.stop - part.start
        if k == 0:  # fewer samples than ranks: a zero share (with a graph for backward())
            return x.new_zeros((), requires_grad=True)
        return trainer.loss(x[part], y[part]) * (k / n)

    @overload
    def reduce_gradients(self, params: Iterable[torch.Tensor], value: torch.Tensor
                         ) -> torch.Tensor: ...

    @overload
    def reduce_gradients(self, params: Iterable[torch.Tensor], value: None = None
                         ) -> None: ...

    def reduce_gradients(self, params: Iterable[torch.Tensor],
                         value: torch.Tensor | None = None) -> torch.Tensor | None:
        """Sum the gradients of ``params`` (and ``value``, e.g. the share J_r) over the ranks,
        in one ``all_reduce`` per parameter dtype; returns the summed ``value``.

        With the shares of :meth:`loss` the result is the gradient (and the value) of J on the
        global batch. A parameter without a gradient counts as zero. One process: nothing
        happens and ``value`` is returned as given.
        """
        if self.world == 1:
            return value
        dist = _dist()
        params = list(params)
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault((p.dtype, p.device), []).append(p)
        total = None
        first = True
        for (dtype, device), ps in groups.items():
            bufs = [p.grad.reshape(-1) if p.grad is not None
                    else torch.zeros(p.numel(), dtype=dtype, device=device) for p in ps]
            if first and value is not None:
                bufs.append(value.detach().reshape(1).to(dtype=dtype, device=device))
            flat = torch.cat(bufs).to(self.comm_device)
            dist.all_reduce(flat)
            flat = flat.to(device)
            i = 0
            for p in ps:
                g = flat[i:i + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
                i += p.numel()
            if first and value is not None:
                total = flat[i].to(value.dtype)
            first = False
        if value is not None and total is None:  # no parameters
            v = value.detach().reshape(1).to(self.comm_device, dtype=torch.float64)
            dist.all_reduce(v)
            total = v[0].to(device=value.device, dtype=value.dtype)
        return total

    def all_sum(self, values: list[float]) -> list[float]:
        """The sums over the ranks of ``values`` (float64; identical on every rank)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        _dist().all_reduce(t)
        return t.cpu().tolist()

    def evaluate(self, fn: Callable[..., dict], net, x: torch.Tensor, y: torch.Tensor,
                 *args: Any, **kwargs: Any) -> dict:
        """``fn(net, x, y, *args, **kwargs)`` (:func:`~pdenets.training.evaluate`: mean
        ``loss`` and ``accuracy``) on the whole split, computed on the ranks' shards.

        Each rank evaluates its :meth:`shard`; the sums n_r·loss_r and the correct counts are
        all-reduced, so every rank gets the same numbers, equal to the 1-process evaluation to
        rounding (accuracies exactly).
        """
        n = len(x)
        if self.world == 1 or n == 0:
            return fn(net, x, y, *args, **kwargs)
        part = self.shard(n)
        k = part.stop - part.start
        res = fn(net, x[part], y[part], *args, **kwargs) if k else {}
        acc = res.get("accuracy", math.nan)
        has_acc = k > 0 and math.isfinite(acc)
        s_loss, s_correct, n_acc = self.all_sum([
            res["loss"] * k if k else 0.0, float(round(acc * k)) if has_acc else 0.0,
            1.0 if has_acc else 0.0])
        return {"loss": s_loss / n, "accuracy": s_correct / n if n_acc else math.nan}

    # -- coordination -------------------------------------------------------------------------
    def share(self, value: Any = None, *, error: BaseException | None = None) -> Any:
        """Rank 0 sends ``value`` (or its ``error``) to every rank; the others return the
        value or raise the error (as a :class:`~pdenets.errors.PdenetsError`). Every rank
        must call it. One process: returns ``value``."""
        if self.world == 1:
            return value
        if self.is_main:
            if error is not None:
                if not isinstance(error, PdenetsError):
                    error = PdenetsError(f"rank 0 failed: {type(error).__name__}: {error}")
                box: list[Any] = [("error", error)]
            else:
                box = [("ok", value)]
        else:
            box = [None]
        _dist().broadcast_object_list(box, src=0, device=self.comm_device
                                      if self.backend == "nccl" else None)
        kind, payload = box[0]
        if kind == "error" and not self.is_main:
            raise payload
        return payload

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.world > 1:
            _dist().barrier()


def from_env(device: str = "cpu") -> Distributed | None:
    """The context of a process started by ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment; ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` as torchrun
    sets them), its process group initialized (``env://``); None when ``WORLD_SIZE`` is unset
    or 1."""
    world = env_world()
    if world <= 1:
        return None
    rank = env_rank()
    local = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise PdenetsError(f"environment: RANK={rank} is not in [0, WORLD_SIZE={world})")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise PdenetsError(f"environment: WORLD_SIZE={world} but {' and '.join(missing)} "
                           f"unset; launch with torchrun (see the docs: Distributed training)")
    return Distributed.init(rank, world, init_method="env://", device=device, local_rank=local)


def _worker(rank: int, world: int, tmp: str, device: str, threads: int | None,
            fn: Callable[..., Any], args: tuple) -> None:
    """One process of :func:`spawn`: join the group, run ``fn``, leave rank 0's result (or a
    :class:`~pdenets.errors.PdenetsError`) in ``tmp``."""
    if threads is not None:
        torch.set_num_threads(threads)
    ctx = None
    try:
        ctx = Distributed.init(rank, world, init_method=f"file://{Path(tmp) / 'init'}",
                               device=device, local_rank=rank)
        result = fn(ctx, *args)
        if rank == 0:
            (Path(tmp) / "result.pkl").write_bytes(pickle.dumps(result))
    except PdenetsError as e:
        (Path(tmp) / f"error{rank}.pkl").write_bytes(pickle.dumps(e))
        if ctx is not None:
            ctx.close()
        leave(2)
        sys.exit(2)
    finally:
        if ctx is not None:
            ctx.close()
    leave(0)


def spawn(fn: Callable[..., Any], nproc: int, *args: Any, device: str = "cpu") -> Any:
    """Run ``fn(ctx, *args)`` in ``nproc`` local worker processes, ``ctx`` the
    :class:`Distributed` context of each (gloo on CPU, NCCL for ``device = "cuda"``), and
    return rank 0's result.

    The workers are started with ``torch.multiprocessing`` (start method ``spawn``: ``fn`` and
    ``args`` must be picklable, ``fn`` defined at module level) and share a private temporary
    directory for the rendezvous; each uses ``cpu_count // nproc`` threads unless
    ``OMP_NUM_THREADS`` is set. A :class:`~pdenets.errors.PdenetsError` raised in a worker is
    raised here (the lowest rank's); another failure raises ``torch.multiprocessing``'s
    ``ProcessRaisedException`` with the worker's traceback.
    """
    import torch.multiprocessing as mp

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise PdenetsError(f"nproc: must be an integer >= 1, got {nproc!r}")
    if _backend(device) == "nccl" and nproc > torch.cuda.device_count():
        raise PdenetsError(f"nproc: {nproc} processes on CUDA need {nproc} GPUs; "
                           f"{torch.cuda.device_count()} found")
    threads = None
    if not os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="pdenets-ddp-") as tmp:
        try:
            mp.start_processes(_worker, args=(nproc, tmp, device, threads, fn, args),
                               nprocs=nproc, join=True, start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            for r in range(nproc):
                f = Path(tmp) / f"error{r}.pkl"
                if f.is_file():
                    raise pickle.loads(f.read_bytes()) from None
            raise
        res = Path(tmp) / "result.pkl"
        if not res.is_file():
            raise PdenetsError("data-parallel training: rank 0 ended without a result")
        return pickle.loads(res.read_bytes())
