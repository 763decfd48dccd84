"""The optimization step of the :class:`~pdenets.training.trainer.Trainer` (issue 13):
eager, data-parallel, compiled by ``torch.compile`` (``train.compile``) or captured once as a
CUDA graph and replayed (``train.cuda_graphs``); :func:`make_step` selects it.

Every variant computes the same update: zero the gradients, J (MODEL.md §4) and its gradient
(§5), gradient clipping, the optimizer's step.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import torch

from ..errors import PdenetsError

if TYPE_CHECKING:
    from ..config import Config
    from .trainer import Trainer

__all__ = ["compile_available", "compile_enabled", "make_step"]

_COMPILE_WARNED: set[str] = set()


def _note(msg: str) -> None:
    """One line on stderr, once per distinct message."""
    if msg not in _COMPILE_WARNED:
        _COMPILE_WARNED.add(msg)
        print(f"pdenets: {msg}", file=sys.stderr)


def compile_available(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor) can run here, and why not."""
    import shutil

    if not hasattr(torch, "compile"):
        return False, "this PyTorch has no torch.compile"
    if sys.version_info >= (3, 14):
        return False, "torch.compile does not support this Python"
    if torch.device(device).type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++")
            if c):
        return False, "no C++ compiler for inductor's CPU code"
    return True, ""


def compile_enabled(cfg: Config) -> bool:
    """Resolve ``train.compile`` ("auto" | "on" | "off") for this run.

    "auto" compiles where it pays for time to accuracy: on CUDA (the eager step is
    launch-bound; ``benchmarks/device_check.sh`` measures it), not on a CPU. Measured on a
    2-core CPU (default digits configuration, 1 thread): compiling the step took minutes
    (about 210 s on a loaded machine), and a compiled epoch took 0.18 s like an eager one —
    the compile time alone exceeds the whole eager training run, so it never pays there."""
    mode = getattr(cfg.train, "compile", "off")
    if mode == "off":
        return False
    ok, why = compile_available(cfg.device)
    if mode == "auto":
        return ok and torch.device(cfg.device).type == "cuda"
    if not ok:
        _note(f"train.compile = 'on' but {why}; training eagerly")
    return ok


class _Step:
    """The eager step: zero the gradients, J and its gradient, clip, optimizer step."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.optimizer = trainer.optimizer
        self.clip = trainer.cfg.train.clip_norm
        self.loss = trainer.loss

    def run(self, loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        J = loss(x, y)
        J.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainer.params, self.clip)
        opt.step()
        return J.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(self.loss, x, y)


class _DistributedStep(_Step):
    """The eager step under data parallelism (:mod:`pdenets.training.distributed`): this
    rank's share of J on the global batch, its gradient and value summed over the ranks, then
    clipping and the optimizer's step — the same update on every rank."""

    def run(self, loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tr, opt = self.trainer, self.optimizer
        opt.zero_grad(set_to_none=True)
        J = tr.dist.loss(tr, x, y)
        J.backward()
        J = tr.dist.reduce_gradients(tr.params, J.detach())
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(tr.params, self.clip)
        opt.step()
        return J


class _CompiledStep(_Step):
    """The step with J (forward solve, readout, loss, regularization) and its backward pass
    compiled by ``torch.compile`` (inductor; the backward by AOTAutograd). Any failure of the
    compiler falls back to the eager step with one message on stderr."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer)
        tr = trainer
        net, objective, disc, adjoint = tr.net, tr.objective, tr.disc, tr.adjoint

        def loss(x, y):
            return objective(net, x, y, disc, adjoint)

        self.compiled = torch.compile(loss, dynamic=False)
        self.failed = False

    def __call__(self, x, y):
        if not self.failed:
            try:
                return self.run(self.compiled, x, y)
            except Exception as e:  # noqa: BLE001 - any compiler failure: train eagerly
                if isinstance(e, PdenetsError):
                    raise
                self.failed = True
                _note(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}"
                      f"); training eagerly")
        return self.run(self.loss, x, y)


class _GraphStep(_Step):
    """The step captured once as a CUDA graph and replayed (``train.cuda_graphs``).

    Static input buffers of the full batch size are captured; a batch of another size (the
    last one of an epoch) runs the eager step on the same parameters and optimizer state. The
    warm-up steps that capture needs are undone (parameters and optimizer state restored in
    place), so training follows the eager trajectory. The optimizer runs with
    ``capturable=True``; its learning rates live in device tensors updated before a replay
    when the schedule changed them.
    """

    def __init__(self, trainer: Trainer, inner: _Step) -> None:
        super().__init__(trainer)
        self.inner = inner
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: tuple | None = None
        for g in self.optimizer.param_groups:
            if "capturable" in g:
                g["capturable"] = True
        dev = trainer.device
        for st in self.optimizer.state.values():
            if torch.is_tensor(st.get("step")) and st["step"].device != dev:
                st["step"] = st["step"].to(device=dev, dtype=torch.float32)

    def _loss(self):
        inner = self.inner
        if isinstance(inner, _CompiledStep) and not inner.failed:
            return inner.compiled
        return self.loss

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        opt = self.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        saved_p = [p.detach().clone() for p in params]
        saved_state = {id(t): t.detach().clone() for st in opt.state.values()
                       for t in st.values() if torch.is_tensor(t)}
        self.sx, self.sy = x.clone(), y.clone()
        dev = x.device
        floats = [float(g["lr"]) for g in opt.param_groups]
        self.lr_t = [torch.tensor(v, dtype=torch.float32, device=dev) for v in floats]
        self.lr_now = list(floats)
        loss = self._loss()
        for g, t in zip(opt.param_groups, self.lr_t):
            g["lr"] = t
        try:
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.run(loss, self.sx, self.sy)
            torch.cuda.current_stream(dev).wait_stream(side)
            with torch.no_grad():  # undo the warm-up steps, in place
                for p, v in zip(params, saved_p):
                    p.copy_(v)
                for st in opt.state.values():
                    for t in st.values():
                        if torch.is_tensor(t):
                            old = saved_state.get(id(t))
                            t.copy_(old) if old is not None else t.zero_()
            opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                J = loss(self.sx, self.sy)
                J.backward()
                if self.clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.trainer.params, self.clip)
                opt.step()
            self.sJ = J.detach()
            self.graph = graph
        finally:
            for g, v in zip(opt.param_groups, floats):
                g["lr"] = v

    def __call__(self, x, y):
        if self.shape is None:
            if len(x) != self.trainer.cfg.train.batch_size:
                return self.run(self.loss, x, y)
            self.shape = (tuple(x.shape), tuple(y.shape))
            self._capture(x, y)
        if (tuple(x.shape), tuple(y.shape)) != self.shape:
            return self.run(self.loss, x, y)
        assert self.graph is not None
        for i, g in enumerate(self.optimizer.param_groups):
            v = float(g["lr"])
            if v != self.lr_now[i]:
                self.lr_t[i].fill_(v)
                self.lr_now[i] = v
        self.sx.copy_(x)
        self.sy.copy_(y)
        self.graph.replay()
        return self.sJ.clone()


def make_step(trainer: Trainer) -> _Step:
    """The step of ``trainer`` as ``train.compile`` and ``train.cuda_graphs`` select it."""
    cfg = trainer.cfg
    if trainer.dist.world > 1:
        return _DistributedStep(trainer)  # eager: one all-reduce per step between the ranks
    step: _Step = _CompiledStep(trainer) if compile_enabled(cfg) else _Step(trainer)
    if getattr(cfg.train, "cuda_graphs", False):
        if trainer.device.type != "cuda":
            _note("train.cuda_graphs needs a CUDA device; training without graph capture")
        elif trainer.net.discretization.solver.adaptive or trainer.disc.solver.adaptive:
            _note("train.cuda_graphs needs a fixed-step solver; training without graph capture")
        else:
            step = _GraphStep(trainer, step)
    return step


_StepImpl = _Step
