"""The fast EnSF integrator for componentwise observation operators.

Most operators met in practice observe state components one by one: a selection of
grid points (the latent pseudo-observation is the identity), possibly weighted, and
possibly followed by an elementwise map such as ``arctan``. For them the likelihood
terms of an EnSF step are elementwise in ``d`` once the observations are laid out on
the state (zero precision where a component is unobserved), and the step needs no
gather or scatter:

* for a linear operator the likelihood gradient is affine in ``z`` with a diagonal
  Jacobian that equals its curvature bound, so ``grad + c z`` is constant and all
  per-step coefficients are vectors of size ``d`` shared by the members: a step is
  the mixture weights, one matrix product and four elementwise passes;
* for ``arctan`` the gradient and curvature are evaluated elementwise.

This module holds that formulation in plain torch (used on every device) and the
dispatch to the fused CUDA kernel of :mod:`xensf.filters.ensf_kernel` (one kernel per
step with the noise drawn inside it). It computes the same discretisation as the
general integrator of :mod:`xensf.filters.ensf_reference`, with the same step
(:mod:`xensf.filters.ensf_step`): with the same noise the torch path agrees with it to
rounding error; the CUDA kernel draws its noise from a counter-based generator, so it
agrees in distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ensf_step import advance_, initial_particles, mixture_mean, step_factors
from .operators import LinearObservationOperator
from .schedule import DiffusionSchedule

__all__ = ["ComponentwiseObservations", "componentwise_observations", "integrate_componentwise"]

#: Elementwise transforms the fast path knows (name used by the CUDA kernel).
_TRANSFORMS: dict[Callable, str] = {torch.atan: "atan", torch.arctan: "atan"}


@dataclass
class ComponentwiseObservations:
    """Observations laid out on the state: ``(..., 1, d)`` tensors, zero where unobserved.

    ``y`` the observed value, ``precision`` its precision, ``weight`` the operator's
    weight (observation = ``transform(weight · x)``), and ``transform`` ``None`` or
    ``"atan"``.
    """

    y: torch.Tensor
    precision: torch.Tensor
    weight: torch.Tensor
    transform: str | None


def componentwise_observations(
    op, y: torch.Tensor, precision: torch.Tensor, d: int
) -> ComponentwiseObservations | None:
    """The operator's observations as per-component tensors, or None if not componentwise.

    Componentwise means: a :class:`LinearObservationOperator` whose every observation
    reads one state component (``k = 1``), no component read twice, and a transform
    that is the identity or ``arctan``. ``y`` and ``precision`` are ``(..., m)``
    (missing observations: precision 0).
    """
    if not isinstance(op, LinearObservationOperator) or op.indices.shape[-1] != 1:
        return None
    transform = None
    if op.transform is not None:
        transform = _TRANSFORMS.get(op.transform)
        if transform is None:
            return None
    idx = op.indices[..., 0]  # (..., m)
    batch = torch.broadcast_shapes(idx.shape[:-1], y.shape[:-1], precision.shape[:-1])
    m = idx.shape[-1]
    idx_b = idx.expand(*batch, m)
    counts = torch.zeros(*batch, d, dtype=torch.int32, device=idx.device)
    counts.scatter_add_(-1, idx_b, torch.ones_like(idx_b, dtype=torch.int32))
    if bool((counts > 1).any()):
        return None
    dtype, device = y.dtype, y.device
    out = []
    for v in (y, precision, op.weights[..., 0].to(dtype)):
        dense = torch.zeros(*batch, d, dtype=dtype, device=device)
        dense.scatter_(-1, idx_b, v.expand(*batch, m))
        out.append(dense.unsqueeze(-2))
    return ComponentwiseObservations(*out, transform)


def integrate_componentwise(
    prior: torch.Tensor,
    obs: ComponentwiseObservations,
    scale: torch.Tensor,
    schedule: DiffusionSchedule,
    h_of: Callable[[float], float],
    steps: int,
    mixture: bool,
    noise,
    *,
    kernel: bool = False,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Posterior ensemble ``(..., N, d)``: the damped-likelihood EnSF, componentwise.

    The discretisation is that of :func:`xensf.filters.ensf_reference.integrate` (exponential
    Euler–Maruyama of the linearised drift). ``kernel=True`` runs each step as one CUDA
    kernel (see :mod:`xensf.filters.ensf_kernel`), with the noise drawn inside it
    from Philox counters keyed by ``seeds`` (one int64 per batch entry); otherwise the
    steps are torch operations with the noise of ``noise.draw()``.
    """
    mean = prior.mean(dim=-2, keepdim=True)
    z0 = (prior - mean) / scale
    observed = bool((obs.precision > 0).any())
    dt = 1.0 / steps
    z = initial_particles(z0, schedule, noise)
    if kernel:
        from .ensf_kernel import KernelUnavailable, run_fused_steps

        try:
            z = run_fused_steps(z, z0, mean, scale, obs, schedule, h_of, steps, mixture, seeds)
            return mean + scale * z
        except KernelUnavailable:
            pass  # warned once; the torch steps below give the same distribution

    z0_sq_half = 0.5 * (z0 * z0).sum(-1).unsqueeze(-2)  # (..., 1, N)
    z0_t = z0.transpose(-1, -2)
    linear = obs.transform is None
    scale_w = scale * obs.weight  # ∂(w x)/∂z
    if linear:
        # grad(z) = s w p (y − w (x̄ + s z)) = b − c z with c = s² w² p: grad + c z = b.
        curv = scale_w * scale_w * obs.precision  # (..., 1, d)
        b = scale_w * obs.precision * (obs.y - obs.weight * mean)
    else:
        weight_sq = obs.weight.abs().square()
        scale2 = scale * scale
    if linear and observed:
        return mean + scale * _linear_steps(
            z, z0, z0_t, z0_sq_half, curv, b, schedule, h_of, steps, mixture, noise
        )
    for k in range(steps):
        tau = 1.0 - k * dt
        alpha = schedule.alpha(tau)
        beta2 = schedule.beta2(tau)
        g2 = schedule.diffusion2(tau)
        h = float(h_of(tau)) if observed else 0.0
        mu = mixture_mean(z, z0, z0_t, z0_sq_half, alpha, beta2) if mixture else z0
        lam_prior = schedule.drift(tau) + g2 / beta2
        xi = noise.draw()
        if h == 0.0:
            e1, phi, noise_std = step_factors(lam_prior, dt, g2)
            advance_(z, e1, phi, mu, noise_std, xi, a_scale=g2 * alpha / beta2)
            continue
        # arctan: the reference's operations in the reference's order (only the gather
        # and scatter are gone), so that both round alike: a stiff likelihood amplifies
        # rounding differences over the steps.
        u = (mean + scale * z).mul_(obs.weight)  # w x
        deriv = u.square().add_(1.0).reciprocal_()  # arctan'(w x)
        residual = torch.atan(u).neg_().add_(obs.y).mul_(obs.precision)
        grad = residual.mul_(deriv).mul_(obs.weight).mul_(scale)
        curv = deriv.square_().mul_(obs.precision).mul_(weight_sq).mul_(scale2)
        a = mu * (g2 * alpha / beta2)
        a.add_(grad.addcmul_(curv, z), alpha=g2 * h)
        lam = curv.mul_(g2 * h).add_(lam_prior)
        e1, phi, noise_std = step_factors(lam, dt, g2)
        advance_(z, e1, phi, a, noise_std, xi)
    return mean + scale * z


#: Elements of the per-step coefficient tables computed in one go (a block of steps).
_TABLE_ELEMENTS = 1 << 20


def _linear_steps(z, z0, z0_t, z0_sq_half, curv, b, schedule, h_of, steps, mixture, noise):
    """The steps of a linear componentwise operator, their coefficients tabulated.

    ``grad + c z = b`` is constant, so the coefficients of a step (``e^{−λ dτ} − 1``,
    the drift and noise factors) are vectors of size ``d`` that depend on the step only.
    They are computed for a block of steps at once (a few operations on a
    ``(steps, ..., 1, d)`` table instead of ten per step), which leaves a step with the
    mixture weights, the noise draw and four passes over ``(..., N, d)``; at latent size
    that halves the time of a CPU analysis, where each small operation's fixed cost
    counts. The per-step formulas are those of the general step, evaluated alike.
    """
    dt = 1.0 / steps
    dtype, device = z.dtype, z.device
    shape = torch.broadcast_shapes(curv.shape, b.shape)  # (..., 1, d)
    curv, b = curv.expand(shape), b.expand(shape)
    taus = [1.0 - k * dt for k in range(steps)]
    per_step = max(1, _TABLE_ELEMENTS // max(1, curv.numel()))
    for start in range(0, steps, per_step):
        block = taus[start : start + per_step]
        alpha = [schedule.alpha(t) for t in block]
        beta2 = [schedule.beta2(t) for t in block]
        g2 = [schedule.diffusion2(t) for t in block]
        h = [float(h_of(t)) for t in block]
        lam_prior = [schedule.drift(t) + g / b2 for t, g, b2 in zip(block, g2, beta2, strict=True)]

        def column(values):
            return torch.tensor(values, dtype=dtype, device=device).reshape(-1, *([1] * curv.ndim))

        g2h = column([g * hh for g, hh in zip(g2, h, strict=True)])
        lam = (curv * g2h).add_(column(lam_prior))  # (block, ..., 1, d)
        e1, phi, noise_std = step_factors(lam, dt, column(g2))
        pull = phi * b * g2h  # the likelihood's constant drift, integrated over the step
        rows = zip(e1.unbind(0), phi.unbind(0), pull.unbind(0), noise_std.unbind(0), strict=True)
        for i, (e1_i, phi_i, pull_i, std_i) in enumerate(rows):
            mu = mixture_mean(z, z0, z0_t, z0_sq_half, alpha[i], beta2[i]) if mixture else z0
            xi = noise.draw()
            advance_(
                z, e1_i, phi_i, mu, std_i, xi, a_scale=g2[i] * alpha[i] / beta2[i], pull=pull_i
            )
    return z
