"""``assimilate``: a forecast ensemble Dataset and observations -> analysis ensemble.

The work is mapped over chunks along time with :func:`xarray.apply_ufunc`
(``dask="parallelized"``): one task per chunk, and inside it one batched filter call
per group of times that share the same set of observed points. Every analysis time
draws its random numbers from a seed derived from ``(seed, time value)`` alone, so
a result does not depend on how the data is chunked or batched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import (
    ChunkingError,
    DimensionError,
    EnsembleError,
    ObservationMismatchError,
    OptionError,
)
from ..obs import check_longitude
from .device import compute_device
from .dims import EnsembleDims, find_dims, state_variables
from .layout import StateLayout
from .metadata import analysis_metadata
from .methods import resolve_method
from .models import ModelHandle, cached_model, model_handle
from .observations import (
    ObservationPlan,
    is_geographic,
    prepare_observations,
    state_grid_locations,
)
from .units import dequantify, requantify

__all__ = ["analysis_seeds", "assimilate"]


def analysis_seeds(seed: int, times: np.ndarray | None, n: int = 1) -> list[int]:
    """One 63-bit seed per analysis, from the user's seed and the analysis time alone."""
    if times is None:
        times = np.zeros(n, dtype=np.int64)
    values = np.asarray(times)
    if values.dtype.kind in "mM":
        values = values.astype("datetime64[ns]" if values.dtype.kind == "M" else "timedelta64[ns]")
        values = values.view(np.int64)
    out = []
    for v in values.ravel():
        digest = hashlib.blake2b(
            f"{int(seed)}|{np.asarray(v).tobytes().hex()}|{np.asarray(v).dtype.str}".encode(),
            digest_size=8,
        ).digest()
        out.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return out


@dataclass(frozen=True)
class BlockPlan:
    """What every task needs besides its data: small, picklable, no torch objects."""

    layout: StateLayout
    obs: ObservationPlan
    method: str
    options: dict[str, Any]
    seed: int
    device: str | None
    has_time: bool
    out_dtypes: tuple[np.dtype, ...]
    grid_locations: np.ndarray
    distance: str
    scales: dict[str, float] | None = field(default=None)
    model: ModelHandle | None = None
    #: for a station model: the model's slot of each observation row
    model_slots: tuple[int, ...] | None = None


def _ensf_scale(x: np.ndarray, layout: StateLayout, scales: dict[str, float] | None) -> np.ndarray:
    """Per-component standardisation scale ``(T, d)``.

    By default each field (variable at one level) is scaled by the prior ensemble's
    spread, the root-mean-square over the grid of the member standard deviation, at
    each analysis time; a floor keeps a field without spread finite.
    """
    T, _, d = x.shape
    G = layout.grid_size
    # float64: the variance of float32 values of 1e-30 (or 1e25) under- (over-)flows
    per_field = x.reshape(T, x.shape[1], layout.n_fields, G).astype(np.float64)
    if scales is not None:
        var_of_field = layout.field_of_variable()
        s = np.array([scales[layout.variables[i]] for i in var_of_field], dtype=np.float64)
        s = np.broadcast_to(s, (T, layout.n_fields))
    else:
        spread = np.sqrt(per_field.var(axis=1, ddof=1).mean(axis=-1))  # (T, F)
        size = np.abs(per_field.mean(axis=1)).max(axis=-1)  # (T, F)
        floor = np.maximum(size * 1e-6, np.finfo(np.float32).tiny)
        s = np.maximum(spread, floor)
    return np.repeat(s, G, axis=-1).reshape(T, d)


#: Largest |state| / scale the EnSF is given: its squares must stay far inside float32.
_MAX_STANDARDISED = 1e15


def _check_ensf_scale(x: np.ndarray, scale: np.ndarray, layout: StateLayout, given) -> None:
    """Refuse a user's ``scale`` so small against the state that the standardised state
    overflows (the default scale, the prior spread, cannot be)."""
    if given is None:
        return
    ratio = np.abs(x).max(axis=1) / scale  # (T, d)
    if ratio.max() > _MAX_STANDARDISED:
        field = int(np.unravel_index(ratio.argmax(), ratio.shape)[1]) // layout.grid_size
        name = layout.variables[layout.field_of_variable()[field]]
        raise OptionError(
            f"scale={given[name]:g} for {name!r} is {ratio.max():.3g} times smaller than the "
            f"state's values, which standardised by it would overflow. Give a scale near "
            f"the prior spread of {name!r}, or leave scale= out"
        )


def _work_dtype(plan: BlockPlan) -> type:
    """float64 when a state variable is float64 (so that it is analysed at its own
    precision, and float32 ones pass exactly through it), else float32."""
    return np.float64 if any(dt == np.float64 for dt in plan.out_dtypes) else np.float32


def _analyse_block(*arrays: np.ndarray, plan: BlockPlan) -> tuple[np.ndarray, ...]:
    """The task: analyse every time of one chunk. Inputs and outputs are numpy."""
    import torch

    from ..filters import ensf_analysis
    from ..filters.operators import LinearObservationOperator

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
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
        when = f" at time {times[bad[0]]}" if times is not None else ""
        raise EnsembleError(
            f"the prior ensemble has NaN or infinite values{when}; fill or drop them "
            "before assimilating"
        )
    y, err = obs.flatten(values, errors, T)
    seeds = analysis_seeds(plan.seed, times, T)
    observed = np.isfinite(y) & np.isfinite(err) & (err > 0)
    if np.any(np.isfinite(y) & ~(err > 0)):
        raise OptionError("observation errors must be positive where there are observations")

    device = compute_device(plan.device)
    work = _work_dtype(plan)
    tensor_dtype = torch.float64 if work == np.float64 else torch.float32
    # The prior itself where nothing changes it: exact, in its own precision.
    out = x.astype(work, copy=True)
    if plan.model is not None:
        _latent_update(out, x, y, err, observed, seeds, plan, device)
        return _unstack(out, plan)
    # Times sharing the same observed set are analysed in one batched call.
    groups, inverse = np.unique(observed, axis=0, return_inverse=True)
    for g, sel in enumerate(groups):
        ts = np.flatnonzero(inverse.ravel() == g)
        if not sel.any():
            continue  # nothing observed: the prior passes through unchanged
        if plan.method != "ensf":
            out[ts] = _letkf(x[ts], y[ts], err[ts], sel, obs, plan, device)
            continue
        op = LinearObservationOperator(
            torch.from_numpy(obs.indices[sel]), torch.from_numpy(obs.weights[sel])
        ).to(device=device, dtype=tensor_dtype)
        opts = plan.options
        # Standardised here, in float64, rather than by the filter's ``scale``: the
        # filter then sees numbers of order one whatever the units (a state of 1e-30
        # with errors of 1e-31 would otherwise underflow float32 precisions). Each
        # observation is scaled with the field it observes (the operator stays within
        # one field, so H(x / s) = H(x) / s).
        scale = _ensf_scale(x[ts], layout, plan.scales)  # (T, d)
        _check_ensf_scale(x[ts], scale, layout, plan.scales)
        scale_obs = scale[:, obs.indices[sel, 0]]
        post = ensf_analysis(
            torch.from_numpy((x[ts] / scale[:, None, :]).astype(work)).to(device),
            torch.from_numpy((y[ts][:, sel] / scale_obs).astype(work)).to(device),
            op,
            torch.from_numpy((err[ts][:, sel] / scale_obs).astype(work)).to(device),
            steps=int(opts["steps"]),
            eps_alpha=float(opts["eps_alpha"]),
            eps_beta=float(opts["eps_beta"]),
            prior_score=opts["prior_score"],
            likelihood=opts["likelihood"],
            generator=[seeds[t] for t in ts],
        )
        out[ts] = post.cpu().numpy() * scale[:, None, :]
    return _unstack(out, plan)


def _letkf(prior, y, err, observed_sel, obs: ObservationPlan, plan: BlockPlan, device):
    """Localised LETKF of ``prior`` ``(T, N, d)`` with the observations in ``observed_sel``."""
    import torch

    from ..filters import letkf_analysis
    from ..filters.operators import LinearObservationOperator

    layout, opts = plan.layout, plan.options
    work = _work_dtype(plan)
    op = LinearObservationOperator(
        torch.from_numpy(obs.indices[observed_sel]), torch.from_numpy(obs.weights[observed_sel])
    ).to(device=device, dtype=torch.float64 if work == np.float64 else torch.float32)
    loc = opts["loc_radius"]
    return (
        letkf_analysis(
            torch.from_numpy(prior.astype(work)).to(device),
            torch.from_numpy(y[:, observed_sel].astype(work)).to(device),
            op,
            torch.from_numpy(err[:, observed_sel].astype(work)).to(device),
            inflation=float(opts["inflation"]),
            rtps=float(opts["rtps"]),
            loc_radius=loc,
            state_coords=None if loc is None else plan.grid_locations,
            state_location=None
            if loc is None
            else np.tile(np.arange(layout.grid_size), layout.n_fields),
            obs_coords=None if loc is None else obs.locations[observed_sel],
            distance=plan.distance,
        )
        .cpu()
        .numpy()
    )


def _latent_update(out, x, y, err, observed, seeds, plan: BlockPlan, device) -> None:
    """Latent methods for the times of a chunk that have observations.

    All those times go through the networks and the filter in one batched call. The
    observations reach the model laid out on the grid (NaN where unobserved) for a
    gridded model, or as its station slots for a station model. A model whose
    reconstruction error of the prior members at the observed points exceeds the RMS
    innovation there, and whose analysis fits the observations worse than the prior
    mean, gets a :class:`~xensf.errors.ModelQualityWarning`.
    ``latent-ensf-letkf`` then corrects each time with a localised LETKF on the real
    observations, from the decoded latent analysis or, where that fits the
    observations worse than the prior mean, from the prior.
    """
    has = np.flatnonzero(observed.any(axis=1))
    if has.size == 0:
        return
    layout = plan.layout
    n_members = x.shape[1]
    shape = (layout.n_fields, *layout.grid_shape)
    model = cached_model(plan.model, device)
    if plan.obs.kind == "gridded":
        model_obs = np.full((has.size, layout.size), np.nan, dtype=np.float32)
        model_obs[:, plan.obs.indices[:, 0]] = np.where(observed[has], y[has], np.nan)
        model_obs = model_obs.reshape(has.size, *shape)
    else:
        slots = np.asarray(plan.model_slots)
        model_obs = np.full((has.size, model.config["obs_layout"]["n_obs"]), np.nan, np.float32)
        model_obs[:, slots] = np.where(observed[has], y[has], np.nan)
    latent_method = "latent-ensf" if plan.method == "latent-ensf-letkf" else plan.method
    names = ("steps", "eps_alpha", "eps_beta", "prior_score", "likelihood", "update")
    options = (
        {k: plan.options[k] for k in names}
        if plan.method == "latent-ensf-letkf"
        else dict(plan.options)
    )
    post, latent = model.analyse(
        x[has].astype(np.float32).reshape(has.size, n_members, *shape),
        model_obs,
        method=latent_method,
        generator=[seeds[t] for t in has] if latent_method == "latent-ensf" else None,
        batch_size=n_members,  # one time per network pass: independent of the chunking
        return_latent=True,
        **options,
    )
    post = np.asarray(post).reshape(has.size, n_members, layout.size)
    diag = {k: v.cpu().numpy() for k, v in latent["diagnostics"].items()}
    _warn_quality(diag, plan)
    if plan.method == "latent-ensf-letkf":
        background = _hybrid_background(x[has], post, err[has], observed[has], diag, model, plan)
        groups, inverse = np.unique(observed[has], axis=0, return_inverse=True)
        for g, sel in enumerate(groups):
            ts = np.flatnonzero(inverse.ravel() == g)
            post[ts] = _letkf(
                background[ts], y[has][ts], err[has][ts], sel, plan.obs, plan, device
            )
    out[has] = post


#: ``latent-ensf-letkf`` keeps the prior as its background while the prior's error at
#: the observed points is within this many times the prior spread there.
_SPREAD_TRUST = 2.0


def _hybrid_background(prior, latent, err, observed, diag, model, plan: BlockPlan):
    """The LETKF background of ``latent-ensf-letkf``, per time.

    The prior's error at the observed points is estimated from the innovation,
    ``e_b = sqrt(max(RMS(y − H x̄_b)² − RMS(σ_o)², 0))``; the latent analysis's, ``e_l``,
    as the largest of the reconstruction error of the prior members there, the model's
    validation error of decoded observations, and the latent analysis's own spread
    there — not from its fit to these observations, which it was made from. The latent
    analysis is taken where both hold:

    - ``e_b² > e_l² + 2·sqrt(2/M)·RMS(innovation)²``: the prior is worse, by more than
      twice the sampling error of ``e_b²`` (a mean of ``M`` squared innovations; at
      20 % noise an unguarded estimate swings across ``e_l`` by chance);
    - ``e_b > 2 · prior spread`` there: the prior ensemble does not know its error, so
      LETKF alone could not correct it.

    There the prior members are recentred on the latent analysis mean: they keep the
    prior's perturbations, which carry the flow's uncertainty (the decoded latent
    members would carry the VAE's error in their mean, where no LETKF sees it).
    Elsewhere the background is the prior, and the method is LETKF. All figures in
    units of each variable's training std.
    """
    obs = plan.obs
    scale = model.std.cpu().numpy()[_row_fields(plan, model)]  # (M,)
    count = np.maximum(observed.sum(-1), 1)

    def rms_at_obs(values):  # (T, M) -> (T,)
        return np.sqrt(np.where(observed, values**2, 0.0).sum(-1) / count)

    sigma_rms = rms_at_obs(err / scale)
    e_b = np.sqrt(np.maximum(diag["innovation"] ** 2 - sigma_rms**2, 0.0))

    def spread_at_obs(members):  # (T, N, d) -> (T,)
        values = (members[:, :, obs.indices] * obs.weights).sum(-1)  # (T, N, M)
        return rms_at_obs(values.std(1, ddof=1) / scale)

    quality = model.config.get("quality", {}).get("obs_relative_rmse", [0.0])
    floor = float(np.sqrt(np.mean(np.square(quality))))
    e_l = np.maximum(np.maximum(diag["reconstruction"], floor), spread_at_obs(latent))
    margin = 2.0 * np.sqrt(2.0 / count) * diag["innovation"] ** 2
    use_latent = (e_b**2 > e_l**2 + margin) & (e_b > _SPREAD_TRUST * spread_at_obs(prior))
    recentred = prior - prior.mean(1, keepdims=True) + latent.mean(1, keepdims=True)
    return np.where(use_latent[:, None, None], recentred, prior)


def _row_fields(plan: BlockPlan, model) -> np.ndarray:
    """The model channel of each observation row."""
    if plan.obs.kind == "gridded":
        return plan.obs.indices[:, 0] // plan.layout.grid_size
    return np.asarray(model.config["obs_layout"]["slot_channels"])[np.asarray(plan.model_slots)]


def _warn_quality(diag: dict[str, np.ndarray], plan: BlockPlan) -> None:
    """ModelQualityWarning when the model cannot represent the prior as well as obs pin it.

    Both must hold: the reconstruction error of the prior members at the observed points
    exceeds the RMS innovation there, and the latent analysis fits the observations
    worse than the prior mean. (The first alone also happens in a well-converged cycle
    with a good model, where the latent analysis still fits the observations better.)
    """
    import warnings

    from ..errors import ModelQualityWarning

    rec = float(np.sqrt(np.mean(diag["reconstruction"] ** 2)))
    innov = float(np.sqrt(np.mean(diag["innovation"] ** 2)))
    misfit = float(np.sqrt(np.mean(diag["analysis_misfit"] ** 2)))
    if rec > innov and misfit > innov:
        warnings.warn(
            f"the latent model {plan.model.path} reconstructs the prior members at the "
            f"observed points with an RMS error of {rec:.3g} (in units of each variable's "
            f"training std), more than the RMS innovation (observation minus prior mean) "
            f"there, {innov:.3g}, and its analysis fits the observations worse than the "
            f"prior (RMS {misfit:.3g}): the model cannot represent this data as well as "
            "the observations pin it down, and its analysis may be worse than the prior. Use "
            "method='latent-ensf-letkf' (falls back to the prior where the latent analysis "
            "fits the observations worse), train the model on more data like this, or use "
            "a full-space method (ensf, letkf).",
            ModelQualityWarning,
            stacklevel=2,
        )


def _unstack(out: np.ndarray, plan: BlockPlan):
    """The analysis ``(T, N, d)`` back to one array per variable, in its dtype."""
    result = plan.layout.unstack(out)
    result = [r.astype(dt, copy=False) for r, dt in zip(result, plan.out_dtypes, strict=True)]
    if not plan.has_time:
        result = [r[0] for r in result]
    return tuple(result) if len(result) > 1 else result[0]


def _check_chunks(ds: xr.Dataset, names: list[str], whole: dict[str, list[str]]) -> None:
    for name in names:
        chunks = ds[name].chunks
        if chunks is None:
            continue
        for dim, sizes in zip(ds[name].dims, chunks, strict=True):
            if dim in whole[name] and len(sizes) > 1:
                raise ChunkingError(
                    f"{name!r} is split into {len(sizes)} chunks along {dim!r}; every analysis "
                    f"needs the whole {dim!r} dim in one chunk. Rechunk first: "
                    f"ds.chunk({{{dim!r}: -1}}) (chunk along time instead)"
                )


def _check_model_fits(config, handle, prior, dims, layout) -> None:
    """Refuse a model trained on other variables, levels, units or another grid."""
    from .signature import check_signature, data_signature

    arch = config["architecture"]
    if config.get("data") is not None:
        check_signature(config["data"], data_signature(prior, dims, layout), model=handle.path)
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


def _check_grid(ds: xr.Dataset, dims: EnsembleDims) -> None:
    geographic = is_geographic(ds, dims)
    for d in dims.grid:
        if d in ds.coords:
            c = np.asarray(ds[d].values)
            if c.ndim != 1 or c.size < 2:
                continue
            if geographic and d == dims.lon:
                # Monotonic round the circle: a regional grid across the dateline in
                # its natural order (160 ... 180, -170, -160) is fine.
                try:
                    check_longitude(c)
                except ObservationMismatchError as err:
                    raise DimensionError(f"the {d!r} coordinate: {err}") from None
                continue
            step = np.diff(c.astype(np.float64))
            if not (np.all(step > 0) or np.all(step < 0)):
                raise DimensionError(
                    f"the {d!r} coordinate is not strictly monotonic; sort it (ds.sortby({d!r}))"
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
    call: str | None = None,
    **options: Any,
) -> xr.Dataset:
    """Analysis ensemble from a forecast ensemble and observations.

    The public entry point is :meth:`xarray.Dataset.ensf.assimilate`; see
    :class:`xensf.accessor.EnsfDatasetAccessor` for every parameter.
    """
    if not isinstance(prior, xr.Dataset):
        raise TypeError(f"the prior must be an xarray Dataset, got {type(prior).__name__}")
    # pint quantities (pint-xarray) become units attributes at the boundary, and the
    # quantified state variables quantities again on the way out.
    prior, registries = dequantify(prior)
    obs, _ = dequantify(obs)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    spec, opts = resolve_method(method, model, options)
    scales = opts.pop("scale", None) if spec.name == "ensf" else None
    handle = config = None
    if spec.needs_model:
        if obs_error is not None and not spec.takes_obs_error:
            raise OptionError(
                f"{spec.name} takes its (latent) observation error from the model, estimated "
                "when it was trained; drop obs_error="
            )
        handle, config = model_handle(model)
    dims = find_dims(
        prior, member_dim=member_dim, lat_dim=lat_dim, lon_dim=lon_dim, time_dim=time_dim
    )
    names = state_variables(
        prior, (dims.member, dims.lat, dims.lon), variables, purpose="to assimilate into"
    )
    if scales is not None:
        if isinstance(scales, int | float) and not isinstance(scales, bool):
            scales = dict.fromkeys(names, float(scales))
        if (
            not isinstance(scales, dict)
            or set(scales) != set(names)
            or not all(isinstance(v, int | float) and v > 0 for v in scales.values())
        ):
            raise OptionError(
                f"scale must be a positive number or a mapping {{variable: positive number}} "
                f"naming exactly the state variables {names}; got {scales!r}"
            )
        scales = {k: float(v) for k, v in scales.items()}
    if prior.sizes[dims.member] < 2:
        raise EnsembleError(
            f"the ensemble has {prior.sizes[dims.member]} member along {dims.member!r}; an "
            "ensemble analysis needs at least 2"
        )
    _check_grid(prior, dims)
    levels = {
        n: [d for d in prior[n].dims if d not in (dims.member, dims.lat, dims.lon, dims.time)]
        for n in names
    }
    _check_chunks(prior, names, {n: [dims.member, dims.lat, dims.lon, *levels[n]] for n in names})
    for n in names:
        if prior[n].chunks is None and not np.all(np.isfinite(prior[n].values)):
            raise EnsembleError(
                f"the prior ensemble variable {n!r} has NaN or infinite values; fill or drop "
                "them before assimilating"
            )
    layout = StateLayout(
        variables=tuple(names),
        level_dims=tuple(tuple(levels[n]) for n in names),
        level_shapes=tuple(tuple(prior.sizes[d] for d in levels[n]) for n in names),
        grid_shape=(prior.sizes[dims.lat], prior.sizes[dims.lon]),
    )
    if handle is not None:
        _check_model_fits(config, handle, prior, dims, layout)
    spherical = dims.lat in prior.coords and is_geographic(prior, dims)
    grid_loc = state_grid_locations(prior, dims, layout, spherical)
    obs_plan, values, errors = prepare_observations(
        obs, prior, layout, dims, obs_error, grid_loc,
        obs_dim=obs_dim, require_error=spec.takes_obs_error,
    )  # fmt: skip
    model_slots = None
    if handle is not None:
        model_slots = _model_slots(config, handle, obs_plan, layout)
    plan = BlockPlan(
        layout=layout,
        obs=obs_plan,
        method=spec.name,
        options=opts,
        seed=int(seed),
        device=device,
        has_time=dims.time is not None,
        out_dtypes=tuple(prior[n].dtype for n in names),
        grid_locations=grid_loc,
        distance="great_circle" if spherical else "euclidean",
        scales=scales,
        model=handle,
        model_slots=model_slots,
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
    state_core = [[dims.member, *levels[n], dims.lat, dims.lon] for n in names]
    inputs = (
        [bare(prior[n]) for n in names]
        + [bare(v, c) for v, c in zip(values, obs_plan.core_dims, strict=True)]
        + [bare(e, c) for e, c in zip(errors, obs_plan.error_core_dims, strict=True)]
    )
    core = [*state_core, *map(list, obs_plan.core_dims), *map(list, obs_plan.error_core_dims)]
    if dims.time is not None:
        inputs.append(bare(xr.DataArray(prior[dims.time].values, dims=(dims.time,))))
        core.append([])
    outputs = xr.apply_ufunc(
        _analyse_block,
        *inputs,
        input_core_dims=core,
        output_core_dims=state_core,
        dask="parallelized",
        output_dtypes=list(plan.out_dtypes),
        kwargs={"plan": plan},
        dask_gufunc_kwargs={"allow_rechunk": False},
    )
    if len(names) == 1:
        outputs = (outputs,)
    result = prior.copy()
    for n, out in zip(names, outputs, strict=True):
        result[n] = prior[n].copy(data=out.transpose(*prior[n].dims).data)
    parameters = {**opts, "seed": int(seed), "obs_layout": obs_plan.kind}
    if obs_plan.kind == "point":  # gridded: the count varies with time (NaN = unobserved)
        parameters["obs_slots"] = obs_plan.size
    if spec.name == "ensf":
        parameters["scale"] = (
            "prior ensemble spread per variable and level at each analysis time"
            if scales is None
            else scales
        )
    if spec.name in ("letkf", "latent-ensf-letkf"):
        parameters["loc_radius_units"] = "km" if spherical else "grid coordinate units"
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
