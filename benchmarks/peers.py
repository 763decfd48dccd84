"""The tools users would pick instead of pdenets: a plain PyTorch ResNet and a torchdiffeq ODE.

:class:`TorchResNet`
    A plain ``torch.nn`` residual network ``x ← x + h·tanh(W_k x + b_k)`` (one ``nn.Linear`` per
    layer) with a linear input lifting and a linear readout. :meth:`TorchResNet.from_pdenets`
    copies the weights of a :class:`pdenets.ContinuumNetwork` at a discretization with S
    explicit-Euler steps — layer k gets the pdenets kernel matrix ``W_k = A(t_k)`` and bias
    ``b_k = b(t_k)`` — so that its outputs equal the pdenets Euler outputs (MODEL.md §1: explicit
    Euler *is* the ResNet). :meth:`TorchResNet.plain` builds the same architecture with PyTorch's
    default initialization, as a user would.
:class:`NeuralODE`
    A torchdiffeq neural ODE with the pdenets right-hand side ``du/dt = tanh(W(t) u + b(t))``,
    ``W``, ``b`` piecewise linear in t between ``intervals + 1`` knots, integrated with
    ``odeint_adjoint`` (dopri5). torchdiffeq is a benchmark-only extra (``pip install .[bench]``);
    :data:`HAVE_TORCHDIFFEQ` says whether it is installed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

try:  # benchmark-only extra
    import torchdiffeq

    HAVE_TORCHDIFFEQ = True
except ImportError:  # pragma: no cover - depends on the environment
    torchdiffeq = None
    HAVE_TORCHDIFFEQ = False


class TorchResNet(nn.Module):
    """Plain residual network ``x_{k+1} = x_k + h·tanh(W_k x_k + b_k)`` (see module docstring).

    Parameters
    ----------
    n_in : int
        Number of input features (images are flattened).
    width : int
        Neurons per layer N.
    depth : int
        Number of residual layers L.
    n_out : int
        Number of outputs.
    h : float
        Residual step (T / L reproduces the continuum scaling; 1.0 is the textbook ResNet).
    lift : torch.Tensor, optional
        Fixed (n_in, width) input matrix; identity when ``n_in == width`` and omitted.
    dtype, device
        Of the parameters.
    """

    def __init__(self, n_in: int, width: int, depth: int, n_out: int, h: float = 1.0,
                 lift: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        if lift is None:
            if n_in != width:
                raise ValueError(f"TorchResNet: n_in={n_in} != width={width} needs a lift matrix")
            lift = torch.eye(width, **kw)
        self.register_buffer("lift", torch.as_tensor(lift).to(**kw))
        self.layers = nn.ModuleList(nn.Linear(width, width, **kw) for _ in range(depth))
        self.readout = nn.Linear(width, n_out, **kw)
        self.h = float(h)

    @classmethod
    def plain(cls, n_in: int, depth: int, n_out: int, h: float = 1.0, *, seed: int = 0,
              dtype: torch.dtype = torch.float32, device: str = "cpu") -> TorchResNet:
        """The user's ResNet: width = inputs, PyTorch default initialization (seeded)."""
        torch.manual_seed(seed)
        return cls(n_in, n_in, depth, n_out, h, dtype=dtype, device=device)

    @classmethod
    def from_pdenets(cls, net, disc) -> TorchResNet:
        """The discrete ResNet with the weights of ``net`` at ``disc`` (explicit Euler steps).

        Layer k uses the kernel matrix A(t_k) and bias b(t_k) of the pdenets schedule at
        t_k = k·T/S, the lifting E (a linear map) becomes the fixed input matrix and the readout
        (C, d) the final linear layer, so ``TorchResNet.from_pdenets(net, disc)(x)`` equals
        ``net(x, disc)`` when ``disc.solver`` is explicit Euler.
        """
        from pdenets.integrators import Euler

        if not isinstance(disc.solver, Euler):
            raise ValueError("TorchResNet.from_pdenets reproduces explicit Euler steps only")
        with torch.no_grad():
            grid = net.grid(disc.width)
            sched = net.controls.discretize(grid)
            S, T = disc.steps, float(net.T)
            h = T / S
            n_in = net.lifting.n_features
            eye = torch.eye(n_in, dtype=grid.dtype, device=grid.device)
            lift = net.lifting(eye.reshape(n_in, *net.lifting.shape), grid)  # (n_in, N)
            C, d = net.readout.matrix(grid)
            model = cls(n_in, grid.n, S, C.shape[0], h, lift=lift, dtype=grid.dtype,
                        device=grid.device)
            for k, layer in enumerate(model.layers):
                A, b = sched.at(k * h, k * h, k * h + h)
                layer.weight.copy_(A)
                layer.bias.copy_(b)
            model.readout.weight.copy_(C)
            model.readout.bias.copy_(d)
        return model

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden state x_L, shape (B, width)."""
        u = x.reshape(x.shape[0], -1).to(self.lift.dtype) @ self.lift
        for layer in self.layers:
            u = torch.add(u, torch.tanh(layer(u)), alpha=self.h)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs, shape (B, n_out)."""
        return self.readout(self.hidden(x))


class _KnotRHS(nn.Module):
    """``f(t, u) = tanh(u W(t)ᵀ + b(t))`` with W, b piecewise linear between knots."""

    def __init__(self, width: int, intervals: int, T: float, dtype, device) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(width)  # nn.Linear's default initialization, per knot
        kw = {"dtype": dtype, "device": device}
        self.W = nn.Parameter(torch.empty(intervals + 1, width, width, **kw).uniform_(-bound,
                                                                                      bound))
        self.b = nn.Parameter(torch.empty(intervals + 1, width, **kw).uniform_(-bound, bound))
        self.intervals, self.T = intervals, float(T)
        self.nfe = 0

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        tau = min(max(float(t.detach()) / self.T * self.intervals, 0.0), float(self.intervals))
        k = min(int(math.floor(tau)), self.intervals - 1)
        s = tau - k
        W = torch.lerp(self.W[k], self.W[k + 1], s)
        b = torch.lerp(self.b[k], self.b[k + 1], s)
        return torch.tanh(torch.addmm(b, u, W.T))


class NeuralODE(nn.Module):
    """torchdiffeq neural ODE classifier with the pdenets right-hand side (module docstring).

    Parameters
    ----------
    width : int
        State dimension N (= number of input features: the lifting is the identity).
    n_out : int
    intervals : int
        Depth intervals of the piecewise-linear W(t), b(t).
    T : float
        Final time.
    rtol, atol : float
        dopri5 tolerances (forward and adjoint).
    seed : int
    """

    def __init__(self, width: int, n_out: int, intervals: int = 4, T: float = 1.0,
                 rtol: float = 1e-3, atol: float = 1e-4, *, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        if not HAVE_TORCHDIFFEQ:
            raise ImportError("torchdiffeq is not installed (pip install 'pdenets[bench]')")
        super().__init__()
        torch.manual_seed(seed)
        self.rhs = _KnotRHS(width, intervals, T, dtype, device)
        self.readout = nn.Linear(width, n_out, dtype=dtype, device=device)
        self.register_buffer("ts", torch.tensor([0.0, float(T)], dtype=dtype, device=device))
        self.rtol, self.atol = rtol, atol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u0 = x.reshape(x.shape[0], -1).to(self.ts.dtype)
        uT = torchdiffeq.odeint_adjoint(self.rhs, u0, self.ts, rtol=self.rtol, atol=self.atol,
                                        method="dopri5", adjoint_params=tuple(
                                            self.rhs.parameters()))[-1]
        return self.readout(uT)
