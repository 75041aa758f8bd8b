"""Skill scores of an ensemble against a truth, on xarray objects."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["ensemble_rmse", "mean_spread"]


def ensemble_rmse(
    ensemble: xr.DataArray, truth: xr.DataArray, member_dim: str, where: xr.DataArray | None = None
) -> float:
    """Root-mean-square error of the ensemble mean against ``truth``.

    Averaged over every point (and time, level) of ``truth``, or only where ``where``
    is true.
    """
    error = ensemble.mean(member_dim) - truth
    if where is not None:
        error = error.where(where)
    return float(np.sqrt((error**2).mean()))


def mean_spread(
    ensemble: xr.DataArray, member_dim: str, where: xr.DataArray | None = None
) -> float:
    """Root of the mean ensemble variance (``ddof=1``), over all points or ``where``."""
    var = ensemble.var(member_dim, ddof=1)
    if where is not None:
        var = var.where(where)
    return float(np.sqrt(var.mean()))
