"""LETKF on spatial blocks: a prior chunked along latitude and longitude, block by block.

The LETKF is local: the analysis at a grid point uses the prior there and the
observations within twice the localisation radius, each seen through the observation
operator, whose stencil (a grid point, or the four corners of a bilinear
interpolation) may lie in another block. So the prior is first seen through the
operator at every observation, gathering those stencil points from whichever blocks
hold them (:func:`observed_prior`, a small array ``(T, N, M)``); then every block of the
prior (its times, members, levels and a latitude × longitude block) is analysed in its
own task with those values and all observations, the localisation giving zero weight
to the far ones. No task holds more of the state than its block, and the result equals
the analysis of the unchunked prior to rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ChunkingError, EnsembleError
from ..filters.device import compute_device
from ..obs import grid_locations
from .dims import EnsembleDims
from .geometry import letkf_geometry
from .layout import StateLayout

__all__ = ["analyse_in_blocks", "is_spatially_chunked", "observed_prior", "within_reach"]

#: Names the observations' own grid dims take in the block mapping, so that they are
#: handed whole to every task rather than split with the prior's blocks.
_OBS_GRID = {"lat": "_xensf_obs_lat", "lon": "_xensf_obs_lon"}


def is_spatially_chunked(prior: xr.Dataset, names: list[str], dims: EnsembleDims) -> bool:
    """Whether a state variable is split into several chunks along latitude or longitude."""
    for n in names:
        sizes = prior[n].variable.chunksizes
        if any(len(sizes.get(d, ())) > 1 for d in (dims.lat, dims.lon)):
            return True
    return False


def observed_prior(prior, names, dims, levels, layout: StateLayout, obs) -> xr.DataArray:
    """The prior at every observation, ``(time, member, obs)`` (lazy for dask input).

    Row ``r`` of the plan reads the stacked state at ``obs.indices[r]`` with
    ``obs.weights[r]``; each stacked index is a (variable, level, latitude, longitude)
    point, gathered with vectorised indexing, which reads only the chunks holding them.
    """
    G, nlon = layout.grid_size, layout.grid_shape[1]
    field, point = np.divmod(obs.indices, G)
    ilat, ilon = np.divmod(point, nlon)
    var_of_field = layout.field_of_variable()
    first = np.concatenate([[0], np.cumsum([np.prod(s, dtype=int) for s in layout.level_shapes])])
    parts, order = [], []
    for v, name in enumerate(names):
        rows = np.flatnonzero(var_of_field[field[:, 0]] == v)
        if rows.size == 0:
            continue
        at = {
            dims.lat: xr.DataArray(ilat[rows], dims=("_row", "_corner")),
            dims.lon: xr.DataArray(ilon[rows], dims=("_row", "_corner")),
        }
        level_index = np.unravel_index(field[rows] - first[v], layout.level_shapes[v] or (1,))
        for d, index in zip(levels[name], level_index, strict=False):
            at[d] = xr.DataArray(index, dims=("_row", "_corner"))
        weights = xr.DataArray(obs.weights[rows], dims=("_row", "_corner"))
        values = xr.DataArray(prior[name].variable).isel(at)  # without its coordinates
        parts.append((values * weights).sum("_corner"))
        order.append(rows)
    if not parts:
        return xr.DataArray(np.zeros((0,)), dims="_row")
    out = xr.concat(parts, "_row") if len(parts) > 1 else parts[0]
    out = out.isel(_row=np.argsort(np.concatenate(order)))
    lead = [d for d in (dims.time, dims.member) if d is not None]
    return out.transpose(*lead, "_row")


def analyse_in_blocks(prior, names, dims, levels, values, errors, plan, time_chunks):
    """The LETKF analysis of each latitude × longitude block of ``prior``, lazily.

    Returns one DataArray per state variable with the prior's dims and chunks.
    """
    method = plan.method
    if method.loc_radius is None:
        raise ChunkingError(
            "the prior is split into chunks along latitude/longitude, which needs a "
            "localised LETKF: give loc_radius= (a global ETKF reads every point), or "
            "rechunk the grid into one chunk (ds.chunk({lat: -1, lon: -1}))"
        )
    if method.weight_stride > 1:
        raise ChunkingError(
            "weight_stride interpolates the transforms across the whole grid, and the prior "
            "is split into latitude/longitude blocks: rechunk the grid into one chunk "
            "(ds.chunk({lat: -1, lon: -1})), or drop weight_stride"
        )
    hx = observed_prior(prior, names, dims, levels, plan.layout, plan.obs)

    def bare(da: xr.DataArray, rename: bool = False) -> xr.DataArray:
        out = xr.DataArray(da.variable.data, dims=da.dims)
        if rename:
            out = out.rename({d: _OBS_GRID[k] for k, d in (("lat", dims.lat), ("lon", dims.lon))
                              if d in out.dims})  # fmt: skip
            if out.chunks is not None:
                out = out.chunk({d: -1 for d in out.dims if d != dims.time})
        if time_chunks is not None and dims.time in out.dims:
            out = out.chunk({dims.time: time_chunks})
        return out

    def renamed(core):
        return [_OBS_GRID["lat"] if d == dims.lat else _OBS_GRID["lon"] if d == dims.lon else d
                for d in core]  # fmt: skip

    obs = plan.obs
    order = [d for d in (dims.time, dims.member) if d is not None]
    inputs = [bare(prior[n].transpose(*order, *levels[n], dims.lat, dims.lon)) for n in names]
    core = [[dims.member, *levels[n]] for n in names]
    inputs.append(bare(hx).chunk({"_row": -1}) if hx.chunks is not None else bare(hx))
    core.append([dims.member, "_row"])
    for group, dims_of in ((values, obs.core_dims), (errors, obs.error_core_dims)):
        for da, c in zip(group, dims_of, strict=True):
            inputs.append(bare(da, rename=True))
            core.append(renamed(c))
    lat = (
        prior[dims.lat]
        if dims.lat in prior.coords
        else xr.DataArray(np.arange(prior.sizes[dims.lat], dtype=np.float64), dims=dims.lat)
    )
    lon = (
        prior[dims.lon]
        if dims.lon in prior.coords
        else xr.DataArray(np.arange(prior.sizes[dims.lon], dtype=np.float64), dims=dims.lon)
    )
    chunks = prior[names[0]].variable.chunksizes
    inputs += [bare(lat).chunk({dims.lat: chunks[dims.lat]}),
               bare(lon).chunk({dims.lon: chunks[dims.lon]})]  # fmt: skip
    core += [[], []]
    out = xr.apply_ufunc(
        _analyse_spatial_block,
        *inputs,
        input_core_dims=core,
        output_core_dims=[[dims.member, *levels[n]] for n in names],
        dask="parallelized",
        output_dtypes=list(plan.out_dtypes),
        kwargs={"plan": plan, "spherical": plan.distance == "great_circle"},
        dask_gufunc_kwargs={"allow_rechunk": False},
    )
    return (out,) if len(names) == 1 else out


def within_reach(locations, lat, lon, reach: float, spherical: bool) -> np.ndarray:
    """Which observations may lie within ``reach`` of a point of the block ``lat × lon``.

    A necessary condition, so it never drops one that counts: on a sphere (``reach`` in
    km) the latitude gap to the block's nearest row is at most the angular reach, and,
    away from the poles, the longitude gap at most ``asin(sin d / cos φ)`` at the
    block's highest latitude ``φ``; on a plane, both coordinate gaps at most ``reach``.
    """
    from ..filters.localization import EARTH_RADIUS_KM

    loc = np.asarray(locations, dtype=np.float64)
    if loc.shape[0] == 0:
        return np.zeros(0, bool)
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    gap_y = np.abs(loc[:, :1] - lat[None, :]).min(axis=1)
    if not spherical:
        gap_x = np.abs(loc[:, 1:] - lon[None, :]).min(axis=1)
        return (gap_y <= reach) & (gap_x <= reach)
    d = reach / EARTH_RADIUS_KM  # radians
    d_deg = np.degrees(d)
    ok = gap_y <= d_deg
    pole = np.abs(lat).max() + d_deg
    if pole >= 90.0 or d >= np.pi / 2:
        return ok
    dlon = np.degrees(np.arcsin(min(1.0, np.sin(d) / np.cos(np.radians(pole)))))
    gap_x = np.abs((loc[:, 1:] - lon[None, :] + 180.0) % 360.0 - 180.0).min(axis=1)
    return ok & (gap_x <= dlon)


def _analyse_spatial_block(*arrays: np.ndarray, plan: Any, spherical: bool):
    """One task: the LETKF of one block. Loop axes first (time, lat, lon), then core."""
    import torch

    from ..filters import letkf_analysis

    layout, obs = plan.layout, plan.obs
    nv, no = len(layout.variables), len(obs.variables)
    state = arrays[:nv]
    hx = arrays[nv]
    values = arrays[nv + 1 : nv + 1 + no]
    errors = arrays[nv + 1 + no : nv + 1 + 2 * no]
    lat, lon = arrays[nv + 1 + 2 * no], arrays[nv + 2 + 2 * no]
    lead = 3 if plan.has_time else 2  # loop axes: (time,) lat, lon
    loop = state[0].shape[:lead]
    T = loop[0] if plan.has_time else 1
    nlat, nlon = loop[-2], loop[-1]
    # the state's layout on this block's grid: (T, N, *levels, lat, lon) -> (T, N, d_block)
    block_layout = dataclasses.replace(layout, grid_shape=(nlat, nlon))
    x = block_layout.stack(
        [np.moveaxis(s if plan.has_time else s[None], (1, 2), (-2, -1)) for s in state]
    )
    if not np.all(np.isfinite(x)):
        raise EnsembleError(
            "the prior ensemble has NaN or infinite values in a spatial block; the block "
            "LETKF takes no mask: fill them, or give the grid in one chunk"
        )

    def squeezed(a, ncore):  # (T or 1, *core): without the broadcast lat/lon loop axes
        a = np.asarray(a)
        if a.ndim == ncore:
            return a[None]
        return a.reshape(a.shape[0] if plan.has_time else 1, *a.shape[a.ndim - ncore :])

    hx = squeezed(hx, 2)
    vals = [squeezed(v, len(c)) for v, c in zip(values, obs.core_dims, strict=True)]
    errs = [squeezed(e, len(c)) for e, c in zip(errors, obs.error_core_dims, strict=True)]
    y, err = obs.flatten(vals, errs, T)
    observed = np.isfinite(y) & np.isfinite(err) & (err > 0)
    lat_b, lon_b = np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1)
    if spherical:
        points = grid_locations(lat_b, lon_b)
    else:
        yy, xx = np.meshgrid(lat_b.astype(np.float64), lon_b.astype(np.float64), indexing="ij")
        points = np.stack([yy.ravel(), xx.ravel()], -1)
    n_fields = block_layout.n_fields
    work = plan.work_dtype
    out = x.astype(work, copy=True)
    method = plan.method
    device = compute_device(plan.device)

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=work)).to(device)

    near = within_reach(obs.locations, lat_b, lon_b, 2.0 * float(method.loc_radius), spherical)
    for t in np.flatnonzero((observed & near).any(axis=1)):  # others keep the prior
        sel = observed[t] & near
        geometry = letkf_geometry(
            points, n_fields, obs.locations[sel], obs.indices[sel], layout.grid_size,
            plan.distance, float(method.loc_radius), method.vertical_radius, plan.field_heights,
        )  # fmt: skip
        out[t] = (
            letkf_analysis(
                tensor(x[t]),
                tensor(y[t][sel]),
                None,
                tensor(err[t][sel]),
                inflation=float(method.inflation),
                rtps=float(method.rtps),
                prior_obs=tensor(hx[t][:, sel]),
                **geometry,
            )
            .cpu()
            .numpy()
        )
    # back to (T, lat, lon, N, *levels) per variable, in its dtype
    result = []
    for part, dt in zip(block_layout.unstack(out), plan.out_dtypes, strict=True):
        part = np.moveaxis(part, (-2, -1), (1, 2)).astype(dt, copy=False)
        result.append(part if plan.has_time else part[0])
    return tuple(result) if len(result) > 1 else result[0]
