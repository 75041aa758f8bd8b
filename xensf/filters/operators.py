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
majorant of ``Jᵀ Γ⁻¹ J`` that the EnSF integrator uses to stay stable).
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
        self, x: torch.Tensor, y: torch.Tensor, precision: torch.Tensor, *, curvature: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Jᵀ Π (y − H(x))`` and (optionally) :meth:`curvature_bound`, evaluating H once.

        ``y`` and ``precision`` broadcast to ``(..., 1, m)``; returns ``(..., N, d)``
        tensors. This is what a score-filter step needs, in one pass over the operator.
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

    Its ``curvature_bound`` assumes each observation depends on one state component
    (true of "select, then apply an elementwise function"); for operators that mix
    components, pass a :class:`LinearObservationOperator` instead, whose bound is
    rigorous.
    """

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
        self, x: torch.Tensor, y: torch.Tensor, precision: torch.Tensor, *, curvature: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Jᵀ Π (y − H(x))`` and (optionally) :meth:`curvature_bound`, one forward pass."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            value = self.fn(xr)
            residual = (y - value.detach()).mul_(precision)
            (grad,) = torch.autograd.grad(value, xr, grad_outputs=residual, retain_graph=curvature)
            if not curvature:
                return grad, None
            sq = precision.to(value.dtype).sqrt().expand_as(value)
            (g,) = torch.autograd.grad(value, xr, grad_outputs=sq)
        return grad, g**2

    def curvature_bound(self, x: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            y = self.fn(xr)
            # precision is (..., m): insert the member dim before broadcasting to (..., N, m)
            sq = precision.to(y.dtype).sqrt().unsqueeze(-2).expand_as(y)
            (g,) = torch.autograd.grad(y, xr, grad_outputs=sq)
        return g**2


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
