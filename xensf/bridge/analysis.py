"""``assimilate``: a forecast ensemble Dataset and observations -> analysis ensemble.

The work is mapped over chunks along time with :func:`xarray.apply_ufunc`
(``dask="parallelized"``): one task per chunk, and inside it one filter call per
analysis time (batched, torch's CPU matrix products may sum in another order). Every
analysis time draws its random numbers from a seed derived from ``(seed, time value)``
alone, so a result does not depend on how the data is chunked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr

from ..errors import (
    DimensionError,
    EnsembleError,
    ObservationMismatchError,
    OptionError,
    keyword_names,
    warn_user,
)
from ..filters.device import compute_device, parse_device
from ..filters.noise import analysis_seeds, check_seed
from ..obs import EDGE_TOLERANCE, check_longitude
from .dims import (
    EnsembleDims,
    find_dims,
    flat_indexes,
    require_whole,
    scalar_time,
    state_variables,
)
from .grid import GridCoords, grid_coords
from .layout import StateLayout
from .masks import (
    mask_of,
    observations_off_the_mask,
    times_by_mask,
    warn_masked_observations,
)
from .metadata import analysis_metadata, unpacked
from .methods import Block, Method, resolve_method
from .model_cache import ModelHandle, model_handle
from .observations import (
    ObservationPlan,
    obs_level_names,
    prepare_observations,
)
from .orientation import Orientation, canonical_orientation, in_the_state_order
from .plausibility import check_against_the_prior, observed_members
from .seam import ClosingColumn, closing_column, folded
from .shared import shared_input, shared_value
from .spatial import analyse_in_blocks, is_spatially_chunked
from .units import dequantify, requantify

__all__ = ["analysis_seeds", "assimilate"]


@dataclass(frozen=True)
class BlockPlan:
    """What every task needs besides its data: small, picklable, no torch objects."""

    layout: StateLayout
    obs: ObservationPlan
    method: Method
    seed: int
    device: str | None
    has_time: bool
    out_dtypes: tuple[np.dtype, ...]
    grid_locations: np.ndarray
    distance: str
    #: without a time dim, the state's one time (a scalar time coordinate), or None:
    #: its analysis draws from the seed of that time, as with a length-1 time dim
    at_time: np.ndarray | None = None
    model: ModelHandle | None = None
    #: for a station model: the model's slot of each observation row
    model_slots: tuple[int, ...] | None = None
    #: the vertical coordinate of every field, where the method localises vertically
    field_heights: np.ndarray | None = None
    #: whether the analysis runs in several blocks (chunks of times, spatial blocks)
    chunked: bool = False
    #: the block warnings this analysis has shown (:meth:`warn`), shared by its tasks
    shown: dict = field(default_factory=dict, compare=False, repr=False)

    def warn(self, key: Any, message: str, category: type[Warning]) -> None:
        """``warn_user``, once per ``key`` for the whole analysis. Each block finds its
        own numbers, so a warning of every block would differ from block to block and
        be shown as often as the data is chunked; the first block to raise it speaks
        for the analysis."""
        if self.shown.setdefault(key, message) is not message:
            return  # dict.setdefault is atomic: one of the racing tasks wins
        if self.chunked:
            message += (
                " (Shown once for this analysis, with the numbers of the first of its "
                "chunks that raised it.)"
            )
        warn_user(message, category)

    @property
    def work_dtype(self) -> type:
        """float64 when a state variable is float64 (so that it is analysed at its own
        precision, and float32 ones pass exactly through it), else float32."""
        return np.float64 if any(dt == np.float64 for dt in self.out_dtypes) else np.float32


def _analyse_block(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The task: analyse every time of one chunk. Inputs and outputs are numpy; the last
    input holds the :class:`BlockPlan`."""
    plan: BlockPlan = shared_value(arrays[-1])
    arrays = arrays[:-1]
    layout, obs = plan.layout, plan.obs
    nv, no = len(layout.variables), len(obs.variables)
    state = list(arrays[:nv])
    values = arrays[nv : nv + no]
    errors = arrays[nv + no : nv + 2 * no]
    times = arrays[nv + 2 * no] if plan.has_time else None
    if not plan.has_time:
        state = [s[None] for s in state]
    T = state[0].shape[0]
    x = layout.stack(state)
    masks = mask_of(x, times, plan)
    y, err = obs.flatten(values, errors, T)
    seeds = analysis_seeds(plan.seed, times if plan.has_time else plan.at_time, T)
    out, fields, counts = None, {}, np.zeros(2, int)
    for ts, masked in times_by_mask(masks):  # one group, unless the mask moves in time
        some = [seeds[t] for t in np.arange(T)[ts]]
        part, part_fields, read = _analyse_times(plan, x[ts], y[ts], err[ts], some, masked)
        counts += read
        if out is None:
            out = np.empty((T, *part.shape[1:]), part.dtype)
        out[ts] = part
        for name, value in part_fields.items():
            fields.setdefault(name, np.empty((T, *value.shape[1:]), value.dtype))[ts] = value
    warn_masked_observations(plan, tuple(counts))  # of all the chunk's times
    state = _unstack(out, plan)
    if not fields:
        return state
    extra = [fields[name].reshape(T, *layout.grid_shape) for name in plan.method.grid_outputs()]
    extra += [fields[name].reshape(T) for name in plan.method.time_outputs()]
    if not plan.has_time:
        extra = [e[0] for e in extra]
    return (*(state if isinstance(state, tuple) else (state,)), *extra)


def _analyse_times(plan: BlockPlan, x, y, err, seeds, masked):
    """The analysis ``(T, N, d)`` and the method's fields of times that share one land
    mask ``masked`` ``(d,)`` (no spread there and never updated), and the observations
    read off it (:func:`~xensf.bridge.masks.masked_counts`)."""
    counts = (0, 0)
    if masked.any():
        x = np.where(masked, np.zeros((), x.dtype), x)
        plan, y, counts = observations_off_the_mask(plan, y, masked)
    observed = np.isfinite(y) & np.isfinite(err) & (err > 0)
    if plan.method.needs_obs_error or plan.obs.errors_given:
        # a latent method told the errors: their units still tell, not their sizes
        check_against_the_prior(
            observed_members(x, plan.obs), y, err, observed, plan,
            sizes=plan.method.needs_obs_error,
        )  # fmt: skip
    block = Block(
        x=x,
        y=y,
        err=err,
        observed=observed,
        seeds=seeds,
        plan=plan,
        device=compute_device(plan.device),
        work=plan.work_dtype,
        masked=masked if masked.any() else None,
    )
    out, fields = plan.method.analyse_with_fields(block)
    if masked.any():
        out[..., masked] = np.nan
    return out, fields, counts


def _unstack(out: np.ndarray, plan: BlockPlan):
    """The analysis ``(T, N, d)`` back to one array per variable, in its dtype."""
    result = plan.layout.unstack(out)
    result = [r.astype(dt, copy=False) for r, dt in zip(result, plan.out_dtypes, strict=True)]
    if not plan.has_time:
        result = [r[0] for r in result]
    return tuple(result) if len(result) > 1 else result[0]


def _check_chunks(
    ds: xr.Dataset, names: list[str], whole: dict[str, list[str]], grid: tuple = ()
) -> None:
    hint = (
        "; of the methods, method='letkf' with a loc_radius, and method='ensf' with "
        "prior_score='paired', analyse latitude/longitude blocks"
    )
    for name in names:
        require_whole(ds[name], whole[name], "this analysis", hints=dict.fromkeys(grid, hint))


def _one_time(prior: xr.Dataset) -> np.ndarray | None:
    """The time of a state without a time dim, as a length-1 array, or None."""
    name = scalar_time(prior)
    return None if name is None else np.asarray(prior[name].values).reshape(1)


def _stacking_order(names: list[str], config) -> list[str]:
    """The order the state variables are stacked in: a latent model's own (it was
    trained on its channels in that order), else by name. Not the Dataset's: the
    random draws of EnSF fall on the stacked vector, and ``ds[["t", "q"]]`` and
    ``ds[["q", "t"]]`` (or one file set opened in another order) must give one
    analysis. The result keeps the Dataset's order."""
    if config is None:
        return sorted(names)
    order = (config.get("data") or {}).get("variables")
    if order is not None and sorted(order) == sorted(names):
        return list(order)
    return names  # the model's check says what differs


def _check_model_fits(config, handle, prior, dims, layout) -> None:
    """Refuse a model trained on other variables, levels, units or another grid."""
    from .signature import check_signature, data_signature

    arch = config["architecture"]
    if config.get("data") is not None:
        check_signature(
            config["data"], data_signature(prior, dims, layout), model=handle.path, data=prior
        )
    elif arch["channels"] != layout.n_fields or list(arch["grid_shape"]) != list(
        layout.grid_shape
    ):
        raise ObservationMismatchError(
            f"the model {handle.path} takes {arch['channels']} fields on a "
            f"{arch['grid_shape']} grid; the data has {layout.n_fields} on {list(layout.grid_shape)}"
        )


def _model_slots(config, handle, obs_plan, layout) -> tuple[int, ...] | None:
    """For a station model, the model's slot of each observation row; None if gridded.

    A gridded model takes gridded observations only; a station model takes the
    stations it was trained for (any subset of them, at any time), found by their
    field and interpolation weights.
    """
    kind = config.get("obs_layout", {}).get("kind")
    if kind == "gridded":
        if obs_plan.kind != "gridded":
            raise ObservationMismatchError(
                f"the model {handle.path} encodes gridded observations (the state's grid "
                "with NaN where unobserved); these are point observations. Grid them, or "
                "train a station model (xensf.train_latent with the stations as obs_layout)"
            )
        return None
    if obs_plan.kind == "gridded":
        raise ObservationMismatchError(
            f"the model {handle.path} encodes station observations "
            f"({config['obs_layout'].get('n_points', '?')} points); these are gridded. Give "
            "the stations (an obs dim with latitude/longitude coordinates), or use a model "
            "trained for gridded observations"
        )
    layout_ = config["obs_layout"]
    g = layout.grid_size

    def key(field, idx, w):
        pairs = sorted(
            (int(i), round(float(v), 4)) for i, v in zip(idx, w, strict=True) if v > 1e-6
        )
        return (int(field), tuple(pairs))

    slot_of = {
        key(c, i, w): k
        for k, (c, i, w) in enumerate(
            zip(layout_["slot_channels"], layout_["indices"], layout_["weights"], strict=True)
        )
    }
    slots = []
    for row, (idx, w) in enumerate(zip(obs_plan.indices, obs_plan.weights, strict=True)):
        field = int(idx[np.argmax(w)] // g)
        k = slot_of.get(key(field, idx % g, w))
        if k is None:
            raise ObservationMismatchError(
                f"observation {row} (field {field}, at "
                f"{np.round(obs_plan.locations[row], 4).tolist()}) is not one of the "
                f"{len(slot_of)} station slots the model {handle.path} was trained for; a "
                "station model takes only its own stations (any subset of them). Drop it, "
                "or retrain the model with it"
            )
        slots.append(k)
    return tuple(slots)


def _time_chunks(prior, names, values, errors, time_dim):
    """The time chunks every input must share (apply_ufunc maps them together)."""
    if time_dim is None:
        return None
    for da in [prior[n] for n in names] + list(values) + list(errors):
        if da.chunks is not None and time_dim in da.dims:
            # The variable's own chunks: a dask-backed coordinate (cfgrib's valid_time)
            # may be chunked otherwise and must not be consulted.
            return da.variable.chunksizes[time_dim]
    return None


def _check_grid(ds: xr.Dataset, dims: EnsembleDims, grid: GridCoords) -> None:
    if grid.geographic and grid.lat is not None:
        lat = np.asarray(grid.lat, np.float64)
        lat = lat[np.isfinite(lat)]
        if lat.size and float(np.abs(lat).max()) > 90.0 + EDGE_TOLERANCE:
            name = grid.names[0] if grid.names else dims.lat
            raise DimensionError(
                f"the {name!r} coordinate is read as latitude in degrees, but it runs from "
                f"{lat.min():g} to {lat.max():g}, beyond the poles; if it is a planar axis, "
                f"say so with its units (ds[{name!r}].attrs['units'] = 'km', or 'm')"
            )
    # a curvilinear grid's 1-D dim coordinates (if any) are indices, not longitudes
    geographic = grid.geographic and not grid.curvilinear
    for d in dims.grid:
        if d in ds.coords:
            longitude = geographic and d == dims.lon
            c = np.asarray(grid.lon if longitude else ds[d].values)  # grid.lon: degrees
            if c.ndim != 1 or c.size < 2:
                continue
            if longitude:
                # Monotonic round the circle: a regional grid across the dateline in
                # its natural order (160 ... 180, -170, -160) is fine.
                try:
                    check_longitude(c)
                except ObservationMismatchError as err:
                    raise DimensionError(f"the {d!r} coordinate: {err}") from None
                continue
            if not np.all(np.isfinite(c.astype(np.float64))):
                raise DimensionError(
                    f"the {d!r} coordinate has NaN or infinite values: every grid line "
                    "needs its position"
                )
            step = np.diff(c.astype(np.float64))
            if not (np.all(step > 0) or np.all(step < 0)):
                raise DimensionError(
                    f"the {d!r} coordinate is not strictly monotonic; sort it (ds.sortby({d!r}))"
                )


def prepare_state(
    prior: xr.Dataset, dims: EnsembleDims, names: list[str], spatial_blocks: bool = False
):
    """Check the prior ensemble and lay out its state variables, before any work.

    Returns the level dims per variable, the :class:`StateLayout` and the grid's
    coordinates (:class:`~xensf.bridge.grid.GridCoords`). ``spatial_blocks``: the
    method analyses latitude × longitude blocks, so the grid may be chunked.
    """
    if prior.sizes[dims.member] < 2:
        raise EnsembleError(
            f"the ensemble has {prior.sizes[dims.member]} member along {dims.member!r}; an "
            "ensemble analysis needs at least 2"
        )
    empty = sorted({str(d) for n in names for d in prior[n].dims if prior.sizes[d] == 0})
    if empty:  # (a raw reshape error deep in the analysis)
        raise DimensionError(
            f"the state has no values along {empty} (size 0): nothing to analyse; check "
            "the selection that made it (e.g. a time slice outside the data)"
        )
    grid = grid_coords(prior, dims)
    _check_grid(prior, dims, grid)
    levels = {
        n: [d for d in prior[n].dims if d not in (dims.member, dims.lat, dims.lon, dims.time)]
        for n in names
    }
    whole = [] if spatial_blocks else [dims.lat, dims.lon]
    _check_chunks(
        prior, names, {n: [dims.member, *whole, *levels[n]] for n in names}, (dims.lat, dims.lon)
    )
    for n in names:
        if prior[n].chunks is None and not np.all(np.isfinite(prior[n].values)):
            _check_mask(prior[n], dims)
    layout = StateLayout(
        variables=tuple(names),
        level_dims=tuple(tuple(levels[n]) for n in names),
        level_shapes=tuple(tuple(prior.sizes[d] for d in levels[n]) for n in names),
        grid_shape=(prior.sizes[dims.lat], prior.sizes[dims.lon]),
    )
    return levels, layout, grid


def _check_mask(da: xr.DataArray, dims: EnsembleDims) -> None:
    """NaN in an in-memory prior must be a mask: at the same points in every member (land,
    or sea ice at its time); anything else, and any infinite value, is refused before any
    work."""
    nan = np.isnan(da)
    if bool(np.isinf(da).any()) or bool((nan.any(dims.member) != nan.all(dims.member)).any()):
        raise EnsembleError(
            f"the prior ensemble variable {da.name!r} has NaN or infinite values that are "
            "not a mask: a masked point (land, sea ice) is NaN in every member; fill or drop "
            "the others before assimilating"
        )


def assimilate(
    prior: xr.Dataset,
    obs: xr.Dataset | xr.DataArray,
    *,
    method: str | None = None,
    model: Any = None,
    obs_error: Any = None,
    seed: int = 0,
    device: str | None = None,
    member_dim: str | None = None,
    lat_dim: str | None = None,
    lon_dim: str | None = None,
    time_dim: str | None = None,
    obs_dim: str | None = None,
    variables: str | list[str] | None = None,
    obs_time_tolerance: Any = None,
    call: str | None = None,
    **options: Any,
) -> xr.Dataset:
    """Analysis ensemble from a forecast ensemble and observations.

    The public entry point is :meth:`xarray.Dataset.ensf.assimilate`; see
    :class:`xensf.accessor.EnsfDatasetAccessor` for every parameter.
    """
    if not isinstance(prior, xr.Dataset):
        hint = (
            ": for one variable use its accessor, da.ensf.assimilate(obs, ...), or da.to_dataset()"
            if isinstance(prior, xr.DataArray)
            else ""
        )
        raise OptionError(
            f"the prior must be an xarray Dataset, got a {type(prior).__name__}{hint}"
        )
    # pint quantities (pint-xarray) become units attributes at the boundary, and the
    # quantified state variables quantities again on the way out.
    prior, registries = dequantify(prior)
    obs, _ = dequantify(flat_indexes(obs))
    check_seed(seed)
    if device is not None:
        parse_device(device)  # whether it is there is for the task to find
    spec = resolve_method(
        method, model, options, parameters=keyword_names(assimilate, hide=("call",))
    )
    handle = config = None
    if spec.needs_model:
        handle, config = model_handle(model)
    dims = find_dims(
        prior, member_dim=member_dim, lat_dim=lat_dim, lon_dim=lon_dim, time_dim=time_dim
    )
    seam = None
    if not spec.needs_model:  # a latent model's grid is the model's, as it is
        # A closing column is its first column again: one place, analysed once.
        seam = closing_column(prior, dims)
        obs = folded(obs, dims)
        if seam is not None:
            prior = seam.fold(prior)
    obs = in_the_state_order(obs, prior, dims)
    orientation = None
    if spec.follows_grid_order:  # the same data in another order: the same analysis
        orientation = canonical_orientation(prior, obs, dims, grid_coords(prior, dims))
    elif config is not None and config.get("data") is not None:  # in the model's order
        from .signature import model_orientation

        orientation = model_orientation(config["data"], prior, dims, obs)
    if orientation is not None:
        prior, obs = orientation.apply(prior), orientation.apply(obs)
    names = state_variables(
        prior, (dims.member, dims.lat, dims.lon), variables, purpose="to assimilate into"
    )
    names = _stacking_order(names, config)
    spec = spec.bind(names)
    levels, layout, grid = prepare_state(prior, dims, names, spatial_blocks=spec.spatial_blocks)
    spec = spec.for_grid(grid).for_state(prior, dims, layout)
    if handle is not None:
        _check_model_fits(config, handle, prior, dims, layout)
    obs_plan, values, errors = prepare_observations(
        obs, prior, layout, dims, obs_error, grid,
        obs_dim=obs_dim, errors="required" if spec.needs_obs_error else "if-given",
        obs_time_tolerance=obs_time_tolerance,
    )  # fmt: skip
    spec.check_observations(obs_plan)
    model_slots = None
    if handle is not None:
        model_slots = _model_slots(config, handle, obs_plan, layout)
    plan = BlockPlan(
        layout=layout,
        obs=obs_plan,
        method=spec,
        seed=int(seed),
        device=device,
        has_time=dims.time is not None,
        at_time=_one_time(prior) if dims.time is None else None,
        out_dtypes=tuple(prior[n].dtype for n in names),
        grid_locations=grid.locations,
        distance="great_circle" if grid.geographic else "euclidean",
        model=handle,
        model_slots=model_slots,
        field_heights=spec.field_heights(prior, dims, layout),
    )

    def bare(da: xr.DataArray, core_dims=()) -> xr.DataArray:
        # Coordinates stay behind: the result takes the prior's, and the inputs' own
        # (station names, obs times) must not clash while apply_ufunc merges them.
        out = xr.DataArray(da.variable.data, dims=da.dims)
        if out.chunks is not None:
            # Observations split along their own dims (e.g. by reindex_like on a
            # chunked grid) are joined: each task needs all of a time's observations.
            out = out.chunk({d: -1 for d in core_dims if d in out.dims})
        if time_chunks is not None and dims.time in out.dims:
            out = out.chunk({dims.time: time_chunks})
        return out

    time_chunks = _time_chunks(prior, names, values, errors, dims.time)
    extra_outputs = spec.outputs()
    for name, attrs in extra_outputs.items():
        if name in prior.variables and prior[name].attrs.get("long_name") != attrs["long_name"]:
            raise OptionError(
                f"{spec.name} writes a {name!r} field to the analysis, and the prior already "
                f"has a variable {name!r}; rename it (prior.rename({{{name!r}: ...}}))"
            )
    if is_spatially_chunked(prior, names, dims):
        outputs = analyse_in_blocks(
            prior,
            names,
            dims,
            levels,
            values,
            errors,
            replace(plan, chunked=True),
            time_chunks,
            grid,
        )
        return _finish(prior, names, outputs, spec, grid.geographic, seed, obs_plan, handle, call, dims,
                       registries, orientation, seam)  # fmt: skip
    state_core = [[dims.member, *levels[n], dims.lat, dims.lon] for n in names]
    renamed = obs_level_names(levels)
    obs_inputs = [
        bare(da, c).rename({d: renamed[d] for d in da.dims if d in renamed})
        for group, cores in ((values, obs_plan.core_dims), (errors, obs_plan.error_core_dims))
        for da, c in zip(group, cores, strict=True)
    ]
    obs_core = [
        [renamed.get(d, d) for d in c] for c in (*obs_plan.core_dims, *obs_plan.error_core_dims)
    ]
    inputs = [bare(prior[n]) for n in names] + obs_inputs
    core = [*state_core, *obs_core]
    if dims.time is not None:
        inputs.append(bare(xr.DataArray(prior[dims.time].values, dims=(dims.time,))))
        core.append([])
    plan = replace(plan, chunked=time_chunks is not None and len(time_chunks) > 1)
    inputs.append(shared_input(plan, lazy=any(i.chunks is not None for i in inputs)))
    core.append([])
    outputs = xr.apply_ufunc(
        _analyse_block,
        *inputs,
        input_core_dims=core,
        output_core_dims=state_core
        + [[dims.lat, dims.lon]] * len(spec.grid_outputs())
        + [[]] * len(spec.time_outputs()),
        dask="parallelized",
        output_dtypes=[*plan.out_dtypes, *[np.float64] * len(extra_outputs)],
        dask_gufunc_kwargs={"allow_rechunk": False},
    )
    if len(names) + len(extra_outputs) == 1:
        outputs = (outputs,)
    return _finish(prior, names, outputs, spec, grid.geographic, seed, obs_plan, handle, call, dims,
                   registries, orientation, seam)  # fmt: skip


def _finish(prior, names, outputs, spec, spherical, seed, obs_plan, handle, call, dims,
            registries, orientation: Orientation | None,
            seam: ClosingColumn | None) -> xr.Dataset:  # fmt: skip
    """The analysis Dataset: the prior with the analysed variables, and its metadata
    (put back in the data's order from the ``orientation`` it was analysed in, and on
    the closing column of ``seam`` that it was analysed without)."""
    result = prior.copy()
    for n, out in zip(names, outputs[: len(names)], strict=True):
        result[n] = prior[n].copy(data=out.transpose(*prior[n].dims).data)
        unpacked(result[n].variable)  # new values may leave the input's packed range
    grid = (dims.lat, dims.lon)
    for (name, attrs), out in zip(spec.outputs().items(), outputs[len(names) :], strict=True):
        order = [d for d in (dims.time, *grid) if d is not None and d in out.dims]
        coords = {d: prior[d] for d in order if d in prior.coords}
        result[name] = xr.DataArray(out.transpose(*order).data, dims=order, coords=coords,
                                    attrs=attrs)  # fmt: skip
    if orientation is not None:
        result, prior = orientation.undo(result), orientation.undo(prior)
    if seam is not None:
        result, prior = seam.unfold(result, [*names, *spec.outputs()]), seam.original
    parameters = {**spec.parameters(spherical), "seed": int(seed), "obs_layout": obs_plan.kind}
    if obs_plan.kind == "point":  # gridded: the count varies with time (NaN = unobserved)
        parameters["obs_slots"] = obs_plan.size
    if handle is not None:
        parameters["model"] = handle.path
        parameters["model_sha256"] = handle.digest
    result = analysis_metadata(
        result,
        prior,
        member_dim=dims.member,
        time_dim=dims.time,
        call=call or f"assimilate(method={spec.name!r})",
        method=spec.name,
        parameters=parameters,
    )
    return requantify(result, registries)
