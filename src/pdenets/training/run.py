"""A training run into a results directory (``pdenets train``): :func:`run_training`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from .. import _threads
from .._outputs import MARKER, Output, atomic_write_bytes, is_temp_name, remove_temp_files
from ..config import Config
from ..data import Dataset, load_dataset_config
from ..errors import PdenetsError
from . import distributed as _distributed
from .build import resolved_config
from .checkpoint import checkpoint_config, load_checkpoint
from .distributed import Distributed
from .factory import make_trainer

__all__ = ["run_training", "RUN_FILES", "dataclass_dict", "ds_preprocess"]

#: files a training run writes into its work directory (plots come from ``plot_run``)
RUN_FILES = ("config.toml", "metrics.jsonl", "checkpoint.safetensors", "model.safetensors",
             "metrics.json")


#: an empty file that marks ``OUT.partial`` as the work directory of a pdenets training run:
#: only then are the run's own file names in it cleared by a new run
WORK_SENTINEL = ".pdenets-work"


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _clear_work(work: Path, shown: str) -> None:
    """Remove the files of an earlier, unfinished run from its work directory ``work``
    (``OUT.partial``); refuse when it is not marked as one (:data:`WORK_SENTINEL`, written when
    a run creates it) or holds files a training run does not write."""
    if not work.exists():
        return
    if not work.is_dir():
        raise PdenetsError(f"{str(work)!r} exists and is not a directory; move it away to "
                           f"train into {shown!r}")
    entries = sorted(os.listdir(work))
    if entries and WORK_SENTINEL not in entries:
        raise PdenetsError(f"{str(work)!r} holds files but is not the work directory of a "
                           f"pdenets training run; move it away to train into {shown!r}")
    foreign = []
    for e in entries:
        if e == WORK_SENTINEL:
            continue
        if (e in RUN_FILES or e == MARKER or e.endswith(".png") or is_temp_name(e)) \
                and (work / e).is_file():
            (work / e).unlink()
        else:
            foreign.append(e)
    if foreign:
        raise PdenetsError(f"{str(work)!r} (the work directory of an unfinished run) holds "
                           f"files a training run does not write ({', '.join(foreign[:3])}); "
                           f"move them away")


def dataclass_dict(obj) -> dict:
    """``dataclasses.asdict(obj)``."""
    return dataclasses.asdict(obj)


def ds_preprocess(ds: Dataset) -> dict:
    """The preprocessing of ``ds`` (stored in the model file)."""
    return ds.preprocess


def _save_model(net, path: Path, extra: dict) -> None:
    # looked up on the package at call time, where it is public as
    # ``pdenets.training.save_model`` (tests/test_resume.py interrupts a run there)
    sys.modules[__package__].save_model(net, path, extra=extra)


def run_training(cfg: Config, out: str | os.PathLike, *, resume: bool = False,
                 progress: bool = True, plots: bool = True, overwrite: bool = False,
                 nproc: int = 1, dist: Distributed | None = None) -> dict:
    """Train as configured and write the results directory ``out``.

    Before it computes, the run claims ``out`` (:class:`pdenets._outputs.Output`): it refuses
    the current directory and its ancestors, an existing file, and an existing non-empty
    directory that is not an earlier ``pdenets train`` output (unless ``overwrite``), and it
    locks ``OUT`` and ``OUT.partial`` so that a second run on the same output fails at once.

    The run works in ``OUT.partial/`` (resolved ``config.toml``, ``metrics.jsonl``, the
    resumable ``checkpoint.safetensors``, written before the first epoch and after every
    ``train.checkpoint_every`` epochs and at an early stop) and only when everything is
    written — the model file ``model.safetensors``, plots, and ``metrics.json`` last — is it
    renamed to ``OUT`` (or, when ``OUT`` exists, its files are moved into it; other files in
    ``OUT`` stay). A failed or interrupted run therefore never leaves a directory that looks
    complete; ``resume=True`` (``pdenets train --resume``) continues it exactly as the
    uninterrupted run would have gone on, whatever the point of interruption; a run killed
    before its first checkpoint starts afresh.

    Data-parallel training (:mod:`pdenets.training.distributed`): ``nproc`` > 1 spawns that
    many local worker processes (gloo on CPU, NCCL on CUDA); in a process started by
    ``torchrun`` (``WORLD_SIZE`` > 1) the run joins its process group; ``dist`` runs it as a
    rank of a context made by the caller. The result equals the 1-process run with the same
    global batch (to rounding). Only rank 0 touches ``out``: it claims, writes and commits it
    as above and, on resume, sends the checkpoint to the other ranks.

    Returns the metrics (also in ``metrics.json``), with ``wall_seconds`` and ``out``; with
    several processes every rank returns them (``nproc`` > 1: rank 0's).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise PdenetsError(f"nproc: must be an integer >= 1, got {nproc!r}")
    if dist is None:
        world = _distributed.env_world()
        if world > 1:
            if nproc > 1:
                raise PdenetsError(
                    f"--nproc {nproc} spawns local workers, but this process was started by "
                    f"torchrun (WORLD_SIZE={world}); give torchrun's --nproc-per-node instead")
            env = _distributed.from_env(cfg.device)
            assert env is not None
            try:
                return _run(cfg, Path(out), resume, progress, plots, overwrite, env)
            finally:
                env.close()
        if nproc > 1:
            if not resume:
                _distributed.check_method(cfg.train.method, cfg)
            return _distributed.spawn(_rank_main, nproc, cfg, str(out), resume, progress, plots,
                                      overwrite, device=cfg.device)
        dist = _distributed.Distributed()
    elif nproc != 1:
        raise PdenetsError("run_training: give nproc or dist, not both")
    return _run(cfg, Path(out), resume, progress, plots, overwrite, dist)


def _rank_main(dist: Distributed, cfg: Config, out: str, resume: bool, progress: bool,
               plots: bool, overwrite: bool) -> dict:
    """One rank of ``run_training(nproc=N)`` (a worker of :func:`~.distributed.spawn`)."""
    return run_training(cfg, out, resume=resume, progress=progress, plots=plots,
                        overwrite=overwrite, dist=dist)


def _run_follower(out: Path, dist: Distributed, t_start: float) -> dict:
    """A rank > 0: train with rank 0's configuration (and checkpoint, on resume) and never
    touch ``out``."""
    cfg, state = dist.share()
    ds = load_dataset_config(cfg.data)
    torch.manual_seed(cfg.seed)
    trainer = make_trainer(cfg, ds, progress=False, dist=dist)
    if state is not None:
        load_checkpoint(trainer, "<rank 0's checkpoint>", data=state)
    dist.barrier()  # (rank 0's as well: the first epoch's time excludes the set-up)
    result = trainer.fit()
    metrics = dict(result.metrics)
    metrics["wall_seconds"] = time.perf_counter() - t_start
    metrics["out"] = str(out)
    return metrics


def _run(cfg: Config, out: Path, resume: bool, progress: bool, plots: bool, overwrite: bool,
         dist: Distributed) -> dict:
    t_start = time.perf_counter()
    if not dist.is_main:
        return _run_follower(out, dist, t_start)
    with contextlib.ExitStack() as stack:
        # set-up on rank 0; the other ranks wait in dist.share() for its configuration and
        # checkpoint, or its error
        try:
            target = Output(out, "train", overwrite=overwrite)
            target.check_target()
            work = _partial(target.path)
            ckpt = work / "checkpoint.safetensors"
            stack.enter_context(target.claim(also=[work]))
            fresh = True
            if resume:
                if not work.is_dir():
                    raise PdenetsError(f"nothing to resume: {str(work)!r} does not exist")
                remove_temp_files(work)
                if ckpt.is_file():
                    cfg = checkpoint_config(ckpt)
                    fresh = False
                else:
                    print(f"no checkpoint in {str(work)!r} (the run was interrupted before "
                          f"its first one): starting the run afresh", file=sys.stderr)
            if dist.world > 1:
                _distributed.check_method(cfg.train.method, cfg)
                if (dist.backend == "nccl") != cfg.device.startswith("cuda"):
                    raise PdenetsError(f"device: the run is configured for {cfg.device!r} but "
                                       f"its processes were started with {dist.backend}; "
                                       f"give the run's device (--set device=...)")
            ds = load_dataset_config(cfg.data)
            torch.manual_seed(cfg.seed)
            trainer = make_trainer(cfg, ds, checkpoint_path=ckpt,
                                   log_path=work / "metrics.jsonl", progress=progress, dist=dist)
            # --threads 0 on a small problem: one thread (parallel regions cost more there)
            grid = trainer.net.grid(trainer.disc.width)
            _threads.fit_to_work(cfg.train.batch_size * grid.n
                                 * getattr(trainer.net.controls, "channels", 1))
            state = None
            if fresh:
                _clear_work(work, str(out))
            else:
                state = ckpt.read_bytes() if dist.world > 1 else None
                trainer.load_checkpoint(ckpt)
            try:
                work.mkdir(exist_ok=True)
                (work / WORK_SENTINEL).touch()
            except OSError as e:
                raise PdenetsError(f"cannot write output directory {str(out)!r}: "
                                   f"{e.strerror or e}") from None
            atomic_write_bytes(work / "config.toml",
                               resolved_config(cfg, ds).to_toml().encode(), make_parents=False)
            if fresh:
                trainer.save_checkpoint(ckpt)  # epoch 0: a run killed in epoch 1 resumes exactly
        except Exception as e:
            dist.share(error=e)
            raise
        dist.share((cfg, state))
        dist.barrier()
        try:
            result = trainer.fit()
        except KeyboardInterrupt:
            print(f"interrupted: partial run kept in {work} (resume with --resume)",
                  file=sys.stderr)
            raise
        extra = {"data": dataclass_dict(cfg.data), "preprocess": ds_preprocess(ds),
                 "metrics": result.metrics, "task": ds.task}
        _save_model(result.net, work / "model.safetensors", extra=extra)
        files = list(RUN_FILES)
        if plots:
            from ..plotting import plot_run

            files += plot_run(work, result.net, ds, result.history, cfg)
        metrics = dict(result.metrics)
        metrics["wall_seconds"] = time.perf_counter() - t_start
        metrics["out"] = str(out)
        atomic_write_bytes(work / "metrics.json", json.dumps(metrics, indent=2).encode(),
                           make_parents=False)
        # the checkpoint moves last: a run killed while its files move into an existing OUT
        # can still be resumed (it then only rewrites its results)
        target.commit(work, files=files, last=("checkpoint.safetensors",))
        if work.is_dir():
            remove_temp_files(work)
            with contextlib.suppress(OSError):
                (work / MARKER).unlink(missing_ok=True)
                (work / WORK_SENTINEL).unlink(missing_ok=True)
                work.rmdir()
    return metrics
