"""Skill scores: one RMSE, used by the accessor and the demos, against numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

import xensf  # registers the accessor
from xensf.errors import DimensionError
from xensf.metrics import ensemble_rmse


def _case():
    lat = np.linspace(-80.0, 80.0, 4)
    rng = np.random.default_rng(0)
    ens = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), rng.standard_normal((3, 5, 4, 6)))},
        coords={"time": np.arange(3), "lat": lat, "lon": np.arange(6.0) * 60},
    )
    truth = xr.Dataset({"t": (("time", "lat", "lon"), rng.standard_normal((3, 4, 6)))})
    return ens, truth


def test_accessor_rmse_is_per_time_and_area_weighted_on_a_sphere():
    ens, truth = _case()
    got = ens.ensf.rmse(truth)
    squared = (ens.t.values.mean(1) - truth.t.values) ** 2  # (time, lat, lon)
    w = np.cos(np.deg2rad(ens.lat.values))[None, :, None] * np.ones_like(squared)
    expected = np.sqrt((squared * w).sum((1, 2)) / w.sum((1, 2)))
    np.testing.assert_allclose(got.t.values, expected)
    assert got.t.dims == ("time",)
    unweighted = np.sqrt(squared.mean((1, 2)))
    assert not np.allclose(expected, unweighted)  # the weighting matters here
    # over time too
    np.testing.assert_allclose(
        ens.ensf.rmse(truth, dims=["time", "lat", "lon"]).t,
        np.sqrt((squared * w).sum() / w.sum()),
    )


def test_accessor_rmse_on_a_planar_grid_is_unweighted():
    ens, truth = _case()
    planar = ens.rename(lat="y", lon="x")
    got = planar.ensf.rmse(truth.rename(lat="y", lon="x"), member_dim="member")
    squared = (ens.t.values.mean(1) - truth.t.values) ** 2
    np.testing.assert_allclose(got.t.values, np.sqrt(squared.mean((1, 2))))


def test_ensemble_rmse_over_every_point_and_where():
    ens, truth = _case()
    error = ens.t.values.mean(1) - truth.t.values
    assert np.isclose(ensemble_rmse(ens.t, truth.t, "member"), np.sqrt((error**2).mean()))
    where = truth.t > 0
    assert np.isclose(
        ensemble_rmse(ens.t, truth.t, "member", where), np.sqrt((error[where.values] ** 2).mean())
    )


# -- CRPS, spread-skill, rank histogram: against their definitions -------------------


def _crps_by_integration(members: np.ndarray, y: float) -> float:
    """∫ (F_ens(x) − 1[x ≥ y])² dx, exactly: the integrand is a step function."""
    points = np.sort(np.append(members, y))
    total = 0.0
    for a, b in itertools.pairwise(points):
        x = 0.5 * (a + b)
        total += ((members <= x).mean() - float(x >= y)) ** 2 * (b - a)
    return total


def test_crps_is_the_integral_of_the_squared_cdf_difference():
    from xensf.metrics import crps

    rng = np.random.default_rng(1)
    ens = xr.DataArray(rng.standard_normal((7, 30)), dims=("member", "point"))
    truth = xr.DataArray(rng.standard_normal(30) * 2, dims="point")
    got = crps(ens, truth, "member", dims=[])
    expected = [_crps_by_integration(ens.values[:, i], truth.values[i]) for i in range(30)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # a single member: the absolute error
    np.testing.assert_allclose(crps(ens[:1], truth, "member", dims=[]), abs(ens[0] - truth))


def test_fair_crps_of_a_large_gaussian_ensemble_is_the_gaussian_crps():
    from math import erf, exp, pi, sqrt

    from xensf.metrics import crps

    rng = np.random.default_rng(2)
    mu, sigma = 0.3, 1.7
    ens = xr.DataArray(mu + sigma * rng.standard_normal((4000, 5)), dims=("member", "point"))
    truth = xr.DataArray([-2.0, 0.0, 0.3, 1.0, 4.0], dims="point")
    z = (truth.values - mu) / sigma
    phi = np.array([exp(-0.5 * v * v) / sqrt(2 * pi) for v in z])
    cdf = np.array([0.5 * (1 + erf(v / sqrt(2))) for v in z])
    analytic = sigma * (z * (2 * cdf - 1) + 2 * phi - 1 / sqrt(pi))
    got = crps(ens, truth, "member", dims=[], fair=True)
    np.testing.assert_allclose(got, analytic, rtol=0.03)
    with pytest.raises(xensf.OptionError, match="fair must be True or False, got 'no'"):
        crps(ens, truth, "member", dims=[], fair="no")  # (taken as fair=True)


def test_spread_skill_is_one_for_exchangeable_members_and_truth_and_less_when_too_narrow():
    from xensf.metrics import spread_skill

    rng = np.random.default_rng(3)
    draws = rng.standard_normal((6, 20000))  # 5 members and the truth, exchangeable
    ens = xr.DataArray(draws[:5], dims=("member", "point"))
    truth = xr.DataArray(draws[5], dims="point")
    assert float(spread_skill(ens, truth, "member")) == pytest.approx(1.0, abs=0.02)
    assert float(spread_skill(0.5 * ens, truth, "member")) < 0.7


def test_rank_histogram_is_flat_when_calibrated_and_sloped_when_biased():
    from xensf.metrics import rank_histogram

    rng = np.random.default_rng(4)
    draws = rng.standard_normal((9, 18000))
    ens = xr.DataArray(draws[:8], dims=("member", "point"))
    truth = xr.DataArray(draws[8], dims="point")
    counts = rank_histogram(ens, truth, "member")
    assert counts.dims == ("rank",) and list(counts["rank"].values) == list(range(9))
    assert int(counts.sum()) == 18000
    expected = 18000 / 9
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # 99.9 % point of chi-square with 8 degrees of freedom
    biased = rank_histogram(ens + 1.0, truth, "member")
    assert int(biased[0]) > 4 * int(biased[-1])  # the truth falls below a high ensemble


def test_rank_histogram_breaks_ties_at_random_but_reproducibly_and_skips_nan():
    from xensf.metrics import rank_histogram

    ens = xr.DataArray(np.zeros((3, 3000)), dims=("member", "point"))  # every member ties
    truth = xr.DataArray(np.zeros(3000), dims="point").where(np.arange(3000) != 0)
    counts = rank_histogram(ens, truth, "member", seed=5)
    assert int(counts.sum()) == 2999
    assert counts.min() > 650  # four ranks, about 750 each
    xr.testing.assert_equal(counts, rank_histogram(ens.chunk(point=700), truth, "member", seed=5))


def test_scores_take_only_points_with_a_truth_and_unmasked_members():
    """A truth with gaps (a gridded product under clouds) or an ensemble with a land
    mask is scored as the points that have both. The spread-skill ratio averaged the
    spread over every point and the error over the truth's (7.7 against 2.1 here, the
    spread being large where the truth is missing), and the rank histogram counted a
    masked point as rank 0."""
    rng = np.random.default_rng(7)
    lat = np.linspace(-60, 60, 6)
    values = 280 + rng.standard_normal((8, 6, 8)) * np.where(lat > 0, 5.0, 1.0)[:, None]
    ens = xr.Dataset({"t": (("member", "lat", "lon"), values)},
                     coords={"lat": lat, "lon": np.arange(8) * 45.0})  # fmt: skip
    truth = ens.mean("member") + rng.standard_normal((6, 8))
    south = {"lat": slice(0, 3)}
    for ensemble, known in ((ens, truth.where(ens.lat < 0)), (ens.where(ens.lat < 0), truth)):
        for score in ("rmse", "crps", "spread_skill", "rank_histogram"):
            got = getattr(ensemble.ensf, score)(known)
            expected = getattr(ens.isel(south).ensf, score)(truth.isel(south))
            xr.testing.assert_allclose(got.t, expected.t)


def test_scores_take_the_variables_along_the_members_each_over_its_own_dims():
    """A truth taken from the same file as the ensemble carries its static fields and a
    per-member series: the static orography was scored (RMSE 0), and a variable without
    the grid made every score a raw xarray ValueError ('lon' does not exist)."""
    ens, truth = _case()
    rng = np.random.default_rng(9)
    series = 280 + rng.standard_normal((ens.sizes["time"], ens.sizes["member"]))
    ens = ens.assign(orography=(("lat", "lon"), rng.random((ens.sizes["lat"], ens.sizes["lon"]))),
                     series=(("time", "member"), series))  # fmt: skip
    truth = truth.assign(orography=ens.orography, series=ens.series.isel(member=0) + 1.0)
    for score in ("rmse", "crps", "spread_skill", "rank_histogram"):
        got = getattr(ens.ensf, score)(truth)
        assert sorted(got.data_vars) == ["series", "t"]
        expected = getattr(ens[["t"]].ensf, score)(truth[["t"]])
        xr.testing.assert_allclose(got.t, expected.t)
        assert "time" in got.series.dims and not {"lat", "lon"} & set(got.series.dims)
    error = abs(ens.series.mean("member") - truth.series)
    xr.testing.assert_allclose(ens.ensf.rmse(truth).series, error, check_dim_order=False)


def test_accessor_scores_weight_by_area_and_keep_time():
    ens, truth = _case()
    crps = ens.ensf.crps(truth)
    assert crps.t.dims == ("time",)
    from xensf.metrics import crps as plain

    w = xr.DataArray(np.cos(np.deg2rad(ens.lat.values)), dims="lat", coords={"lat": ens.lat})
    per_point = plain(ens.t, truth.t, "member", dims=[])
    np.testing.assert_allclose(crps.t, per_point.weighted(w).mean(["lat", "lon"]))
    assert ens.ensf.spread_skill(truth).t.dims == ("time",)
    hist = ens.ensf.rank_histogram(truth)
    assert hist.t.dims == ("rank", "time") and int(hist.t.sum()) == truth.t.size


def test_a_truth_that_does_not_fit_the_ensemble_is_refused_not_scored():
    """Each was once scored without a word: a truth with members broadcast against the
    mean, a truth of another variable gave an empty Dataset, a truth on other points
    was scored on the overlap, one in degC was compared with kelvin (273 off)."""
    from xensf.errors import EnsembleError, OptionError

    ens, _ = _case()
    ens["t"].attrs["units"] = "K"
    truth = (ens.isel(member=0, drop=True) + 0.5).assign(t=lambda d: d.t.assign_attrs(units="K"))
    with pytest.raises(DimensionError, match="the truth has the member dim 'member'"):
        ens.ensf.rmse(ens)
    with pytest.raises(OptionError, match=r"none of the ensemble's variables \['t'\]"):
        ens.ensf.crps(truth.rename(t="q"))
    with pytest.raises(DimensionError, match=r"'lat' coordinate differs.*truth\.interp"):
        ens.ensf.spread_skill(truth.isel(lat=slice(0, 3)))  # scored on the overlap before
    with pytest.raises(DimensionError, match=r"dims \['level'\] are not dims"):
        ens.ensf.rmse(truth, dims=["level"])
    with pytest.raises(OptionError, match="seed must be a non-negative integer"):
        ens.ensf.rank_histogram(truth, seed=-1)
    with pytest.raises(EnsembleError, match="at least 2 members"):
        ens.isel(member=[0]).ensf.spread_skill(truth)
    with pytest.raises(EnsembleError, match="fair CRPS needs at least 2 members"):  # ValueError
        ens.isel(member=[0]).ensf.crps(truth, fair=True)
    with pytest.raises(EnsembleError, match="at least 2 members"):  # xarray's TypeError before
        ens.isel(member=[0]).ensf.spread()
    celsius = (truth - 273.15).assign(t=lambda d: d.t.assign_attrs(units="degC"))
    xr.testing.assert_allclose(ens.ensf.rmse(celsius), ens.ensf.rmse(truth))
    float32 = truth.assign_coords(lat=truth.lat.astype("float32"))  # the same points
    xr.testing.assert_allclose(ens.ensf.rmse(float32), ens.ensf.rmse(truth))
    with pytest.raises(DimensionError, match="'time' shares no value"):
        ens.ensf.rmse(truth.assign_coords(time=truth.time + 10))
    dates = ens.assign_coords(time=np.array(["2001-01-01", "2001-01-02", "2001-01-03"], "M8[ns]"))
    noleap = dates.convert_calendar("noleap", use_cftime=True)
    with pytest.raises(DimensionError, match="truth times are numpy datetime64 and the state's"):
        noleap.ensf.rmse(truth.assign_coords(time=dates.time))  # they print alike
    later = ens.ensf.rmse(truth.isel(time=[1, 2]))  # scored at the times both have
    xr.testing.assert_allclose(later, ens.ensf.rmse(truth).isel(time=[1, 2]))
    # a truth with a dim the ensemble lacks: a stacked grid's cells were broadcast
    # against the grid, every point scored against every cell without a word; stacked
    # with its index, or at two levels for an ensemble at one, xarray's raw errors
    cells = truth.stack(cell=("lat", "lon"))
    with pytest.raises(DimensionError, match=r"dims \['cell'\].*truth\.unstack\('cell'\)"):
        ens.ensf.rmse(cells)
    with pytest.raises(DimensionError, match=r"dims \['cell'\], which the ensemble's 't'"):
        ens.ensf.rmse(cells.reset_index("cell"))
    levels = xr.concat([truth, truth + 1.0], "level").assign_coords(level=[500.0, 850.0])
    at_500 = ens.expand_dims(level=[500.0]).isel(level=0)  # a scalar level coordinate
    with pytest.raises(DimensionError, match=r"truth\.sel\(level=500\.0\), the ensemble's"):
        at_500.ensf.crps(levels)
    xr.testing.assert_allclose(
        at_500.ensf.crps(levels.sel(level=500.0)), ens.ensf.crps(truth).assign_coords(level=500.0)
    )


@pytest.mark.parametrize("score", ["rmse", "crps", "spread_skill", "rank_histogram"])
def test_a_truth_that_is_not_numbers_is_refused(score):
    # A boolean truth (a mask given by mistake) was scored as 0 and 1: an RMSE near the
    # state's magnitude, without a word; a truth of strings gave numpy's UFuncTypeError.
    from xensf.errors import OptionError

    ens, truth = _case()
    for bad in (truth > 0, truth.astype(str)):
        with pytest.raises(OptionError, match=r"the truth's 't' has dtype (bool|<U)"):
            getattr(ens.ensf, score)(bad)
    getattr(ens.ensf, score)(truth.astype(np.float32))


def test_scores_and_statistics_say_what_they_are_not_what_the_state_is():
    # The scores kept the state's attributes: a spread-skill ratio and a count of ranks
    # in kelvin, with standard_name air_temperature; mean and spread said nothing of
    # the reduction over the members.
    ens, truth = _case()
    attrs = {"units": "K", "standard_name": "air_temperature", "long_name": "temperature"}
    ens["t"].attrs.update(attrs)
    truth["t"].attrs["units"] = "K"
    expected = {
        "rmse": ("temperature: RMSE of the ensemble mean", "K"),
        "crps": ("temperature: CRPS", "K"),
        "spread_skill": ("temperature: spread-skill ratio", "1"),
        "rank_histogram": ("temperature: count of the truth's rank among the members", "1"),
    }
    for score, (long_name, units) in expected.items():
        assert getattr(ens.ensf, score)(truth).t.attrs == {"long_name": long_name, "units": units}
    assert ens.ensf.mean().t.attrs == {**attrs, "cell_methods": "member: mean"}
    spread = ens.assign(t=ens.t.assign_attrs(cell_methods="time: point")).ensf.spread()
    assert spread.t.attrs["cell_methods"] == "time: point member: standard_deviation"
    assert ens.t.attrs == attrs  # the input's untouched


def test_the_dataarray_accessor_scores_like_the_dataset_one():
    ens, truth = _case()
    da, truth_da = ens.t, truth.t.rename("anything")
    for score in ("rmse", "crps", "spread_skill", "rank_histogram"):
        xr.testing.assert_identical(
            getattr(da.ensf, score)(truth_da), getattr(ens.ensf, score)(truth).t
        )
    xr.testing.assert_identical(
        da.ensf.rmse(truth_da, dims=["lat"]), ens.ensf.rmse(truth, dims=["lat"]).t
    )


def test_the_dataarray_accessor_diagnoses_like_the_dataset_one():
    ens, truth = _case()
    obs = truth.where((truth.lat > 0) & (truth.lon < 200))
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    analysis = ens.ensf.assimilate(obs, **options)
    xr.testing.assert_identical(
        ens.t.ensf.innovations(obs.t.rename("o"), analysis.t, obs_error=0.5),
        ens.ensf.innovations(obs, analysis, obs_error=0.5),
    )
    settings = {"loc_radius": [1000.0, 3000.0]}
    kwargs = {"method": "letkf", "obs_error": 0.5, "folds": 2, "progress": False}
    xr.testing.assert_identical(
        ens.t.ensf.cross_validate(obs.t, settings, **kwargs),
        ens.ensf.cross_validate(obs, settings, **kwargs),
    )


def test_a_truth_in_another_order_is_scored_by_its_labels():
    # It was refused as "differs from the ensemble's", though its points are the same;
    # so were longitudes from -180 (with the relabelling that is done here) and float32
    # coordinates in another order.
    ens, truth = _case()
    truth = truth.assign_coords(lat=ens.lat, lon=ens.lon)
    flipped = truth.isel(lat=slice(None, None, -1), lon=[3, 0, 5, 1, 4, 2])
    signed = truth.assign_coords(lon=((truth.lon + 180) % 360) - 180).sortby("lon")
    single = flipped.assign_coords(lat=flipped.lat.astype(np.float32) + np.float32(1e-6))
    for turned in (flipped, signed, single):
        for score in ("rmse", "crps", "spread_skill"):
            xr.testing.assert_identical(
                getattr(ens.ensf, score)(turned), getattr(ens.ensf, score)(truth)
            )
    with pytest.raises(DimensionError, match=r"'lon' coordinate differs.*truth\.interp"):
        ens.ensf.rmse(truth.assign_coords(lon=truth.lon + 30.0))  # other points


def test_bounds_and_other_variables_without_members_are_left_alone():
    # A CMIP-style file has lat_bnds / time_bnds as data variables: the default dims of
    # a score took their "bnds" dim (a raw xarray ValueError), and spread() took the
    # standard deviation of dates over members they do not have (a raw numpy error).
    r = np.random.default_rng(0)
    lat, lon = np.linspace(-60.0, 60.0, 6), np.arange(8) * 45.0
    time = np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]")
    tas = (("member", "time", "lat", "lon"), 280 + r.standard_normal((6, 2, 6, 8)), {"units": "K"})
    bare = xr.Dataset({"tas": tas}, coords={"lat": lat, "lon": lon, "time": time})
    ds = bare.assign(
        lat_bnds=(("lat", "bnds"), np.stack([lat - 12, lat + 12], -1)),
        time_bnds=(("time", "bnds"), np.stack([time, time + np.timedelta64(1, "D")], -1)),
    )
    truth = ds.tas.isel(member=0) + 0.5
    for score in ("rmse", "crps", "spread_skill", "rank_histogram"):
        xr.testing.assert_identical(
            getattr(ds.ensf, score)(truth), getattr(bare.ensf, score)(truth)
        )
    for stat in ("mean", "spread"):
        got = getattr(ds.ensf, stat)()
        xr.testing.assert_identical(got.tas, getattr(bare.ensf, stat)().tas)
        # as given (the coordinates gain CF attributes: the products' metadata test)
        xr.testing.assert_equal(got.drop_vars("tas"), ds.drop_vars("tas"))
        assert all(got[v].attrs == ds[v].attrs for v in ("lat_bnds", "time_bnds"))
        assert list(got.data_vars) == list(ds.data_vars)


def test_a_truth_at_one_time_or_level_scores_the_ensemble_there():
    # truth.isel(time=0) keeps its time as a scalar coordinate; it was broadcast to every
    # time, so the second day's ensemble was scored against the first day's truth (and
    # a truth at one level against every level).
    r = np.random.default_rng(0)
    time = np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]")
    ens = xr.Dataset(
        {"t": (("time", "member", "level", "lat", "lon"), 280 + r.standard_normal((2, 6, 2, 4, 5)),
               {"units": "K"})},
        coords={"time": time, "level": [500.0, 850.0], "lat": np.linspace(-45.0, 45.0, 4),
                "lon": np.arange(5) * 72.0},
    )  # fmt: skip
    truth = ens.t.isel(member=0) + r.standard_normal((2, 2, 4, 5))
    for score in ("rmse", "crps", "spread_skill"):
        whole = getattr(ens.ensf, score)(truth)
        at_day_2 = getattr(ens.ensf, score)(truth.isel(time=1))
        assert at_day_2.t.dims == ("time",) and list(at_day_2.time.values) == [time[1]]
        xr.testing.assert_allclose(at_day_2.t, whole.t.isel(time=[1]))
        at_500 = getattr(ens.ensf, score)(truth.sel(level=500.0))
        expected = getattr(ens.isel(level=[0]).ensf, score)(truth.isel(level=[0]))
        xr.testing.assert_allclose(at_500.t, expected.t)
    with pytest.raises(xensf.errors.DimensionError, match=r"time=2001-01-03 00:00:00.*drop_vars"):
        ens.ensf.rmse(truth.isel(time=0).assign_coords(time=np.datetime64("2001-01-03", "ns")))
    static = ens.ensf.rmse(truth.isel(time=0).drop_vars("time"))  # no time: every time
    assert static.t.dims == ()


def test_a_truth_s_coordinates_are_read_in_their_units():
    # A truth on levels in Pa against an ensemble in hPa was "another grid", with advice
    # to interpolate (which, on numbers 100 times larger, gives NaN).
    r = np.random.default_rng(0)
    ens = xr.Dataset(
        {"t": (("member", "level", "y", "x"), 280 + r.standard_normal((6, 2, 4, 5)),
               {"units": "K"})},
        coords={"level": ("level", [500.0, 850.0], {"units": "hPa"}),
                "y": ("y", np.arange(4) * 100.0, {"units": "km"}),
                "x": ("x", np.arange(5) * 100.0, {"units": "km"})},
    )  # fmt: skip
    truth = ens.t.isel(member=0) + r.standard_normal((2, 4, 5))
    other_units = truth.assign_coords(
        level=("level", [50000.0, 85000.0], {"units": "Pa"}),
        x=("x", np.arange(5) * 1e5, {"units": "m"}),
    ).isel(level=[1, 0])  # and in another order
    for score in ("rmse", "crps", "spread_skill"):
        xr.testing.assert_identical(
            getattr(ens.ensf, score)(other_units), getattr(ens.ensf, score)(truth)
        )
    at_500 = other_units.sel(level=50000.0)  # one level, a scalar coordinate in Pa
    xr.testing.assert_identical(ens.ensf.rmse(at_500), ens.ensf.rmse(truth.sel(level=500.0)))
    seconds = truth.assign_coords(level=("level", [500.0, 850.0], {"units": "s"}))
    with pytest.raises(xensf.errors.UnitsError, match="'level' coordinate is in 's'"):
        ens.ensf.rmse(seconds)


def test_every_score_takes_members_stored_one_per_chunk():
    # The ERA5 sample opened with chunks= holds one member per chunk: the CRPS was a raw
    # apply_ufunc ValueError (a core dim in several chunks); the other scores worked.
    ens, truth = _case()
    lazy = ens.chunk({"member": 1, "time": 1})
    for score in ("rmse", "crps", "spread_skill", "rank_histogram"):
        xr.testing.assert_allclose(getattr(lazy.ensf, score)(truth).t.compute(),
                                   getattr(ens.ensf, score)(truth).t)  # fmt: skip


def test_weights_weigh_the_default_mean_over_every_dim():
    # Without dims, the weights were dropped without a word: an unweighted mean, though
    # crps and spread_skill said "default: every dim, weighted by weights".
    from xensf import metrics

    rng = np.random.default_rng(5)
    lat = np.array([-80.0, -30.0, 0.0, 30.0, 80.0])
    ens = xr.DataArray(rng.standard_normal((4, 5, 6)), dims=("member", "lat", "lon"),
                       coords={"lat": lat})  # fmt: skip
    truth = xr.DataArray(rng.standard_normal((5, 6)), dims=("lat", "lon"), coords={"lat": lat})
    w = metrics.area_weights(ens.lat)
    share = np.broadcast_to(w.values[:, None], (5, 6)) / (w.values.sum() * 6)
    error = ens.values.mean(0) - truth.values
    assert metrics.ensemble_rmse(ens, truth, "member", weights=w) == pytest.approx(
        np.sqrt((share * error**2).sum()), rel=1e-12
    )
    pointwise = abs(ens - truth).mean("member") - 0.5 * abs(ens - ens.rename(member="other")).mean(
        ["member", "other"]
    )
    assert float(metrics.crps(ens, truth, "member", weights=w)) == pytest.approx(
        float((share * pointwise.values).sum()), rel=1e-12
    )
    for dims in (None, ["lat", "lon"]):
        assert float(metrics.spread_skill(ens, truth, "member", dims=dims, weights=w)) == (
            pytest.approx(float(metrics.spread_skill(ens, truth, "member", ["lat", "lon"], w)))
        )


def test_scores_refuse_arguments_that_do_not_fit():
    from xensf import metrics
    from xensf.errors import OptionError

    rng = np.random.default_rng(6)
    ens = xr.DataArray(rng.standard_normal((3, 4, 5)), dims=("member", "lat", "lon"))
    truth = ens.isel(member=0, drop=True)
    w = xr.DataArray(np.arange(4.0), dims="lat", coords={"lat": np.arange(4.0)})
    ens, truth = ens.assign_coords(lat=w.lat), truth.assign_coords(lat=w.lat)
    for score in (metrics.ensemble_rmse, metrics.crps, metrics.spread_skill):
        with pytest.raises(DimensionError, match="'members' is not a dim"):
            score(ens, truth, "members")
        with pytest.raises(DimensionError, match="the truth has the member dim"):
            score(ens, ens, "member")
        with pytest.raises(DimensionError, match=r"dims \['level'\]"):
            score(ens, truth, "member", dims=["level"])
        for bad in (w.where(w.lat > 1), -w, 0 * w):
            with pytest.raises(OptionError, match="weights must be finite"):
                score(ens, truth, "member", weights=bad)
    with pytest.raises(OptionError, match="seed must be a non-negative"):
        metrics.rank_histogram(ens, truth, "member", seed=-1)
    states = ens.to_dataset(name="h").rename(lat="y", lon="x")
    with pytest.raises(OptionError, match=r"scales\['h'\] must be a positive"):
        metrics.relative_rmse(
            states, truth.to_dataset(name="h").rename(lat="y", lon="x"), {"h": 0}
        )


def test_scores_refuse_a_truth_whose_labels_do_not_meet_the_ensemble_s():
    """xarray aligns by label: a truth on float32 spellings of the coordinates met the
    ensemble nowhere, and every score was NaN (the rank histogram all zeros)."""
    from xensf import metrics

    rng = np.random.default_rng(7)
    lat, lon = np.linspace(-6.0, 6.0, 7) + 0.1, np.arange(8) * 0.3
    ens = xr.DataArray(
        rng.standard_normal((5, 7, 8)),
        dims=("member", "lat", "lon"),
        coords={"lat": lat, "lon": lon},
    )
    truth = ens.isel(member=0, drop=True).assign_coords(lat=lat.astype(np.float32))
    scores = (metrics.ensemble_rmse, metrics.crps, metrics.spread_skill, metrics.rank_histogram)
    for score in scores:
        with pytest.raises(DimensionError, match="no 'lat' label in common"):
            score(ens, truth, "member")
    repeated = ens.isel(member=0, drop=True).isel(lon=[0, 0, 1, 2, 3, 4, 5, 6])
    with pytest.raises(DimensionError, match="truth's 'lon' labels repeat"):
        metrics.crps(ens, repeated, "member")
    # the accessor's scores take the float32 spelling as the same points
    assert np.isfinite(float(ens.ensf.rmse(truth)))
    # a truth over part of the ensemble's labels is still scored where both have them
    part = ens.isel(member=0, drop=True).isel(lat=slice(0, 3))
    assert np.isfinite(metrics.ensemble_rmse(ens, part, "member"))


def test_ensemble_rmse_of_a_dataset_over_every_point_is_one_number_per_variable():
    from xensf import metrics

    rng = np.random.default_rng(8)
    ens = xr.Dataset(
        {
            "t": (("member", "lat", "lon"), rng.standard_normal((4, 3, 5))),
            "q": (("member", "lat", "lon"), 2 + rng.standard_normal((4, 3, 5))),
        }
    )
    truth = ens.isel(member=0, drop=True) + 1.0
    got = metrics.ensemble_rmse(ens, truth, "member")
    for v in ("t", "q"):
        error = ens[v].mean("member") - truth[v]
        assert float(got[v]) == pytest.approx(float(np.sqrt((error**2).mean())))
        assert float(got[v]) == pytest.approx(metrics.ensemble_rmse(ens[v], truth[v], "member"))


def test_relative_rmse_names_a_variable_or_dim_it_cannot_score():
    from xensf import metrics
    from xensf.errors import OptionError

    rng = np.random.default_rng(9)
    states = xr.Dataset({"h": (("member", "lat", "lon"), rng.standard_normal((3, 4, 5)))})
    truth = states.isel(member=0, drop=True)
    with pytest.raises(DimensionError, match=r"lacks the dims \['y', 'x'\]"):
        metrics.relative_rmse(states, truth, {"h": 1.0})
    with pytest.raises(OptionError, match="scales names 'u', which the state lacks"):
        metrics.relative_rmse(states, truth, {"u": 1.0}, dims=("lat", "lon"))
    got = metrics.relative_rmse(states, truth, {"h": 2.0}, dims=("lat", "lon"))
    error = states.h.mean("member") - truth.h
    assert float(got) == pytest.approx(float(np.sqrt((error**2).sum() / (truth.h**2).sum())))


def test_a_truth_of_another_size_along_an_unlabelled_dim_is_refused():
    # A raw xarray AlignmentError came out of the accessor's scores.
    ens, truth = _case()  # the truth has no coordinates: paired by position
    assert np.isfinite(ens.ensf.rmse(truth).t.values).all()
    with pytest.raises(
        DimensionError, match="truth has 2 entries along 'time' and the ensemble 3"
    ):
        ens.ensf.rmse(truth.isel(time=[0, 1]))
    with pytest.raises(DimensionError, match=r"truth's 'lat' has no coordinate.*truth\.assign"):
        ens.ensf.crps(truth.isel(lat=[0, 1, 2]))
    with pytest.raises(DimensionError, match=r"ensemble's 'time' has no coordinate.*ds\.assign"):
        ens.drop_vars("time").ensf.spread_skill(truth.isel(time=[0, 1]).assign_coords(time=[0, 1]))
