"""Observation-space diagnostics: innovations (O − B), residuals (O − A), Desroziers.

:func:`innovations` puts each observation next to the prior ensemble (and, if given,
the analysis ensemble) seen through the same observation operator the analysis uses,
so that what a user checks is what the filter saw. It computes eagerly (a diagnostic
is small: one value per observation and time).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import MaskedObservationWarning, ObservationMismatchError, warn_user
from .alignment import aligned_like
from .analysis import prepare_state
from .dims import find_dims, flat_indexes, scalar_levels, state_variables
from .metadata import cf_coordinates
from .observations import prepare_observations
from .orientation import in_the_state_order
from .rotated import FRAME_NAMES
from .seam import closing_column, folded
from .signature import fields_of
from .spatial import observed_prior
from .units import dequantify

__all__ = ["innovations"]


def innovations(
    prior: xr.Dataset,
    obs: xr.Dataset | xr.DataArray,
    analysis: xr.Dataset | None = None,
    *,
    obs_error: Any = None,
    member_dim: str | None = None,
    lat_dim: str | None = None,
    lon_dim: str | None = None,
    time_dim: str | None = None,
    obs_dim: str | None = None,
    variables: str | list[str] | None = None,
    with_errors: bool = True,
    obs_time_tolerance: Any = None,
) -> xr.Dataset:
    """The observations beside the prior (and analysis) ensemble at their locations.

    See :meth:`xensf.accessor.EnsfDatasetAccessor.innovations`. ``with_errors=False``
    asks for no observation errors (the latent methods need none): the result then has
    no ``obs_error`` and no Desroziers figures.
    """
    prior, _ = dequantify(prior)
    obs, _ = dequantify(flat_indexes(obs))
    dims = find_dims(
        prior, member_dim=member_dim, lat_dim=lat_dim, lon_dim=lon_dim, time_dim=time_dim
    )
    # a closing column is its first column again: one place, observed and read once
    seam = closing_column(prior, dims)
    obs = folded(obs, dims)
    if seam is not None:
        prior, analysis = seam.fold(prior), folded(analysis, dims)
    obs = in_the_state_order(obs, prior, dims)
    names = state_variables(
        prior, (dims.member, dims.lat, dims.lon), variables, purpose="to compare with"
    )
    levels, layout, grid = prepare_state(prior, dims, names, spatial_blocks=True)
    plan, values, errors = prepare_observations(
        obs, prior, layout, dims, obs_error, grid, obs_dim=obs_dim, errors="required" if with_errors else "ignored",
        obs_time_tolerance=obs_time_tolerance,
    )  # fmt: skip
    times = prior[dims.time].values if dims.time is not None else None
    n_times = 1 if times is None else times.size

    def at_obs(ens: xr.Dataset):  # mean and spread (T, M)
        # the members at the observations, gathered by dim name (whatever the order of
        # the dims, chunked or not: only the chunks holding observed points are read)
        hx = observed_prior(ens, names, dims, levels, layout, plan)
        hx = np.asarray(hx.values, np.float64)  # (T, N, M)
        hx = hx if times is not None else hx[None]
        return hx.mean(1), hx.std(1, ddof=1)

    y, err = plan.flatten(
        [np.asarray(v.values) for v in values], [np.asarray(e.values) for e in errors], n_times
    )
    seen = np.isfinite(y) & np.isfinite(err)
    b_mean, b_spread = at_obs(prior)
    on_mask = seen & ~np.isfinite(b_mean)  # every point it reads is masked (land)
    if on_mask.any():
        warn_user(
            f"{int(on_mask.sum())} observations fall on masked points of the prior (NaN "
            "in every member) and are left out, as the analysis leaves them out",
            MaskedObservationWarning,
        )
        seen &= ~on_mask
    out = {
        "observation": y,
        "obs_error": err,
        "prior_mean": b_mean,
        "prior_spread": b_spread,
        "omb": y - b_mean,
    }
    if analysis is not None:
        if not isinstance(analysis, xr.Dataset):
            raise ObservationMismatchError(
                f"the analysis must be the Dataset assimilate returned, got "
                f"{type(analysis).__name__}"
            )
        missing = [n for n in names if n not in analysis.data_vars]
        if missing:
            raise ObservationMismatchError(
                f"the analysis must have the prior's state variables {names}; it lacks "
                f"{missing} (it has {list(analysis.data_vars)})"
            )
        for n in names:
            if analysis[n].sizes != prior[n].sizes:
                raise ObservationMismatchError(
                    f"the analysis's {n!r} has sizes {dict(analysis[n].sizes)}, the prior's "
                    f"{dict(prior[n].sizes)}: give the analysis made from this prior"
                )
        # on the prior's points and in its units (a degC analysis was read as kelvin)
        analysis = aligned_like(prior, analysis, names, what="analysis")
        a_mean, a_spread = at_obs(analysis)
        out.update(analysis_mean=a_mean, analysis_spread=a_spread, oma=y - a_mean)
    out = {k: np.where(seen, v, np.nan) for k, v in out.items()}
    if not with_errors:
        del out["obs_error"]  # placeholders, not errors

    field = plan.indices[:, 0] // layout.grid_size
    var_of_row = np.asarray(layout.variables)[layout.field_of_variable()[field]]
    obs_dims = ("time", "obs") if times is not None else ("obs",)
    data_vars = {
        k: (obs_dims, v if times is not None else v[0], {"long_name": _LONG_NAMES[k]})
        for k, v in out.items()
    }
    where = (
        {  # the positions the filters use: on a rotated-pole grid, in its frame
            name: {"standard_name": name, "units": "degrees"} for name in FRAME_NAMES
        }
        if grid.rotated
        else {
            "latitude": {"standard_name": "latitude", "units": "degrees_north"},
            "longitude": {"standard_name": "longitude", "units": "degrees_east"},
        }
        if grid.geographic
        else {str(dims.lat): {}, str(dims.lon): {}}
    )
    coords: dict[str, Any] = {
        "variable": ("obs", var_of_row, {"long_name": "observed state variable"})
    }
    for (name, attrs), column in zip(where.items(), plan.locations.T, strict=True):
        attrs = {"long_name": f"{name} of the observation", **attrs}
        if name == "longitude":  # as the state's are: 0 … 360 beside a grid in them
            column = grid.in_own_longitudes(column)
        coords[name] = ("obs", column, attrs)
    for lev, (column, attrs) in _levels_of_fields(prior, layout).items():
        coords[lev] = ("obs", column[field], attrs)  # where on the state's levels
    for lev in scalar_levels(prior):  # a state at one level: its observations' level
        coords[lev] = prior[lev].variable
    if times is not None:  # the analysis times: valid times (reference times are refused)
        coords["time"] = ("time", times, {"standard_name": "time", "long_name": "analysis time"})
    result = xr.Dataset(data_vars, coords=coords)
    # gridded observations: only the points observed at some time
    result = result.isel(obs=np.flatnonzero(seen.any(axis=0)))
    for v in names if with_errors else ():
        result.attrs.update(_desroziers(out, seen & (var_of_row == v)[None, :], v))
    result.attrs["title"] = "observation-space diagnostics made with xensf"
    return cf_coordinates(result)


def _levels_of_fields(prior: xr.Dataset, layout) -> dict[str, tuple[np.ndarray, dict]]:
    """Per level dim of the state, its label at each field of the state vector
    (:func:`~xensf.bridge.signature.fields_of`; NaN, or None for labels that are not
    numbers, where the field's variable has no such level) and its coordinate's
    attributes."""
    fields = [levels for _, levels in fields_of(prior, layout)]
    out = {}
    for lev in dict.fromkeys(d for var_dims in layout.level_dims for d in var_dims):
        numeric = lev not in prior.coords or prior[lev].dtype.kind in "fiu"
        column = np.array([f.get(lev, np.nan if numeric else None) for f in fields],
                          float if numeric else object)  # fmt: skip
        out[lev] = (column, dict(prior[lev].attrs) if lev in prior.coords else {})
    return out


_LONG_NAMES = {
    "observation": "observation, in the state's units",
    "obs_error": "observation error standard deviation",
    "prior_mean": "prior ensemble mean at the observation (the filter's operator)",
    "prior_spread": "prior ensemble standard deviation at the observation",
    "omb": "innovation, observation minus prior mean (O - B)",
    "analysis_mean": "analysis ensemble mean at the observation",
    "analysis_spread": "analysis ensemble standard deviation at the observation",
    "oma": "residual, observation minus analysis mean (O - A)",
}


def _desroziers(out: dict[str, np.ndarray], mask: np.ndarray, name: str) -> dict[str, Any]:
    """Consistency figures of one variable (Desroziers et al. 2005), as attributes.

    ``E[(O−B)²]`` against ``σ_b² + σ_o²`` always; with an analysis, also
    ``E[(O−B)(O−A)]`` against ``σ_o²`` (a consistent system has each pair equal).
    """
    count = int(mask.sum())
    attrs: dict[str, Any] = {f"{name}_count": count}
    if count == 0:
        return attrs

    def mean(values):
        return float(np.mean(values[mask]))

    attrs[f"{name}_mean_omb"] = mean(out["omb"])
    attrs[f"{name}_mean_omb_squared"] = mean(out["omb"] ** 2)
    attrs[f"{name}_mean_prior_plus_obs_variance"] = mean(
        out["prior_spread"] ** 2 + out["obs_error"] ** 2
    )
    attrs[f"{name}_mean_obs_variance"] = mean(out["obs_error"] ** 2)
    if "oma" in out:
        attrs[f"{name}_mean_omb_times_oma"] = mean(out["omb"] * out["oma"])
        attrs[f"{name}_mean_oma"] = mean(out["oma"])
    return attrs
