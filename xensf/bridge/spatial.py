"""Analyses on spatial blocks: a prior chunked along latitude and longitude, block by block.

**LETKF.**
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

**EnSF** with the paired prior score and the damped likelihood is componentwise: a
point's update reads only its own members, its own observations and a scale per field,
so each block is analysed with the observations on its points (each must read one grid
point), the default scale (the prior spread per field, a mean over the whole grid) is
reduced over the whole grid first, and the noise is drawn per tile of the whole grid
(:class:`~xensf.filters.noise.TiledNoise`): the result equals the unchunked analysis to
rounding. The mixture score and the Gaussian likelihood couple every point of the grid
and are refused on blocks.

**Both** hand every block the prior at every observation, so that each runs the same
checks of the observations against the prior (:mod:`xensf.bridge.plausibility`) as an
analysis in one chunk, on the same numbers, and which observations read a point of a
land mask, so that each drops or re-weights them as one chunk does
(:mod:`xensf.bridge.masks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ChunkingError
from ..filters.device import compute_device
from ..obs import grid_locations, point_locations
from .dims import EnsembleDims
from .geometry import block_anchors, letkf_geometry
from .graph_copies import bound, cloned
from .layout import StateLayout
from .masks import mask_of, masked_counts, times_by_mask, warn_masked_observations
from .observations import obs_level_names
from .plausibility import check_against_the_prior
from .shared import shared_input, shared_value

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


def observed_prior(prior, names, dims, levels, layout: StateLayout, obs, *, mask_reads=False):
    """The prior at every observation, ``(time, member, obs)`` (lazy for dask input).

    Row ``r`` of the plan reads the stacked state at ``obs.indices[r]`` with
    ``obs.weights[r]``; each stacked index is a (variable, level, latitude, longitude)
    point, gathered with vectorised indexing, which reads only the chunks holding them.
    NaN points (a land mask) are left out and the other weights scaled up, as the
    analysis does; a row that reads NaN points only is NaN. With ``mask_reads``, also
    whether each row reads a NaN point with a weight, ``(time, obs)``: a pair.
    """
    G, nlon = layout.grid_size, layout.grid_shape[1]
    field, point = np.divmod(obs.indices, G)
    ilat, ilon = np.divmod(point, nlon)
    var_of_field = layout.field_of_variable()
    first = np.concatenate([[0], np.cumsum([np.prod(s, dtype=int) for s in layout.level_shapes])])
    parts, reads, order = [], [], []
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
        values = xr.DataArray(prior[name].variable).isel(at)  # without its coordinates
        kept_dims = [d for d in values.dims if d not in ("_row", "_corner")]
        # on the bare arrays (numpy or dask): a few operations, not one xarray call each
        v = values.transpose(*kept_dims, "_row", "_corner").data
        weights = obs.weights[rows]  # (_row, _corner)
        # as the analysis reads a masked prior (NaN at land points): the weights of the
        # unmasked points scaled up to the whole, NaN where every point read is masked
        missing = np.isnan(v)
        kept = np.where(missing, 0.0, weights)
        total = kept.sum(-1)
        scale = weights.sum(-1) / np.where(total != 0, total, np.nan)
        part = (np.where(missing, 0.0, v) * kept).sum(-1) * scale
        parts.append(xr.DataArray(part, dims=(*kept_dims, "_row")))
        if mask_reads:
            read = xr.DataArray((missing & (weights != 0)).any(-1), dims=(*kept_dims, "_row"))
            reads.append(read.any(dims.member))
        order.append(rows)
    lead = [d for d in (dims.time, dims.member) if d is not None]
    if not parts:  # no observation (zero stations): no rows, at every time and member
        shape = (*(prior.sizes[d] for d in lead), 0)
        out = xr.DataArray(np.zeros(shape, prior[names[0]].dtype), dims=(*lead, "_row"))
        return (out, out.isel({dims.member: 0}, drop=True) != 0) if mask_reads else out
    back = np.argsort(np.concatenate(order))
    out = (xr.concat(parts, "_row") if len(parts) > 1 else parts[0]).isel(_row=back)
    out = out.transpose(*lead, "_row")
    if not mask_reads:
        return out
    read = (xr.concat(reads, "_row") if len(reads) > 1 else reads[0]).isel(_row=back)
    return out, read.transpose(*lead[:-1], "_row")


def analyse_in_blocks(prior, names, dims, levels, values, errors, plan, time_chunks, grid):
    """The analysis of each latitude × longitude block of ``prior``, lazily.

    ``grid``: the prior's :class:`~xensf.bridge.grid.GridCoords`. Returns one DataArray
    per state variable (and the grid outputs) with the prior's dims and chunks.
    """
    from .methods import EnSF

    if isinstance(plan.method, EnSF):
        return _ensf_in_blocks(prior, names, dims, levels, values, errors, plan, time_chunks)
    method = plan.method
    if method.loc_radius is None:
        raise ChunkingError(
            "the prior is split into chunks along latitude/longitude, which needs a "
            "localised LETKF: give loc_radius= (a global ETKF reads every point), or "
            f"rechunk the grid into one chunk ({_one_chunk(dims)})"
        )
    hx, reads_mask = _whole_observed_prior(
        prior, names, dims, levels, plan, time_chunks, mask_reads=True
    )
    state, state_core, observed, observed_core = _block_inputs(
        prior, names, dims, levels, values, errors, plan.obs, time_chunks
    )
    state = _after(state, [hx, reads_mask])
    inputs = [*state, hx, reads_mask, *observed]
    core = [*state_core, [dims.member, "_row"], ["_row"], *observed_core]
    chunks = prior[names[0]].variable.chunksizes
    # the block's coordinates: 1-D axes, or a curvilinear grid's 2-D block
    coord_dims = [(dims.lat, dims.lon)] * 2 if grid.curvilinear else [(dims.lat,), (dims.lon,)]
    for values_, cdims in zip((grid.lat, grid.lon), coord_dims, strict=True):
        inputs.append(
            xr.DataArray(np.asarray(values_, np.float64), dims=cdims).chunk(
                {d: chunks[d] for d in cdims}
            )
        )
    core += [[], []]
    adaptive = method.adaptive_inflation not in (None, False)
    if adaptive or method.weight_stride > 1:  # where each block lies in the grid
        inputs += _block_indices(prior, dims, chunks)
        core += [[], []]
    inputs.append(shared_input(plan, lazy=True))
    core.append([])
    out = xr.apply_ufunc(
        _analyse_spatial_block,
        *inputs,
        input_core_dims=core,
        output_core_dims=[[dims.member, *levels[n]] for n in names] + [[]] * adaptive,
        dask="parallelized",
        output_dtypes=list(plan.out_dtypes) + [np.float64] * adaptive,
        kwargs={
            "spherical": plan.distance == "great_circle",
            "curvilinear": grid.curvilinear,
        },
        dask_gufunc_kwargs={"allow_rechunk": False},
    )
    return (out,) if isinstance(out, xr.DataArray) else out


def _one_chunk(dims: EnsembleDims) -> str:
    """The rechunk that puts the grid in one chunk, in the data's own dim names."""
    return f"ds.chunk({{{dims.lat!r}: -1, {dims.lon!r}: -1}})"


def within_reach(locations, lat, lon, reach: float, spherical: bool) -> np.ndarray:
    """Which observations may lie within ``reach`` of a point of the block ``lat × lon``.

    A necessary condition, so it never drops one that counts: on a sphere (``reach`` in
    km) the latitude gap to the block's nearest row is at most the angular reach (with
    ``lon=None``, ``lat`` the block's extreme latitudes: the gap to that band), and,
    away from the poles, the longitude gap at most ``asin(sin d / cos φ)`` at the
    block's highest latitude ``φ``; on a plane, both coordinate gaps at most ``reach``.
    """
    from ..filters.localization import EARTH_RADIUS_KM

    loc = np.asarray(locations, dtype=np.float64)
    if loc.shape[0] == 0:
        return np.zeros(0, bool)
    lat = np.asarray(lat, np.float64)
    gap_y = np.abs(loc[:, :1] - lat[None, :]).min(axis=1)
    if lon is None:  # latitudes only (the extremes of a curvilinear block)
        inside = (loc[:, 0] >= lat.min()) & (loc[:, 0] <= lat.max())
        gap_y = np.where(inside, 0.0, gap_y)
        d_deg = np.degrees(reach / EARTH_RADIUS_KM) if spherical else reach
        return gap_y <= d_deg
    lon = np.asarray(lon, np.float64)
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


def _analyse_spatial_block(*arrays: np.ndarray, spherical: bool, curvilinear: bool):
    """One task: the LETKF of one block. Loop axes first (time, lat, lon), then core;
    the last input holds the plan."""
    import torch

    from ..filters import letkf_analysis

    plan, arrays = shared_value(arrays[-1]), arrays[:-1]
    layout, obs = plan.layout, plan.obs
    nv, no = len(layout.variables), len(obs.variables)
    state = arrays[:nv]
    hx, reads_mask = arrays[nv], arrays[nv + 1]
    arrays = (*arrays[:nv], hx, *arrays[nv + 2 :])  # the indices below as without it
    values = arrays[nv + 1 : nv + 1 + no]
    errors = arrays[nv + 1 + no : nv + 1 + 2 * no]
    lat, lon = arrays[nv + 1 + 2 * no], arrays[nv + 2 + 2 * no]
    T, block_layout, x, masked = _block_state(state, plan)
    method = plan.method
    settings = method.adaptive_inflation
    field = per_component = anchors = None
    if settings not in (None, False) or method.weight_stride > 1:
        rows, cols = (np.asarray(a).ravel() for a in arrays[nv + 3 + 2 * no : nv + 5 + 2 * no])
    if method.weight_stride > 1:  # the whole grid's anchors around this block
        anchors = block_anchors(
            plan.grid_locations, layout.grid_shape, method.weight_stride, rows, cols
        )
    if settings not in (None, False):  # the block's part of the inflation field
        whole = np.broadcast_to(np.asarray(settings.mean, np.float64), (layout.grid_size,))
        start = whole.reshape(layout.grid_shape)[np.ix_(rows, cols)].ravel()
        field = np.tile(start, (T, 1))  # times without observations in reach keep it
        per_component = dataclasses.replace(settings, mean=np.tile(start, layout.n_fields))
    y, err, hx = _observations_read_off_the_mask(
        plan, *_block_observations(values, errors, plan, T), hx, reads_mask
    )
    observed = np.isfinite(y) & np.isfinite(err) & (err > 0)
    check_against_the_prior(hx, y, err, observed, plan)  # the same in every block
    lat_b, lon_b = np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1)
    if curvilinear:  # the block's points, in C order
        points = point_locations(lat_b, lon_b)
        lat_b, lon_b = lat_b[[lat_b.argmin(), lat_b.argmax()]], None
    elif spherical:
        points = grid_locations(lat_b, lon_b)
    else:
        yy, xx = np.meshgrid(lat_b.astype(np.float64), lon_b.astype(np.float64), indexing="ij")
        points = np.stack([yy.ravel(), xx.ravel()], -1)
    n_fields = block_layout.n_fields
    work = plan.work_dtype
    out = x.astype(work, copy=True)
    device = compute_device(plan.device)

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=work)).to(device)

    reach = 2.0 * float(method.loc_radius)
    near = within_reach(obs.locations, lat_b, lon_b, reach, spherical)
    if anchors is not None and anchors[0].size:  # and of the anchors outside the block
        extra = anchors[0]
        extra_lon = None if lon_b is None else np.unique(extra[:, 1])
        near |= within_reach(obs.locations, np.unique(extra[:, 0]), extra_lon, reach, spherical)
    # Every time with an observation anywhere is analysed, as the whole grid is: a
    # block that no observation reaches still gets the inflation (its points' local
    # analyses have no observation), and only a time without any keeps the prior.
    for t in np.flatnonzero(observed.any(axis=1)):
        sel = observed[t] & near
        geometry = letkf_geometry(
            points, n_fields, obs.locations[sel], obs.indices[sel], layout.grid_size,
            plan.distance, float(method.loc_radius), method.vertical_radius, plan.field_heights,
            anchors=anchors,
            variables=None if method.cross_variable else block_layout.field_of_variable(),
        )  # fmt: skip
        analysis = letkf_analysis(
            tensor(x[t]),
            tensor(y[t][sel]),
            None,
            tensor(err[t][sel]),
            inflation=float(method.inflation),
            rtps=float(method.rtps),
            prior_obs=tensor(hx[t][:, sel]),
            adaptive_inflation=per_component,
            **geometry,
        )
        if per_component is not None:
            analysis, updated = analysis
            field[t] = updated.mean.cpu().numpy()[: block_layout.grid_size]
        out[t] = analysis.cpu().numpy()
    out = _masked_back(out, masked)
    # back to (T, lat, lon, N, *levels) per variable, in its dtype
    result = []
    for part, dt in zip(block_layout.unstack(out), plan.out_dtypes, strict=True):
        part = np.moveaxis(part, (-2, -1), (1, 2)).astype(dt, copy=False)
        result.append(part if plan.has_time else part[0])
    if field is not None:  # (T, lat, lon): a loop-shaped output
        field = field.reshape(T, *block_layout.grid_shape)
        result.append(field if plan.has_time else field[0])
    return tuple(result) if len(result) > 1 else result[0]


def _whole_observed_prior(prior, names, dims, levels, plan, time_chunks, *, mask_reads=False):
    """:func:`observed_prior` in the analysis's time chunks, whole along the
    observations: every block's task gets all of it (with ``mask_reads``, a pair)."""
    gathered = observed_prior(
        _own_reads(prior, names), names, dims, levels, plan.layout, plan.obs,
        mask_reads=mask_reads,
    )  # fmt: skip
    out = []
    for part in gathered if mask_reads else (gathered,):
        part = _bare(part, dims, time_chunks)
        out.append(part.chunk({"_row": -1}) if part.chunks is not None else part)
    return tuple(out) if mask_reads else out[0]


def _bare(da: xr.DataArray, dims: EnsembleDims, time_chunks) -> xr.DataArray:
    """``da``'s data without its coordinates (the result takes the prior's), in the
    analysis's time chunks."""
    out = xr.DataArray(da.variable.data, dims=da.dims)
    if time_chunks is not None and dims.time in out.dims:
        out = out.chunk({dims.time: time_chunks})
    return out


def _block_inputs(prior, names, dims, levels, values, errors, obs, time_chunks):
    """The block mapping's state inputs (loop dims first, then member and levels) and
    observation inputs (whole in every task: their grid dims renamed, one chunk), each
    with its core dims: ``(state, state_core, observed, observed_core)``."""
    order = [d for d in (dims.time, dims.member) if d is not None]
    state = [
        _bare(prior[n].transpose(*order, *levels[n], dims.lat, dims.lon), dims, time_chunks)
        for n in names
    ]
    grid_name = {dims.lat: _OBS_GRID["lat"], dims.lon: _OBS_GRID["lon"], **obs_level_names(levels)}
    observed, observed_core = [], []
    for group, dims_of in ((values, obs.core_dims), (errors, obs.error_core_dims)):
        for da, c in zip(group, dims_of, strict=True):
            out = _bare(da, dims, time_chunks).rename(
                {d: grid_name[d] for d in da.dims if d in grid_name}
            )
            if out.chunks is not None:
                out = out.chunk({d: -1 for d in out.dims if d != dims.time})
            observed.append(out)
            observed_core.append([grid_name.get(d, d) for d in c])
    return state, [[dims.member, *levels[n]] for n in names], observed, observed_core


def _own_reads(prior: xr.Dataset, names) -> xr.Dataset:
    """``prior`` with the state variables' chunks read (or computed) anew, for a gather
    or reduction over the whole grid that every block waits for.

    Sharing the blocks' own reads, every chunk would stay in memory from the gather
    until its block is analysed (at 0.25° with stations everywhere: the whole observed
    variable); copied (:func:`~xensf.bridge.graph_copies.cloned`), a chunk is released
    as soon as it is gathered. A prior that is costly to compute is computed twice: write it
    to zarr, or persist it, first.
    """
    out = prior.copy(deep=False)
    for n in names:
        data = prior[n].variable.data
        out[n] = prior[n].copy(data=cloned(data, f"xensf-gather-{data.name}"), deep=False)
    return out


def _after(state: list[xr.DataArray], first: list[xr.DataArray]) -> list[xr.DataArray]:
    """The blocks' state inputs, read only once ``first`` (the whole-grid gathers) is
    computed, where the analysis will run on a distributed cluster.

    Distributed hands root tasks to idle workers: while the gathers run, the workers
    would read many blocks ahead and hold them (at 0.5°, six blocks per worker). Bound
    to the gathers (:func:`~xensf.bridge.graph_copies.bound`) they are read as their blocks
    run, and the scheduler's queuing keeps that to about one per thread. The local
    schedulers order tasks by ``dask.order`` alone, which reads every bound block as
    soon as the gathers end: there they stay root tasks.
    """
    from dask.base import get_scheduler

    lazy = [f.data for f in first if f.chunks is not None]
    client = getattr(get_scheduler(), "__self__", None)
    if not lazy or type(client).__module__.split(".")[0] != "distributed":
        return state
    seed = "xensf-blocks-" + "-".join(a.name for a in lazy)
    return [s.copy(data=bound(s.data, lazy, seed)) for s in state]


def _block_indices(prior, dims: EnsembleDims, chunks) -> list[xr.DataArray]:
    """Row and column indices of the grid, chunked as the prior: where a block lies."""
    return [
        xr.DataArray(np.arange(prior.sizes[d], dtype=np.int64), dims=d).chunk({d: chunks[d]})
        for d in (dims.lat, dims.lon)
    ]


def _ensf_in_blocks(prior, names, dims, levels, values, errors, plan, time_chunks):
    """The paired, damped EnSF of each latitude × longitude block of ``prior``, lazily."""
    from .methods import require_point_reads

    method, obs = plan.method, plan.obs
    chunks = prior[names[0]].variable.chunksizes
    if method.prior_score == "mixture" or method.likelihood != "damped":
        split = " and ".join(
            f"{len(chunks[d])} chunks along {d!r}" for d in (dims.lat, dims.lon)
            if len(chunks[d]) > 1
        )  # fmt: skip
        raise ChunkingError(
            f"ensf with prior_score={method.prior_score!r} and likelihood="
            f"{method.likelihood!r} couples every point of the grid, and the prior is split "
            f"into {split}: rechunk the grid into one chunk "
            f"({_one_chunk(dims)}), or use prior_score='paired' or "
            "'local-mixture' with likelihood='damped', which are analysed block by block"
        )
    require_point_reads(
        obs, "ensf on latitude/longitude blocks",
        f"rechunk the grid into one chunk ({_one_chunk(dims)}), or use method='letkf'",
        ChunkingError,
    )  # fmt: skip
    if method.prior_score == "local-mixture":
        for d in (dims.lat, dims.lon):
            if any(size % method.window for size in chunks[d][:-1]):
                raise ChunkingError(
                    f"ensf with prior_score='local-mixture' analyses windows of "
                    f"{method.window} x {method.window} points, and the chunks along {d!r} "
                    f"({list(chunks[d])}) cut through them: chunk {d!r} in multiples of "
                    f"{method.window} (ds.chunk({{{d!r}: {4 * method.window}}}))"
                )
    state, state_core, observed, observed_core = _block_inputs(
        prior, names, dims, levels, values, errors, obs, time_chunks
    )
    hx, reads_mask = _whole_observed_prior(
        prior, names, dims, levels, plan, time_chunks, mask_reads=True
    )
    reductions, reduced_core = [], []
    if method.scale is None:  # the prior spread per field, over the whole grid
        whole = _own_reads(prior, names)
        for n in names:
            v = whole[n].astype(np.float64)
            # NaN at the land mask's points, which the means over the grid skip
            mean = v.mean(dims.member, skipna=False)
            var = ((v - mean) ** 2).sum(dims.member, skipna=False) / (v.sizes[dims.member] - 1)
            spread = np.sqrt(var.mean([dims.lat, dims.lon]))
            size = abs(mean).max([dims.lat, dims.lon])
            for reduced in (spread, size):
                lead = [dims.time] if dims.time is not None else []  # no member: reduced
                reductions.append(_bare(reduced.transpose(*lead, *levels[n]), dims, time_chunks))
                reduced_core.append(list(levels[n]))
    inputs = [*_after(state, [hx, reads_mask, *reductions]), hx, reads_mask, *observed]
    inputs += _block_indices(prior, dims, chunks)
    core = [*state_core, [dims.member, "_row"], ["_row"], *observed_core, [], []]
    if dims.time is not None:
        inputs.append(
            _bare(xr.DataArray(prior[dims.time].values, dims=dims.time), dims, time_chunks)
        )
        core.append([])
    inputs += reductions
    core += reduced_core
    inputs.append(shared_input(plan, lazy=True))
    core.append([])
    out = xr.apply_ufunc(
        _ensf_spatial_block,
        *inputs,
        input_core_dims=core,
        output_core_dims=[[dims.member, *levels[n]] for n in names],
        dask="parallelized",
        output_dtypes=list(plan.out_dtypes),
        dask_gufunc_kwargs={"allow_rechunk": False},
    )
    return (out,) if len(names) == 1 else out


def _ensf_spatial_block(*arrays: np.ndarray):
    """One task: the paired EnSF of one block. Loop axes first (time, lat, lon), then
    core; the last input holds the plan."""
    from ..filters.noise import analysis_seeds
    from .methods import Block, ensf_field_scale

    plan, arrays = shared_value(arrays[-1]), arrays[:-1]
    layout, obs, method = plan.layout, plan.obs, plan.method
    nv, no = len(layout.variables), len(obs.variables)
    state = arrays[:nv]
    hx, reads_mask = arrays[nv], arrays[nv + 1]
    arrays = (*arrays[:nv], hx, *arrays[nv + 2 :])  # the indices below as without it
    values = arrays[nv + 1 : nv + 1 + no]
    errors = arrays[nv + 1 + no : nv + 1 + 2 * no]
    at = nv + 1 + 2 * no
    rows, cols = np.asarray(arrays[at]).ravel(), np.asarray(arrays[at + 1]).ravel()
    at += 2
    times = None
    if plan.has_time:
        times = np.asarray(arrays[at]).ravel()
        at += 1
    T, block_layout, x, masked = _block_state(state, plan, times)
    nlat, nlon = block_layout.grid_shape
    y, err, hx = _observations_read_off_the_mask(
        plan, *_block_observations(values, errors, plan, T), hx, reads_mask
    )
    check_against_the_prior(  # every observation, as in every block
        hx, y, err, np.isfinite(y) & np.isfinite(err) & (err > 0), plan
    )
    field_scale = None
    if method.scale is None:
        parts = [
            ensf_field_scale(
                _squeezed(arrays[at + 2 * v], len(layout.level_dims[v]), plan).reshape(T, -1),
                _squeezed(arrays[at + 2 * v + 1], len(layout.level_dims[v]), plan).reshape(T, -1),
            )
            for v in range(nv)
        ]
        field_scale = np.concatenate(parts, axis=-1)  # (T, F)
    # the observations on this block's points, indexed in the block's layout
    G, W = layout.grid_size, layout.grid_shape[1]
    flat = obs.indices[np.arange(obs.indices.shape[0]), np.argmax(obs.weights != 0, axis=-1)]
    field, point = np.divmod(flat, G)
    i, j = np.divmod(point, W)
    r0, c0 = int(rows[0]), int(cols[0])
    here = (i >= r0) & (i < r0 + nlat) & (j >= c0) & (j < c0 + nlon)
    local = field[here] * (nlat * nlon) + (i[here] - r0) * nlon + (j[here] - c0)
    weights = obs.weights[here][np.arange(here.sum()), np.argmax(obs.weights[here] != 0, -1)]
    observed = np.isfinite(y) & np.isfinite(err) & (err > 0)
    # A time observed anywhere moves every point (the reverse SDE is not the identity
    # where nothing is observed): a block without observations of its own at such a
    # time runs with one missing one (NaN: no likelihood), as the whole grid does there.
    active = observed.any(axis=1)
    y = np.concatenate([y[:, here], np.full((T, 1), np.nan)], axis=1)
    err = np.concatenate([err[:, here], np.ones((T, 1))], axis=1)
    observed = np.concatenate([observed[:, here], active[:, None]], axis=1)
    local, weights = np.append(local, 0), np.append(weights, 1.0)
    block_obs = dataclasses.replace(
        obs,
        indices=local[:, None],
        weights=weights[:, None],
        locations=np.concatenate([obs.locations[here], np.full((1, 2), np.nan)]),
    )
    seeds = analysis_seeds(plan.seed, times if plan.has_time else plan.at_time, T)
    block_plan = dataclasses.replace(plan, layout=block_layout, obs=block_obs)
    out = np.empty(x.shape, plan.work_dtype)
    for ts, mask in times_by_mask(masked):  # one group, unless the mask moves in time
        block = Block(
            x=x[ts],
            y=y[ts],
            err=err[ts],
            observed=observed[ts],
            seeds=[seeds[t] for t in np.arange(T)[ts]],
            plan=block_plan,
            device=compute_device(plan.device),
            work=plan.work_dtype,
            window=(layout.grid_shape, (r0, r0 + nlat), (c0, c0 + nlon)),
            field_scale=None if field_scale is None else field_scale[ts],
            masked=mask if mask.any() else None,
        )
        out[ts] = method.analyse(block)
    out = _masked_back(out, masked)
    result = []
    for part, dt in zip(block_layout.unstack(out), plan.out_dtypes, strict=True):
        part = np.moveaxis(part, (-2, -1), (1, 2)).astype(dt, copy=False)
        result.append(part if plan.has_time else part[0])
    return tuple(result) if len(result) > 1 else result[0]


def _block_state(state, plan: Any, times=None):
    """A task's block of the state: ``(T, block layout, x (T, N, d_block), masked)``.

    ``state`` holds each variable with the loop axes first ((time,) lat, lon), then
    member and levels; ``x`` is stacked as the layout says, on the block's grid, with
    its land mask (:func:`~xensf.bridge.masks.mask_of`, ``(T, d_block)``) set to 0: no
    spread there, never updated (the caller sets it NaN again, :func:`_masked_back`).
    """
    lead = 3 if plan.has_time else 2
    loop = state[0].shape[:lead]
    T = loop[0] if plan.has_time else 1
    block_layout = dataclasses.replace(plan.layout, grid_shape=(loop[-2], loop[-1]))
    x = block_layout.stack(
        [np.moveaxis(s if plan.has_time else s[None], (1, 2), (-2, -1)) for s in state]
    )
    masked = mask_of(x, times, dataclasses.replace(plan, layout=block_layout))
    if masked.any():
        x = np.where(masked[:, None, :], np.zeros((), x.dtype), x)
    return T, block_layout, x, masked


def _masked_back(out: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """The analysis ``out`` ``(T, N, d)`` NaN again at each time's masked points."""
    return np.where(masked[:, None, :], np.nan, out) if masked.any() else out


def _observations_read_off_the_mask(plan: Any, y, err, hx, reads_mask):
    """``y``, ``err`` and the gathered prior ``hx`` ``(T, N, M)`` as one chunk reads a
    masked prior: the observations whose gathered prior is NaN (they read masked points
    only) dropped, the others read from their unmasked points (as gathered), and the
    warning that counts both."""
    hx = _squeezed(hx, 2, plan)
    dropped = np.isnan(hx).any(axis=1)
    moved = _squeezed(reads_mask, 1, plan).astype(bool) & ~dropped
    warn_masked_observations(plan, masked_counts(y, dropped, moved))
    y = np.where(dropped, np.nan, y)
    return y, err, np.where(dropped[:, None, :], np.zeros((), hx.dtype), hx)


def _squeezed(a, ncore: int, plan: Any) -> np.ndarray:
    """``(T or 1, *core)``: an input without the broadcast lat/lon loop axes."""
    a = np.asarray(a)
    if a.ndim == ncore:
        return a[None]
    return a.reshape(a.shape[0] if plan.has_time else 1, *a.shape[a.ndim - ncore :])


def _block_observations(values, errors, plan: Any, T: int):
    """Every observation's value and error ``(T, M)`` (each task gets them all)."""
    obs = plan.obs
    vals = [_squeezed(v, len(c), plan) for v, c in zip(values, obs.core_dims, strict=True)]
    errs = [_squeezed(e, len(c), plan) for e, c in zip(errors, obs.error_core_dims, strict=True)]
    return obs.flatten(vals, errs, T)
