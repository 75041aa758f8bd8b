"""``ds.ensf.innovations``: O − B and O − A through the analysis's own operator, and
the Desroziers relations, which hold exactly in expectation for an optimal linear
Gaussian analysis."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xensf


def _iid_twin(n_time=20, n_mem=60, sigma_o=0.5, seed=0):
    """Independent N(0, 1) points: prior members and truth alike; obs = truth + noise."""
    rng = np.random.default_rng(seed)
    shape = (n_time, n_mem, 10, 20)
    lat, lon = np.linspace(-45, 45, 10), np.arange(20) * 18.0
    prior = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), rng.standard_normal(shape), {"units": "K"})},
        coords={"time": np.arange(n_time), "lat": lat, "lon": lon},
    )
    truth = rng.standard_normal((n_time, 10, 20))
    obs = xr.Dataset(
        {"t": (("time", "lat", "lon"), truth + sigma_o * rng.standard_normal(truth.shape))},
        coords={"time": np.arange(n_time), "lat": lat, "lon": lon},
    )
    obs.t.attrs["units"] = "K"
    return prior, obs


def test_desroziers_relations_hold_for_a_near_optimal_analysis():
    sigma_o = 0.5
    prior, obs = _iid_twin(sigma_o=sigma_o)
    # each point sees only its own observation (points 18 degrees apart, 100 km radius):
    # a scalar Kalman update per point, optimal for independent points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        analysis = prior.ensf.assimilate(obs, method="letkf", obs_error=sigma_o, loc_radius=100.0)
    diag = prior.ensf.innovations(obs, analysis, obs_error=sigma_o)
    a = diag.attrs
    assert a["t_count"] == 20 * 200
    # E[(O-B)^2] = sigma_b^2 + sigma_o^2, E[(O-B)(O-A)] = sigma_o^2 (sampling error ~3 %)
    assert a["t_mean_omb_squared"] == pytest.approx(a["t_mean_prior_plus_obs_variance"], rel=0.08)
    assert a["t_mean_omb_times_oma"] == pytest.approx(sigma_o**2, rel=0.12)
    assert a["t_mean_obs_variance"] == pytest.approx(sigma_o**2)
    assert abs(a["t_mean_omb"]) < 0.05


def test_stations_are_compared_through_the_bilinear_operator():
    prior, _ = _iid_twin(n_time=2, n_mem=5)
    lats, lons = np.array([10.3, -20.0]), np.array([37.0, 200.5])
    stations = xr.Dataset(
        {"t": (("time", "station"), np.array([[1.0, 2.0], [3.0, np.nan]]), {"units": "K"})},
        coords={"time": np.arange(2), "lat": ("station", lats), "lon": ("station", lons)},
    )
    diag = prior.ensf.innovations(stations, obs_error=0.4)
    expected = prior.t.mean("member").interp(
        lat=xr.DataArray(lats, dims="s"), lon=xr.DataArray(lons, dims="s")
    )  # scipy's interpolation: an independent implementation
    np.testing.assert_allclose(diag.prior_mean.values[0], expected.values[0], rtol=1e-10)
    np.testing.assert_allclose(diag.omb.values[0], [1.0, 2.0] - expected.values[0], rtol=1e-10)
    assert np.isnan(diag.omb.values[1, 1]) and np.isfinite(diag.omb.values[1, 0])
    assert list(diag.variable.values) == ["t", "t"]
    np.testing.assert_allclose(diag.latitude.values, lats)
    assert "t_mean_omb_times_oma" not in diag.attrs  # no analysis given


def test_gridded_observations_keep_only_observed_points():
    prior, obs = _iid_twin(n_time=2, n_mem=5)
    sparse = obs.where((obs.lat > 0) & (obs.lon < 50))
    diag = prior.ensf.innovations(sparse, obs_error=0.4)
    assert diag.sizes["obs"] == int(((obs.lat > 0) & (obs.lon < 50)).sum())


def test_positions_are_reported_in_the_state_s_longitude_convention():
    # Beside a grid in 0 … 360 they were reported in -180 … 180: a station given at 200
    # came back at -160, off a map of the state drawn from 0 to 360.
    prior, obs = _iid_twin(n_time=1, n_mem=5)
    sparse = obs.where(obs.lon > 180)
    diag = prior.ensf.innovations(sparse, obs_error=0.4)
    assert diag.longitude.min() > 180
    np.testing.assert_array_equal(
        np.unique(diag.longitude), prior.lon.where(prior.lon > 180).dropna("lon")
    )
    stations = xr.Dataset(
        {"t": (("time", "station"), [[0.5, -0.5]])},
        coords={"time": obs.time, "lat": ("station", [10.0, 20.0]), "lon": ("station", [-160.0, 20.0])},
    )  # fmt: skip
    assert prior.ensf.innovations(stations, obs_error=0.4).longitude.values.tolist() == [
        200.0,
        20.0,
    ]
    west = prior.roll(lon=10, roll_coords=True)
    west = west.assign_coords(lon=(west.lon + 180) % 360 - 180)  # -180 … 162
    assert west.ensf.innovations(stations, obs_error=0.4).longitude.values.tolist() == [
        -160.0,
        20.0,
    ]


def test_without_errors_only_the_differences_are_given():
    """The latent methods need no observation error; O − B and O − A need none either."""
    from xensf.bridge.innovations import innovations

    prior, obs = _iid_twin(n_time=2, n_mem=5)
    with pytest.raises(xensf.OptionError, match="no observation error"):
        innovations(prior, obs)
    diag = innovations(prior, obs, prior, with_errors=False)
    assert "obs_error" not in diag and not any("variance" in k for k in diag.attrs)
    full = innovations(prior, obs, prior, obs_error=0.5)
    xr.testing.assert_identical(diag.omb, full.omb)
    np.testing.assert_array_equal(diag.oma, diag.omb)  # the "analysis" is the prior


def test_an_analysis_on_other_points_or_in_other_units_is_refused_or_converted():
    """Read by position, an analysis with its latitudes the other way round gave
    O - A against the wrong points, and one in degC was read as kelvin (273 off)."""
    prior, obs = _iid_twin(n_time=2, n_mem=5)
    analysis = prior.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=100.0)
    diag = prior.ensf.innovations(obs, analysis, obs_error=0.5)
    celsius = (analysis - 273.15).assign(t=lambda d: d.t.assign_attrs(units="degC"))
    converted = prior.ensf.innovations(obs, celsius, obs_error=0.5)
    np.testing.assert_allclose(converted.oma.values, diag.oma.values, atol=1e-9)
    # the other way round, it is read by its labels (it was refused, before that read
    # by position)
    flipped = prior.ensf.innovations(obs, analysis.isel(lat=slice(None, None, -1)), obs_error=0.5)
    xr.testing.assert_identical(flipped, diag)
    with pytest.raises(xensf.DimensionError, match="analysis's 'lat' coordinate differs"):
        prior.ensf.innovations(obs, analysis.assign_coords(lat=analysis.lat + 1.0), obs_error=0.5)
    with pytest.raises(xensf.ObservationMismatchError, match="must be the Dataset"):
        prior.ensf.innovations(obs, analysis.t.values, obs_error=0.5)
    # each mismatch named ("it lacks [] or differs in shape" before)
    with pytest.raises(xensf.ObservationMismatchError, match=r"lacks \['t'\] \(it has \['q'\]\)"):
        prior.ensf.innovations(obs, analysis.rename(t="q"), obs_error=0.5)
    with pytest.raises(
        xensf.ObservationMismatchError, match=r"analysis's 't' has sizes .*'member': 2"
    ):
        prior.ensf.innovations(obs, analysis.isel(member=[0, 1]), obs_error=0.5)


def test_the_members_are_read_at_the_observations_whatever_the_dim_order_and_chunks():
    # a prior with longitude before latitude was stacked in its own dim order, and the
    # prior at each station read at another grid point, without a word; a prior
    # chunked along latitude/longitude was refused
    prior, _ = _iid_twin(n_time=2, n_mem=5)
    stations = xr.Dataset(
        {"t": (("time", "station"), np.array([[1.0, 2.0], [3.0, 0.5]]), {"units": "K"})},
        coords={"time": np.arange(2), "lat": ("station", [10.3, -20.0]),
                "lon": ("station", [37.0, 200.5])},
    )  # fmt: skip
    expected = prior.ensf.innovations(stations, prior, obs_error=0.4)
    bilinear = (
        prior.t.mean("member")
        .interp(lat=stations.lat, lon=stations.lon)
        .transpose("time", "station")
    )
    np.testing.assert_allclose(expected.prior_mean.values, bilinear.values, rtol=1e-12)
    for other in (
        prior.transpose("lon", "time", "lat", "member"),
        prior.chunk({"lat": 3, "lon": 7}),
    ):
        got = other.ensf.innovations(stations, other, obs_error=0.4)
        xr.testing.assert_allclose(got, expected, rtol=1e-12)


def test_a_masked_prior_is_read_as_the_analysis_reads_it():
    # next to a land point the gather summed the other corners without scaling them up
    # (126 K for a 280 K field), and a station on land read 0 K; before that, both were
    # NaN, and so were the Desroziers figures
    prior, _ = _iid_twin(n_time=2, n_mem=5)
    land = (prior.lat == prior.lat[4]) & (prior.lon == prior.lon[5])
    masked = prior.where(~land)
    lats, lons = np.array([-2.0, prior.lat.values[4], 30.0]), np.array([95.0, 90.0, 200.0])
    stations = xr.Dataset(
        {"t": (("time", "station"), np.ones((2, 3)), {"units": "K"})},
        coords={"time": np.arange(2), "lat": ("station", lats), "lon": ("station", lons)},
    )
    assert masked.lon.values[5] == 90.0  # the second station sits on the land point
    with pytest.warns(xensf.MaskedObservationWarning, match="2 observations fall on masked"):
        diag = masked.ensf.innovations(stations, obs_error=0.4)
    # off the land point: the weights of the sea points, scaled to sum to one
    sea = (~land).astype(float)
    at = {"lat": stations.lat, "lon": stations.lon}
    mean = masked.t.mean("member").fillna(0.0)
    expected = ((mean * sea).interp(at) / sea.interp(at)).transpose("time", "station")
    assert diag.sizes["obs"] == 2  # the station on land is left out, as by the analysis
    np.testing.assert_allclose(diag.prior_mean.values, expected.values[:, [0, 2]], rtol=1e-12)
    assert np.isfinite(diag.attrs["t_mean_omb_squared"]) and diag.attrs["t_count"] == 4


def test_each_observation_says_its_level():
    # Observations at two levels of one place came back as two rows with the same
    # variable and position: their innovations could not be told apart by level.
    prior, _ = _iid_twin(n_time=1, n_mem=5)
    prior = prior.isel(time=0, drop=True)
    levels = xr.DataArray([850.0, 500.0], dims="level", attrs={"units": "hPa"})
    prior = prior.assign(
        t=prior.t.expand_dims(level=levels.size, axis=1).assign_coords(level=levels)
        + xr.DataArray([0.0, 10.0], dims="level"),
        ps=prior.t.assign_attrs(units="hPa") + 1000.0,
    )
    reports = xr.Dataset(
        {"t": ("station", [1.0, 11.0, 2.0]), "ps": ("station", [1001.0, np.nan, 999.0])},
        coords={"lat": ("station", [10.0, 10.0, -20.0]), "lon": ("station", [36.0] * 3),
                "level": ("station", [850.0, 500.0, 500.0], {"units": "hPa"})},
    )  # fmt: skip
    diag = prior.ensf.innovations(reports, obs_error=0.5)
    assert diag.level.attrs["units"] == "hPa"
    t, ps = (
        diag.where(diag.variable == "t", drop=True),
        diag.where(diag.variable == "ps", drop=True),
    )
    assert np.isnan(ps.level.values).all() and ps.sizes["obs"] == 2
    for level in (850.0, 500.0):  # each level's rows are those of its reports alone
        alone = prior.ensf.innovations(
            reports[["t"]].where(reports.level == level, drop=True), obs_error=0.5
        )
        at = t.where(t.level == level, drop=True)
        np.testing.assert_array_equal(np.sort(at.omb.values), np.sort(alone.omb.values))
        np.testing.assert_array_equal(alone.level.values, level)
    at_500 = prior.sel(level=500.0).ensf.innovations(reports[["t"]], obs_error=0.5)
    assert at_500.level.item() == 500.0 and at_500.sizes["obs"] == 2
