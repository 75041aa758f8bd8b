"""Choosing a method's settings by withheld observations (k-fold cross-validation).

:func:`cross_validate` splits the observed *locations* into folds (every variable and
level of a location in the same fold, so that a withheld value is not predicted from its
own neighbour in the vertical or from another variable at the same place), analyses the
prior with the other folds' observations for each setting, and compares the analysis
mean with the withheld observations: the ratio RMS(O − A) / RMS(O − B) per variable,
below 1 where the analysis predicts unseen observations better than the prior does.
Nothing in it uses a truth, so it is how a user chooses, on their own data, a LETKF's
``loc_radius``, an inflation, or whether to assimilate at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..checks import as_python, is_integer, is_quantity, is_real, require_flag
from ..errors import OptionError, WarningTally
from ..filters.noise import check_seed
from .dims import find_dims, find_role, flat_indexes, state_variables
from .orientation import in_the_state_order
from .seam import closing_column, folded

__all__ = ["cross_validate"]

# the arguments of assimilate that say where things are (innovations takes them too)
_WHERE = ("member_dim", "lat_dim", "lon_dim", "time_dim", "obs_dim", "variables",
          "obs_time_tolerance")  # fmt: skip


def cross_validate(
    prior: xr.Dataset,
    obs: xr.Dataset | xr.DataArray,
    settings: Mapping[str, Sequence[Any]],
    *,
    folds: int = 4,
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> xr.Dataset:
    """The analysis' fit to withheld observations for every combination of ``settings``.

    See :meth:`xensf.accessor.EnsfDatasetAccessor.cross_validate`.
    """
    grid = _check_settings(settings)
    check_seed(seed, non_negative=True)  # numpy's generator draws the folds
    if not is_integer(folds) or folds < 2:
        raise OptionError(f"folds must be an integer of at least 2, got {folds!r}")
    require_flag(progress, "progress", OptionError)
    obs = flat_indexes(obs)
    if isinstance(obs, xr.DataArray):
        obs = obs.to_dataset() if obs.name is not None else obs
    if not isinstance(obs, xr.Dataset):
        raise OptionError(
            f"cross_validate needs the observations as a Dataset or named DataArray, got "
            f"{type(obs).__name__}"
        )
    for name in grid:
        if name in ("obs", "folds", "seed", "progress"):
            raise OptionError(
                f"{name!r} is an argument of cross_validate itself, not an option of the "
                f"analysis, so it cannot be cross-validated; give one value, "
                f"cross_validate(..., {name}=...)"
            )
        if name in kwargs:
            raise OptionError(
                f"{name!r} is both a setting to cross-validate and a fixed argument; give it "
                "in one place"
            )
    where = {k: kwargs[k] for k in _WHERE if k in kwargs}
    combos = list(itertools.product(*grid.values()))
    _check_combinations(grid, combos, kwargs)
    dims = _dims(prior, where)
    # folds in the prior's order, a closing column's observations its first column's
    obs = in_the_state_order(folded(obs, dims), prior, dims)
    seam = closing_column(prior, dims)  # the grid the observations are drawn on
    drawn_on = prior if seam is None else seam.fold(prior)
    label, names, gridded = _fold_labels(drawn_on, obs, folds, seed, where)

    from tqdm.auto import tqdm

    from .innovations import innovations

    bar = tqdm(total=len(combos) * folds, desc="cross_validate", unit="analysis",
               disable=not progress)  # fmt: skip
    # per setting and variable, per fold: the weighted sums of (O - A)^2 and (O - B)^2
    # and the number of withheld observations
    sums: list[dict[str, np.ndarray]] = []
    tally = WarningTally("analyses of this cross-validation")
    with bar:
        for combo in combos:
            options = dict(zip(grid, combo, strict=True))
            sums.append({})
            for fold in range(folds):
                used, withheld = obs.copy(), obs.copy()
                for n in names:  # error variables stay whole
                    used[n] = obs[n].where(label != fold)
                    withheld[n] = obs[n].where(label == fold)
                step = ", ".join(f"{k}={v!r}" for k, v in options.items())
                with tally.step(f"{step}, fold {fold + 1}"):
                    analysis = prior.ensf.assimilate(used, seed=seed, **kwargs, **options)
                    diag = innovations(prior, withheld, analysis, with_errors=False, **where)
                    oma, omb = diag.oma.values, diag.omb.values  # computed here
                seen = np.isfinite(oma) & np.isfinite(omb)
                variable = np.broadcast_to(diag.variable.values, seen.shape)
                weight = np.broadcast_to(_area_weights(diag, gridded), seen.shape)
                for v in np.unique(diag.variable.values):
                    pick = seen & (variable == v)
                    acc = sums[-1].setdefault(str(v), np.zeros((folds, 3)))
                    acc[fold, 0] = np.sum(weight[pick] * oma[pick] ** 2)
                    acc[fold, 1] = np.sum(weight[pick] * omb[pick] ** 2)
                    acc[fold, 2] = pick.sum()
                bar.update()
    tally.report(len(combos) * folds)
    return _table(grid, combos, sums, folds, seed)


def _check_combinations(grid, combos, kwargs) -> None:
    """Every combination's method options checked as ``assimilate`` will check them, so
    that a bad value in the last setting fails before the first analysis."""
    from .methods import resolve_method

    general = {"method", "model", "obs_error", "seed", "device", *_WHERE}
    for combo in combos:
        options = {**kwargs, **dict(zip(grid, combo, strict=True))}
        resolve_method(
            options.get("method"),
            options.get("model"),
            {k: v for k, v in options.items() if k not in general},
        )


def _area_weights(diag: xr.Dataset, gridded: bool) -> np.ndarray:
    """Per observation: cos(latitude) for gridded observations on a latitude/longitude
    grid (the area of the cell each stands for: a regular grid's rows crowd towards the
    poles, and would otherwise outweigh the tropics), else 1 (stations stand for
    themselves)."""
    lat = diag.coords.get("latitude")
    if gridded and lat is not None and lat.attrs.get("units") == "degrees_north":
        return np.clip(np.cos(np.deg2rad(lat.values)), 0.0, None)
    return np.ones(diag.sizes["obs"])


def _check_settings(settings) -> dict[str, list[Any]]:
    if not isinstance(settings, Mapping) or not settings:
        raise OptionError(
            "settings must be a non-empty mapping {option: [values to try]}, e.g. "
            "{'loc_radius': [300.0, 600.0, 1200.0]}"
        )
    grid = {}
    for name, values in settings.items():
        if not isinstance(name, str):
            raise OptionError(f"setting names must be option names (strings), got {name!r}")
        if isinstance(values, np.ndarray) and values.ndim == 1:
            values = values.tolist()  # np.linspace(...): the values as Python numbers
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise OptionError(
                f"settings[{name!r}] must be a non-empty list (or 1-D array) of values to "
                f"try, got {values!r}"
            )
        twice = [v for i, v in enumerate(values) if v in list(values)[:i]]
        if twice:
            raise OptionError(
                f"settings[{name!r}] lists {twice[0]!r} more than once; give each value once "
                "(each is analysed in every fold)"
            )
        grid[name] = list(values)
    return grid


def _setting_values(values: list[Any]) -> np.ndarray:
    """One option's values as a coordinate that netCDF and zarr can write: numbers as
    floats (None, no localisation say, beside them: written as NaN), strings as
    strings, and values of mixed kinds or that are neither (``["10%", 0.5]``, mappings)
    as their text, which xarray could not write (a pint quantity as text that reads
    back as it: ``"500 kilometer"``)."""
    if all(is_real(x) for x in values):
        return np.asarray(values, dtype=float)
    if all(is_real(x) or x is None for x in values):
        return np.asarray(values, dtype=object)
    if all(isinstance(x, str) for x in values):
        return np.asarray(values, dtype=str)

    def text(x):
        if isinstance(x, str) or is_quantity(x):
            return str(x)
        return repr(as_python(x))

    return np.asarray([text(x) for x in values])


def _dims(prior, where):
    return find_dims(
        prior, member_dim=where.get("member_dim"), lat_dim=where.get("lat_dim"),
        lon_dim=where.get("lon_dim"), time_dim=where.get("time_dim"),
    )  # fmt: skip


def _fold_labels(prior, obs, folds, seed, where) -> tuple[xr.DataArray, list[str], bool]:
    """A fold number per observed location (along the point dim of point observations,
    over the grid of gridded ones; drawn from ``seed``, balanced; -1 where nothing is
    observed), the observed state variables, and whether the observations are gridded."""
    dims = _dims(prior, where)
    names = [n for n in obs.data_vars if n in state_variables(
        prior, (dims.member, dims.lat, dims.lon), where.get("variables"), purpose="to compare with"
    )]  # fmt: skip
    if not names:
        raise OptionError(
            f"none of the observation variables {list(obs.data_vars)} is a state variable "
            f"of the prior ({list(prior.data_vars)})"
        )
    gridded = all(dims.lat in obs[n].dims and dims.lon in obs[n].dims for n in names)
    if gridded:
        space = [dims.lat, dims.lon]
    else:
        from .observations import _find_point_dim

        obs_time = find_role(obs, "time", required=False)
        space = [where.get("obs_dim") or _find_point_dim(obs, names, obs_time)]
    seen = None
    for n in names:
        here = obs[n].notnull()
        here = here.any([d for d in here.dims if d not in space])
        seen = here if seen is None else seen | here
    seen = seen.transpose(*space)
    at = np.flatnonzero(seen.values)
    where = _positions(prior, obs, dims, space[0], gridded, at)
    if where is None:  # positions that change with time: each observer a location
        place = np.arange(at.size)
    else:
        order = np.lexsort((where[:, 1], where[:, 0]))
        at = at[order]
        # rows at one place (a table's levels of one sounding) are one location
        place = np.unique(where[order], axis=0, return_inverse=True)[1].ravel()
    count = int(place.max()) + 1 if place.size else 0
    if count < folds:
        raise OptionError(
            f"cross-validation in {folds} folds needs at least {folds} observed locations; "
            f"the observations have {count}. Use fewer folds (at least 2) or more observations"
        )
    fold = np.full(seen.shape, -1, dtype=np.int64)
    fold.ravel()[at] = (np.random.default_rng(seed).permutation(count) % folds)[place]
    coords = {d: obs[d] for d in space if d in obs.coords}
    return xr.DataArray(fold, dims=space, coords=coords), names, gridded


def _positions(prior, obs, dims, point, gridded, at) -> np.ndarray | None:
    """The positions ``(latitude, longitude in [-180, 180))`` on the sphere, ``(y, x)``
    on a planar grid, grid indices on a grid without coordinates) of the observed
    locations ``at`` (flat indices of the grid, or of the point dim ``point``), by which
    the folds are drawn: so a location's fold does not depend on the order the
    locations come in (a grid from north to south, the same stations in another order,
    or gridded observations given as stations). None for moving observers."""
    from .grid import grid_coords
    from .observations import _point_coords, _points_in_grid_units

    grid = grid_coords(prior, dims)
    if not grid.known:
        return np.stack([at, np.zeros_like(at)], -1).astype(np.float64)
    if gridded:
        return grid.locations[at]
    names = _point_coords(obs, point)
    if names is None:  # positions that change with time
        return None
    obs = _points_in_grid_units(obs, point, None, grid)
    lat, lon = (np.asarray(obs[n].values, np.float64) for n in names)
    return grid.locations_of(lat, lon)[at]


def _table(grid, combos, sums, folds, seed) -> xr.Dataset:
    variables = sorted({v for s in sums for v in s})
    empty = np.zeros((folds, 3))
    acc = np.stack([[s.get(v, empty) for v in variables] for s in sums]).reshape(
        len(combos), len(variables), folds, 3
    )  # (setting, variable, fold, [oma², omb², count])

    def ratio_of(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), np.nan)

    ratio = ratio_of(acc[..., 0].sum(-1), acc[..., 1].sum(-1))  # pooled over the folds
    count = acc[0, :, :, 2].sum(-1).astype(np.int64)
    score = _nanmean(ratio, axis=1)
    coords: dict[str, Any] = {"variable": ("variable", variables)}
    for k, name in enumerate(grid):
        values = _setting_values([c[k] for c in combos])
        coords[name] = ("setting", values, {"long_name": f"{name} of the setting"})
    # The one-standard-error rule: the best setting's score is the lowest of several
    # noisy estimates; each setting's score differs from it by an amount whose standard
    # error the folds give (paired: every setting saw the same folds).
    per_fold = _nanmean(ratio_of(acc[..., 0], acc[..., 1]), axis=1)  # (setting, fold)
    best = int(np.nanargmin(score)) if np.isfinite(score).any() else None
    se = np.full(len(combos), np.nan)
    if best is not None and folds > 1:
        diff = per_fold - per_fold[best]
        se = np.nanstd(diff, axis=1, ddof=1) / np.sqrt(np.isfinite(diff).sum(1))
    result = xr.Dataset(
        {
            "ratio": (("setting", "variable"), ratio, {
                "long_name": "RMS(O - A) / RMS(O - B) at the withheld observations",
            }),
            "score": ("setting", score, {
                "long_name": "mean over variables of ratio (below 1: better than the prior)",
            }),
            "score_se": ("setting", se, {
                "long_name": "standard error of score minus the best score, from the folds",
            }),
            "count": ("variable", count, {"long_name": "withheld observations compared"}),
        },
        coords=coords,
    )  # fmt: skip
    result.attrs.update(
        title="withheld-observation cross-validation made with xensf",
        folds=folds,
        seed=seed,
    )
    if best is not None:
        within = np.flatnonzero(score <= score[best] + np.nan_to_num(se, nan=0.0))
        result.attrs["best_setting"] = best
        result.attrs["best_score"] = float(score[best])
        result.attrs["one_se_setting"] = int(within[0])
    return result


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """The mean over ``axis`` of the finite values; NaN where there are none."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis)
    n = finite.sum(axis)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)
