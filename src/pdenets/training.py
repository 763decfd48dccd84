"""Training the continuum network on data (MODEL.md §4–5).

:class:`Trainer` minimizes the objective J of §4 with a gradient strategy of §5
(``train.gradient = "discrete" | "continuous"``) and an optimizer (``train.method``): Adam or
SGD on minibatches with a learning-rate schedule, or full-batch L-BFGS with a strong-Wolfe line
search. It evaluates on the validation split every epoch, keeps the last iterate or the best
controls by validation loss (``train.keep``), stops early after ``patience`` epochs without
improvement, deforms image minibatches by random small affine maps (``train.augment_*``),
logs JSON lines, shows a progress bar and writes resumable checkpoints: resuming from a
checkpoint reproduces the uninterrupted run exactly (same seed), because the optimizer state,
the data-shuffling generator and the history are all restored.

:func:`run_training` wraps a trainer into a results directory (see its docstring).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .adjoint import Adjoint, ContinuousAdjoint, DiscreteAdjoint
from .config import Config, load_config
from .data import Dataset, load_dataset_config, random_affine
from .errors import ConfigError, ModelFileError, PdenetsError
from .integrators import make_solver
from .modelfile import atomic_write_bytes, save_model
from .network import ContinuumNetwork, Discretization
from .objective import Objective, data_loss

SCHEDULES = ("constant", "cosine", "step")
METHODS = ("adam", "sgd", "lbfgs", "msa", "multilevel")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ------------------------------------------------------------------------------------------
# building blocks


def default_sizes(cfg: Config, ds: Dataset) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(width nodes per axis, control vertices/cells per axis) after resolving ``0 = auto``.

    Images: one neuron per pixel; the controls live on the pixel grid — p cells per axis for
    the constant space basis, p + 1 vertices (the pixel corners) for the linear one.
    Feature vectors: at least 32 neurons, a multiple of the number of features (so the
    piecewise-constant lifting is resolved exactly), and k cells (constant) or k + 1 vertices
    (linear) with k the largest divisor of the width ≤ max(16, n) (so each feature can be
    weighted on its own).
    Either way the jumps or kinks of the controls lie on cell boundaries of the midpoint rule
    at this width and at every multiple of it: refining the width is exact (constant basis,
    see :class:`~pdenets.controls.GridControls`) or converges at second order (linear basis)
    — see the discretization-invariance tests.
    """
    shape = ds.input_shape
    m = cfg.model
    extra = 1 if m.space_basis == "linear" else 0
    if len(shape) == 2:
        width = (m.width,) * 2 if m.width else shape
        ctrl = (m.control_size,) * 2 if m.control_size else tuple(s + extra for s in shape)
    else:
        n = shape[0]
        width = (m.width,) if m.width else (n * math.ceil(32 / n),)
        k = max(d for d in range(1, max(16, n) + 1) if width[0] % d == 0)
        ctrl = (m.control_size,) if m.control_size else (max(k, 1) + extra,)
    return width, ctrl


def build_network(cfg: Config, ds: Dataset) -> ContinuumNetwork:
    """The network described by ``cfg.model`` for the inputs and outputs of ``ds``."""
    m = cfg.model
    width, ctrl = default_sizes(cfg, ds)
    try:
        net = ContinuumNetwork.create(
            ds.input_shape, ds.n_outputs, control_size=ctrl, intervals=m.intervals, T=m.T,
            time_basis=m.time_basis, space_basis=m.space_basis, dynamics=m.dynamics,
            activation=m.activation, eps=m.eps,
            readout=m.readout, learnable_lifting=m.learnable_lifting, width=width, rule=m.rule,
            solver=m.solver, steps=m.steps, init_scale=m.init_scale, seed=cfg.seed,
            dtype=torch.float64, kernel=m.kernel, kernel_radius=m.kernel_radius, rank=m.rank,
            channels=m.channels, in_channels=getattr(ds, "channels", 1),
        )
    except PdenetsError as e:
        raise ConfigError(f"model: {e}") from None
    return net.to(dtype=DTYPES[cfg.dtype], device=cfg.device)


def make_objective(cfg: Config, ds: Dataset) -> Objective:
    loss = ds.loss if cfg.objective.loss == "auto" else cfg.objective.loss
    if loss == "cross_entropy" and ds.task != "classification":
        raise ConfigError("objective.loss = 'cross_entropy' needs integer class labels")
    return Objective(loss, cfg.objective.alpha, cfg.objective.beta, cfg.objective.gamma)


def make_adjoint_from_config(cfg: Config) -> Adjoint | None:
    t = cfg.train
    if t.gradient == "continuous":
        return ContinuousAdjoint(steps=t.adjoint_steps or None)
    if t.checkpoint_segments:
        per = max(1, math.ceil(cfg.model.steps / t.checkpoint_segments))
        return DiscreteAdjoint(checkpoint=per)
    return None


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


def lr_factor(cfg: Config, epoch: int) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): warm-up, then the schedule."""
    t = cfg.train
    if t.warmup_epochs and epoch < t.warmup_epochs:
        return (epoch + 1) / t.warmup_epochs
    e = epoch - t.warmup_epochs
    n = max(1, t.epochs - t.warmup_epochs)
    if t.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / n)) * 0.99 + 0.01
    if t.schedule == "step":
        return 0.1 ** (3 * e // n)
    return 1.0


# ------------------------------------------------------------------------------------------
# optimizer state <-> safetensors


def _pack_state(prefix: str, state: dict, tensors: dict, meta: dict) -> None:
    for pid, st in state.items():
        for key, val in st.items():
            name = f"{prefix}.{pid}.{key}"
            if torch.is_tensor(val):
                tensors[name] = val.detach().cpu().contiguous()
                meta[name] = {"type": "tensor"}
            elif isinstance(val, list) and all(torch.is_tensor(v) or v is None for v in val):
                for i, v in enumerate(val):
                    if v is not None:
                        tensors[f"{name}.{i}"] = v.detach().cpu().contiguous()
                meta[name] = {"type": "list", "len": len(val),
                              "none": [i for i, v in enumerate(val) if v is None]}
            else:
                meta[name] = {"type": "value", "value": val}


def _unpack_state(prefix: str, tensors: dict, meta: dict, device) -> dict:
    state: dict = {}
    for name, info in meta.items():
        if not name.startswith(prefix + "."):
            continue
        _, pid, key = name.split(".", 2)
        st = state.setdefault(int(pid), {})
        if info["type"] == "tensor":
            st[key] = tensors[name].to(device)
        elif info["type"] == "list":
            st[key] = [None if i in info["none"] else tensors[f"{name}.{i}"].to(device)
                       for i in range(info["len"])]
        else:
            st[key] = info["value"]
    return state


# ------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced."""

    net: ContinuumNetwork
    history: list[dict]
    metrics: dict
    best_epoch: int
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


class Trainer:
    """Train ``net`` on ``ds`` as configured by ``cfg`` (see module docstring).

    Parameters
    ----------
    cfg : Config
    ds : Dataset
    net : ContinuumNetwork, optional
        Built from ``cfg`` when omitted.
    checkpoint_path : path, optional
        Where to write resumable checkpoints (every ``train.checkpoint_every`` epochs).
    log_path : path, optional
        JSON-lines metrics log (one object per epoch).
    progress : bool
        Show a progress bar on stderr.
    """

    def __init__(self, cfg: Config, ds: Dataset, net: ContinuumNetwork | None = None, *,
                 checkpoint_path: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None, progress: bool = False) -> None:
        self.cfg, self.ds = cfg, ds
        self.net = net if net is not None else build_network(cfg, ds)
        self.objective = make_objective(cfg, ds)
        self.adjoint = make_adjoint_from_config(cfg)
        self.disc = self.net.discretization
        self.dtype = DTYPES[cfg.dtype]
        self.device = torch.device(cfg.device)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.log_path = None if log_path is None else Path(log_path)
        self.progress = progress
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.history: list[dict] = []
        self.epoch = 0
        self.best: dict = {"epoch": -1, "val_accuracy": -math.inf, "val_loss": math.inf}
        self.best_state = self._snapshot()
        self.stale = 0
        self.kept_epoch = 0
        self.data = {s: ds.tensors(s, self.dtype, self.device) for s in ("train", "val", "test")}
        self.method_step: Callable[[], float] | None = None

    # -- optimizer ------------------------------------------------------------------------
    def param_groups(self, lr: float, power: int = 1) -> list[dict]:
        """Parameter groups with learning rates in the units of the discrete network.

        A function that is integrated against the quadrature weights — the kernel w (over y)
        and the readout's c_j (over x) — enters the discrete network as ω·value ≈ value/Nc, so
        its knot values must move Nc times further than the weights of the equivalent ResNet
        for the same effect. For Adam (invariant to the gradient's scale) their learning rate is
        therefore ``lr · Nc`` (``power=1``); for SGD, whose gradient in the knot values is also
        Nc times smaller, ``lr · Nc²`` (``power=2``). Biases, d_j and a learnable lifting use
        ``lr``. With this scaling the same ``lr`` works at every control-grid resolution and
        matches the optimizer on a PyTorch ResNet.
        """
        scaled, plain = [], []
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            (scaled if name in ("controls.w", "readout.c") else plain).append((name, p))
        groups = []
        for name, p in scaled:
            owner = self.net.controls if name.startswith("controls") else self.net.readout
            nc = math.prod(owner.size)
            groups.append({"params": [p], "lr": lr * nc**power, "name": name})
        if plain:
            groups.append({"params": [p for _, p in plain], "lr": lr, "name": "other"})
        return groups

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        if t.method == "sgd":
            return torch.optim.SGD(self.param_groups(t.lr, 2), lr=t.lr, momentum=t.momentum,
                                   weight_decay=t.weight_decay)
        if t.method == "lbfgs":
            return torch.optim.LBFGS(self.params, lr=t.lbfgs_lr,
                                     max_iter=t.lbfgs_iterations, history_size=t.history_size,
                                     line_search_fn="strong_wolfe")
        return torch.optim.Adam(self.param_groups(t.lr), lr=t.lr, weight_decay=t.weight_decay)

    def loss(self, x, y) -> torch.Tensor:
        """J on a batch, differentiable with the configured gradient strategy."""
        return self.objective(self.net, x, y, self.disc, self.adjoint)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    # -- one epoch per method ---------------------------------------------------------------
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Image minibatches: random small affine deformations (``train.augment_rotate``
        degrees, ``augment_shift`` pixels, ``augment_scale``; see
        :func:`~pdenets.data.random_affine`) drawn from the trainer's generator, so resumed
        runs see the same ones. Feature vectors are returned unchanged."""
        t = self.cfg.train
        if x.dim() != 3:
            return x
        return random_affine(x, self.generator, rotate=t.augment_rotate,
                             shift=t.augment_shift, scale=t.augment_scale)

    def minibatches(self):
        """Indices of the training minibatches of one epoch, shuffled with the trainer's
        generator (restored on resume)."""
        n = len(self.data["train"][0])
        perm = torch.randperm(n, generator=self.generator)
        bs = self.cfg.train.batch_size
        for i in range(0, n, bs):
            yield perm[i:i + bs].to(self.device)

    def epoch_record(self) -> dict:
        """Extra fields for this epoch's history record (methods add their own counters)."""
        return {}

    def _epoch_minibatch(self) -> float:
        x, y = self.data["train"]
        n = len(x)
        total = 0.0
        for idx in self.minibatches():
            self.optimizer.zero_grad(set_to_none=True)
            J = self.loss(self.augment(x[idx]), y[idx])
            J.backward()
            if self.cfg.train.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.clip_norm)
            self.optimizer.step()
            total += float(J.detach()) * len(idx)
        return total / n

    def _epoch_lbfgs(self) -> float:
        x, y = self.data["train"]
        last = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            J = self.loss(x, y)
            J.backward()
            last["J"] = float(J.detach())
            return J

        self.optimizer.step(closure)
        return last["J"]

    def train_epoch(self) -> float:
        """One epoch of the configured method; returns the mean training objective."""
        if self.method_step is not None:
            return self.method_step()
        if self.cfg.train.method == "lbfgs":
            return self._epoch_lbfgs()
        return self._epoch_minibatch()

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write a resumable checkpoint (safetensors + JSON metadata), atomically."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict = {}
        for k, v in self.net.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous()
        for k, v in self.best_state.items():
            tensors[f"best.{k}"] = v.detach().cpu().contiguous()
        sd = self.optimizer.state_dict()
        _pack_state("opt", sd["state"], tensors, meta)
        tensors["rng.shuffle"] = self.generator.get_state()
        info = {
            "format": "pdenets-checkpoint", "version": 1, "epoch": self.epoch,
            "best": self.best, "stale": self.stale, "history": self.history,
            "param_groups": sd["param_groups"], "opt_meta": meta,
            "config": self.cfg.to_dict(),
        }
        atomic_write_bytes(path, st_save(tensors, metadata={"pdenets": json.dumps(info)}))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore the state written by :meth:`save_checkpoint`."""
        path = Path(path)
        if not path.is_file():
            raise PdenetsError(f"checkpoint {str(path)!r} does not exist")
        data = path.read_bytes()
        try:
            tensors = st_load(data)
            n = int.from_bytes(data[:8], "little")
            info = json.loads(json.loads(data[8:8 + n])["__metadata__"]["pdenets"])
        except (SafetensorError, ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"checkpoint {str(path)!r} is corrupt: {e}") from None
        if info.get("format") != "pdenets-checkpoint":
            raise ModelFileError(f"{str(path)!r} is not a pdenets checkpoint")
        try:
            self.net.load_state_dict({k[6:]: v for k, v in tensors.items()
                                      if k.startswith("model.")})
            self.best_state = {k[5:]: v.to(self.device) for k, v in tensors.items()
                               if k.startswith("best.")}
            state = _unpack_state("opt", tensors, info["opt_meta"], self.device)
            self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        except (RuntimeError, ValueError, KeyError) as e:
            raise ModelFileError(f"checkpoint {str(path)!r} does not match this model: {e}") \
                from None
        self.generator.set_state(tensors["rng.shuffle"])
        self.epoch, self.best, self.stale = info["epoch"], info["best"], info["stale"]
        self.history = info["history"]

    # -- main loop --------------------------------------------------------------------------
    def fit(self, max_epochs: int | None = None,
            restore_best: bool | None = None) -> TrainResult:
        """Train until ``train.epochs`` or early stopping; keep the best or the last controls.

        ``max_epochs`` stops after that many more epochs (as an interruption would: the
        schedule still refers to ``train.epochs``), leaving a resumable checkpoint.
        ``restore_best`` (default: ``train.keep == "best"``) restores the controls of the epoch
        with the lowest validation loss; otherwise the last iterate is kept."""
        if restore_best is None:
            restore_best = self.cfg.train.keep == "best"
        cfg = self.cfg
        t = cfg.train
        stop_at = t.epochs if max_epochs is None else min(t.epochs, self.epoch + max_epochs)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.epochs, initial=self.epoch, file=sys.stderr, unit="epoch",
                       desc=f"{t.method} {self.ds.name}", dynamic_ncols=True)
        log = None
        if self.log_path is not None:
            log = open(self.log_path, "w")  # noqa: SIM115 - rewritten from history on resume
            for rec in self.history:
                log.write(json.dumps(rec) + "\n")
            log.flush()
        stopped = False
        try:
            while self.epoch < stop_at:
                for g in self.optimizer.param_groups:
                    g["lr"] = g.setdefault("initial_lr", g["lr"]) * lr_factor(cfg, self.epoch)
                t0 = time.perf_counter()
                self.net.train()
                train_obj = self.train_epoch()
                if not math.isfinite(train_obj):
                    raise PdenetsError(
                        f"training diverged at epoch {self.epoch + 1} (objective {train_obj}); "
                        f"lower train.lr"
                    )
                seconds = time.perf_counter() - t0
                val = evaluate(self.net, *self.data["val"], self.objective.loss, self.disc,
                               t.eval_batch_size)
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
                if self.checkpoint_path is not None and (
                        self.epoch % t.checkpoint_every == 0 or self.epoch == stop_at):
                    self.save_checkpoint(self.checkpoint_path)
                if t.patience and self.stale >= t.patience:
                    stopped = True
                    break
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
        """Model selection by validation *loss*: on small validation sets the accuracy moves in
        steps of one sample and saturates early, the loss keeps discriminating."""
        if not len(self.data["val"][0]):
            return True
        return val["loss"] < self.best["val_loss"]

    def _result(self, stopped: bool) -> TrainResult:
        loss = self.objective.loss
        ev = {s: evaluate(self.net, *self.data[s], loss, self.disc, self.cfg.train.eval_batch_size)
              for s in ("train", "val", "test")}
        metrics = {
            "dataset": self.ds.name, "method": self.cfg.train.method,
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
        return TrainResult(self.net, self.history, metrics, self.best["epoch"], stopped)


# ------------------------------------------------------------------------------------------
# results directory


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def run_training(cfg: Config, out: str | os.PathLike, *, resume: bool = False,
                 progress: bool = True, plots: bool = True) -> dict:
    """Train as configured and write the results directory ``out``.

    The run works in ``OUT.partial/`` (resolved ``config.toml``, ``metrics.jsonl``, the
    resumable ``checkpoint.safetensors``) and only when everything is written — the model file
    ``model.safetensors``, plots, and ``metrics.json`` last — is it renamed to ``OUT``. A failed
    or interrupted run therefore never leaves a directory that looks complete; its ``.partial``
    directory can be resumed with ``resume=True`` (``pdenets train --resume``).

    Returns the metrics (also in ``metrics.json``), with ``wall_seconds`` and ``out``.
    """
    t_start = time.perf_counter()
    out = Path(out)
    work = _partial(out)
    ckpt = work / "checkpoint.safetensors"
    if resume:
        if not ckpt.is_file():
            raise PdenetsError(f"nothing to resume: {str(ckpt)!r} does not exist")
        saved = json.loads(json.loads(_header(ckpt))["__metadata__"]["pdenets"])["config"]
        cfg = load_config(None, _flatten(saved))
    ds = load_dataset_config(cfg.data)
    torch.manual_seed(cfg.seed)
    trainer = make_trainer(cfg, ds, checkpoint_path=ckpt, log_path=work / "metrics.jsonl",
                           progress=progress)
    try:
        if not resume:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        (work / "probe").write_text("")
        (work / "probe").unlink()
    except OSError as e:
        raise PdenetsError(f"cannot write output directory {str(out)!r}: "
                           f"{e.strerror or e}") from None
    atomic_write_bytes(work / "config.toml", cfg.to_toml().encode())
    if resume:
        trainer.load_checkpoint(ckpt)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        print(f"interrupted: partial run kept in {work} (resume with --resume)", file=sys.stderr)
        raise
    extra = {"data": dataclass_dict(cfg.data), "preprocess": ds_preprocess(ds),
             "metrics": result.metrics, "task": ds.task}
    save_model(result.net, work / "model.safetensors", extra=extra)
    if plots:
        from .plotting import plot_run

        plot_run(work, result.net, ds, result.history, cfg)
    metrics = dict(result.metrics)
    metrics["wall_seconds"] = time.perf_counter() - t_start
    metrics["out"] = str(out)
    atomic_write_bytes(work / "metrics.json", json.dumps(metrics, indent=2).encode())
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(work, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, out)
    return metrics


def make_trainer(cfg: Config, ds: Dataset, **kwargs) -> Trainer:
    """The trainer for ``cfg.train.method`` (methods of later layers plug in here)."""
    if cfg.train.method == "msa":
        from .pontryagin import MSATrainer

        return MSATrainer(cfg, ds, **kwargs)
    if cfg.train.method == "multilevel":
        from .multilevel import MultilevelTrainer

        return MultilevelTrainer(cfg, ds, **kwargs)
    return Trainer(cfg, ds, **kwargs)


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n)


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={v}")
    return out


def dataclass_dict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


def ds_preprocess(ds: Dataset) -> dict:
    return ds.preprocess


def discretization_from(net: ContinuumNetwork, width=None, steps=None, method=None,
                        rule=None) -> Discretization:
    """The network's default discretization with some parts replaced."""
    from .quadrature import make_rule

    d = net.discretization
    w = d.width.sizes if width is None else width
    return Discretization(make_rule(rule or d.width.name, w, net.dim),
                          make_solver(method) if method else d.solver,
                          steps if steps is not None else d.steps)
