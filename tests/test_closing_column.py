"""A global grid with a closing column (longitude -180 … 180, or 0 … 360 written 0
again) is one place twice: it is analysed once, as the grid without it would be, and
both columns get that analysis."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_cycle import assert_same_run  # bit for bit but the history line

import xensf

OPTIONS = {
    "letkf": {"loc_radius": 2000.0},
    "ensf": {"steps": 20},
}


def _closed(lon_first: float, last=None, members: int = 10) -> tuple[xr.Dataset, xr.Dataset]:
    """A prior on 8 columns from ``lon_first`` with the closing column (labelled
    ``last``, by default 360 further on) and its observations (gridded, NaN unobserved;
    one on the seam in both columns)."""
    rng = np.random.default_rng(3)
    lon = lon_first + np.arange(9) * 45.0
    if last is not None:
        lon[-1] = last
    x = 280 + rng.standard_normal((2, members, 6, 8))
    x = np.concatenate([x, x[..., :1]], axis=-1)
    prior = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), x, {"units": "K"})},
        coords={"time": [0, 1], "lat": np.linspace(-60, 60, 6), "lon": lon},
    )
    prior["lon_bnds"] = (("lon", "bnds"), np.stack([lon - 22.5, lon + 22.5], -1))
    values = np.full((2, 6, 9), np.nan)
    values[:, 2, 0] = values[:, 2, -1] = 285.0  # the seam, written in both columns
    values[:, 4, 3] = 278.0
    obs = xr.Dataset({"t": (("time", "lat", "lon"), values, {"units": "K"})}, coords=prior.coords)
    return prior, obs


def _open(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(lon=slice(0, -1))


def _without_closing(got: xr.Dataset) -> xr.Dataset:
    """The analysis of the grid without its closing column, after checking that the
    closing column holds the first one's analysis."""
    np.testing.assert_array_equal(got.t.isel(lon=-1).values, got.t.isel(lon=0).values)
    return _open(got)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
@pytest.mark.parametrize(("first", "last"), [(-180.0, None), (0.0, 0.0)])
def test_a_closing_column_is_analysed_once_as_its_twin(method, first, last):
    prior, obs = _closed(first, last)
    got = prior.ensf.assimilate(obs, method=method, obs_error=0.5, seed=2, **OPTIONS[method])
    # the same grid without the closing column, the seam observed once
    want = _open(prior).ensf.assimilate(
        _open(obs), method=method, obs_error=0.5, seed=2, **OPTIONS[method]
    )
    assert_same_run(_without_closing(got), want)
    xr.testing.assert_equal(got.lon_bnds, prior.lon_bnds)  # left as given


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_observations_of_the_closing_column_alone_are_its_twins(method):
    prior, obs = _closed(-180.0)
    obs["t"][:, 2, 0] = np.nan  # the seam observed in the closing column only
    got = prior.ensf.assimilate(obs, method=method, obs_error=0.5, seed=2, **OPTIONS[method])
    moved = _open(obs)
    moved["t"][:, 2, 0] = 285.0
    want = _open(prior).ensf.assimilate(
        moved, method=method, obs_error=0.5, seed=2, **OPTIONS[method]
    )
    assert_same_run(_without_closing(got), want)


def test_observations_with_and_without_the_closing_column_give_one_analysis():
    """Gridded observations on the open grid fit the closed prior, and the other way
    round; point observations on the seam (at 180 as at -180) see one column."""
    prior, obs = _closed(-180.0)
    kwargs = {"method": "ensf", "obs_error": 0.5, "seed": 4, "steps": 20}
    closed = prior.ensf.assimilate(obs, **kwargs)
    assert_same_run(closed, prior.ensf.assimilate(_open(obs), **kwargs))
    assert_same_run(_open(closed), _open(prior).ensf.assimilate(obs, **kwargs))
    station = xr.Dataset(
        {"t": (("time", "station"), [[285.0], [285.0]])},
        coords={"time": [0, 1], "lat": ("station", [-12.0]), "lon": ("station", [180.0])},
    )
    got = prior.ensf.assimilate(station, **kwargs)
    assert_same_run(_without_closing(got), _open(prior).ensf.assimilate(station, **kwargs))


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_closing_column_in_dask_blocks_is_analysed_as_in_memory(method):
    prior, obs = _closed(0.0, members=8)
    kwargs = {"method": method, "obs_error": 0.5, "seed": 1, **OPTIONS[method]}
    if method == "ensf":  # the EnSF that analyses blocks
        kwargs["prior_score"] = "paired"
    chunked = prior.chunk(time=1, lat=3, lon=3)
    got = chunked.ensf.assimilate(obs, **kwargs)
    assert got.t.chunks == chunked.t.chunks
    in_blocks = got.compute()
    np.testing.assert_array_equal(in_blocks.t.isel(lon=-1), in_blocks.t.isel(lon=0))
    want = _open(prior).chunk(time=1, lat=3, lon=3).ensf.assimilate(_open(obs), **kwargs)
    np.testing.assert_allclose(_open(in_blocks).t.values, want.t.values, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("lon", "units", "closing"),
    [
        (np.arange(9) * 45.0 - 180, "degrees_east", True),
        (np.r_[np.arange(8) * 45.0, 0.0], "degrees_east", True),  # 360 written 0
        (180 - np.arange(9) * 45.0, "degrees_east", True),  # descending
        (np.deg2rad(np.arange(9) * 45.0), "radian", True),
        (np.arange(8) * 45.0, "degrees_east", False),  # open: 0 ... 315
        (np.arange(9) * 10.0 + 160, "degrees_east", False),  # regional
        (np.arange(9) * 45.0, "km", False),  # planar: x = 360 km is not x = 0
    ],
)
def test_only_a_longitude_that_comes_round_to_its_start_closes(lon, units, closing):
    from xensf.bridge.dims import EnsembleDims
    from xensf.bridge.seam import closing_column

    lat_units = "km" if units == "km" else "degrees_north"
    ds = xr.Dataset(
        {"t": (("member", "lat", "lon"), np.zeros((2, 3, lon.size)))},
        coords={"lat": ("lat", [0.0, 1.0, 2.0], {"units": lat_units}),
                "lon": ("lon", lon, {"units": units})},
    )  # fmt: skip
    seam = closing_column(ds, EnsembleDims("member", "lat", "lon", None))
    assert (seam is not None) == closing
    if closing:
        assert seam.size == lon.size


def test_adaptive_inflation_on_a_closing_column_carries_on():
    """The inflation field comes back on the grid as given, closing column and all, and
    is taken back as the next analysis's start (as ``xensf.cycle`` carries it)."""
    prior, obs = _closed(-180.0)
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 2000.0}
    got = prior.ensf.assimilate(obs, adaptive_inflation=True, **options)
    want = _open(prior).ensf.assimilate(_open(obs), adaptive_inflation=True, **options)
    assert got.inflation.sizes["lon"] == 9
    np.testing.assert_array_equal(got.inflation.isel(lon=-1), got.inflation.isel(lon=0))
    assert_same_run(_without_closing(got), want)
    start = xensf.AdaptiveInflation(mean=got.inflation.isel(time=[1]))
    again = prior.isel(time=[1]).ensf.assimilate(
        obs.isel(time=[1]), adaptive_inflation=start, **options
    )
    start = xensf.AdaptiveInflation(mean=want.inflation.isel(time=[1]))
    open_again = (
        _open(prior)
        .isel(time=[1])
        .ensf.assimilate(_open(obs).isel(time=[1]), adaptive_inflation=start, **options)
    )
    assert_same_run(_without_closing(again), open_again)


def test_innovations_and_cross_validation_see_the_seam_once():
    prior, obs = _closed(-180.0)
    kwargs = {"method": "letkf", "obs_error": 0.5, "loc_radius": 2000.0}
    analysis = prior.ensf.assimilate(obs, **kwargs)
    got = prior.ensf.innovations(obs, analysis, obs_error=0.5)
    want = _open(prior).ensf.innovations(
        _open(obs), _open(prior).ensf.assimilate(_open(obs), **kwargs), obs_error=0.5
    )
    xr.testing.assert_identical(got, want)
    assert int(got.observation.notnull().sum()) == 4  # two places at two times
    settings = {"loc_radius": [1000.0, 2000.0]}
    options = {"method": "letkf", "obs_error": 0.5, "folds": 2, "progress": False}
    xr.testing.assert_identical(
        prior.ensf.cross_validate(obs, settings, **options),
        _open(prior).ensf.cross_validate(_open(obs), settings, **options),
    )


def test_scores_weigh_the_seam_once():
    prior, _ = _closed(-180.0)
    truth = prior.t.isel(member=0) + 0.5
    for score in ("rmse", "crps", "spread_skill"):
        got = getattr(prior.t.ensf, score)(truth)
        want = getattr(_open(prior).t.ensf, score)(_open(truth.to_dataset()).t)
        xr.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_cycle_counts_the_observations_its_analyses_used():
    """``obs_count`` counted the observations given: a closing column's twice, and those
    on a land mask, which the analysis leaves out. It is now the sum of the variables'
    counts, the observations the analyses used."""
    import warnings

    from xensf.cycling import Persistence

    prior, obs = _closed(-180.0)
    prior["t"][:, :, 4, 3] = np.nan  # land under the observation at (4, 3)
    obs = obs.assign_coords(time=[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.MaskedObservationWarning)
        out = xensf.cycle(Persistence(1), prior.isel(time=[0]), obs.isel(time=[1]),
                          method="letkf", obs_error=0.5, loc_radius=2000.0, progress=False)  # fmt: skip
    np.testing.assert_array_equal(out.obs_count.values, [1])  # the seam, once
    np.testing.assert_array_equal(out.t_count.values, out.obs_count.values)


def test_a_rank_histogram_counts_the_seam_once():
    # unweighted, it counted the closing column's points as well as their twins'
    prior, _ = _closed(-180.0)
    truth = prior.t.isel(member=0) + 0.5
    got = prior.t.ensf.rank_histogram(truth)
    want = _open(prior).t.ensf.rank_histogram(_open(truth.to_dataset()).t)
    xr.testing.assert_identical(got, want)
    by_column = prior.t.ensf.rank_histogram(truth, dims=["lat"])  # not averaged over: kept
    assert by_column.sizes["lon"] == prior.sizes["lon"]
