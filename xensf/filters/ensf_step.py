"""One step of the EnSF's reverse-time SDE, shared by its integrators.

Both integrators (the general one of :mod:`xensf.filters.ensf_reference` and the
componentwise one of :mod:`xensf.filters.ensf_componentwise`) and the fused CUDA kernel
(:mod:`xensf.filters.ensf_kernel`, which writes the same formulas in Triton and is
tested against the general integrator in distribution) take the same step:

* the particles start from the forward process's exact marginal at τ = 1
  (:func:`initial_particles`);
* the prior score needs ``E[z0 | z_τ]`` under the ensemble prior
  (:func:`mixture_mean`; the paired score uses each particle's own member);
* the reverse drift is linearised around the current particles and frozen over the
  step, ``−f z + g² s(z) ≈ a − λ z``, and that linear SDE is integrated exactly over
  ``dτ`` (exponential Euler–Maruyama): mean ``z e^{−λ dτ} + a (1 − e^{−λ dτ}) / λ``,
  variance ``g² (1 − e^{−2λ dτ}) / 2λ`` (:func:`step_factors`, :func:`advance_`).

``λ`` is a float (the prior's part alone, the same for every component) or a tensor
(with the likelihood's curvature, per component); both forms go through the same two
functions.
"""

from __future__ import annotations

import math

import torch

from .schedule import DiffusionSchedule

__all__ = ["advance_", "initial_particles", "mixture_mean", "step_factors"]


def initial_particles(z0: torch.Tensor, schedule: DiffusionSchedule, noise) -> torch.Tensor:
    """Particles at τ = 1: the mixture ``Σ_j N(α₁ z0_j, β₁² I)``, stratified.

    Particle ``j`` starts in member ``j``'s component. ``N(0, I)`` would be the usual
    approximation, but in high dimension the small ``α₁ z0`` term is what keeps each
    particle near its own member; without it the particles pick members at random,
    duplicating some and dropping others, which adds the noise of a resampling to the
    analysis mean. The result is a fresh tensor the integrator may update in place.
    """
    return noise.draw().mul_(math.sqrt(schedule.beta2(1.0))).add_(z0, alpha=schedule.alpha(1.0))


def mixture_mean(
    z: torch.Tensor,
    z0: torch.Tensor,
    z0_t: torch.Tensor,
    z0_sq_half: torch.Tensor,
    alpha: float,
    beta2: float,
) -> torch.Tensor:
    """``E[z0 | z_τ]`` under the mixture prior: the members weighted by softmax of logits.

    ``z0`` is ``(..., N, d)``, ``z0_t`` its transpose and ``z0_sq_half`` the members'
    ``‖z0_j‖² / 2`` as ``(..., 1, N)`` (both fixed over the integration).
    """
    # log w_ij = (α z_i·z0_j − α²‖z0_j‖²/2) / β² + const_i: the ‖z_i‖² term cancels.
    # Three dims on both sides (one batch dim, the accessor's case): bmm directly, the
    # product matmul would reach after expanding and reshaping (same kernel, same result).
    mm = torch.bmm if z.ndim == 3 and z0.ndim == 3 and z.shape[0] == z0.shape[0] else torch.matmul
    logits = mm(z, z0_t).mul_(alpha / beta2)
    logits.sub_(z0_sq_half, alpha=alpha * alpha / beta2)
    return mm(torch.softmax(logits, dim=-1), z0)


def step_factors(lam, dt: float, g2):
    """``(e^{−λ dτ} − 1, (1 − e^{−λ dτ}) / λ, √(g² (1 − e^{−2λ dτ}) / 2λ))``.

    ``lam`` and ``g2`` are floats or tensors (a tensor ``lam`` gives tensors).
    ``e^{−λ dτ} − 1`` comes from ``expm1``, so a small ``λ dτ`` keeps its digits.
    """
    if isinstance(lam, torch.Tensor):
        e1 = torch.expm1(lam * -dt)
        phi = e1.div(lam).neg_()
        return e1, phi, (phi * (e1 + 2.0)).mul_(0.5 * g2).sqrt_()
    e1 = math.expm1(-lam * dt)
    phi = -e1 / lam
    return e1, phi, math.sqrt(0.5 * g2 * phi * (e1 + 2.0))


def advance_(
    z: torch.Tensor,
    e1,
    phi,
    a: torch.Tensor,
    noise_std,
    xi: torch.Tensor,
    *,
    a_scale: float = 1.0,
    pull: torch.Tensor | None = None,
) -> torch.Tensor:
    """The exact step of ``dz = (a_scale · a + c − λ z) dτ + g dW``, in place on ``z``.

    ``z + e1 z + φ (a_scale · a) + pull + std ξ`` with the factors of
    :func:`step_factors`; ``pull`` is a precomputed ``φ c`` for a drift part that does not
    depend on ``z`` (or None). ``z + e1 z`` rather than ``(1 + e1) z``, which would round
    ``e1`` to the precision of 1. ``z`` must be the integrator's own buffer.
    """
    if isinstance(e1, torch.Tensor):
        z.add_(e1 * z)
    else:
        z.add_(z, alpha=e1)
    if isinstance(phi, torch.Tensor):
        z.add_(phi * a if a_scale == 1.0 else phi * a * a_scale)
    else:
        z.add_(a, alpha=phi * a_scale)
    if pull is not None:
        z.add_(pull)
    if isinstance(noise_std, torch.Tensor):
        return z.add_(noise_std * xi)
    return z.add_(xi, alpha=noise_std)
