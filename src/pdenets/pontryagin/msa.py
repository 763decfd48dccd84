"""Extended method of successive approximations (Li, Chen, Tai & E 2018; MODEL.md §7; the
algorithm is described in :mod:`pdenets.pontryagin`) and its training method ``msa``
(:class:`MSAMethod`, registered with :func:`pdenets.training.methods.register_method`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..controls import GridControls
from ..errors import PdenetsError
from ..kernels import KernelControls
from ..network import ContinuumNetwork, Discretization
from ..objective import Objective, data_loss
from ..readout import LinearReadout
from ..training.methods import Method, register_method
from ..training.trainer import Trainer
from ._msa_kernels import KernelInner
from .sweep import (
    Sweep,
    _knot_matrices,
    _mass,
    _stage_entries,
    _time_mass_diag,
    check_network,
    costate_sweep,
    forward_sweep,
)

# ------------------------------------------------------------------------------------------
# method of successive approximations


@dataclass
class MSAStep:
    """Record of one MSA iteration."""

    J_before: float
    J_after_readout: float
    J_after: float
    accepted: bool
    fallback: bool
    rho: float
    grad_norm: float
    step_norm: float
    H_gain: float

    def as_dict(self) -> dict:
        return asdict(self)


class MSA:
    """Extended method of successive approximations on a :class:`ContinuumNetwork`.

    See the module docstring for the algorithm. Works on any batch: :meth:`step` performs one
    iteration (state sweep, readout, costate sweep, Hamiltonian maximization, acceptance /
    fallback) on (inputs, targets); :meth:`run` iterates on one batch until J stalls.

    Parameters
    ----------
    net : ContinuumNetwork
        With :class:`~pdenets.controls.GridControls` or
        :class:`~pdenets.kernels.KernelControls` (every kernel family, any channels; the
        maximization then runs over the family's own parameters, :mod:`._msa_kernels`) and a
        fixed-step explicit RK solver.
    objective : Objective
    rho : float
        Penalty ρ ≥ 0 of the extended Hamiltonian (also the floor of the adaptive ρ).
    inner_steps : int
        Iterations of the Hamiltonian maximization.
    inner_lr : float
        Learning rate of the inner Adam (``inner_solver="adam"``); L-BFGS uses unit steps
        with a strong-Wolfe line search.
    inner_solver : {"lbfgs", "adam"}
    readout_steps : int
        L-BFGS iterations of the readout subproblem (0: keep the readout fixed).
    adapt_rho : bool
        Double ρ after a failed step, decay by 0.9 (not below ``rho``) after a successful one.
    disc : Discretization, optional
        Default: the network's.
    other_optimizer : torch.optim.Optimizer, optional
        Optimizer used for the gradient step of remaining parameters (learnable lifting); by
        default Adam with ``lifting_lr``.
    """

    def __init__(self, net: ContinuumNetwork, objective: Objective, *, rho: float = 1.0,
                 inner_steps: int = 10, inner_lr: float = 0.05, inner_solver: str = "lbfgs",
                 readout_steps: int = 10, adapt_rho: bool = True,
                 disc: Discretization | None = None,
                 other_optimizer: torch.optim.Optimizer | None = None,
                 lifting_lr: float = 0.01) -> None:
        if inner_solver not in ("lbfgs", "adam"):
            raise PdenetsError(f"MSA inner_solver must be 'lbfgs' or 'adam', got {inner_solver!r}")
        if rho < 0 or inner_steps < 1 or inner_lr <= 0 or readout_steps < 0:
            raise PdenetsError("MSA: need rho >= 0, inner_steps >= 1, inner_lr > 0, "
                               "readout_steps >= 0")
        self.net, self.objective = net, objective
        self.disc = disc or net.discretization
        check_network(net, self.disc)
        self.rho_min = float(rho)
        self.rho = float(rho)
        self.inner_steps, self.inner_lr, self.inner_solver = inner_steps, inner_lr, inner_solver
        self.readout_steps, self.adapt_rho = readout_steps, adapt_rho
        self.iterations = 0
        self.fallbacks = 0
        self.rejected = 0
        self.history: list[MSAStep] = []
        ctrl_ids = {id(p) for p in self._params().values()}
        ro_ids = {id(p) for p in net.readout.parameters()}
        self.others = [p for p in net.parameters()
                       if p.requires_grad and id(p) not in ctrl_ids | ro_ids]
        self.other_optimizer = other_optimizer
        if other_optimizer is None and self.others:
            self.other_optimizer = torch.optim.Adam(self.others, lr=lifting_lr)

    # -- pieces ---------------------------------------------------------------------------
    def _params(self) -> dict[str, torch.Tensor]:
        """The controls' parameters the maximization updates, by name within the controls."""
        c = self.net.controls
        if isinstance(c, GridControls):
            return {"w": c.w, "b": c.b}
        if isinstance(c, KernelControls):
            return dict(c.named_parameters())
        raise PdenetsError(f"MSA needs GridControls or KernelControls (knot-based controls), "
                           f"got {type(c).__name__}")

    def _J(self, x, y) -> float:
        with torch.no_grad():
            return float(self.objective(self.net, x, y, self.disc))

    def _readout_update(self, uT: torch.Tensor, y, grid) -> None:
        ro = self.net.readout
        if not isinstance(ro, LinearReadout) or self.readout_steps == 0:
            return
        params = [p for p in (ro.c, ro.d) if p.requires_grad]
        if not params:
            return
        with torch.no_grad():
            R0, d0 = ro.matrix(grid)
            R0, d0 = R0.clone(), d0.clone()
        rho, loss = self.rho, self.objective.loss
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=self.readout_steps,
                                history_size=10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                R, d = ro.matrix(grid)
                out = torch.addmm(d, uT, R.T)
                diff = uT @ (R - R0).T + (d - d0)
                val = data_loss(out, y, loss) + 0.5 * rho * (diff ** 2).sum(1).mean()
                val.backward()
            return val

        opt.step(closure)
        ro.zero_grad(set_to_none=True)

    def _reg_gradient(self) -> dict[str, torch.Tensor]:
        params = self._params()
        if not (self.objective.alpha or self.objective.beta or self.objective.gamma):
            return {n: torch.zeros_like(p) for n, p in params.items()}
        names = [n for n, p in params.items() if p.requires_grad]
        out = {n: torch.zeros_like(p) for n, p in params.items()}
        if not names:
            return out
        with torch.enable_grad():
            R = self.objective.regularization(self.net)
            gs = torch.autograd.grad(R, [params[n] for n in names], allow_unused=True)
        out.update({n: g.detach() for n, g in zip(names, gs) if g is not None})
        return out

    def _inner_solve(self, leaves: list[torch.Tensor], objective) -> None:
        """Maximize ``objective()`` over ``leaves`` with the inner solver (in place)."""
        opt: torch.optim.Optimizer
        if self.inner_solver == "adam":
            opt = torch.optim.Adam(leaves, lr=self.inner_lr)
            for _ in range(self.inner_steps):
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = -objective()
                    loss.backward()
                opt.step()
            return
        opt = torch.optim.LBFGS(leaves, lr=1.0, max_iter=self.inner_steps,
                                history_size=10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = -objective()
                loss.backward()
            return loss

        opt.step(closure)

    def inner_problem(self, sw: Sweep) -> KernelInner:
        """The separable Hamiltonian-maximization objective of :class:`KernelControls` at the
        recorded sweep ``sw`` (after :func:`costate_sweep`) and the current ρ
        (:class:`~pdenets.pontryagin._msa_kernels.KernelInner`)."""
        if not isinstance(self.net.controls, KernelControls):
            raise PdenetsError("MSA.inner_problem is defined for KernelControls")
        return KernelInner(sw, self.objective, self.rho)

    def _maximize_kernels(self, sw: Sweep) -> tuple[dict[str, torch.Tensor], float]:
        """Block-Jacobi maximization in the kernel family's parameters (:mod:`._msa_kernels`)."""
        prob = self.inner_problem(sw)
        x = prob.start()
        leaves = list(x.values())
        with torch.no_grad():
            v0 = float(prob.value(x))
        if leaves:
            self._inner_solve(leaves, lambda: prob.value(x))
        with torch.no_grad():
            v1 = float(prob.value(x))
        new = {n: x[n].detach() if n in x else prob.old[n] for n in prob.old}
        return new, v1 - v0

    def _maximize(self, sw: Sweep, gRw, gRb) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Block-Jacobi maximization of the knots' shares of ∫H̃ dt (module docstring)."""
        net = self.net
        ctrl = net.controls
        if not isinstance(ctrl, GridControls):  # the controls may be replaced after __init__
            raise PdenetsError(f"MSA needs GridControls (knot values on a control grid), got "
                               f"{type(ctrl).__name__}")
        if sw.Lam is None:
            raise PdenetsError("MSA: run costate_sweep before the Hamiltonian maximization")
        dyn = net.dynamics
        grid = sw.grid
        W0 = ctrl.w.detach().clone()
        B0 = ctrl.b.detach().clone()
        # entries: (stage, owner knot, owner weight, other knot, other weight)
        st_t, own_t, wown_t, oth_t, woth_t = _stage_entries(sw.knot_weights)
        dt = W0.dtype
        Y = sw.Y[st_t]
        Lam = sw.Lam[st_t]
        wst = sw.weights[st_t]
        Bsz = sw.batch
        omega = grid.weights.to(dt)
        with torch.no_grad():
            A0, b0 = _knot_matrices(ctrl, grid, W0, B0)
            Aoth = woth_t[:, None, None] * A0[oth_t]
            both = woth_t[:, None] * b0[oth_t]
            Aold = wown_t[:, None, None] * A0[own_t] + Aoth
            bold = wown_t[:, None] * b0[own_t] + both
            Fold = dyn.reaction_batched(Y, Aold, bold)
            P = -Bsz * Lam / wst[:, None, None]
            gold = dyn.vjp_u_batched(Y, Aold, bold, P)
        rho = self.rho
        alpha, beta = self.objective.alpha, self.objective.beta
        M = _mass(ctrl)
        m, deg = _time_mass_diag(ctrl)
        cj = (alpha * m + beta * deg / (ctrl.T / ctrl.intervals)).to(dt).to(W0.device)
        W = W0.clone().requires_grad_(True)
        Bv = B0.clone().requires_grad_(True)

        def objective() -> torch.Tensor:
            A, b = _knot_matrices(ctrl, grid, W, Bv)
            Ae = wown_t[:, None, None] * A[own_t] + Aoth
            be = wown_t[:, None] * b[own_t] + both
            F = dyn.reaction_batched(Y, Ae, be)
            val = -(Lam * F).sum()
            if rho:
                pf = (((F - Fold) ** 2) * omega).sum((1, 2))
                g = dyn.vjp_u_batched(Y, Ae, be, P)
                pg = (((g - gold) ** 2) / omega).sum((1, 2))
                val = val - 0.5 * rho * (wst * (pf + pg)).sum() / Bsz
            dW, dB = W - W0, Bv - B0
            q = (torch.matmul(M, dW) * torch.matmul(dW, M)).sum((1, 2)) + ((dB @ M) * dB).sum(1)
            val = val - (gRw * dW).sum() - (gRb * dB).sum() - 0.5 * (cj * q).sum()
            return val

        with torch.no_grad():
            v0 = float(objective())
        self._inner_solve([W, Bv], objective)
        with torch.no_grad():
            v1 = float(objective())
        return W.detach(), Bv.detach(), v1 - v0

    # -- one iteration --------------------------------------------------------------------
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> MSAStep:
        """One MSA iteration on the batch (inputs, targets); returns its record."""
        net, obj = self.net, self.objective
        ctrl = net.controls
        x = torch.as_tensor(inputs)
        y = torch.as_tensor(targets)
        with torch.enable_grad():
            sw = forward_sweep(net, x, self.disc)
            with torch.no_grad():
                out = net.readout(sw.uT, sw.grid)
                Rv = float(obj.regularization(net))
                J0 = float(data_loss(out, y, obj.loss)) + Rv
            self._readout_update(sw.uT.detach(), y, sw.grid)
            costate_sweep(sw, y, obj.loss)
        J1 = sw.loss + Rv
        params = self._params()
        gR = self._reg_gradient()
        grads = {}
        for n, p in params.items():
            gd = sw.grads.get(f"controls.{n}")
            grads[n] = (gd if gd is not None else torch.zeros_like(p)) + gR[n]
        gnorm = float(torch.sqrt(sum(((g ** 2).sum() for g in grads.values()),
                                     torch.zeros((), dtype=torch.float64))))
        old = {n: p.detach().clone() for n, p in params.items()}
        if isinstance(ctrl, KernelControls):
            new, gain = self._maximize_kernels(sw)
        else:
            Wn, Bn, gain = self._maximize(sw, gR["w"], gR["b"])
            new = {"w": Wn, "b": Bn}
        step_norm = float(torch.sqrt(sum((((new[n] - old[n]) ** 2).sum() for n in params),
                                         torch.zeros((), dtype=torch.float64))))
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(new[n])
        J2 = self._J(x, y)
        accepted = math.isfinite(J2) and J2 < J1
        fallback = False
        if accepted:
            if self.adapt_rho:
                self.rho = max(self.rho_min, 0.9 * self.rho)
        else:
            fallback = True
            self.fallbacks += 1
            if self.adapt_rho:
                self.rho = max(2.0 * self.rho, 1e-3)
            J2 = self._fallback(x, y, old, grads, gnorm, step_norm, J1)
        # remaining parameters (learnable lifting): one gradient step
        if self.others and self.other_optimizer is not None:
            self.other_optimizer.zero_grad(set_to_none=True)
            for n, p in net.named_parameters():
                if any(p is o for o in self.others) and sw.grads.get(n) is not None:
                    p.grad = sw.grads[n].detach().clone()
            self.other_optimizer.step()
            self.other_optimizer.zero_grad(set_to_none=True)
        self.iterations += 1
        rec = MSAStep(J0, J1, J2, accepted, fallback, self.rho, gnorm, step_norm, gain)
        self.history.append(rec)
        return rec

    def _fallback(self, x, y, old, grads, gnorm, step_norm, J1) -> float:
        """Armijo backtracking along −∇J from the old controls; returns the new J."""
        params = self._params()

        def put(eta: float) -> None:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(old[n] - eta * grads[n] if eta else old[n])

        if gnorm == 0.0 or not math.isfinite(gnorm):
            put(0.0)
            self.rejected += 1
            return J1
        eta = (step_norm if step_norm > 0 and math.isfinite(step_norm) else 1.0) / gnorm
        for _ in range(12):
            put(eta)
            J = self._J(x, y)
            if math.isfinite(J) and J <= J1 - 1e-4 * eta * gnorm ** 2:
                return J
            eta *= 0.5
        put(0.0)
        self.rejected += 1
        return J1

    def run(self, inputs, targets, iterations: int = 50, tol: float = 1e-8) -> list[MSAStep]:
        """Iterate :meth:`step` on one batch until ``iterations`` or a relative decrease of J
        below ``tol`` (convergence monitoring); returns the records of this call."""
        recs = []
        for _ in range(iterations):
            r = self.step(inputs, targets)
            recs.append(r)
            if abs(r.J_before - r.J_after) <= tol * max(1.0, abs(r.J_before)):
                break
        return recs

    def state(self) -> dict:
        return {"msa_rho": self.rho, "msa_iterations": self.iterations,
                "msa_fallbacks": self.fallbacks, "msa_rejected": self.rejected}

    def load_state(self, d: dict) -> None:
        self.rho = float(d.get("msa_rho", self.rho))
        self.iterations = int(d.get("msa_iterations", 0))
        self.fallbacks = int(d.get("msa_fallbacks", 0))
        self.rejected = int(d.get("msa_rejected", 0))


# ------------------------------------------------------------------------------------------
# training method


@register_method("msa")
class MSAMethod(Method):
    """``train.method = "msa"``: an epoch is a pass of MSA iterations over minibatches of
    ``train.batch_size``.

    Options: ``train.msa_rho``, ``msa_inner_steps``, ``msa_inner_lr``, ``msa_inner_solver``,
    ``msa_readout_steps``, ``msa_adapt_rho``. The per-epoch history records carry
    ``msa_iterations``, ``msa_fallbacks`` (cumulative), ``msa_epoch_fallbacks``, ``msa_rho``
    and ``grad_norm``; the final metrics carry the totals. ``train.gradient`` is not used (the
    costate is the discrete one of the recorded sweep); the learnable lifting, if any, is
    stepped with the trainer's Adam optimizer (``train.lr``), which is checkpointed. The MSA
    counters are restored on resume from the last history record.
    """

    msa: MSA

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._epoch_extra: dict = {}

    def attach(self, trainer: Trainer) -> None:
        t = trainer.cfg.train
        self.msa = MSA(trainer.net, trainer.objective, rho=t.msa_rho,
                       inner_steps=t.msa_inner_steps, inner_lr=t.msa_inner_lr,
                       inner_solver=t.msa_inner_solver, readout_steps=t.msa_readout_steps,
                       adapt_rho=t.msa_adapt_rho, disc=trainer.disc,
                       other_optimizer=trainer.optimizer)

    def train_epoch(self, trainer: Trainer) -> float:
        x, y = trainer.data["train"]
        total = 0.0
        f0 = self.msa.fallbacks
        gn = []
        for idx in trainer.minibatches():
            r = self.msa.step(x[idx], y[idx])
            total += r.J_after * len(idx)
            gn.append(r.grad_norm)
        self._epoch_extra = {**self.msa.state(), "msa_epoch_fallbacks": self.msa.fallbacks - f0,
                             "grad_norm": sum(gn) / max(len(gn), 1)}
        return total / len(x)

    def epoch_record(self, trainer: Trainer) -> dict:
        extra, self._epoch_extra = self._epoch_extra, {}
        return extra

    def after_load(self, trainer: Trainer) -> None:
        if trainer.history:
            self.msa.load_state(trainer.history[-1])

    def result_metrics(self, trainer: Trainer) -> dict:
        return self.msa.state()


class MSATrainer(Trainer):
    """:class:`~pdenets.training.Trainer` with the method :class:`MSAMethod` (whatever
    ``cfg.train.method`` says); ``msa`` is its :class:`MSA`.

    Parameters
    ----------
    cfg, ds, net, **kwargs :
        As for :class:`~pdenets.training.Trainer`.
    """

    def __init__(self, cfg, ds, net=None, **kwargs) -> None:
        super().__init__(cfg, ds, net, method=MSAMethod(cfg), **kwargs)

    @property
    def msa(self) -> MSA:
        """The :class:`MSA` iteration of this trainer."""
        return self.method.msa  # type: ignore[attr-defined]
