"""Observation operators on tensors of shape ``(..., N, d)``.

Three kinds of operator are accepted wherever the filters take ``obs_op``:

* an integer index tensor ``(..., m)``: observation ``i`` is state component
  ``index[..., i]`` (the usual "observe some grid points" case);
* a :class:`LinearObservationOperator`: each observation is a weighted sum of a few
  state components (bilinear interpolation to stations, for instance), optionally
  followed by an elementwise nonlinearity such as ``torch.arctan``;
* any callable ``(..., N, d) -> (..., N, m)``; its Jacobian is taken by autograd.

:func:`as_observation_operator` turns any of them into an object with ``__call__``,
``vjp`` (the action of the transposed Jacobian) and ``curvature_bound`` (a diagonal
majorant of ``Jᵀ Γ⁻¹ J`` that the EnSF integrator uses to stay stable; a callable's
depends on whether it mixes components, see :class:`CallableObservationOperator`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import OptionError

__all__ = [
    "CallableObservationOperator",
    "LinearObservationOperator",
    "as_observation_operator",
]


@dataclass(frozen=True)
class LinearObservationOperator:
    """Sparse linear observation operator, optionally followed by an elementwise map.

    ``H(x)[..., n, i] = transform(sum_k weights[..., i, k] * x[..., n, indices[..., i, k]])``

    Parameters
    ----------
    indices : torch.Tensor
        Integer tensor ``(..., m, k)``: the state components each observation reads.
    weights : torch.Tensor
        Tensor ``(..., m, k)`` of the same shape: their weights.
    transform : callable, optional
        Elementwise, differentiable map applied after the weighted sum (e.g.
        ``torch.arctan``). ``None`` means the identity (a linear operator).

    Leading dims of ``indices``/``weights`` broadcast against the batch dims of the
    state, so one operator can serve all analysis times or each time its own.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.indices.shape != self.weights.shape:
            raise OptionError(
                f"LinearObservationOperator: indices {tuple(self.indices.shape)} and "
                f"weights {tuple(self.weights.shape)} must have the same shape (..., m, k)"
            )
        if self.indices.ndim < 2:
            raise OptionError("LinearObservationOperator: indices must have shape (..., m, k)")

    @classmethod
    def from_index(cls, index: torch.Tensor) -> LinearObservationOperator:
        """Selection operator from an index tensor ``(..., m)``."""
        index = torch.as_tensor(index)
        if index.dtype in (torch.bool,) or index.is_floating_point():
            raise OptionError(
                f"an index observation operator must be an integer tensor, got {index.dtype}"
            )
        idx = index.long()[..., None]
        return cls(idx, torch.ones(idx.shape, dtype=torch.float32))

    @property
    def n_obs(self) -> int:
        return self.indices.shape[-2]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Return a copy with indices on ``device`` and weights in ``dtype``."""
        return LinearObservationOperator(
            self.indices.to(device=device),
            self.weights.to(device=device, dtype=dtype),
            self.transform,
        )

    # -- linear part -------------------------------------------------------------
    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``W x`` for ``x`` of shape ``(..., N, d)``; returns ``(..., N, m)``."""
        m, k = self.indices.shape[-2:]
        batch = torch.broadcast_shapes(x.shape[:-2], self.indices.shape[:-2])
        xb = x.expand(*batch, *x.shape[-2:])
        idx = self.indices.expand(*batch, m, k).reshape(*batch, 1, m * k)
        idx = idx.expand(*batch, x.shape[-2], m * k)
        vals = torch.gather(xb, -1, idx).reshape(*batch, x.shape[-2], m, k)
        w = self.weights.to(dtype=x.dtype).expand(*batch, m, k)
        return (vals * w[..., None, :, :]).sum(-1)

    def linear_adjoint(self, v: torch.Tensor, d: int) -> torch.Tensor:
        """``Wᵀ v`` for ``v`` of shape ``(..., N, m)``; returns ``(..., N, d)``."""
        m, k = self.indices.shape[-2:]
        batch = torch.broadcast_shapes(v.shape[:-2], self.indices.shape[:-2])
        n = v.shape[-1 - 1]
        w = self.weights.to(dtype=v.dtype).expand(*batch, m, k)
        contrib = v.expand(*batch, n, m)[..., :, :, None] * w[..., None, :, :]
        idx = self.indices.expand(*batch, m, k)[..., None, :, :].expand(*batch, n, m, k)
        out = torch.zeros(*batch, n, d, dtype=v.dtype, device=v.device)
        return out.scatter_add_(
            -1, idx.reshape(*batch, n, m * k), contrib.reshape(*batch, n, m * k)
        )

    # -- full operator -----------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u = self.linear(x)
        return u if self.transform is None else self.transform(u)

    def _transform_derivative(self, u: torch.Tensor) -> torch.Tensor:
        return self._transform_with_derivative(u)[1]

    def _transform_with_derivative(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``transform(u)`` and its elementwise derivative, from one autograd pass."""
        if self.transform is None:
            return u, torch.ones_like(u)
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            value = self.transform(u)
            (grad,) = torch.autograd.grad(value.sum(), u)
        return value.detach(), grad

    def likelihood_terms(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        precision: torch.Tensor,
        *,
        curvature: bool = True,
        memory: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Jᵀ Π (y − H(x))`` and (optionally) :meth:`curvature_bound`, evaluating H once.

        ``y`` and ``precision`` broadcast to ``(..., 1, m)``; returns ``(..., N, d)``
        tensors. This is what a score-filter step needs, in one pass over the operator.
        ``memory`` is there for the callable operator's sake and not used: the bound
        of a linear operator needs nothing from earlier steps.
        """
        value, deriv = self._transform_with_derivative(self.linear(x))
        residual = (y - value).mul_(precision)
        grad = self.linear_adjoint(residual * deriv if self.transform else residual, x.shape[-1])
        if not curvature:
            return grad, None
        return grad, self._curvature(x, precision.squeeze(-2), deriv if self.transform else None)

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J_H(x)ᵀ v`` for ``x`` ``(..., N, d)`` and ``v`` ``(..., N, m)``."""
        if self.transform is not None:
            v = v * self._transform_derivative(self.linear(x))
        return self.linear_adjoint(v, x.shape[-1])

    def curvature_bound(self, x: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        """Diagonal ``c`` with ``diag(c) ⪰ J_H(x)ᵀ diag(precision) J_H(x)``.

        Gershgorin's bound: ``c_j = Σ_i |J_ij| p_i Σ_l |J_il|``. It is exact for a
        selection operator and never smaller than the curvature, which is what a
        semi-implicit step needs to be unconditionally stable.

        ``precision`` has shape broadcastable to ``(..., m)``; returns ``(..., N, d)``.
        """
        deriv = None if self.transform is None else self._transform_derivative(self.linear(x))
        return self._curvature(x, precision, deriv)

    def _curvature(self, x, precision, deriv) -> torch.Tensor:
        absw = self.weights.to(dtype=x.dtype).abs()
        rowsum = absw.sum(-1)  # (..., m)
        if deriv is None:
            p = precision[..., None, :] * rowsum[..., None, :]
            p = p.expand(*torch.broadcast_shapes(p.shape[:-2], x.shape[:-2]), 1, p.shape[-1])
        else:  # deriv (..., N, m): the transform's derivative at W x
            p = precision[..., None, :] * deriv**2 * rowsum[..., None, :]
        op = LinearObservationOperator(self.indices, absw)
        return op.linear_adjoint(p, x.shape[-1]).expand(*x.shape[:-2], x.shape[-2], x.shape[-1])


class CallableObservationOperator:
    """Wraps an arbitrary callable ``(..., N, d) -> (..., N, m)``; autograd gives ``Jᵀ v``.

    The EnSF integrator needs a diagonal majorant ``c`` of the curvature ``Jᵀ Π J``
    (``Π`` the observations' precisions) at every step. For an operator that reads
    each observation from one state component, none read by two ("select, then apply
    an elementwise function", such as ``arctan(x[..., idx])``) that is ``(Jᵀ √p)²``,
    exact and one backward pass. For any other (``x @ H.T``, a network, a component
    observed twice) it is not a bound: the integrator then diverged without a word (a
    dense linear operator given as a lambda, observation error 0.1 of the spread: an
    analysis mean that missed the observations by 55 RMS, the prior mean by about 1;
    0.01: NaN). So the first curvature of an analysis also checks which kind the
    operator is (:meth:`mixes`: about log₂ m + 2 log₂ d backward passes, once) and,
    for a mixing one, takes the largest eigenvalue of ``Jᵀ Π J`` for every component
    (a power iteration, warm started from the previous step's vector), which bounds
    ``Jᵀ Π J`` whatever its structure. A :class:`LinearObservationOperator` is still
    the cheaper form for linear operators.
    """

    #: Power iterations at an analysis' first step (cold start), then at each later one.
    COLD_ITERATIONS = 20
    WARM_ITERATIONS = 3
    #: The eigenvalue estimate is a Rayleigh quotient, never above the largest: the
    #: bound takes this multiple of it.
    SAFETY = 1.5

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(fn):
            raise OptionError(f"obs_op must be an index tensor or a callable, got {type(fn)!r}")
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def to(self, device=None, dtype=None) -> CallableObservationOperator:
        return self

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(xr), xr, grad_outputs=v)
        return g

    def likelihood_terms(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        precision: torch.Tensor,
        *,
        curvature: bool = True,
        memory: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Jᵀ Π (y − H(x))`` and (optionally) a diagonal majorant of ``Jᵀ Π J``, one
        forward pass. ``memory``, a dict the caller keeps for one analysis, carries what
        the first call learnt (whether the operator mixes, the power iteration's
        vector) to the next; without it each call starts afresh."""
        memory = {} if memory is None else memory
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            value = self.fn(xr)
            residual = (y - value.detach()).mul_(precision)
            (grad,) = torch.autograd.grad(value, xr, grad_outputs=residual, retain_graph=curvature)
            if not curvature:
                return grad, None
            return grad, self._curvature(xr, value, precision, memory)

    def curvature_bound(self, x: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        """Diagonal ``c`` with ``diag(c) ⪰ J_H(x)ᵀ diag(precision) J_H(x)`` (see the
        class); ``precision`` broadcastable to ``(..., m)``, returns ``(..., N, d)``."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            value = self.fn(xr)
            # precision is (..., m): insert the member dim before broadcasting to (..., N, m)
            return self._curvature(xr, value, precision.unsqueeze(-2), {})

    def mixes(self, x: torch.Tensor, precision: torch.Tensor) -> bool:
        """Whether some state component is read by more than one observation, or an
        observation by more than one component, at ``x``: then ``(Jᵀ √p)²`` is no
        bound of the curvature (see the class). ``precision`` broadcastable to
        ``(..., N, m)``."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            value = self.fn(xr)
            return _mixes(xr, value, _root_precision(value, precision))

    def _curvature(self, xr, value, precision, memory) -> torch.Tensor:
        root = _root_precision(value, precision)
        if "mixes" not in memory:  # decided once per analysis, at its first particles
            memory["mixes"] = _mixes(xr, value, root)
        if not memory["mixes"]:
            (g,) = torch.autograd.grad(value, xr, grad_outputs=root, retain_graph=True)
            return g**2
        top, vector = _largest_eigenvalue(
            xr,
            value,
            root,
            memory.get("vector"),
            self.WARM_ITERATIONS if "vector" in memory else self.COLD_ITERATIONS,
        )
        memory["vector"] = vector
        return (self.SAFETY * top).expand_as(xr).detach()


def _root_precision(value: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``√p`` broadcast to the operator's output ``(..., N, m)``."""
    return precision.to(value.dtype).sqrt().expand_as(value)


def _fixed_start(like: torch.Tensor) -> torch.Tensor:
    """The power iteration's start, ``like``'s shape: standard normal values from a
    private seed, the same on every call and independent of the user's random streams
    (a sign pattern could be orthogonal to the top eigenvector: ``x_2 + x_9`` with
    opposite signs at 2 and 9)."""
    gen = torch.Generator().manual_seed(0x5E1F)
    start = torch.randn(like.shape[-1], generator=gen, dtype=torch.float64)
    return start.to(device=like.device, dtype=like.dtype).expand_as(like).clone()


def _bit_signs(like: torch.Tensor) -> list[torch.Tensor]:
    """Sign patterns over ``like``'s last dim, ``s_b[i] = (−1)^(bit b of i)``: any two
    positions have opposite signs in at least one of them."""
    n = like.shape[-1]
    index = torch.arange(n, device=like.device)
    return [
        1.0 - 2.0 * ((index >> b) & 1).to(like.dtype) for b in range(max(n - 1, 0).bit_length())
    ]


def _mixes(xr: torch.Tensor, value: torch.Tensor, root: torch.Tensor) -> bool:
    """Whether the operator at ``xr`` is not "each observation reads one component,
    none read by two". For such an operator ``(Jᵀ(√p ⊙ s))²`` does not depend on the
    signs ``s`` over the observations, nor ``(J u)²`` on the signs ``u`` over the
    components; an observation reading two components, or a component read by two
    observations, changes one of them under a pattern that gives the two opposite
    signs (:func:`_bit_signs`), unless its terms cancel exactly."""

    def differ(squares: list[torch.Tensor]) -> bool:
        # value by value, relative: a saturated component's squares may be 1e-12 of
        # another's; for the operators this tells apart they agree to the bit
        first = squares[0]
        return any(
            bool(((q - first).abs() > 1e-4 * torch.maximum(q, first)).any()) for q in squares[1:]
        )

    columns = []
    for signs in [torch.ones((), dtype=value.dtype, device=value.device), *_bit_signs(value)]:
        (g,) = torch.autograd.grad(value, xr, grad_outputs=root * signs, retain_graph=True)
        columns.append(g.detach() ** 2)
    if differ(columns):
        return True
    times = _jacobian_times(xr, value)
    ones = torch.ones_like(xr)
    rows = [(times(ones * u) * root) ** 2 for u in [1.0, *_bit_signs(xr)]]
    return differ([r.detach() for r in rows])


def _jacobian_times(xr: torch.Tensor, value: torch.Tensor):
    """A function ``u ↦ J u`` at ``xr``, by differentiating the linear map ``r ↦ Jᵀ r``,
    whose graph is built once for all the products (reverse mode only: it works for any
    callable whose backward autograd can differentiate, which the built-in operations'
    can); an :class:`~xensf.errors.OptionError` where it cannot."""

    def refused(err: RuntimeError) -> OptionError:
        return OptionError(
            "EnSF bounds a callable obs_op's curvature with products J·v, which autograd "
            f"could not form for it (it differentiates the operator's backward): {err}. "
            "Give a LinearObservationOperator, or write the operator with operations "
            "whose backward autograd can differentiate"
        )

    r = torch.zeros_like(value, requires_grad=True)
    try:
        (jt_r,) = torch.autograd.grad(value, xr, grad_outputs=r, create_graph=True)
    except RuntimeError as err:
        raise refused(err) from err

    def times(u: torch.Tensor) -> torch.Tensor:
        try:
            (ju,) = torch.autograd.grad(
                jt_r, r, grad_outputs=u, retain_graph=True, allow_unused=True
            )
        except RuntimeError as err:
            raise refused(err) from err
        return torch.zeros_like(value) if ju is None else ju

    return times


def _largest_eigenvalue(xr, value, root, start, iterations):
    """The largest eigenvalue of ``Jᵀ Π J`` for every particle ``(..., N, 1)`` and the
    vector that gave it, by power iteration from ``start`` (:func:`_fixed_start`
    without one)."""
    u = _fixed_start(xr) if start is None else start.clone()
    top = torch.zeros(*xr.shape[:-1], 1, dtype=xr.dtype, device=xr.device)
    times = _jacobian_times(xr, value)
    for _ in range(iterations):
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
        pju = times(u) * root * root
        (w,) = torch.autograd.grad(value, xr, grad_outputs=pju, retain_graph=True)
        top = (u * w).sum(-1, keepdim=True).clamp_min(0.0)
        u = w.detach()
    return top.detach(), u


def as_observation_operator(
    obs_op, d: int | None = None
) -> LinearObservationOperator | CallableObservationOperator:
    """Normalise the ``obs_op`` argument of the filters (see the module docstring);
    with ``d``, the state's size, an index or linear operator must read components in
    ``[0, d)`` (an :class:`~xensf.errors.OptionError` otherwise)."""
    if isinstance(obs_op, LinearObservationOperator | CallableObservationOperator):
        op = obs_op
    elif isinstance(obs_op, torch.Tensor) or hasattr(obs_op, "__array__"):
        op = LinearObservationOperator.from_index(torch.as_tensor(obs_op))
    else:
        op = CallableObservationOperator(obs_op)
    if d is not None and isinstance(op, LinearObservationOperator) and op.indices.numel():
        low, high = int(op.indices.min()), int(op.indices.max())
        if low < 0 or high >= d:
            raise OptionError(
                f"obs_op indexes state components outside [0, {d}) (d = prior's last dim); "
                f"found indices from {low} to {high}"
            )
    return op
