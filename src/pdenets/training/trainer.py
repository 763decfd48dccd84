"""The training loop (MODEL.md §4–5): :class:`Trainer`.

:class:`Trainer` minimizes the objective J of §4 of a network on data with a gradient strategy
of §5 (``train.gradient = "discrete" | "continuous"``) and an optimization *method*
(:mod:`pdenets.training.methods`: Adam or SGD on minibatches with a learning-rate schedule,
full-batch L-BFGS with a strong-Wolfe line search, MSA, multilevel — resolved by name through
the method registry, so this module imports none of the later layers). It evaluates on the
validation split every epoch, keeps the last iterate or the best controls by validation loss
(``train.keep``), stops early after ``patience`` epochs without improvement, deforms image
minibatches by random small affine maps (``train.augment_*``; drawn on the host, sent to the
device once per epoch), logs JSON lines, shows a
progress bar and writes resumable checkpoints (:mod:`pdenets.training.checkpoint`): resuming
from a checkpoint reproduces the uninterrupted run exactly (same seed), because the optimizer
state, the data-shuffling generator and the history are all restored.

The hot path (issue 13): the data are checked once (finite values, labels in range) when the
trainer is built; the steps run without per-call value checks and sum the objective on the
device (one host synchronization per epoch). A step (:meth:`Trainer.step`) runs eagerly,
compiled by ``torch.compile`` (``train.compile`` = "auto" | "on" | "off") or, on CUDA, as a
replayed CUDA graph (``train.cuda_graphs``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._checks import check_finite
from ..adjoint import Adjoint
from ..data import Dataset, affine_images, random_affine
from ..errors import PdenetsError
from ..network import ContinuumNetwork, Discretization
from ..objective import Objective, data_loss
from . import checkpoint as _checkpoint
from .build import DTYPES, build_network, make_adjoint_from_config, make_objective
from .distributed import Distributed
from .methods import Method, get_method, set_lr
from .steps import (  # noqa: F401 (the step objects, re-exported)
    _COMPILE_WARNED,
    _CompiledStep,
    _DistributedStep,
    _GraphStep,
    _note,
    _Step,
    _StepImpl,
    compile_available,
    compile_enabled,
    make_step,
)

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Trainer", "TrainResult", "evaluate", "compile_available"]

SPLITS = ("train", "val", "test")


#: pixel values of an epoch up to which :meth:`Trainer.batches` augments the whole epoch at once
EPOCH_AUGMENT_MAX = 1 << 22


@torch.no_grad()
def evaluate(net: ContinuumNetwork, x: torch.Tensor, y: torch.Tensor, loss: str,
             disc: Discretization | None = None, batch_size: int = 2048) -> dict:
    """Mean data loss and (classification) accuracy of ``net`` on (x, y) at ``disc``."""
    if len(x) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    total, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = net(x[i:i + batch_size], disc)
        yb = y[i:i + batch_size]
        total += float(data_loss(out, yb, loss)) * len(yb)
        if loss == "cross_entropy":
            correct += int((out.argmax(1) == yb).sum())
    res = {"loss": total / len(x)}
    res["accuracy"] = correct / len(x) if loss == "cross_entropy" else float("nan")
    return res


@dataclass
class TrainResult:
    """What a training run produced."""

    net: ContinuumNetwork
    history: list[dict]
    metrics: dict
    best_epoch: int
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


_FROM_CONFIG = object()  # default of ``adjoint``: as ``cfg.train`` states it


class Trainer:
    """Train a network on data (see the module docstring).

    Parameters
    ----------
    cfg : Config
        Options of the loop (``cfg.train``: epochs, batch size, schedule, patience, keep,
        checkpoints, augmentation; ``cfg.seed``, ``cfg.dtype``, ``cfg.device``) and of the parts
        that are not given.
    ds : Dataset or mapping
        The data: a :class:`~pdenets.data.Dataset`, or a mapping from ``"train"``, ``"val"`` and
        ``"test"`` to (inputs, targets) tensors (then ``net`` and ``objective`` are required;
        missing splits are empty).
    net : ContinuumNetwork, optional
        Any network; built from ``cfg.model`` when omitted (by the method for multilevel).
    method : Method, optional
        The optimization method (:mod:`pdenets.training.methods`); default: the one registered
        as ``cfg.train.method``.
    objective : Objective, optional
        J of MODEL.md §4; default from ``cfg.objective`` and the data's loss.
    adjoint : Adjoint or None, optional
        The gradient strategy of MODEL.md §5; default from ``cfg.train`` (None = autograd).
    checkpoint_path : path, optional
        Where to write resumable checkpoints (every ``train.checkpoint_every`` epochs).
    log_path : path, optional
        JSON-lines metrics log (one object per epoch).
    progress : bool
        Show a progress bar on stderr.
    dist : Distributed, optional
        The data-parallel context (:mod:`pdenets.training.distributed`): the method computes
        this rank's share of every global batch and sums the gradients over the ranks; the
        evaluations are sharded. Default: one process.
    """

    def __init__(self, cfg: Config, ds: Dataset | Mapping, net: ContinuumNetwork | None = None,
                 *, method: Method | None = None, objective: Objective | None = None,
                 adjoint: Adjoint | None | object = _FROM_CONFIG,
                 checkpoint_path: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None, progress: bool = False,
                 dist: Distributed | None = None) -> None:
        self.method = method if method is not None else get_method(cfg.train.method)(cfg)
        cfg = self.method.prepare(cfg, ds)
        self.cfg, self.ds = cfg, ds
        if not isinstance(ds, Dataset):
            if net is None or objective is None:
                raise PdenetsError("Trainer: data given as tensors needs the network and the "
                                   "objective")
        elif net is None:
            net = self.method.build_network(cfg, ds) or build_network(cfg, ds)
        if objective is None:
            assert isinstance(ds, Dataset)
            objective = make_objective(cfg, ds)
        assert net is not None
        self.net = net
        self.objective = objective
        self.adjoint: Adjoint | None = (make_adjoint_from_config(cfg) if adjoint is _FROM_CONFIG
                                        else adjoint)  # type: ignore[assignment]
        self.disc = self.net.discretization
        self.dtype = DTYPES[cfg.dtype]
        self.device = torch.device(cfg.device)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.log_path = None if log_path is None else Path(log_path)
        self.progress = progress
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = self.method.make_optimizer(self)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.history: list[dict] = []
        self.epoch = 0
        self.best: dict = {"epoch": -1, "val_accuracy": -math.inf, "val_loss": math.inf}
        self.best_state = self._snapshot()
        self.stale = 0
        self.stopped = False  # early stopping triggered (saved in checkpoints)
        self.kept_epoch = 0
        self.data = self._tensors(ds)
        self.dist = dist if dist is not None else Distributed()
        self.dist.check(self)
        self._check_data()
        self._step_impl: _StepImpl | None = None
        self.method.attach(self)

    def _tensors(self, ds: Dataset | Mapping) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(ds, Dataset):
            return {s: ds.tensors(s, self.dtype, self.device) for s in SPLITS}
        unknown = set(ds) - set(SPLITS)
        if unknown or "train" not in ds:
            raise PdenetsError(f"Trainer: data splits must be 'train' (required), 'val', "
                               f"'test'; got {sorted(map(str, ds))}")
        data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for s in SPLITS:
            if s in ds:
                x, y = ds[s]
                x = torch.as_tensor(x).to(dtype=self.dtype, device=self.device)
                y = torch.as_tensor(y).to(device=self.device)
                if y.is_floating_point():
                    y = y.to(self.dtype)
                if len(x) != len(y):
                    raise PdenetsError(f"Trainer: split {s!r} has {len(x)} inputs and "
                                       f"{len(y)} targets")
            else:
                x, y = data["train"][0][:0], data["train"][1][:0]
            data[s] = (x, y)
        return data

    def _check_data(self) -> None:
        """The value checks of the hot path, once per dataset: finite inputs and targets,
        class labels in range (the steps then run without host synchronizations)."""
        loss = self.objective.loss
        outputs = getattr(self.net.readout, "outputs", None)
        for s, (x, y) in self.data.items():
            if not len(x):
                continue
            check_finite(x, f"{s} inputs")
            if y.is_floating_point():
                check_finite(y, f"{s} targets")
            if loss == "cross_entropy" and outputs is not None and not y.is_floating_point():
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi >= outputs:
                    raise PdenetsError(f"{s} labels must lie in [0, {outputs - 1}] for "
                                       f"{outputs} outputs, got labels in [{lo}, {hi}]")

    @property
    def data_name(self) -> str:
        """The dataset's name (``"tensors"`` for data given as tensors)."""
        return self.ds.name if isinstance(self.ds, Dataset) else "tensors"

    # -- parts --------------------------------------------------------------------------------
    def param_groups(self, lr: float, power: int = 1) -> list[dict]:
        """Parameter groups with learning rates in the units of the discrete network.

        A function that is integrated against the quadrature weights — the kernel w (over y)
        and the readout's c_j (over x) — enters the discrete network as ω·value ≈ value/Nc, so
        its knot values must move Nc times further than the weights of the equivalent ResNet
        for the same effect. For Adam (invariant to the gradient's scale) their learning rate is
        therefore ``lr · Nc`` (``power=1``); for SGD, whose gradient in the knot values is also
        Nc times smaller, ``lr · Nc²`` (``power=2``). Biases, d_j and a learnable lifting use
        ``lr``. With this scaling the same ``lr`` works at every control-grid resolution and
        matches the optimizer on a PyTorch ResNet. Structured kernels (MODEL.md §10) state the
        factor of each of their parameters (:meth:`Kernel.lr_scales
        <pdenets.kernels.Kernel.lr_scales>`: Nc for a dense kernel, 1/(displacement-cell
        volume) for a convolution, √Nc for both low-rank factors).
        """
        scales: dict[str, float] = {}
        ctrl: Any = self.net.controls  # the families' optional lr_scales()/size
        ro: Any = self.net.readout
        if hasattr(ctrl, "lr_scales"):  # structured kernels: each family says (MODEL.md §10)
            scales.update({f"controls.{n}": s for n, s in ctrl.lr_scales().items()})
        elif hasattr(ctrl, "size"):
            scales["controls.w"] = math.prod(ctrl.size)
        if hasattr(ro, "size"):
            scales["readout.c"] = math.prod(ro.size)
        scaled: list[tuple[str, torch.nn.Parameter]] = []
        plain: list[tuple[str, torch.nn.Parameter]] = []
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            (scaled if name in scales else plain).append((name, p))
        groups = []
        for name, p in scaled:
            groups.append({"params": [p], "lr": lr * scales[name]**power, "name": name})
        if plain:
            groups.append({"params": [p for _, p in plain], "lr": lr, "name": "other"})
        return groups

    def loss(self, x, y) -> torch.Tensor:
        """J on a batch, differentiable with the configured gradient strategy."""
        return self.objective(self.net, x, y, self.disc, self.adjoint)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    # -- one epoch ----------------------------------------------------------------------------
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Image minibatches: random small affine deformations (``train.augment_rotate``
        degrees, ``augment_shift`` pixels, ``augment_scale``; see
        :func:`~pdenets.data.random_affine`) drawn from the trainer's generator, so resumed
        runs see the same ones. Feature vectors are returned unchanged."""
        t = self.cfg.train
        if x.dim() != 3 or getattr(self.ds, "channels", 1) > 1:  # (B, C_in, L): no image
            return x
        return random_affine(x, self.generator, rotate=t.augment_rotate,
                             shift=t.augment_shift, scale=t.augment_scale)

    def minibatches(self):
        """Indices of the training minibatches of one epoch, shuffled with the trainer's
        generator (restored on resume)."""
        n = len(self.data["train"][0])
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        bs = self.cfg.train.batch_size
        for i in range(0, n, bs):
            yield perm[i:i + bs]

    def batches(self):
        """The training minibatches of one epoch as ``(inputs, targets)``, augmented as
        :meth:`augment` would (same generator draws in the same order, so the same numbers),
        with every random draw made on the host and sent to the device once per epoch — no
        host-device transfer or synchronization per batch. Up to
        :data:`EPOCH_AUGMENT_MAX` pixel values per epoch (digits: 78 000) the whole epoch is
        deformed in one call, not batch by batch (the per-batch set-up of the affine maps
        cost a fifth of an 8-step Euler epoch)."""
        x, y = self.data["train"]
        n = len(x)
        t = self.cfg.train
        perm = torch.randperm(n, generator=self.generator)
        bs = t.batch_size
        sizes = [min(bs, n - i) for i in range(0, n, bs)]
        aug = x.dim() == 3 and not (t.augment_rotate == t.augment_shift == t.augment_scale == 0)
        if not aug:
            perm = perm.to(self.device)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                yield x[idx], y[idx]
            return
        draws = []
        for B in sizes:  # the draws of random_affine, batch by batch

            def u(B=B):
                return 2 * torch.rand(B, generator=self.generator, dtype=torch.float64) - 1

            angle = u() * (t.augment_rotate * math.pi / 180)
            sc = 1 + u() * t.augment_scale
            sh0, sh1 = u() * t.augment_shift, u() * t.augment_shift
            draws.append(torch.stack([angle, sc, sh0, sh1], 1))
        packed = torch.cat([perm.to(torch.float64)[:, None], torch.cat(draws)], 1)
        packed = packed.to(self.device)
        if x[0].numel() * n <= EPOCH_AUGMENT_MAX:  # small images: the whole epoch at once
            idx = packed[:, 0].long()
            xa = affine_images(x[idx], packed[:, 1], packed[:, 2], packed[:, 3:5])
            ya = y[idx]
            for i in range(0, n, bs):
                yield xa[i:i + bs], ya[i:i + bs]
            return
        for i in range(0, n, bs):
            p = packed[i:i + bs]
            idx = p[:, 0].long()
            yield affine_images(x[idx], p[:, 1], p[:, 2], p[:, 3:5]), y[idx]

    # -- one optimization step ----------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimization step on the batch (x, y): J, its gradient, gradient clipping,
        the optimizer's step. Returns J (detached, on the device; no host synchronization).

        Runs eagerly, compiled (``train.compile``) or as a replayed CUDA graph
        (``train.cuda_graphs``); see :mod:`pdenets.training.steps`."""
        if self._step_impl is None or self._step_impl.optimizer is not self.optimizer:
            self._step_impl = make_step(self)
        return self._step_impl(x, y)

    def epoch_record(self) -> dict:
        """Extra fields for this epoch's history record (the method's counters)."""
        return self.method.epoch_record(self)

    def train_epoch(self) -> float:
        """One epoch of the method; returns the mean training objective."""
        return self.method.train_epoch(self)

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write a resumable checkpoint (:mod:`pdenets.training.checkpoint`), atomically."""
        _checkpoint.save_checkpoint(self, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore the state written by :meth:`save_checkpoint` (a damaged or foreign file
        raises :class:`~pdenets.errors.ModelFileError`)."""
        _checkpoint.load_checkpoint(self, path)

    # -- main loop ----------------------------------------------------------------------------
    def fit(self, max_epochs: int | None = None,
            restore_best: bool | None = None) -> TrainResult:
        """Train until ``train.epochs`` or early stopping; keep the best or the last controls.

        ``max_epochs`` stops after that many more epochs (as an interruption would: the
        schedule still refers to ``train.epochs``), leaving a resumable checkpoint.
        ``restore_best`` (default: ``train.keep == "best"``) restores the controls of the epoch
        with the lowest validation loss; otherwise the last iterate is kept. Early stopping is
        part of the checkpointed state: a run resumed after its stop trains no further."""
        if restore_best is None:
            restore_best = self.cfg.train.keep == "best"
        cfg = self.cfg
        t = cfg.train
        stop_at = t.epochs if max_epochs is None else min(t.epochs, self.epoch + max_epochs)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.epochs, initial=self.epoch, file=sys.stderr, unit="epoch",
                       desc=f"{t.method} {self.data_name}", dynamic_ncols=True)
        log = None
        if self.log_path is not None:
            log = open(self.log_path, "w")  # noqa: SIM115 - rewritten from history on resume
            for rec in self.history:
                log.write(json.dumps(rec) + "\n")
            log.flush()
        if t.patience and self.stale >= t.patience:
            self.stopped = True  # (checkpoints written before the stop was saved in them)
        stopped = self.stopped
        try:
            while not stopped and self.epoch < stop_at:
                set_lr(self.optimizer, cfg, self.epoch)
                t0 = time.perf_counter()
                self.net.train()
                train_obj = self.train_epoch()
                if not math.isfinite(train_obj):
                    raise PdenetsError(
                        f"training diverged at epoch {self.epoch + 1} (objective {train_obj}); "
                        f"lower train.lr"
                    )
                seconds = time.perf_counter() - t0
                val = self.dist.evaluate(evaluate, self.net, *self.data["val"],
                                         self.objective.loss, self.disc, t.eval_batch_size)
                rec = {
                    "epoch": self.epoch + 1, "train_objective": train_obj,
                    "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                    "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds,
                    "samples_per_second": len(self.data["train"][0]) / max(seconds, 1e-9),
                    **self.epoch_record(),
                }
                self.history.append(rec)
                self.epoch += 1
                if self._improved(val):
                    self.best = {"epoch": self.epoch, "val_accuracy": val["accuracy"],
                                 "val_loss": val["loss"]}
                    self.best_state = self._snapshot()
                    self.stale = 0
                else:
                    self.stale += 1
                if log is not None:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    post = {"J": f"{train_obj:.4f}", "val_loss": f"{val['loss']:.4f}",
                            "samples/s": f"{rec['samples_per_second']:.0f}"}
                    if self.objective.loss == "cross_entropy":
                        post["val_acc"] = f"{100 * val['accuracy']:.2f}%"
                    bar.set_postfix(post)
                if t.patience and self.stale >= t.patience:
                    self.stopped = stopped = True
                if self.checkpoint_path is not None and (
                        self.epoch % t.checkpoint_every == 0 or self.epoch == stop_at
                        or stopped):
                    self.save_checkpoint(self.checkpoint_path)
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        self.kept_epoch = self.epoch
        if restore_best and len(self.data["val"][0]):
            self.net.load_state_dict(self.best_state)
            self.kept_epoch = self.best["epoch"]
        return self._result(stopped)

    def _improved(self, val: dict) -> bool:
        """Model selection by validation *loss* (unless the method decides): on small
        validation sets the accuracy moves in steps of one sample and saturates early, the loss
        keeps discriminating."""
        decided = self.method.improved(self, val)
        if decided is not None:
            return decided
        if not len(self.data["val"][0]):
            return True
        return val["loss"] < self.best["val_loss"]

    def _result(self, stopped: bool) -> TrainResult:
        loss = self.objective.loss
        ev = {s: self.dist.evaluate(evaluate, self.net, *self.data[s], loss, self.disc,
                                    self.cfg.train.eval_batch_size) for s in SPLITS}
        metrics = {
            "dataset": self.data_name, "method": self.cfg.train.method,
            "gradient": self.cfg.train.gradient, "epochs_run": self.epoch,
            "best_epoch": self.best["epoch"],
            "kept_epoch": self.kept_epoch, "stopped_early": stopped,
            "train_loss": ev["train"]["loss"], "train_accuracy": ev["train"]["accuracy"],
            "val_loss": ev["val"]["loss"], "val_accuracy": ev["val"]["accuracy"],
            "test_loss": ev["test"]["loss"], "test_accuracy": ev["test"]["accuracy"],
            "objective": float(self.objective(self.net, *self.data["train"], self.disc).detach())
            if len(self.data["train"][0]) <= 4096 else None,
            "parameters": sum(p.numel() for p in self.params),
            "train_seconds": sum(r["seconds"] for r in self.history),
        }
        metrics.update(self.method.result_metrics(self))
        return TrainResult(self.net, self.history, metrics, self.best["epoch"], stopped)
