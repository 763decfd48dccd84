"""Activation functions σ of the continuum network (MODEL.md §1).

An :class:`Activation` bundles σ, its derivative σ' (needed by the adjoint, MODEL.md §5) and its
Lipschitz constant L_σ (needed by the Gronwall bound, MODEL.md §3), together with the facts the
HJB solver of MODEL.md §8 relies on (``pdenets.hjb``): the second derivative σ'' (Newton's
Jacobian of the Hamiltonian minimization), the bound sup|σ| (exact Lax–Friedrichs dissipation),
whether σ is monotone (σ' ≥ 0: one-signed search box) and whether it is affine (closed-form
minimizer). Built-in activations are looked up by name with :func:`get_activation`; a custom one
is built by the user::

    swish = Activation("swish", lambda z: z * torch.sigmoid(z),
                       lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z))),
                       lipschitz=1.1)

The facts of a custom activation default to the conservative choices (σ'' by central finite
differences of σ', unbounded, not known to be monotone, not affine).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import torch

from ._checks import check_choice, check_positive
from .errors import PdenetsError

Fn = Callable[[torch.Tensor], torch.Tensor]
Fn2 = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: step of the central finite difference of σ' that stands in for a missing σ''
FD_STEP = 1e-6


@dataclass(frozen=True)
class Activation:
    """A Lipschitz activation σ with its derivative.

    Parameters
    ----------
    name : str
        Identifier; built-in names are saved in model files, custom ones cannot be re-loaded
        unless passed again to :func:`pdenets.load_model`.
    fn : callable
        σ, applied elementwise to a tensor.
    derivative : callable
        σ', applied elementwise (a.e. for piecewise-smooth σ such as ReLU).
    lipschitz : float
        A Lipschitz constant L_σ of σ (sup |σ'|).
    builtin : bool
        Whether ``name`` refers to a built-in activation.
    inplace : callable, optional
        In-place variant of ``fn`` (used on fresh temporaries to save a pass).
    second_derivative : callable, optional (keyword only)
        σ'', applied elementwise (a.e.); when omitted, :meth:`derivatives` takes the central
        finite difference of σ' with step :data:`FD_STEP`.
    first_and_second : callable, optional (keyword only)
        (σ', σ'') from one evaluation (a fused form of ``derivative`` and
        ``second_derivative``, used by :meth:`derivatives` when given).
    sup_abs : float (keyword only)
        sup_z |σ(z)|; ``math.inf`` (the default) for an unbounded σ.
    monotone : bool (keyword only)
        Whether σ' ≥ 0 everywhere (σ non-decreasing).
    affine : bool (keyword only)
        Whether σ is affine (σ'' ≡ 0), which makes the Hamiltonian of MODEL.md §8 quadratic in
        the controls.
    """

    name: str
    fn: Fn
    derivative: Fn
    lipschitz: float = 1.0
    builtin: bool = False
    #: optional in-place variant of ``fn`` (used on fresh temporaries to save a pass)
    inplace: Fn | None = None
    _: KW_ONLY
    second_derivative: Fn | None = None
    first_and_second: Fn2 | None = None
    sup_abs: float = math.inf
    monotone: bool = False
    affine: bool = False

    def __post_init__(self) -> None:
        if not callable(self.fn) or not callable(self.derivative):
            raise PdenetsError(f"activation {self.name!r}: fn and derivative must be callable")
        for what in ("second_derivative", "first_and_second"):
            if getattr(self, what) is not None and not callable(getattr(self, what)):
                raise PdenetsError(f"activation {self.name!r}: {what} must be callable")
        check_positive(self.lipschitz, f"activation {self.name!r} lipschitz constant")
        if isinstance(self.sup_abs, bool) or not isinstance(self.sup_abs, int | float) \
                or math.isnan(self.sup_abs) or self.sup_abs <= 0:
            raise PdenetsError(f"activation {self.name!r}: sup_abs must be a number > 0 "
                               f"(math.inf when unbounded), got {self.sup_abs!r}")

    @property
    def bounded(self) -> bool:
        """Whether sup|σ| is finite."""
        return math.isfinite(self.sup_abs)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)

    def apply_(self, z: torch.Tensor) -> torch.Tensor:
        """σ(z), overwriting the temporary ``z`` when an in-place variant exists."""
        return self.inplace(z) if self.inplace is not None else self.fn(z)

    def derivatives(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ'(z), σ''(z)): from ``first_and_second`` if given, else σ' and
        ``second_derivative``, else σ' and the central difference
        (σ'(z + h) − σ'(z − h)) / 2h, h = :data:`FD_STEP`."""
        if self.first_and_second is not None:
            return self.first_and_second(z)
        d1 = self.derivative(z)
        if self.second_derivative is not None:
            return d1, self.second_derivative(z)
        return d1, (self.derivative(z + FD_STEP) - self.derivative(z - FD_STEP)) / (2 * FD_STEP)

    def second(self, z: torch.Tensor) -> torch.Tensor:
        """σ''(z) (see :meth:`derivatives`)."""
        if self.second_derivative is not None:
            return self.second_derivative(z)
        return self.derivatives(z)[1]


#: elements from which tanh is evaluated as 2σ(2z) − 1 without autograd (:func:`_tanh`) …
SIGMOID_FORM_MIN = 8192
#: … and under autograd, through :class:`_TanhFn` (below these sizes the extra operations cost
#: more than PyTorch's scalar tanh kernel saves; measured on one core)
SIGMOID_FORM_GRAD_MIN = 32768


def _sigmoid_form(z: torch.Tensor) -> bool:
    """Whether tanh is evaluated as 2σ(2z) − 1 (see :func:`_tanh`)."""
    if z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and z.requires_grad:
        return z.numel() >= SIGMOID_FORM_GRAD_MIN
    return z.numel() >= SIGMOID_FORM_MIN


class _TanhFn(torch.autograd.Function):
    """tanh as 2σ(2z) − 1 with the backward of tanh, g·(1 − y²), in one kernel."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z):
        return z.mul(2.0).sigmoid_().mul_(2.0).sub_(1.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(g, y)


def _tanh(z: torch.Tensor) -> torch.Tensor:
    """tanh z. On CPU (float32, float64) and large tensors it is evaluated as 2σ(2z) − 1:
    PyTorch's CPU kernel of tanh is scalar, its sigmoid is vectorized, and the identity costs
    a fifth of the time (1024×256 float32 on one core: 0.26 ms against 1.4 ms; float64 0.7
    against 2.8 ms), which was a third of every RK stage; under autograd through
    :class:`_TanhFn` (tanh's own one-kernel backward). The deviation from ``torch.tanh`` is at
    the rounding level (absolute, ≤ 2 ulp of 1: 4.4e-16 in float64, 2.4e-7 in float32).
    Elsewhere ``torch.tanh``."""
    if _sigmoid_form(z):
        if torch.is_grad_enabled() and z.requires_grad:
            return _TanhFn.apply(z)
        return torch.sigmoid(2.0 * z).mul_(2.0).sub_(1.0)
    return torch.tanh(z)


def _tanh_d(z: torch.Tensor) -> torch.Tensor:
    if _sigmoid_form(z):
        s = torch.sigmoid(2.0 * z)
        return 4.0 * s * (1.0 - s)
    t = torch.tanh(z)
    return 1.0 - t * t


def _tanh_(z: torch.Tensor) -> torch.Tensor:
    """tanh of the temporary ``z``, overwriting it where autograd allows (as :func:`_tanh`)."""
    if _sigmoid_form(z):
        if torch.is_grad_enabled() and z.requires_grad:
            return _TanhFn.apply(z)
        return z.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
    return z.tanh_()


def _tanh_d12(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _sigmoid_form(z):
        s = torch.sigmoid(2.0 * z)
        t = 2.0 * s - 1.0
        d1 = 4.0 * s * (1.0 - s)
    else:
        t = torch.tanh(z)
        d1 = 1.0 - t * t
    return d1, -2.0 * t * d1


def _tanh_d2(z: torch.Tensor) -> torch.Tensor:
    return _tanh_d12(z)[1]


def _sigmoid_d(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _sigmoid_d12(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(z)
    d1 = s * (1.0 - s)
    return d1, d1 * (1.0 - 2.0 * s)


def _sigmoid_d2(z: torch.Tensor) -> torch.Tensor:
    return _sigmoid_d12(z)[1]


def _softplus_d12(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(z)
    return s, s * (1.0 - s)


# ReLU keeps ``second_derivative`` unset: σ'' = 0 a.e., but the HJB Newton iteration has always
# used the finite difference of the step function σ' (large only within FD_STEP of the kink),
# and its results are kept identical.
_BUILTIN: dict[str, Activation] = {
    "tanh": Activation("tanh", _tanh, _tanh_d, 1.0, True, _tanh_,
                       second_derivative=_tanh_d2, first_and_second=_tanh_d12, sup_abs=1.0,
                       monotone=True),
    "relu": Activation("relu", torch.relu, lambda z: (z > 0).to(z.dtype), 1.0, True,
                       torch.relu_, monotone=True),
    "sigmoid": Activation("sigmoid", torch.sigmoid, _sigmoid_d, 0.25, True, torch.sigmoid_,
                          second_derivative=_sigmoid_d2, first_and_second=_sigmoid_d12,
                          sup_abs=1.0, monotone=True),
    "softplus": Activation(
        "softplus", torch.nn.functional.softplus, torch.sigmoid, 1.0, True,
        second_derivative=_sigmoid_d, first_and_second=_softplus_d12, monotone=True,
    ),
    "identity": Activation("identity", lambda z: z, torch.ones_like, 1.0, True, lambda z: z,
                           second_derivative=torch.zeros_like, monotone=True, affine=True),
}

ACTIVATIONS: tuple[str, ...] = tuple(_BUILTIN)


def get_activation(activation: str | Activation) -> Activation:
    """Return the :class:`Activation` named ``activation`` (or ``activation`` itself).

    Raises
    ------
    PdenetsError
        For an unknown name; the message lists the built-in activations.
    """
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise PdenetsError(f"activation must be a name or an Activation, got {activation!r}")
    return _BUILTIN[check_choice(activation, _BUILTIN, "activation")]
