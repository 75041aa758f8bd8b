"""Skill scores of an ensemble against a truth, on xarray objects.

The one home of xensf's scores: RMSE of the ensemble mean, spread, the continuous
ranked probability score (CRPS), the spread–skill ratio and the rank histogram;
``ds.ensf.rmse``, ``ds.ensf.crps``, ``ds.ensf.spread_skill`` and
``ds.ensf.rank_histogram`` call them. They are array code tested against definitions
(xskillscore, the reference for xarray scores, brings scipy, statsmodels, numba and
bottleneck with it; these few scores do not need them).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .checks import require_flag
from .errors import DimensionError, EnsembleError, OptionError

__all__ = [
    "area_weights",
    "crps",
    "ensemble_rmse",
    "mean_spread",
    "rank_histogram",
    "relative_rmse",
    "spread_skill",
]


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
    (and time, level) of ``truth``: a float (a Dataset of one number per variable for
    a Dataset); only where ``where`` is true.
    ``weights`` (e.g. cos(latitude), :func:`area_weights`; finite, at least 0) weight
    the mean when all of its dims are among those averaged over.
    """
    _check(ensemble, truth, member_dim, dims, weights)
    error = ensemble.mean(member_dim) - truth
    if where is not None:
        error = error.where(where)
    if dims is not None:
        return _mean(error**2, dims, weights) ** 0.5
    mean = _mean(error**2, None, weights)
    if isinstance(mean, xr.Dataset):  # one number per variable
        return mean**0.5
    return float(np.sqrt(mean))


def mean_spread(
    ensemble: xr.DataArray, member_dim: str, where: xr.DataArray | None = None
) -> float:
    """Root of the mean ensemble variance (``ddof=1``), over all points or ``where``."""
    _check(ensemble, None, member_dim, None, None)
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
    if not scales:
        raise OptionError("scales is empty: give each variable to score its scale, {name: s}")
    for v, s in scales.items():
        if not (isinstance(s, int | float | np.number) and np.isfinite(s) and s > 0):
            raise OptionError(f"scales[{v!r}] must be a positive finite number, got {s!r}")
        for data, whose in ((state, "state"), (truth, "truth")):
            if v not in data.data_vars:
                raise OptionError(
                    f"scales names {v!r}, which the {whose} lacks; its variables are "
                    f"{list(data.data_vars)}"
                )
            missing = [d for d in dims if d not in data[v].dims]
            if missing:
                raise DimensionError(
                    f"the {whose}'s {v!r} lacks the dims {missing} to score over (it has "
                    f"{list(data[v].dims)}): pass its grid's dims as dims= (by default ('y', 'x'))"
                )
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


def _scored(ensemble, truth, member_dim):
    """Where a score is defined: the truth is known and no member is NaN (a mask).

    A score that averages two quantities (spread and error) takes both over these points
    only: a truth with gaps (a gridded observation product) or an ensemble with a land
    mask would otherwise give the spread of points that have no error.
    """
    return truth.notnull() & ensemble.notnull().all(member_dim)


def _check(ensemble, truth, member_dim, dims, weights) -> None:
    """A :class:`~xensf.errors.XensfError` for scores' arguments that do not fit: a
    member dim the ensemble lacks or the truth has, dims to average over that the
    ensemble lacks, weights that are NaN, negative or all 0."""
    if member_dim not in ensemble.dims:
        raise DimensionError(
            f"member_dim {member_dim!r} is not a dim of the ensemble; it has {list(ensemble.dims)}"
        )
    if truth is not None and member_dim in truth.dims:
        raise DimensionError(
            f"the truth has the member dim {member_dim!r}: give one state (e.g. one run), "
            "not an ensemble"
        )
    if truth is not None:
        _check_labels_meet(ensemble, truth)
    if dims is not None:
        unknown = [d for d in dims if d not in ensemble.dims or d == member_dim]
        if unknown:
            raise DimensionError(
                f"dims {unknown} are not dims of the ensemble to average over; it has "
                f"{[d for d in ensemble.dims if d != member_dim]}"
            )
    if weights is not None:
        values = np.asarray(weights, dtype=np.float64)
        if not (np.isfinite(values).all() and (values >= 0).all() and (values > 0).any()):
            raise OptionError(
                "weights must be finite numbers of at least 0, not all 0 (e.g. "
                "xensf.metrics.area_weights(ds.lat)); fill NaN with 0 to leave points out"
            )


def _check_labels_meet(ensemble, truth) -> None:
    """A :class:`~xensf.errors.DimensionError` where xarray's alignment of the two by
    label would fail or leave nothing to score: repeated labels along a dim, or no label
    in common (a float32 spelling of the ensemble's coordinates, other dates)."""
    for dim in set(ensemble.indexes) & set(truth.indexes):
        ours, theirs = ensemble.indexes[dim], truth.indexes[dim]
        for index, whose in ((ours, "ensemble"), (theirs, "truth")):
            if not index.is_unique:
                raise DimensionError(
                    f"the {whose}'s {dim!r} labels repeat; scores pair the ensemble and "
                    "the truth by label: drop the repeats"
                )
        if len(ours) and len(theirs) and ours.intersection(theirs).empty:
            raise DimensionError(
                f"the ensemble and the truth have no {dim!r} label in common (the "
                f"ensemble's {ours[0]} … {ours[-1]}, the truth's {theirs[0]} … "
                f"{theirs[-1]}), so every score would be NaN. Here the labels must be the "
                "same; the accessor's scores (ensemble.ensf.rmse(truth) and the others) "
                "also take a float32 spelling of the same coordinates"
            )


def _mean(values, dims, weights):
    """The mean over ``dims`` (all dims if None), weighted where ``weights``' dims are
    among them; a Dataset's variables each over the dims of ``dims`` they have (a
    per-member global mean has no grid to average over)."""
    if dims is None:
        if isinstance(values, xr.Dataset):
            return values.map(lambda v: _mean(v, list(v.dims), weights))
        dims = list(values.dims)
    if isinstance(values, xr.Dataset):
        return values.map(lambda v: _mean(v, [d for d in dims if d in v.dims], weights))
    if weights is not None and set(weights.dims) <= set(dims):
        return values.weighted(weights).mean(dims)
    return values.mean(dims)


def crps(
    ensemble: xr.DataArray | xr.Dataset,
    truth: xr.DataArray | xr.Dataset,
    member_dim: str,
    dims: list[str] | None = None,
    weights: xr.DataArray | None = None,
    fair: bool = False,
):
    """Continuous ranked probability score of the ensemble against ``truth``.

    ``CRPS = E|X − y| − ½ E|X − X'|`` for the members' empirical distribution, point by
    point (in the variable's units; 0 for a perfect deterministic forecast), then
    averaged over ``dims`` (default: every dim, weighted by ``weights`` as in
    :func:`ensemble_rmse`). ``fair=True`` gives the fair CRPS (Ferro 2014), ``½ E|X − X'|``
    over distinct pairs, whose expectation does not depend on the ensemble size.
    """
    require_flag(fair, "fair", OptionError)
    _check(ensemble, truth, member_dim, dims, weights)
    members = ensemble.sizes[member_dim]
    if members < (2 if fair else 1):
        raise EnsembleError(
            f"the fair CRPS needs at least 2 members along {member_dim!r}, got {members}; "
            "use fair=False for a single member (its CRPS is its absolute error)"
        )
    skill = abs(ensemble - truth).mean(member_dim)
    pairs = xr.apply_ufunc(
        _mean_pair_distance,
        ensemble,
        input_core_dims=[[member_dim]],
        kwargs={"fair": fair},
        dask="parallelized",
        output_dtypes=[np.float64],
        # members stored in several chunks (a file's one per member) are joined lazily
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return _mean(skill - 0.5 * pairs, dims, weights)


def _mean_pair_distance(x: np.ndarray, fair: bool) -> np.ndarray:
    """``E|X − X'|`` over the last axis from the sorted members: ``Σ (2i − N − 1) x_(i)``,
    over ``N²`` pairs (all) or ``N (N − 1)`` (distinct)."""
    n = x.shape[-1]
    ordered = np.sort(np.asarray(x, dtype=np.float64), axis=-1)
    coefficients = 2.0 * np.arange(1, n + 1) - n - 1
    total = 2.0 * (ordered * coefficients).sum(-1)
    return total / (n * (n - 1) if fair else n * n)


def spread_skill(
    ensemble: xr.DataArray | xr.Dataset,
    truth: xr.DataArray | xr.Dataset,
    member_dim: str,
    dims: list[str] | None = None,
    weights: xr.DataArray | None = None,
):
    """Spread–skill ratio: ``√((N + 1)/N · mean variance) / RMSE of the mean``.

    1 for a calibrated ensemble whose members and truth are exchangeable; below 1 an
    over-confident ensemble, above 1 an under-confident one. The factor ``(N + 1)/N``
    (Fortin et al. 2014) makes the ratio 1 in expectation at any ensemble size ``N``;
    the variance has ``ddof=1``. Means over ``dims`` (default: every dim), weighted as
    in :func:`ensemble_rmse`; both over the points where the truth is known and the
    members are not NaN (a truth with gaps, an ensemble with a land mask).
    """
    _check(ensemble, truth, member_dim, dims, weights)
    n = ensemble.sizes[member_dim]
    if n < 2:
        raise EnsembleError(f"a spread needs at least 2 members along {member_dim!r}, got {n}")
    scored = _scored(ensemble, truth, member_dim)
    variance = _mean(ensemble.var(member_dim, ddof=1).where(scored), dims, weights)
    squared = _mean(((ensemble.mean(member_dim) - truth) ** 2).where(scored), dims, weights)
    return np.sqrt((n + 1) / n * variance / squared)


def rank_histogram(
    ensemble: xr.DataArray | xr.Dataset,
    truth: xr.DataArray | xr.Dataset,
    member_dim: str,
    dims: list[str] | None = None,
    seed: int = 0,
):
    """Counts of the truth's rank among the members (Talagrand diagram), along ``rank``.

    Rank ``r`` (0 … N) is the number of members below the truth; a truth equal to some
    members takes a rank drawn uniformly among the tied positions (from ``seed``, so the
    counts are reproducible). Counted over ``dims`` (default: every dim); a flat
    histogram is what a calibrated ensemble gives, a U shape an over-confident one, a
    slope a biased one. NaN truths, and points where the members are NaN (a mask), are
    not counted.
    """
    from .filters.noise import check_seed

    _check(ensemble, truth, member_dim, dims, None)
    check_seed(seed, non_negative=True)  # numpy's generator breaks the ties
    n = ensemble.sizes[member_dim]
    # computed here (one number per point of the truth), so that the tie-breaking draws
    # follow the points in order whatever the chunks
    below = (ensemble < truth).sum(member_dim).compute()
    ties = (ensemble == truth).sum(member_dim).compute()
    rng = np.random.default_rng(seed)

    def draw(b, t):
        return b + np.floor(rng.random(np.shape(t)) * (np.asarray(t) + 1)).astype(np.int64)

    rank = xr.apply_ufunc(draw, below, ties).where(_scored(ensemble, truth, member_dim), -1)
    over = rank.dims if dims is None else dims
    counts = [(rank == r).sum(over) for r in range(n + 1)]
    return xr.concat(counts, dim="rank").assign_coords(rank=np.arange(n + 1))
