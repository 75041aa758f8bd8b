"""Training a Latent-EnSF model from an xarray Dataset of states.

:func:`train_latent` is the xarray face of
:func:`xensf.latent.train_latent_model`: it finds the grid, the sample dims and the
level dims, stacks the state variables into channels exactly as the accessor stacks a
forecast ensemble (so the model fits the data it will be applied to), turns an
observation layout given in xarray terms (a stride, a mask, station locations) into a
layer-2 observation sampler, and records the data signature that the accessor checks
later. Numpy-backed data goes to the trainer as one tensor; dask-backed data is a
:class:`xensf.latent.BatchSource` that streams it, a block of at most
``batch_size`` samples at a time, and holds out whole blocks for validation. Importing
this module imports torch (``xensf.train_latent`` is loaded on first use).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from itertools import pairwise, product
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..checks import is_integer
from ..errors import (
    DimensionError,
    EnsembleError,
    ObservationMismatchError,
    OptionError,
    keyword_names,
    unknown_options,
)
from ..latent.training import (
    BatchSource,
    gridded_stride_obs,
    mask_obs,
    station_obs,
    train_latent_model,
)
from ..obs import parse_relative
from .dims import EnsembleDims, find_role, flat_indexes, is_level, state_variables
from .grid import grid_coords, same_points
from .layout import StateLayout
from .observations import (
    ERROR_SUFFIXES,
    check_placed,
    check_position_numbers,
    lat_lon_names,
)
from .orientation import in_the_state_order
from .signature import data_signature

__all__ = ["MIN_SAMPLES", "train_latent"]

#: Fewest training states accepted: fewer cannot be split into training and
#: validation sets that say anything.
MIN_SAMPLES = 10

#: Dimension names taken for vertical levels (channels) when no coordinate says so
#: with CF metadata (``axis: Z``, ``positive``, a pressure or height standard_name).


# --------------------------------------------------------------------------------------
# the state: variables, sample dims, level dims
# --------------------------------------------------------------------------------------
def _grid_dims(ds: xr.Dataset, lat_dim, lon_dim) -> tuple[str, str]:
    lat = find_role(ds, "latitude", override=lat_dim)
    lon = find_role(ds, "longitude", override=lon_dim)
    if lat == lon:
        raise DimensionError(
            f"{lat!r} was found as both latitude and longitude; name them with lat_dim=, lon_dim="
        )
    return lat, lon


def _sample_and_level_dims(ds, names, grid, member, time):
    """The dims stacked into samples (shared by all variables) and each variable's levels."""
    levels, samples = {}, None
    for v in names:
        rest = [d for d in ds[v].dims if d not in grid]
        lev = [d for d in rest if d not in (member, time) and is_level(ds, d)]
        smp = [d for d in rest if d not in lev]
        if samples is None:
            samples = smp
        elif set(smp) != set(samples):
            raise DimensionError(
                f"state variables {names[0]!r} and {v!r} have different sample dims "
                f"({samples} and {smp}); every state variable needs the same time/member "
                "dims (select variables=... or broadcast them)"
            )
        levels[v] = lev
    if not samples:
        raise DimensionError(
            f"the state variables have no dim to draw training samples from (dims "
            f"{list(ds[names[0]].dims)}); training needs time and/or member dims (every "
            "dim that is neither the grid nor a vertical level is one)"
        )
    return samples, levels


def _is_periodic(ds: xr.Dataset, dims: EnsembleDims) -> bool:
    """A geographic grid whose longitude spacing × count is 360 degrees, or a
    curvilinear grid whose last column neighbours its first."""
    grid = grid_coords(ds, dims)
    if not (grid.known and grid.geographic):
        return False
    if grid.curvilinear:
        from ..curvilinear import is_periodic_columns

        return is_periodic_columns(grid.lat, grid.lon)
    lon = np.asarray(grid.lon, dtype=np.float64)
    if lon.size < 2:
        return False
    step = np.abs(np.diff(lon)).mean()
    return bool(abs(step * lon.size - 360.0) <= 1e-2 * step)


# --------------------------------------------------------------------------------------
# observation layouts
# --------------------------------------------------------------------------------------
def _noise(noise) -> tuple[float, float | None]:
    """``(fraction, absolute std or None)`` from ``"P%"`` or a number in state units."""
    if isinstance(noise, str):
        try:
            return parse_relative(noise, zero=True), None
        except OptionError:
            raise OptionError(
                f"cannot read noise={noise!r}: give a relative error such as '10%' or a "
                "number in the state's units"
            ) from None
    if isinstance(noise, bool) or not isinstance(noise, int | float | np.number):
        raise OptionError(
            f"noise must be a relative error such as '10%' or a number in the state's "
            f"units, got {noise!r}"
        )
    if not (math.isfinite(noise) and noise >= 0):
        raise OptionError(f"noise must be finite and >= 0, got {noise!r}")
    return 0.0, float(noise)


def _mask_sampler(mask: xr.DataArray, ds, dims, layout, levels, fraction, std):
    if mask.dtype != bool:
        raise ObservationMismatchError(
            f"an obs_layout DataArray on the grid is a mask and must be boolean, got {mask.dtype}"
        )
    mask = in_the_state_order(mask, ds, dims)  # the same points in another order
    for d in dims.grid:
        if d in mask.coords and d in ds.coords:
            a, b = np.asarray(mask[d].values, np.float64), np.asarray(ds[d].values, np.float64)
            if same_points(a, b):
                continue
            raise ObservationMismatchError(
                f"the observation mask is on another grid: its {d!r} has {a.size} values "
                f"({a[0]:g}..{a[-1]:g}), the training data's {b.size} ({b[0]:g}..{b[-1]:g})"
            )
        elif mask.sizes[d] != ds.sizes[d]:
            raise ObservationMismatchError(
                f"the observation mask has {mask.sizes[d]} points along {d!r}, the training "
                f"data {ds.sizes[d]}"
            )
    all_levels = {d for v in layout.variables for d in levels[v]}
    stray = [d for d in mask.dims if d not in dims.grid and d not in all_levels]
    if stray:
        raise ObservationMismatchError(
            f"the observation mask has dims {stray} that are neither the grid "
            f"({list(dims.grid)}) nor level dims of the state ({sorted(all_levels)})"
        )
    mask_levels = [d for d in mask.dims if d not in dims.grid]
    if not mask_levels:
        grid_mask = mask.transpose(*dims.grid).values
        return mask_obs(grid_mask, fraction, noise_std=std)
    per_field = []
    for v in layout.variables:
        missing = [d for d in mask_levels if d not in levels[v]]
        if missing:
            raise ObservationMismatchError(
                f"the observation mask varies along {missing}, which state variable {v!r} "
                "does not have; give a mask per (lat, lon) only, or select variables=..."
            )
        m = mask
        for d in mask_levels:
            if d in mask.coords and d in ds.coords:
                bad = np.setdiff1d(ds[d].values, mask[d].values)
                if bad.size:
                    raise ObservationMismatchError(
                        f"the observation mask lacks the {d} values {bad.tolist()} of the state"
                    )
                m = m.sel({d: ds[d].values})
            elif mask.sizes[d] != ds.sizes[d]:
                raise ObservationMismatchError(
                    f"the observation mask has {mask.sizes[d]} values along {d!r}, the state "
                    f"{ds.sizes[d]}"
                )
        m = m.expand_dims({d: ds.sizes[d] for d in levels[v] if d not in m.dims})
        m = m.transpose(*levels[v], *dims.grid).values
        per_field.append(m.reshape(-1, *layout.grid_shape))
    return mask_obs(np.concatenate(per_field).astype(bool), fraction, noise_std=std)


def _point_dim(obs: xr.Dataset | xr.DataArray) -> tuple[str, str, str] | None:
    """``(dim, lat name, lon name)`` of the dim along which lat/lon coordinates lie."""
    found = []
    for dim in obs.dims:
        names = lat_lon_names({n: c for n, c in obs.coords.items() if c.dims == (dim,)})
        if names is not None:
            found.append((dim, *names))
    if len(found) > 1:
        raise ObservationMismatchError(
            f"ambiguous point observations: the dims {[f[0] for f in found]} all carry "
            "latitude and longitude coordinates"
        )
    return found[0] if found else None


def _points_sampler(obs, spec, ds, dims, layout, levels, fraction, std):
    point, lat_name, lon_name = spec
    if isinstance(obs, xr.DataArray):
        if obs.name is None:
            observed = list(layout.variables)
            obs_vars = dict.fromkeys(observed)
        elif obs.name in layout.variables:
            observed = [str(obs.name)]
            obs_vars = {observed[0]: obs}
        else:
            raise ObservationMismatchError(
                f"point observations named {obs.name!r} are not of a state variable "
                f"({list(layout.variables)}); rename them, or drop the name to observe every "
                "state variable at these points"
            )
    else:
        data = [
            str(n)
            for n in obs.data_vars
            if not any(str(n).endswith(s) and str(n)[: -len(s)] in obs for s in ERROR_SUFFIXES)
        ]
        unknown = [n for n in data if n not in layout.variables]
        if unknown:
            raise ObservationMismatchError(
                f"point observation variables {unknown} are not state variables; the state "
                f"has {list(layout.variables)}"
            )
        observed = data or list(layout.variables)
        obs_vars = {v: (obs[v] if v in obs.data_vars else None) for v in observed}

    for name in (lat_name, lon_name):
        check_position_numbers(obs[name])
    # the model observes every point of its layout: each needs a place
    missing = (obs[lat_name].isnull() | obs[lon_name].isnull()).values
    check_placed(True, missing, (lat_name, lon_name), " of the obs_layout", where="")
    grid = grid_coords(ds, dims)
    plat, plon = (
        np.asarray(c.values, np.float64)
        for c in grid.point_coordinates(obs[lat_name], obs[lon_name])
    )
    if plat.size == 0:
        raise ObservationMismatchError(
            f"the point obs_layout has no points along {point!r}: give the locations the "
            "model will observe (at least one)"
        )
    idx, w = grid.station_weights(plat, plon)

    # Slots in the accessor's order: variable, then level combination, then point.
    n = plat.size
    slot_idx, slot_w, slot_chan, present = [], [], [], []
    for v in observed:
        da = obs_vars[v]
        lev = levels[v]
        if da is not None:
            missing = [d for d in lev if d not in da.dims]
            if missing:
                raise ObservationMismatchError(
                    f"point observation variable {v!r} lacks the level dims {missing} of the "
                    "state variable"
                )
        shape = tuple(ds.sizes[d] for d in lev)
        first = layout.first_field(v)
        for k, ix in enumerate(np.ndindex(*shape)):
            have = True
            if da is not None:
                for d, i in zip(lev, ix, strict=True):
                    if d in ds.coords and d in da.coords:
                        have &= bool(np.isin(ds[d].values[i], da[d].values))
            slot_idx.append(idx)
            slot_w.append(w)
            slot_chan.append(np.full(n, first + k))
            present.append(np.full(n, have))
    idx_t, w_t = np.concatenate(slot_idx), np.concatenate(slot_w)
    chan_t, present_t = np.concatenate(slot_chan), np.concatenate(present)
    sampler = station_obs(idx_t, w_t, chan_t, fraction, noise_std=std, observed=present_t)
    sampler.layout.update(
        point_dim=str(point),
        n_points=int(n),
        variables=list(observed),
        interpolation="bilinear",
    )
    return sampler


def _observation_sampler(obs_layout, ds, dims, layout, levels, noise):
    fraction, std = _noise(noise)
    h, w = layout.grid_shape
    if is_integer(obs_layout) or isinstance(obs_layout, tuple | list):
        stride = (obs_layout, obs_layout) if is_integer(obs_layout) else obs_layout
        if len(stride) != 2 or not all(is_integer(s) and s >= 1 for s in stride):
            raise OptionError(
                f"a stride obs_layout must be a positive integer or a pair (sy, sx), got {obs_layout!r}"
            )
        if stride[0] > h or stride[1] > w:
            raise ObservationMismatchError(
                f"the observation stride {tuple(int(s) for s in stride)} is larger than the "
                f"{h}x{w} grid ({dims.lat!r} x {dims.lon!r}): it would observe a single row or "
                "column at most"
            )
        return gridded_stride_obs((int(stride[0]), int(stride[1])), fraction, noise_std=std)
    if isinstance(obs_layout, xr.DataArray) and set(dims.grid) <= set(obs_layout.dims):
        return _mask_sampler(obs_layout, ds, dims, layout, levels, fraction, std)
    if isinstance(obs_layout, xr.Dataset | xr.DataArray):
        obs_layout = flat_indexes(obs_layout)
        spec = _point_dim(obs_layout)
        if spec is None:
            raise ObservationMismatchError(
                f"obs_layout is neither a mask on the grid (dims {list(dims.grid)}) nor point "
                "observations (a dim with latitude and longitude coordinates along it); its "
                f"dims are {list(obs_layout.dims)}"
            )
        return _points_sampler(obs_layout, spec, ds, dims, layout, levels, fraction, std)
    raise OptionError(
        "obs_layout must be a stride (int or (sy, sx)), a boolean DataArray mask on the "
        "grid, or point observations (a Dataset/DataArray with latitude and longitude "
        f"coordinates along one dim); got {type(obs_layout).__name__}"
    )


# --------------------------------------------------------------------------------------
# data: one tensor, or a stream of blocks
# --------------------------------------------------------------------------------------
def _stack_block(block: xr.Dataset, names, samples, levels, grid, n_fields) -> np.ndarray:
    """``(S, C, H, W)`` float32 from a (loaded) block of the state variables."""
    parts = []
    for v in names:
        a = block[v].transpose(*samples, *levels[v], *grid).values
        parts.append(a.reshape(-1, math.prod(a.shape[len(samples) : -2]), *a.shape[-2:]))
    out = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
    assert out.shape[1] == n_fields
    return out


def _check_finite(block: xr.Dataset, names, where: str, samples) -> None:
    """NaN only as a mask (at the same grid points and levels in every sample), no inf."""
    for v in names:
        values = block[v].values
        if np.all(np.isfinite(values)):
            continue
        nan = np.isnan(values)
        over = tuple(i for i, d in enumerate(block[v].dims) if d in samples)
        masked = nan.all(axis=over, keepdims=True) if over else np.zeros_like(nan)
        bad = np.isinf(values) | (nan & ~masked)
        if masked.all() and nan.any():
            bad = nan
        if bad.any():
            first = np.argwhere(bad)[0]
            at = ", ".join(
                f"{d}={_label(block, d, i)}" for d, i in zip(block[v].dims, first, strict=True)
            )
            raise EnsembleError(
                f"the training data variable {v!r} holds NaN or inf ({where}, first at {at}); "
                "the latent model needs complete states, or NaN at the same points in every "
                "sample (a mask, such as land): fill or drop the others before training"
            )


def _label(block: xr.Dataset, dim: str, i) -> Any:
    if dim in block.coords:
        value = block[dim].values[i]
        return (
            value.item()
            if hasattr(value, "item") and not isinstance(value, np.datetime64)
            else value
        )
    return int(i)


def _blocks(ds: xr.Dataset, names, samples, max_samples: int) -> list[dict[str, slice]]:
    """Rectangular pieces of the sample dims, within dask chunks, of at most ``max_samples``."""
    bounds = {}
    for d in samples:
        edges = {0, ds.sizes[d]}
        for v in names:
            chunks = ds[v].chunksizes.get(d) if ds[v].chunks is not None else None
            if chunks:
                edges.update(np.cumsum(chunks).tolist())
        bounds[d] = sorted(edges)

    def split(dims_left, cell):
        if not dims_left:
            return [{}]
        d, rest = dims_left[0], dims_left[1:]
        lo, hi = cell[d]
        below = math.prod(cell[r][1] - cell[r][0] for r in rest)
        if below <= max_samples:
            step = max(1, max_samples // below)
            whole = {r: slice(*cell[r]) for r in rest}
            return [{d: slice(s, min(s + step, hi)), **whole} for s in range(lo, hi, step)]
        return [{d: slice(s, s + 1), **sub} for s in range(lo, hi) for sub in split(rest, cell)]

    pieces = []
    for cell_edges in product(*[list(pairwise(bounds[d])) for d in samples]):
        cell = dict(zip(samples, cell_edges, strict=True))
        for piece in split(list(samples), cell):
            pieces.append(piece)
    return pieces


def _piece_size(piece: dict[str, slice]) -> int:
    return math.prod(s.stop - s.start for s in piece.values())


class _DatasetSource(BatchSource):
    """Dask-backed states read piece by piece (see ``_blocks``), checked with labels.

    Each epoch visits the pieces in a new seeded order and mixes them through a
    buffer of a few batches, so that a batch is not made of neighbours in time only;
    at most one piece (``<= batch_size`` samples) is computed at a time. The
    validation split holds out whole pieces, read in a fixed order.
    """

    def __init__(self, ds, layout_args, pieces, batch_size, seed, shuffle):
        self.ds = ds
        self.layout_args = layout_args  # names, samples, levels, grid, n_fields
        self.pieces = pieces
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.size = sum(_piece_size(p) for p in pieces)

    def split(self, val_fraction, generator):
        order = torch.randperm(len(self.pieces), generator=generator).tolist()
        val, n_val = [], 0
        for k in order:
            if n_val >= val_fraction * self.size or len(val) >= len(self.pieces) - 1:
                break
            val.append(k)
            n_val += _piece_size(self.pieces[k])
        held = set(val)
        train = [p for k, p in enumerate(self.pieces) if k not in held]
        args = (self.ds, self.layout_args)
        return (
            _DatasetSource(*args, train, self.batch_size, self.seed, shuffle=True),
            _DatasetSource(
                *args, [self.pieces[k] for k in sorted(val)], self.batch_size, 0, shuffle=False
            ),
        )

    def read(self, epoch: int) -> Iterator[Any]:
        names, samples, levels, grid, n_fields = self.layout_args
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.pieces)) if self.shuffle else range(len(self.pieces))
        buffer: list[np.ndarray] = []
        held = 0
        limit = 4 * self.batch_size if self.shuffle else self.batch_size
        for k in order:
            block = self.ds.isel(self.pieces[k]).compute()
            _check_finite(block, names, f"block {dict(self.pieces[k])}", self.layout_args[1])
            buffer.append(_stack_block(block, names, samples, levels, grid, n_fields))
            held += buffer[-1].shape[0]
            if held >= limit:
                data = np.concatenate(buffer)
                if self.shuffle:
                    data = data[rng.permutation(data.shape[0])]
                n_full = data.shape[0] // self.batch_size * self.batch_size
                for s in range(0, n_full, self.batch_size):
                    yield torch.from_numpy(data[s : s + self.batch_size])
                buffer, held = [data[n_full:]], data.shape[0] - n_full
        if held:
            data = np.concatenate(buffer)
            if self.shuffle:
                data = data[rng.permutation(data.shape[0])]
            for s in range(0, data.shape[0], self.batch_size):
                yield torch.from_numpy(data[s : s + self.batch_size])


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------
def train_latent(
    ds: xr.Dataset,
    obs_layout,
    *,
    variables: str | Sequence[str] | None = None,
    member_dim: str | None = None,
    lat_dim: str | None = None,
    lon_dim: str | None = None,
    time_dim: str | None = None,
    noise: str | float = "10%",
    batch_size: int = 64,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options,
):
    """Train a Latent-EnSF model (state VAE + observation encoder) on an xarray Dataset.

    Every state of ``ds`` (each combination of its time, member and other sample dims)
    is a training sample; the model learns to encode such states and sparse noisy
    observations of them, laid out as ``obs_layout``, into one latent space (see
    :func:`xensf.latent.train_latent_model` for the loss and the training loop). The
    result is applied with ``prior.ensf.assimilate(obs, model=model)``.

    Parameters
    ----------
    ds : xarray.Dataset
        Training states, dims ``time [× member] × [levels] × lat × lon`` (any order).
        The grid dims are found as the accessor finds them (CF metadata, then usual
        names; ``lat_dim``/``lon_dim`` override). Vertical level dims (a coordinate
        with CF vertical metadata — ``axis: Z``, ``positive``, a pressure standard
        name — or a usual level name: ``level``, ``plev``, ``isobaricInhPa``, ...)
        become channels; **every other dim is a sample dim** and is stacked into
        samples. Free of NaN, except a mask: NaN at the same grid points (and levels)
        in every sample, such as land, is learnt as the model's mask (the loss and the
        statistics skip it). Numpy-backed data is loaded as one tensor;
        dask-backed data is streamed (see Notes).
    obs_layout : int, (int, int), DataArray or Dataset
        Where the observations the model will be given lie:

        * an integer ``k`` or a pair ``(sy, sx)``: every ``k``-th grid point in each
          direction (``sy``-th row, ``sx``-th column), from the first, in every
          channel;
        * a boolean DataArray on the grid (dims ``lat, lon`` and optionally level
          dims, coordinates those of ``ds``): True where observed;
        * point observations, a Dataset or DataArray with latitude and longitude
          coordinates along one dim (``station``, ``obs``, ...). Its data variables
          name the observed state variables (with their level dims; levels it lacks
          are slots that are never observed); with no data variables, or as an
          unnamed DataArray, every state variable is observed at those points. Only
          the locations are used: stations need not sit on grid points (each
          observes the bilinear interpolation of the state at its location, as the
          accessor's observation operator does); points outside the grid are
          refused. The model then takes these stations (any subset of them, at any
          time) through ``prior.ensf.assimilate(stations, model=model)``.
    variables : str or sequence of str, optional
        The state variables, in this order; default every data variable that has
        both grid dims, in the Dataset's order (as the accessor chooses them).
    member_dim, lat_dim, lon_dim, time_dim : str, optional
        Name the dims when they cannot be found from CF metadata or usual names.
        Member and time are optional (a dataset of runs along ``time`` is fine).
    noise : str or float, default "10%"
        Observation noise added to the synthetic training observations: ``"P%"`` is
        ``P/100`` times the spatial standard deviation of each sample's channel (the
        convention of ``obs_error="10%"``); a number is a standard deviation in the
        state's units, the same for every channel. ``"0%"`` or ``0``: no noise.
    batch_size : int, default 64
        Samples per optimisation step; with dask input also the most samples read at
        once.
    val_fraction : float, default 0.1
        Share of the samples held out for validation (the best epoch, the quality
        record and the latent observation error).
    seed : int, default 0
        Seeds the weights, the split, the order, and the observation and
        reparameterisation noise: the same seed gives the same model (exactly on CPU).
    **options
        The network and the optimisation, as :func:`xensf.latent.train_latent_model`
        takes them (one list, documented there): ``latent_dim`` (default 400, the
        size aimed at), ``latent_channels``, ``patch``, ``downsample``, ``width``,
        ``blocks``, ``lam``, ``kl_warmup``, ``epochs``, ``time_budget`` (seconds),
        ``lr``, ``min_lr_fraction``, ``patience``, ``device``, ``precision``,
        ``progress``.

    Returns
    -------
    LatentModel
        The trained model. Its ``config`` records ``"data"`` (the data signature —
        variables, fields, units, grid — that the accessor checks before applying
        it), per-channel ``"variables"`` and ``"units"``, the ``"obs_layout"``,
        and ``"training"`` (history, sizes, seed, ``"sample_dims"``, ``"streamed"``).
        Save it with ``model.save(path)``.

    Raises
    ------
    DimensionError
        Grid dims not found, or no sample dim.
    OptionError
        Unknown variables, non-float variables, bad option values.
    ObservationMismatchError
        An observation layout that does not fit the grid: a stride larger than the
        grid, a mask on another grid or with other dims, point observations of
        unknown variables.
    ObservationDomainError
        Point observations outside the grid.
    EnsembleError
        Fewer than :data:`MIN_SAMPLES` (10) samples; inf in the data, or NaN that is
        not a mask.

    Notes
    -----
    *Streaming.* When any state variable is dask-backed, the data is never loaded
    whole. The sample dims are cut into pieces that lie within one dask chunk and hold
    at most ``batch_size`` samples; a seeded random selection of pieces (about
    ``val_fraction`` of the samples) is the validation set, read in a fixed order;
    the rest is read each epoch in a new seeded order, one piece computed at a time,
    mixed through a buffer of four batches. The normalisation statistics take one
    extra pass. NaN in dask-backed data is found on the first pass, before any
    optimisation step, with an error naming the variable and the sample; numpy-backed
    data is checked before anything else.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> runs = rng.normal(size=(40, 16, 16)).astype("float32")
    >>> ds = xr.Dataset({"h": (("time", "y", "x"), runs, {"units": "m"})})
    >>> model = train_latent(ds, 4, latent_dim=16, width=8, epochs=1, progress=False)
    >>> model.config["data"]["variables"], model.config["obs_layout"]["stride"]
    (['h'], [4, 4])

    Then, on a forecast ensemble ``prior`` on the same grid and observations ``obs``
    every 4th point (NaN elsewhere):

    >>> analysis = prior.ensf.assimilate(obs, model=model)  # doctest: +SKIP
    """
    if isinstance(ds, xr.DataArray):
        if ds.name is None:
            raise OptionError(
                "training data given as an unnamed DataArray: name it or pass a Dataset"
            )
        ds = ds.to_dataset()
    if not isinstance(ds, xr.Dataset):
        raise OptionError(
            f"the training data must be an xarray Dataset, got a {type(ds).__name__}"
        )
    grid = _grid_dims(ds, lat_dim, lon_dim)
    member = find_role(ds, "member", override=member_dim, required=False)
    time = find_role(ds, "time", override=time_dim, required=False)
    names = state_variables(ds, grid, variables, purpose="to train on")
    samples, levels = _sample_and_level_dims(ds, names, grid, member, time)
    n_samples = math.prod(ds.sizes[d] for d in samples)
    if n_samples < MIN_SAMPLES:
        raise EnsembleError(
            f"the training data has {n_samples} states (sample dims {samples}); training "
            f"needs at least {MIN_SAMPLES}, and many more to generalise"
        )
    layout = StateLayout(
        variables=tuple(names),
        level_dims=tuple(tuple(levels[v]) for v in names),
        level_shapes=tuple(tuple(ds.sizes[d] for d in levels[v]) for v in names),
        grid_shape=(ds.sizes[grid[0]], ds.sizes[grid[1]]),
    )
    dims = EnsembleDims(member=member, lat=grid[0], lon=grid[1], time=time)
    sampler = _observation_sampler(obs_layout, ds, dims, layout, levels, noise)
    signature = data_signature(ds, dims, layout)
    channel_vars = [v for v in names for _ in range(layout.n_fields_of(v))]
    channel_units = [ds[v].attrs.get("units") for v in channel_vars]
    set_here = {
        "states",
        "make_obs",
        "periodic_lon",
        "variables",
        "units",
        "val_states",
        "normalization",
    }
    own = set_here & set(options)
    named = set(keyword_names(train_latent))
    takes = set(inspect.signature(train_latent_model).parameters) - named - set_here
    unknown = sorted(set(options) - takes - set_here)
    if unknown:
        listing = f"its network and optimisation options are {sorted(takes)}"
        raise unknown_options(unknown, "train_latent", listing, [*takes, *named])
    if own:
        raise OptionError(
            f"train_latent sets {sorted(own)} from the Dataset itself; drop them (use "
            "xensf.latent.train_latent_model for tensors)"
        )
    common = dict(
        batch_size=batch_size,
        seed=seed,
        periodic_lon=_is_periodic(ds, dims),
        variables=channel_vars,
        units=channel_units,
        **options,
    )

    streamed = any(ds[v].chunks is not None for v in names)
    if not streamed:
        _check_finite(ds, names, "before training", samples)
        states = _stack_block(ds, names, samples, levels, grid, layout.n_fields)
    else:
        if not is_integer(batch_size) or batch_size < 1:
            raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
        pieces = _blocks(ds, names, samples, batch_size)
        layout_args = (names, samples, levels, grid, layout.n_fields)
        states = _DatasetSource(
            ds[names], layout_args, pieces, batch_size, int(seed), shuffle=True
        )
    model = train_latent_model(states, sampler, val_fraction=val_fraction, **common)

    model.config["data"] = signature
    model.config["training"]["sample_dims"] = list(samples)
    model.config["training"]["streamed"] = streamed
    return model
