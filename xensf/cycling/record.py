"""What a run records: per cycle, the ensemble statistics with CF attributes; per run, its settings.

Every cycle gives one row along ``time``: for each state variable its forecast and
analysis means and spreads (and with ``members=True`` the members), and the number of
observations used. Attributes come from the input (less those that describe its own
encoding) with CF ``cell_methods`` for the statistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..bridge.metadata import (
    CF_CONVENTIONS,
    json_text,
    mark_realization,
    netcdf_attr_value,
    with_history,
    xensf_version,
)
from .context import OBSERVATION_STATISTICS, CycleContext
from .store import FORMAT, FORMAT_ATTR, RUN_KIND, RUN_MARKER, TIME

__all__ = ["cycle_record", "run_attrs"]


# Attributes of the inputs that describe their own encoding or point at variables the
# store does not have; copying them would make the store wrong or not CF-conformant.
_DROPPED_ATTRS = (
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "dtype",
    "coordinates",
    "grid_mapping",
    "ancillary_variables",
    "cell_measures",
    "bounds",
)

_STATISTICS = {
    "forecast_mean": ("forecast ensemble mean", "realization: mean"),
    "forecast_spread": ("forecast ensemble spread", "realization: standard_deviation"),
    "analysis_mean": ("analysis ensemble mean", "realization: mean"),
    "analysis_spread": ("analysis ensemble spread", "realization: standard_deviation"),
}


def cycle_record(
    ctx: CycleContext,
    t: Any,
    forecast,
    analysis,
    count: int,
    fit: dict | None = None,
    fields: dict[str, xr.DataArray] | None = None,
) -> xr.Dataset:
    """One cycle as a Dataset with a length-1 ``time`` dim.

    ``fit`` holds the observation-space statistics of each variable
    (:meth:`CycleContext.fit_to_observations`); None for a cycle without observations.
    ``fields`` are the method's outputs that the run carries on (fields on the grid,
    numbers: :meth:`CycleContext.outputs`), as they stand after this cycle.
    """
    state0, names, member, members = ctx.state0, ctx.names, ctx.member, ctx.members
    data = {}
    for v in names:
        da = state0[v]
        axis = da.dims.index(member)
        reduced = tuple(d for d in da.dims if d != member)
        base = _clean_attrs(da.attrs)
        label = base.get("long_name", v)
        for kind, values in (("forecast", forecast[v]), ("analysis", analysis[v])):
            for stat, reduce in (("mean", _mean), ("spread", _spread)):
                description, method = _STATISTICS[f"{kind}_{stat}"]
                attrs = dict(base)
                attrs["long_name"] = f"{label}, {description}"
                earlier = attrs.get("cell_methods")
                attrs["cell_methods"] = f"{earlier} {method}" if earlier else method
                data[f"{v}_{kind}_{stat}"] = xr.Variable(
                    (TIME, *reduced), reduce(values, axis).astype(da.dtype)[None], attrs
                )
            if members:
                attrs = dict(base)
                attrs["long_name"] = f"{label}, {kind} ensemble"
                data[f"{v}_{kind}"] = xr.Variable((TIME, *da.dims), values[None], attrs)
        for stat, description in OBSERVATION_STATISTICS.items():
            attrs = {"long_name": f"{label}: {description}"}
            if stat == "count":
                attrs["units"] = "1"
                value = np.array([0 if fit is None else fit[v][stat]], dtype=np.int64)
            else:
                attrs.update({k: base[k] for k in ("units",) if k in base})
                value = np.array([np.nan if fit is None else fit[v][stat]], dtype=np.float64)
            data[f"{v}_{stat}"] = xr.Variable((TIME,), value, attrs)
    for name, da in (fields or {}).items():
        data[name] = xr.Variable((TIME, *da.dims), np.asarray(da.values)[None], dict(da.attrs))
    data["obs_count"] = xr.Variable(
        (TIME,),
        np.array([count], dtype=np.int64),
        {"long_name": "number of observations assimilated", "units": "1"},
    )
    keep = {d for v in names for d in state0[v].dims if members or d != member}
    coords = {}
    for name, coord in state0.coords.items():
        if name != TIME and set(coord.dims) <= keep and coord.ndim > 0:
            coords[name] = xr.Variable(coord.dims, coord.values, _clean_attrs(coord.attrs))
    if members:
        if member not in coords:
            coords[member] = xr.Variable(member, np.arange(state0.sizes[member]))
        mark_realization(coords[member])
        coords[member].attrs.setdefault("units", "1")
    time_attrs = {"standard_name": "time", "axis": "T", "long_name": "analysis time"}
    if not isinstance(t, np.datetime64):
        time_attrs.update(
            {
                k: v
                for k, v in _clean_attrs(dict(getattr(state0.get(TIME), "attrs", {}))).items()
                if k == "units"
            }
        )
    coords[TIME] = xr.Variable((TIME,), np.asarray([t]), time_attrs)
    return xr.Dataset(data, coords=coords)


def _mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis, dtype=np.float64)


def _spread(x: np.ndarray, axis: int) -> np.ndarray:
    return x.std(axis=axis, ddof=1, dtype=np.float64)


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: netcdf_attr_value(v) for k, v in attrs.items() if k not in _DROPPED_ATTRS}


def run_attrs(input_attrs, settings, method: str, call: str) -> dict[str, Any]:
    """The global attributes of a run: the input's, CF's, and the run's settings."""
    attrs = {k: netcdf_attr_value(v) for k, v in input_attrs.items() if not k.startswith("xensf_")}
    attrs = with_history(attrs, call)
    attrs.update(
        {
            "Conventions": CF_CONVENTIONS,
            "title": f"Cycling data assimilation ({method}) made with xensf",
            RUN_MARKER: RUN_KIND,
            FORMAT_ATTR: FORMAT,
            "xensf_version": xensf_version(),
            "xensf_method": method,
            "xensf_seed": settings["seed"],
            "xensf_every": settings["every"],
            "xensf_members": int(settings["members"]),
            "xensf_obs_error": netcdf_attr_value(settings["obs_error"]),
            "xensf_forecaster": json_text(settings["forecaster"]),
            "xensf_obs": json_text(settings["obs"]),
            "xensf_initial_ensemble": json_text(settings["initial_ensemble"]),
            "xensf_settings": json_text(settings),
        }
    )
    for key, value in settings["options"].items():
        attrs[f"xensf_{key}"] = netcdf_attr_value(value)
    if settings["latent_model"] is not None:
        attrs["xensf_latent_model_sha256"] = settings["latent_model"]["weights_sha256"]
    return attrs
