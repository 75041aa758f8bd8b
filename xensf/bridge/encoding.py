"""``encode`` / ``decode``: state Datasets ⇄ labelled latent Datasets, lazily.

The latent Dataset has the state's sample dims (time, member, ...) and a ``latent``
dim, with variables ``latent_mean`` and ``latent_log_variance`` (the VAE encoder's
Gaussian). Decoding rebuilds the state Dataset on the grid, variables, levels and
units the model was trained on (its data signature).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import DimensionError, EnsembleError, ObservationMismatchError, OptionError
from ..filters.device import compute_device, parse_device
from .dims import find_role, is_level, require_whole
from .layout import StateLayout
from .metadata import cf_coordinates
from .model_cache import cached_model, model_handle
from .signature import check_signature, data_signature, model_orientation, signature_levels

__all__ = ["decode", "encode"]

LATENT_DIM = "latent"

#: States per network pass of ``encode`` and ``decode``, whatever the chunk holds (its
#: last pass padded with zeros). CPU convolutions sum in another order for another
#: batch size (a state encoded alone or with 4 others differs in its last bits from
#: the same state among 63 others), so a state's result must not depend on how many
#: share its chunk; its position within a pass of a given size does not matter.
PASS_STATES = 16


def _in_passes(run, x: np.ndarray):
    """``run(x)`` (a model's encode or decode, on ``(B, ...)``) in passes of
    :data:`PASS_STATES` items, the last one padded with zeros and the padding dropped."""
    extra = -len(x) % PASS_STATES
    padded = np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)]) if extra else x
    out = run(padded, batch_size=PASS_STATES)
    return tuple(o[: len(x)] for o in out) if isinstance(out, tuple) else out[: len(x)]


def _encode_block(*arrays, handle, layout, device):
    lead = arrays[0].shape[: arrays[0].ndim - len(layout.level_dims[0]) - 2]
    flat = [a.reshape(-1, *a.shape[len(lead) :]) for a in arrays]
    x = layout.stack([f[:, None] for f in flat])[:, 0]  # (B, d)
    model = cached_model(handle, compute_device(device))
    states = x.astype(np.float32).reshape(-1, layout.n_fields, *layout.grid_shape)
    read = np.isfinite(states)
    if model.valid is not None:
        read |= ~model.valid.cpu().numpy()
    if not read.all():
        fields = np.flatnonzero(~read.all(axis=(0, 2, 3)))
        bad = sorted({layout.variables[i] for i in layout.field_of_variable()[fields]})
        raise EnsembleError(
            f"the variables {bad} hold NaN or inf at grid points the model reads; fill them "
            "(only the model's masked points may hold NaN)"
        )
    mu, logvar = _in_passes(model.encode, states)
    size = mu.shape[-1]
    return mu.cpu().numpy().reshape(*lead, size), logvar.cpu().numpy().reshape(*lead, size)


def encode(
    ds: xr.Dataset, model: Any, *, variables=None, lat_dim=None, lon_dim=None, device=None
) -> xr.Dataset:
    """Latent Gaussian (mean, log-variance) of every state in ``ds``; see the accessor."""
    if device is not None:
        parse_device(device)
    handle, config = model_handle(model)
    data = config.get("data")
    if data is None:
        raise OptionError(
            "the model has no data signature (trained without xarray); use model.encode"
        )
    lat = find_role(ds, "latitude", override=lat_dim)
    lon = find_role(ds, "longitude", override=lon_dim)
    from .dims import EnsembleDims

    grid_dims = EnsembleDims(member="", lat=lat, lon=lon, time=None)
    orientation = model_orientation(data, ds, grid_dims)
    if orientation is not None:  # the same data in another order: read in the model's
        ds = orientation.apply(ds)
    names = (
        [variables]
        if isinstance(variables, str)
        else list(data["variables"] if variables is None else variables)
    )
    if sorted(names) == sorted(data["variables"]):  # the model's channels in its order
        names = list(data["variables"])
    if not names:
        raise OptionError(f"variables is empty; the model encodes {data['variables']}")
    foreign = [n for n in names if n not in data["variables"]]
    if foreign:
        raise OptionError(
            f"variables={names!r} names {foreign}, which the model does not encode; it "
            f"encodes {data['variables']}"
        )
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise OptionError(f"the model needs the variables {missing}, which the Dataset lacks")
    known = _levels(data, names[0])
    sample = [  # a level dim the model lacks is a level still (check_signature says so)
        d for d in ds[names[0]].dims if d not in (lat, lon, *known) and not is_level(ds, d)
    ]
    levels = {n: [d for d in ds[n].dims if d not in (lat, lon, *sample)] for n in names}
    layout = StateLayout(
        tuple(names),
        tuple(tuple(levels[n]) for n in names),
        tuple(tuple(ds.sizes[d] for d in levels[n]) for n in names),
        (ds.sizes[lat], ds.sizes[lon]),
    )
    found = data_signature(ds, grid_dims, layout)
    found["lat_dim"], found["lon_dim"] = data["lat_dim"], data["lon_dim"]
    check_signature(data, found, model=handle.path, data=ds)
    latent_size = _latent_size(config)
    core = [[*levels[n], lat, lon] for n in names]
    for n in names:
        require_whole(ds[n], [*levels[n], lat, lon], "encoding", instead="time or members")
    mean, logvar = xr.apply_ufunc(
        _encode_block,
        *[ds[n].transpose(*sample, *core[i]).variable for i, n in enumerate(names)],
        input_core_dims=core,
        output_core_dims=[[LATENT_DIM], [LATENT_DIM]],
        dask="parallelized",
        output_dtypes=[np.float32, np.float32],
        dask_gufunc_kwargs={"output_sizes": {LATENT_DIM: latent_size}},
        kwargs={"handle": handle, "layout": layout, "device": device},
        keep_attrs=False,
    )
    coords = {c: ds.coords[c] for c in ds.coords if set(ds.coords[c].dims) <= set(sample)}
    out = xr.Dataset(
        {
            "latent_mean": xr.DataArray(mean, dims=(*sample, LATENT_DIM)),
            "latent_log_variance": xr.DataArray(logvar, dims=(*sample, LATENT_DIM)),
        },
        coords={
            **coords,
            LATENT_DIM: (LATENT_DIM, np.arange(latent_size), {"long_name": "latent value index"}),
        },
    )
    out["latent_mean"].attrs["long_name"] = "mean of the latent Gaussian of the VAE encoder"
    out["latent_log_variance"].attrs["long_name"] = "log-variance of the latent Gaussian"
    out.attrs.update({"xensf_model": handle.path, "xensf_model_sha256": handle.digest})
    return cf_coordinates(out)


def _latent_size(config) -> int:
    """The size of the model's flattened latent, from its stored architecture."""
    from ..latent import LatentGrid

    arch = config["architecture"]
    grid = LatentGrid(
        arch["grid_shape"], arch["latent_channels"], arch["patch"], arch["downsample"]
    )
    return grid.size


def _levels(data, name) -> list[str]:
    for var, levels in data["fields"]:
        if var == name:
            return list(levels)
    return []


def _decode_block(z, *, handle, layout, device):
    if not np.isfinite(z).all():
        raise OptionError(
            "latent_mean holds NaN or inf; decode finite latent vectors (what "
            "ds.ensf.encode(model) returns)"
        )
    lead = z.shape[:-1]
    model = cached_model(handle, compute_device(device))
    x = _in_passes(model.decode, z.reshape(-1, z.shape[-1]).astype(np.float32)).cpu().numpy()
    parts = layout.unstack(x.reshape(-1, 1, layout.size))
    out = tuple(p[:, 0].reshape(*lead, *p.shape[2:]) for p in parts)
    return out if len(out) > 1 else out[0]


def _in_latent_order(z: xr.DataArray) -> xr.DataArray:
    """``z`` with its latent components in the order of their labels, as ``encode``
    numbers them (0 … L − 1): a latent dim reversed or sorted by another key (an
    ``isel``, a ``sortby``) was decoded by position, each component read as another.
    Without labels the order is the one given."""
    if LATENT_DIM not in z.coords:
        return z
    labels = np.asarray(z[LATENT_DIM].values)
    size = z.sizes[LATENT_DIM]
    if labels.dtype.kind not in "iu" or not np.array_equal(np.sort(labels), np.arange(size)):
        raise DimensionError(
            f"the latent data's {LATENT_DIM!r} labels are not its components 0 … {size - 1} "
            f"as encode numbers them (got {labels[:4].tolist()}…); drop them "
            f"(latent.drop_vars({LATENT_DIM!r})) if the components are in the model's order"
        )
    if np.array_equal(labels, np.arange(size)):
        return z
    return z.isel({LATENT_DIM: np.argsort(labels)})


def decode(latent: xr.Dataset | xr.DataArray, model: Any, *, device=None) -> xr.Dataset:
    """States on the model's grid from latent vectors; see the accessor."""
    if device is not None:
        parse_device(device)
    handle, config = model_handle(model)
    data = config.get("data")
    if data is None:
        raise OptionError(
            "the model has no data signature (trained without xarray); use model.decode"
        )
    if isinstance(latent, xr.Dataset) and "latent_mean" not in latent.data_vars:
        raise DimensionError(
            "decode takes latent data, a Dataset with 'latent_mean' along 'latent' (what "
            f"ds.ensf.encode(model) returns); this one has {sorted(map(str, latent.data_vars))}"
        )
    encoder = latent.attrs.get("xensf_model_sha256")
    if encoder is not None and encoder != handle.digest:
        raise ObservationMismatchError(
            f"this latent data was encoded by the model {latent.attrs.get('xensf_model')} "
            f"(weights sha256 {str(encoder)[:12]}…), not by {handle.path} ({handle.digest[:12]}…): "
            "another model's latent values mean other things; decode with the model that "
            "encoded them"
        )
    z = latent["latent_mean"] if isinstance(latent, xr.Dataset) else latent
    if LATENT_DIM not in z.dims:
        raise DimensionError(f"the latent data needs a {LATENT_DIM!r} dim; it has {list(z.dims)}")
    if z.sizes[LATENT_DIM] != _latent_size(config):
        raise DimensionError(
            f"the model's latent size is {_latent_size(config)}, the data's {z.sizes[LATENT_DIM]}"
        )
    names = list(data["variables"])
    level_dims = {n: [] for n in names}
    for var, levels in data["fields"]:
        for d in levels:
            if d not in level_dims[var]:
                level_dims[var].append(d)
    level_values = signature_levels(data)
    layout = StateLayout(
        tuple(names),
        tuple(tuple(level_dims[n]) for n in names),
        tuple(tuple(len(level_values[d]) for d in level_dims[n]) for n in names),
        tuple(data["grid_shape"]),
    )
    lat, lon = data["lat_dim"], data["lon_dim"]
    sample = [d for d in z.dims if d != LATENT_DIM]
    require_whole(z, [LATENT_DIM], "decoding", instead="time or members")
    z = _in_latent_order(z)
    outs = xr.apply_ufunc(
        _decode_block,
        z.variable,
        input_core_dims=[[LATENT_DIM]],
        output_core_dims=[[*level_dims[n], lat, lon] for n in names],
        dask="parallelized",
        output_dtypes=[np.float32] * len(names),
        dask_gufunc_kwargs={
            "output_sizes": {
                lat: data["grid_shape"][0],
                lon: data["grid_shape"][1],
                **{d: len(v) for d, v in level_values.items()},
            }
        },
        kwargs={"handle": handle, "layout": layout, "device": device},
        keep_attrs=False,
    )
    outs = outs if isinstance(outs, tuple) else (outs,)
    coords = {c: z.coords[c] for c in z.coords if LATENT_DIM not in z.coords[c].dims}
    units = data.get("grid_units") or [None, None]
    for dim, values, unit in ((lat, data["lat"], units[0]), (lon, data["lon"], units[1])):
        attrs = {"long_name": f"{dim} of the grid point"}
        coords[dim] = (dim, values, attrs if unit is None else {**attrs, "units": unit})
    level_units = data.get("level_units") or {}
    for dim, values in level_values.items():
        unit = level_units.get(dim)
        coords[dim] = (dim, values, {} if unit is None else {"units": unit})
    for name, (value, unit) in (data.get("scalar_levels") or {}).items():
        coords[name] = ((), value, {} if unit is None else {"units": unit})  # its one level
    result = xr.Dataset(
        {
            n: xr.DataArray(o, dims=(*sample, *level_dims[n], lat, lon))
            for n, o in zip(names, outs, strict=True)
        },
        coords=coords,
    )
    for n in names:
        result[n].attrs["long_name"] = f"{n} decoded from the latent"
        if data["units"].get(n) is not None:
            result[n].attrs["units"] = data["units"][n]
    result.attrs.update({"xensf_model": handle.path, "xensf_model_sha256": handle.digest})
    return cf_coordinates(result)
