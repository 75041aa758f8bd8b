"""The pseudo-time schedule of the score filters' diffusion process.

The forward (noising) process of EnSF is ``x_τ | x_0 ~ N(α_τ x_0, β_τ² I)`` for
pseudo-time ``τ ∈ [0, 1]`` with

* ``α_τ = 1 − τ (1 − ε_α)``          (signal kept: 1 at τ = 0, ε_α at τ = 1),
* ``β_τ² = ε_β + τ (1 − ε_β)``       (noise variance: ε_β at τ = 0, 1 at τ = 1),

whose SDE ``dx = f x dτ + g dW`` has drift and squared diffusion

* ``f = d log α_τ / dτ = −(1 − ε_α) / α_τ``,
* ``g² = dβ_τ²/dτ − 2 f β_τ² = (1 − ε_β) + 2 (1 − ε_α) β_τ² / α_τ``.

The likelihood is switched on gradually along the reverse process by a damping
``h(τ)``; the standard choice is ``h(τ) = 1 − τ`` (nothing at τ = 1 where the particles
are pure noise, everything at τ = 0).

All functions take a Python float ``τ`` and return Python floats: the schedule is the
same for every particle, so there is no point in computing it on tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..checks import is_real
from ..errors import OptionError

__all__ = ["DAMPINGS", "DiffusionSchedule", "linear_damping", "resolve_damping"]


@dataclass(frozen=True)
class DiffusionSchedule:
    """The linear α/β² schedule of EnSF.

    Parameters
    ----------
    eps_alpha : float
        ``α`` at τ = 1, in (0, 1). Keeps ``f = −(1 − ε_α)/α`` finite at τ = 1.
    eps_beta : float
        ``β²`` at τ = 0, in (0, 1). Must stay positive: the prior score divides by
        ``β²``, and ``ε_β`` is also the variance of the kernel that smooths each prior
        member (in standardised units) at the end of the reverse process.

    Examples
    --------
    >>> s = DiffusionSchedule(eps_alpha=0.05, eps_beta=0.025)
    >>> round(s.alpha(1.0), 12), round(s.beta2(0.0), 12)
    (0.05, 0.025)
    """

    eps_alpha: float = 0.05
    eps_beta: float = 0.025

    def __post_init__(self) -> None:
        for name in ("eps_alpha", "eps_beta"):
            value = getattr(self, name)
            if not (is_real(value) and 0.0 < float(value) < 1.0):
                raise OptionError(f"{name} must be a number in (0, 1), got {value!r}")

    def alpha(self, tau: float) -> float:
        """``α_τ = 1 − τ (1 − ε_α)``."""
        return 1.0 - tau * (1.0 - self.eps_alpha)

    def beta2(self, tau: float) -> float:
        """``β_τ² = ε_β + τ (1 − ε_β)``."""
        return self.eps_beta + tau * (1.0 - self.eps_beta)

    def drift(self, tau: float) -> float:
        """``f = d log α_τ / dτ`` (negative)."""
        return -(1.0 - self.eps_alpha) / self.alpha(tau)

    def diffusion2(self, tau: float) -> float:
        """``g² = dβ_τ²/dτ − 2 f β_τ²`` (positive)."""
        return (1.0 - self.eps_beta) - 2.0 * self.drift(tau) * self.beta2(tau)

    def diffusion(self, tau: float) -> float:
        """``g = √g²``."""
        return math.sqrt(self.diffusion2(tau))


def linear_damping(tau: float) -> float:
    """``h(τ) = 1 − τ``: the likelihood weight of the reference EnSF."""
    return 1.0 - tau


def no_damping(tau: float) -> float:
    """``h(τ) = 1``: the full likelihood score at every pseudo-time."""
    return 1.0


DAMPINGS: dict[str, Callable[[float], float]] = {"linear": linear_damping, "none": no_damping}


def resolve_damping(damping: str | Callable[[float], float]) -> Callable[[float], float]:
    """The damping function named by ``damping`` (a key of :data:`DAMPINGS`) or given
    (checked at each pseudo-time it is asked for)."""
    if callable(damping):
        return _checked_damping(damping)
    try:
        return DAMPINGS[damping]
    except (KeyError, TypeError):
        raise OptionError(
            f"damping must be one of {sorted(DAMPINGS)} or a callable h(tau), got {damping!r}"
        ) from None


def _checked_damping(damping: Callable[[float], float]) -> Callable[[float], float]:
    """``damping`` refusing a weight that is not a finite number of at least 0: the
    likelihood's score times NaN, or times a negative weight (an observation pushing
    the members away), gave a NaN or exploding analysis without a word."""

    def h(tau: float) -> float:
        value = damping(tau)
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0.0):
            raise OptionError(
                f"damping({tau:g}) gave {value!r}; the likelihood weight h(tau) must be a "
                "finite number of at least 0 at every pseudo-time tau in (0, 1]"
            )
        return weight

    return h
