"""The general EnSF integrator: any observation operator, damped or exact likelihood.

This is the reference discretisation (see :func:`xensf.filters.ensf.ensf_analysis` for
the method): every other path — the componentwise integrator and the fused CUDA
kernel — is tested against it. The step itself lives in :mod:`xensf.filters.ensf_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ensf_step import advance_, initial_particles, mixture_mean, step_factors
from .gaussian_likelihood import GaussianLikelihood
from .noise import NoiseSource
from .operators import LinearObservationOperator
from .schedule import DiffusionSchedule

__all__ = ["integrate"]


def integrate(
    prior: torch.Tensor,
    y: torch.Tensor,
    precision: torch.Tensor,
    op,
    scale: torch.Tensor,
    schedule: DiffusionSchedule,
    h_of: Callable[[float], float],
    steps: int,
    mixture: bool,
    gaussian: bool,
    noise: NoiseSource,
) -> torch.Tensor:
    """Posterior ensemble ``(..., N, d)`` from the prior ensemble ``(..., N, d)``.

    ``y`` and ``precision`` are ``(..., m)`` (a missing observation has precision 0),
    ``scale`` the standardisation of the state, ``h_of`` the likelihood damping
    ``h(τ)``; ``gaussian`` takes the exact noised likelihood score instead of the damped
    one (linear operators only).
    """
    mean = prior.mean(dim=-2, keepdim=True)
    z0 = (prior - mean) / scale
    scale2 = scale * scale
    z0_sq_half = 0.5 * (z0 * z0).sum(-1).unsqueeze(-2)  # (..., 1, N)
    z0_t = z0.transpose(-1, -2)
    y = y.unsqueeze(-2)  # (..., 1, m)
    observed = bool((precision > 0).any())

    # For a linear operator the curvature does not depend on the state: compute it once.
    fixed_curvature = None
    if isinstance(op, LinearObservationOperator) and op.transform is None and observed:
        fixed_curvature = scale2 * op.curvature_bound(mean, precision)
    exact = None
    if gaussian and observed:
        exact = GaussianLikelihood(z0, mean, scale, op, y, precision, schedule.eps_beta)

    memory: dict = {}  # what a callable operator's curvature carries from step to step
    dt = 1.0 / steps
    z = initial_particles(z0, schedule, noise)
    for k in range(steps):
        tau = 1.0 - k * dt
        if exact is not None:
            # The noised likelihood's strength changes by O(1) over a step near τ = 0
            # (its variance shrinks like γ² ≈ τ): coefficients at the step's midpoint
            # halve the bias there (measured: posterior variance error 66 % → 33 % for
            # σ = 0.1 spread, 100 steps).
            tau -= 0.5 * dt
        alpha = schedule.alpha(tau)
        beta2 = schedule.beta2(tau)
        g2 = schedule.diffusion2(tau)
        h = float(h_of(tau))

        mu = mixture_mean(z, z0, z0_t, z0_sq_half, alpha, beta2) if mixture else z0
        # Reverse drift linearised around the current z and frozen over the step:
        # −f z + g² s(z') ≈ a − λ z', λ = f + g²/β² (+ g² h c), then integrated exactly.
        a = mu * (g2 * alpha / beta2)
        lam = schedule.drift(tau) + g2 / beta2  # > 0 because g²/β² ≥ −2f
        xi = noise.draw()

        if exact is not None:
            lik, stiffness = exact.score(z, alpha, beta2)
            a.add_(lik, alpha=g2)
            # ‖∂lik/∂z‖ ≤ stiffness = 1/γ². While dτ g²/γ² ≤ 1 the explicit step is
            # stable; beyond, take c = 1/γ² implicitly, which bounds the amplification
            # of every direction by 1 (see GaussianLikelihood).
            c = 0.0 if dt * g2 * stiffness <= 1.0 else stiffness
            if c:
                a.add_(z, alpha=g2 * c)
            lam = lam + g2 * c
        elif h != 0.0 and observed:
            x = mean + scale * z
            grad, curv = op.likelihood_terms(
                x, y, precision.unsqueeze(-2), curvature=fixed_curvature is None, memory=memory
            )
            grad = scale * grad
            curv = fixed_curvature if fixed_curvature is not None else scale2 * curv
            a.add_(grad.addcmul_(curv, z), alpha=g2 * h)
            lam = curv * (g2 * h) + lam
        e1, phi, noise_std = step_factors(lam, dt, g2)
        z = advance_(z, e1, phi, a, noise_std, xi)
    return mean + scale * z
