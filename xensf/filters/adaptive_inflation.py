"""Adaptive multiplicative inflation for the LETKF (Miyoshi 2011), carried across cycles.

A filter's own sampling error and the model error it does not know of make its prior
spread too small; a fixed inflation factor, tuned by hand for each system, is the usual
remedy. Miyoshi's scheme estimates the factor instead, at every analysed location, from
the innovation statistics there (Desroziers et al. 2005): with ``d = y − H x̄`` the
innovations, ``Y'`` the (un-inflated) prior perturbations in observation space and
``R̃⁻¹`` the localised observation precision at the location, the factor that would make
``E[dᵀ R̃⁻¹ d] = Δ tr(H P Hᵀ R̃⁻¹) + p̃`` hold is

``Δᵒ = (dᵀ R̃⁻¹ d − p̃) / tr(H P Hᵀ R̃⁻¹)``,  with ``p̃ = Σᵢ ρᵢ`` (the localisation weights),

an estimate of variance ``vᵒ = (2 / p̃) ((Δᵇ tr(H P Hᵀ R̃⁻¹) + p̃) / tr(H P Hᵀ R̃⁻¹))²``.
It is combined with the previous cycle's field ``Δᵇ`` (variance ``vᵇ = std²``) as a
scalar Kalman filter: ``Δᵃ = (Δᵇ vᵒ + Δᵒ vᵇ) / (vᵇ + vᵒ)``. The analysis at the
location inflates the prior covariance by ``Δᵃ`` (the perturbations by ``√Δᵃ``), and
``Δᵃ`` is the next cycle's ``Δᵇ`` (persistence). Where no observation reaches a
location the field keeps its value.

``Δ`` here multiplies the *covariance*, as in the paper; the fixed ``inflation`` of
:func:`~xensf.filters.letkf_analysis` multiplies the perturbations (``inflation = 1.02``
is ``Δ = 1.0404``).

Reference: T. Miyoshi (2011), The Gaussian approach to adaptive covariance inflation
and its implementation with the local ensemble transform Kalman filter, Mon. Wea. Rev.
139, 1519–1535.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checks import is_real
from ..errors import InflationLimitWarning, OptionError, warn_user

__all__ = ["AdaptiveInflation"]

# The share of an analysis's state components whose updated field sits at the maximum
# from which the analysis warns (InflationLimitWarning). Each update moves the field
# towards the cycle's estimate as far as the estimate's precision allows (few
# observations in reach: about ``std``; hundreds: most of the way), so a field at the
# bound over half the grid says the innovations keep asking for more than ``maximum``.
SATURATED_SHARE = 0.5


@dataclass(frozen=True)
class AdaptiveInflation:
    """The adaptive inflation field of one cycle, and how far to trust it.

    Give it to :func:`~xensf.filters.letkf_analysis` as ``adaptive_inflation=``; the
    call then returns the analysis and the updated field, which is the next cycle's
    ``adaptive_inflation``.

    Parameters
    ----------
    mean : float or array_like
        ``Δ``, the covariance inflation factor: a number (the same everywhere, e.g. to
        start a run) or ``(..., d)``, one per state component, broadcasting against the
        analysis batch. Components at one location share the value of the first of
        them.
    std : float
        Standard deviation of the previous field as an estimate (``√vᵇ``); larger
        values follow each cycle's innovations faster and more noisily. Miyoshi (2011)
        uses 0.04 for 6-hourly global cycling; 0.05–0.1 suit short-interval
        Lorenz-96 cycling.
    minimum, maximum : float
        Bounds on ``Δ`` after each update (a factor below 1 deflates). A field that
        sits at ``maximum`` says that the ensemble cannot represent the errors the
        observations show (too few members for the localisation, or errors outside the
        ensemble's span): more inflation adds noise there rather than skill, so the
        default caps the covariance factor at 2 (perturbations × 1.41). Raise it for a
        model whose errors the ensemble does span but underestimates.
    damping : float
        Relaxation of the field towards 1 before each update, ``Δᵇ ← 1 + damping (Δᵇ −
        1)`` (as in DART); 1 keeps it as it is (persistence, as in Miyoshi 2011).
    """

    mean: Any = 1.0
    std: float = 0.05
    minimum: float = 1.0
    maximum: float = 2.0
    damping: float = 1.0

    def __post_init__(self):
        if not (is_real(self.damping) and 0 <= self.damping <= 1):
            raise OptionError(
                f"AdaptiveInflation.damping must lie in [0, 1], got {self.damping!r}"
            )
        for name in ("std", "minimum", "maximum"):
            value = getattr(self, name)
            if not (is_real(value) and math.isfinite(value) and value > 0):
                raise OptionError(
                    f"AdaptiveInflation.{name} must be a positive number, got {value!r}"
                )
        if self.minimum > self.maximum:
            raise OptionError(
                f"AdaptiveInflation.minimum ({self.minimum}) is above maximum ({self.maximum})"
            )
        try:
            mean = np.asarray(self.mean, dtype=np.float64)
        except (TypeError, ValueError):
            mean = np.array(np.nan)
        if not np.all(np.isfinite(mean)) or np.any(mean <= 0):
            raise OptionError(
                "AdaptiveInflation.mean must be positive and finite (1.0 is no inflation)"
            )
        # (a field stored in float32 after its clamp may lie a rounding off its bounds)
        slack = 1e-6 * self.maximum
        if np.any(mean < self.minimum - slack) or np.any(mean > self.maximum + slack):
            raise OptionError(
                f"AdaptiveInflation.mean ranges over [{mean.min():g}, {mean.max():g}], beyond "
                f"its bounds [minimum={self.minimum:g}, maximum={self.maximum:g}]: the first "
                "update would clamp it to them, so a start of 0.5 (deflation) would analyse "
                "as 1. Start within the bounds, or widen them (minimum=0.5 lets it deflate)"
            )

    def update(
        self, prior: torch.Tensor, yp: torch.Tensor, innov: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """``Δᵃ`` at each location ``(B, P)`` from ``Δᵇ`` there (``prior``, ``(B, P)``).

        ``yp`` ``(B, N, m)`` and ``innov`` ``(B, m)`` are the prior's observation-space
        perturbations and the innovations, both divided by the observation error
        (whitened), before any inflation; ``w`` ``(B or 1, P, m)`` the localisation
        weights of the observations at each location (0 for a missing observation).
        """
        n_mem = yp.shape[-2]
        w = w.double()
        var = yp.double().square().sum(-2) / (n_mem - 1)  # (B, m): tr(HPHᵀR⁻¹) terms
        trace = (w * var[:, None, :]).sum(-1)  # (B, P)
        fit = (w * innov.double().square()[:, None, :]).sum(-1)
        count = w.sum(-1).expand_as(trace)
        seen = (count > 0) & (trace > 0)
        trace = torch.where(seen, trace, 1.0)
        count = torch.where(seen, count, 1.0)
        prior = 1.0 + self.damping * (prior.double() - 1.0)
        estimate = (fit - count) / trace
        var_obs = 2.0 / count * ((prior * trace + count) / trace).square()
        var_prior = self.std**2
        posterior = (prior * var_obs + estimate * var_prior) / (var_prior + var_obs)
        return torch.where(seen, posterior, prior).clamp(self.minimum, self.maximum)

    def warn_if_saturated(self, field: torch.Tensor) -> None:
        """Warn (:class:`~xensf.InflationLimitWarning`) when ``field``, the updated
        ``Δ`` ``(..., d)`` of a batch of analyses, sits at ``maximum`` at
        :data:`SATURATED_SHARE` of the components of one of them or more: the ensemble
        cannot represent the errors the observations show there. Each analysis (time)
        is judged on its own, so that it does not matter which times share a call (a
        dask chunk)."""
        if self.maximum <= self.minimum or field.numel() == 0:
            return  # a field fixed by its bounds is a fixed inflation
        share = (field >= self.maximum).double().mean(-1)
        if float(share.max()) < SATURATED_SHARE:
            return
        # The text is the same for every analysis of these settings, so that the
        # warnings registry shows it once per calling line (as for any warning), not
        # once per time or chunk; where it is, the analysis's inflation field shows.
        warn_user(
            f"adaptive inflation is at its maximum ({self.maximum:g}) over "
            f"{SATURATED_SHARE:.0%} or more of the analysed state (the analysis's "
            "inflation field shows where): the "
            "innovations there are larger than any inflation of this ensemble explains. "
            "Its errors lie outside the members' span (a feature displaced beyond all of "
            "them, model error) or there are too few members for the localisation; more "
            "inflation adds noise there, not skill. Add members, shorten loc_radius, or "
            "use a latent method (method='latent-ensf-letkf'); see docs/method.md, "
            "'Adaptive inflation'",
            InflationLimitWarning,
        )
