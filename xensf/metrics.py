"""Skill scores of an ensemble against a truth, on xarray objects."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["area_weights", "ensemble_rmse", "mean_spread", "relative_rmse"]


def ensemble_rmse(
    ensemble: xr.DataArray | xr.Dataset,
    truth: xr.DataArray | xr.Dataset,
    member_dim: str,
    where: xr.DataArray | None = None,
    dims: list[str] | None = None,
    weights: xr.DataArray | None = None,
):
    """Root-mean-square error of the ensemble mean against ``truth``.

    Averaged over ``dims`` (a DataArray or Dataset of the rest), or over every point
    (and time, level) of ``truth`` as a float; only where ``where`` is true. With
    ``dims``, ``weights`` (e.g. cos(latitude), :func:`area_weights`) weight the mean
    when all of its dims are among ``dims``.
    """
    error = ensemble.mean(member_dim) - truth
    if where is not None:
        error = error.where(where)
    if dims is not None:
        squared = error**2
        if weights is not None and set(weights.dims) <= set(dims):
            return squared.weighted(weights).mean(dims) ** 0.5
        return squared.mean(dims) ** 0.5
    return float(np.sqrt((error**2).mean()))


def mean_spread(
    ensemble: xr.DataArray, member_dim: str, where: xr.DataArray | None = None
) -> float:
    """Root of the mean ensemble variance (``ddof=1``), over all points or ``where``."""
    var = ensemble.var(member_dim, ddof=1)
    if where is not None:
        var = var.where(where)
    return float(np.sqrt(var.mean()))


def relative_rmse(
    state: xr.Dataset,
    truth: xr.Dataset,
    scales: dict[str, float],
    member_dim: str = "member",
    dims: tuple[str, ...] = ("y", "x"),
) -> xr.DataArray:
    """``‖(mean − truth)/s‖ / ‖truth/s‖`` over ``dims`` (the twin experiments' score).

    Each variable ``v`` of ``scales`` is divided by its scale ``s_v`` (so that η in
    metres does not drown u and v in m/s); the ensemble mean is taken first where
    ``state`` has ``member_dim``.
    """
    num = 0.0
    den = 0.0
    for v, s in scales.items():
        mean = state[v].mean(member_dim) if member_dim in state[v].dims else state[v]
        num = num + (((mean - truth[v]) / s) ** 2).sum(dims)
        den = den + ((truth[v] / s) ** 2).sum(dims)
    return np.sqrt(num / den)


def area_weights(latitude: xr.DataArray) -> xr.DataArray:
    """cos(latitude), the relative area of a regular latitude/longitude grid's rows.

    Negative values at the poles from rounding are clipped to 0.
    """
    return np.cos(np.deg2rad(latitude)).clip(min=0.0)
