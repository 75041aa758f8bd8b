"""Inputs that once gave silently wrong answers or raw errors: now the right answer,
or an ``XensfError`` that says what to do, before any work.

The cases come from fuzzing ``assimilate`` and from a new user's first steps; each test
failed before its fix.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_cycle import assert_same_run  # bit for bit but the history line

import xensf
from xensf.errors import (
    ChunkingError,
    DimensionError,
    EnsembleError,
    ObservationDomainError,
    ObservationMismatchError,
    OptionError,
    UnitsError,
)

#: Options that give each method its global (unlocalised) form.
GLOBAL = {"letkf": {"loc_radius": None}, "ensf": {}}


@pytest.fixture
def ds() -> xr.Dataset:
    r = np.random.default_rng(0)
    t = 280 + r.standard_normal((6, 6, 8))
    return xr.Dataset(
        {"t": (("member", "lat", "lon"), t, {"units": "K"})},
        coords={"lat": np.linspace(-60, 60, 6), "lon": np.arange(8) * 45.0},
    )


@pytest.fixture
def obs(ds) -> xr.Dataset:
    out = xr.full_like(ds.t[0], np.nan).to_dataset()
    out.t[2, 3] = 282.0
    return out


@pytest.fixture
def station() -> xr.Dataset:
    """One observation of t, off the grid's nodes."""
    return xr.Dataset(
        {"t": ("station", [282.0])},
        coords={"lat": ("station", [12.0]), "lon": ("station", [90.0])},
    )


@pytest.fixture
def two_days(ds) -> xr.Dataset:
    days = np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]")
    return xr.concat([ds, ds], "time").assign_coords(time=days)


@pytest.mark.parametrize("loc_radius", [None, 2000.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("obs_error", [1e-6, 1e-4])
def test_letkf_with_tiny_observation_errors_fits_the_observation(
    ds, obs, dtype, obs_error, loc_radius
):
    out = ds.astype(dtype).ensf.assimilate(
        obs.astype(dtype), method="letkf", obs_error=obs_error, loc_radius=loc_radius
    )
    assert np.isfinite(out.t.values).all()
    at = out.t.isel(lat=2, lon=3)
    # the analysis collapses onto an observation with (almost) no error
    assert abs(float(at.mean("member")) - 282.0) < max(10 * obs_error, 1e-4)
    assert float(at.std("member")) < max(10 * obs_error, 1e-4)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_errors_a_vanishing_fraction_of_the_spread_are_refused(ds, obs, dtype, method):
    # Positive but far below the spread (here about 1 K), the errors gave LETKF analyses
    # off by 0.05 K at 1e-14 and by 1e10 K at 1e-20 (float64; float32 from 1e-11 on)
    # and EnSF NaN, with no word.
    options = {"loc_radius": 2000.0} if method == "letkf" else {}
    prior, observed = ds.astype(dtype), obs.astype(dtype)
    for tiny in (1e-11, 1e-20, 1e-100):
        with pytest.raises(xensf.OptionError, match=r"'t' are as small as .* times the prior"):
            prior.ensf.assimilate(observed, method=method, obs_error=tiny, **options)
    out = prior.ensf.assimilate(observed, method=method, obs_error=1e-7, **options)
    assert abs(float(out.t.isel(lat=2, lon=3).mean("member")) - 282.0) < 1e-3


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_float64_is_analysed_in_float64_and_unobserved_times_are_untouched(two_days, obs, method):
    day1 = obs.expand_dims(time=two_days.time[:1])
    both = day1.reindex(time=two_days.time)  # day 2 has no observation
    out = two_days.ensf.assimilate(both, method=method, obs_error=0.5, **GLOBAL[method])
    assert out.t.dtype == np.float64
    np.testing.assert_array_equal(out.t.isel(time=1).values, two_days.t.isel(time=1).values)
    changed = out.t.isel(time=0) - two_days.t.isel(time=0)
    assert float(abs(changed).max()) > 0.1
    if method != "letkf":
        return  # EnSF draws its noise in the working dtype: float32 and float64 runs differ
    # float64 throughout, not the float32 analysis widened: close to it, not equal
    as32 = two_days.astype("float32").ensf.assimilate(
        both.astype("float32"), method=method, obs_error=0.5, loc_radius=None
    )
    diff = float(abs(out.t.isel(time=0) - as32.t.isel(time=0).astype("float64")).max())
    assert 0 < diff < 1e-4
    # a member far from any observation keeps its value exactly under a localised LETKF
    local = two_days.ensf.assimilate(both, method=method, obs_error=0.5, loc_radius=1000.0)
    far = local.t.isel(time=0, lat=0, lon=7) - two_days.t.isel(time=0, lat=0, lon=7)
    assert float(abs(far).max()) == 0.0


def _at_obs(ds: xr.Dataset) -> float:
    return float(ds.t.isel(lat=2, lon=3).mean("member"))


def test_an_error_in_offset_units_is_a_difference(ds, obs):
    kelvin = obs.assign(t_error=xr.full_like(obs.t, 0.5).assign_attrs(units="K"))
    reference = _at_obs(
        kelvin.pipe(lambda o: ds.ensf.assimilate(o, method="letkf", loc_radius=None))
    )
    assert abs(reference - _at_obs(ds)) > 0.5  # an error of 0.5 K moves the mean
    celsius = kelvin.assign(t_error=kelvin.t_error.assign_attrs(units="degC"))
    assert _at_obs(ds.ensf.assimilate(celsius, method="letkf", loc_radius=None)) == pytest.approx(
        reference
    )
    # an obs_error attribute is in the units of its variable, also as a difference
    fahrenheit = obs.assign(t=(obs.t - 273.15) * 1.8 + 32)
    fahrenheit.t.attrs.update(units="degF", obs_error=0.9)
    assert _at_obs(
        ds.ensf.assimilate(fahrenheit, method="letkf", loc_radius=None)
    ) == pytest.approx(reference)
    with pytest.raises(OptionError, match="obs_error='half'"):
        ds.ensf.assimilate(
            obs.assign(t=obs.t.assign_attrs(obs_error="half")), method="letkf", loc_radius=None
        )


def test_a_scalar_observation_time_is_one_time(two_days, obs):
    out = two_days.ensf.assimilate(
        obs.assign_coords(time=two_days.time[0]), method="letkf", loc_radius=None, obs_error=0.5
    )
    np.testing.assert_array_equal(out.t.isel(time=1).values, two_days.t.isel(time=1).values)
    assert float(abs(out.t.isel(time=0) - two_days.t.isel(time=0)).max()) > 0.5
    with pytest.raises(ObservationMismatchError, match="2001-01-05"):
        two_days.ensf.assimilate(
            obs.assign_coords(time=np.datetime64("2001-01-05", "ns")),
            method="letkf",
            loc_radius=None,
            obs_error=0.5,
        )


def test_pint_quantities_are_converted_at_the_boundary(ds, obs):
    pytest.importorskip("pint_xarray")
    expected = ds.ensf.assimilate(obs, method="letkf", loc_radius=None, obs_error=0.5)
    celsius = obs.assign(t=obs.t - 273.15).pint.quantify(t="degC")
    got = ds.ensf.assimilate(celsius, method="letkf", loc_radius=None, obs_error=0.5)
    np.testing.assert_allclose(got.t.values, expected.t.values, rtol=0, atol=1e-9)
    quantified = ds.pint.quantify().ensf.assimilate(
        celsius, method="letkf", loc_radius=None, obs_error=0.5
    )
    assert str(quantified.t.data.units) == "kelvin"
    np.testing.assert_allclose(
        quantified.t.pint.dequantify().values, expected.t.values, rtol=0, atol=1e-9
    )
    assert ds.t.attrs == obs.t.attrs == {"units": "K"}  # inputs untouched


def test_a_regional_grid_across_the_dateline_in_natural_order():
    r = np.random.default_rng(0)
    lon = np.array([160.0, 170.0, 180.0, -170.0, -160.0])
    ds = xr.Dataset(
        {"t": (("member", "lat", "lon"), 280 + r.standard_normal((6, 4, 5)), {"units": "K"})},
        coords={"lat": [10.0, 20.0, 30.0, 40.0], "lon": lon},
    )
    stations = xr.Dataset(
        {"t": ("station", [282.0, 283.0])},
        coords={"lat": ("station", [20.0, 25.0]), "lon": ("station", [175.0, -165.0])},
    )
    out = ds.ensf.assimilate(stations, method="letkf", obs_error=0.5, loc_radius=2000.0)
    assert float(abs(out.t - ds.t).max()) > 0.5
    far = stations.isel(station=[0]).assign_coords(lon=("station", [0.0]))
    with pytest.raises(ObservationDomainError, match="outside the grid"):
        ds.ensf.assimilate(far, method="letkf", loc_radius=None, obs_error=0.5)
    # sorted, the same grid would read as global: refused, with the way out
    with pytest.raises(DimensionError, match="natural order"):
        ds.sortby("lon").ensf.assimilate(far, method="letkf", loc_radius=None, obs_error=0.5)


def test_latitudes_beyond_the_poles_are_refused_unless_the_axis_says_it_is_planar(ds, obs):
    """A latitude axis from -100 to 100 degrees was taken as it stood: distances,
    localisation and station interpolation on a sphere that has no such points."""
    beyond = {"lat": np.linspace(-100, 100, 6)}
    with pytest.raises(DimensionError, match=r"'lat' coordinate .* -100 to 100, beyond the poles"):
        ds.assign_coords(beyond).ensf.assimilate(obs.assign_coords(beyond), method="letkf",
                                                 obs_error=0.5, loc_radius=2000.0)  # fmt: skip
    planar = {"lat": ("lat", beyond["lat"], {"units": "km"})}
    out = ds.assign_coords(planar).ensf.assimilate(
        obs.assign_coords(planar), method="letkf", obs_error=0.5, loc_radius=200.0
    )
    assert float(abs(out.t - ds.t).max()) > 0.1


def test_a_device_that_is_not_there_is_an_option_error(ds, obs):
    """torch's RuntimeError or AssertionError ("Torch not compiled with CUDA enabled")
    came out of the first task; a name torch does not know is now refused at graph
    build, and a device this process lacks in the task that would use it (at graph
    build the client may lack the GPUs of its workers)."""
    import torch

    from xensf.experiments.demo_swe import shipped_model_path

    lazy = ds.expand_dims(time=2).chunk(time=1)
    options = dict(method="letkf", obs_error=0.5, loc_radius=None)
    with pytest.raises(OptionError, match="device='tpu' is not a torch device"):
        lazy.ensf.assimilate(obs.expand_dims(time=2), device="tpu", **options)
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    says = "finds no CUDA device" if missing == "cuda" else "CUDA device\\(s\\), cuda:0 to"
    with pytest.raises(OptionError, match=says):
        ds.ensf.assimilate(obs, device=missing, **options)
    result = lazy.ensf.assimilate(obs.expand_dims(time=2), device=missing, **options)
    with pytest.raises(OptionError, match=says):
        result.compute()
    with pytest.raises(OptionError, match=says):  # torch's pin_memory RuntimeError before
        xensf.load(shipped_model_path(), device=missing)
    model = xensf.load(shipped_model_path(), device="cpu")
    for device, match in [(missing, says), ("tpu", "device='tpu' is not a torch device")]:
        with pytest.raises(OptionError, match=match):  # torch's RuntimeError before
            model.to(device)
        assert model.device.type == "cpu"  # nothing moved


def test_the_catalog_sample_assimilates_after_the_suggested_rechunk():
    sample = xensf.catalog().era5_sample.read()  # dask-backed, with a dask valid_time
    # the members in one chunk (the file's one per chunk was a ChunkingError at once)
    assert sample.t.chunks[0] == (sample.sizes["number"],)
    prior, truth = sample.isel(number=slice(1, None)), sample.isel(number=0)
    obs = truth.isel(latitude=slice(0, None, 8), longitude=slice(0, None, 8)).reindex_like(truth)
    errors = {"z": 10.0, "t": 0.1}
    with pytest.raises(ChunkingError, match=r"ds.chunk\(\{'number': -1\}\)"):
        prior.chunk(number=1).ensf.assimilate(
            obs, method="letkf", obs_error=errors, loc_radius=500.0
        )
    prior = prior.chunk(number=1).chunk({"number": -1})
    expected = prior.compute().ensf.assimilate(
        obs.compute(), method="letkf", obs_error=errors, loc_radius=500.0
    )
    got = prior.ensf.assimilate(obs, method="letkf", obs_error=errors, loc_radius=500.0)
    xr.testing.assert_equal(got.compute(), expected)
    # observations split along latitude by dask are joined, not refused by dask
    split = obs.chunk({"latitude": 20})
    got = prior.ensf.assimilate(split, method="letkf", obs_error=errors, loc_radius=500.0)
    xr.testing.assert_equal(got.compute(), expected)


def test_zero_stations_leave_the_prior_as_it_is(two_days):
    none = xr.Dataset(
        {"t": (("time", "station"), np.zeros((2, 0)))},
        coords={"time": two_days.time, "lat": ("station", []), "lon": ("station", [])},
    )
    for method in ("letkf", "ensf"):
        out = two_days.ensf.assimilate(none, method=method, obs_error=0.5, **GLOBAL[method])
        np.testing.assert_array_equal(out.t.values, two_days.t.values)


def test_repeated_observation_times_are_refused(two_days, obs):
    twice = obs.expand_dims(time=[two_days.time.values[0]] * 2)
    with pytest.raises(ObservationMismatchError, match="appears 2 times"):
        two_days.ensf.assimilate(twice, method="letkf", loc_radius=None, obs_error=0.5)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"obs_error": 10**400}, "about 401 digits"),
        ({"obs_error": 10**5000}, "about 5001 digits"),
        ({"obs_error": 0.5, "inflation": 1e6}, "inflation=1000000.0"),
        ({"obs_error": 0.5, "inflation": float("nan")}, "inflation must be a positive"),
    ],
)
def test_out_of_range_options_are_refused(ds, obs, options, match):
    with pytest.raises(OptionError, match=match):
        ds.ensf.assimilate(obs, method="letkf", loc_radius=None, **options)


def test_an_obs_dim_that_does_not_fit_the_observations_is_refused(ds, obs):
    # named for gridded observations it was taken and ignored
    kw = dict(method="letkf", obs_error=0.5, loc_radius=3000.0)
    with pytest.raises(DimensionError, match=r"obs_dim='station' names the dim of point .*"
                       r"gridded .*no 'station' dim\): leave obs_dim out"):  # fmt: skip
        ds.ensf.assimilate(obs, obs_dim="station", **kw)
    points = obs.stack(s=("lat", "lon")).reset_index("s").dropna("s")
    with pytest.raises(DimensionError, match=r"obs_dim='station' is not .*they have \['s'\]"):
        ds.ensf.assimilate(points, obs_dim="station", **kw)
    xr.testing.assert_identical(
        ds.ensf.assimilate(points, obs_dim="s", **kw).drop_attrs(),
        ds.ensf.assimilate(points, **kw).drop_attrs(),
    )


def test_an_ensf_window_without_local_mixture_is_refused(ds, obs):
    # it sizes the windows of prior_score="local-mixture" only, and with the default
    # mixture it was taken and did nothing
    with pytest.raises(OptionError, match=r"window=3 sizes the windows of .*only"):
        ds.ensf.assimilate(obs, method="ensf", obs_error=0.5, window=3)
    with pytest.raises(OptionError, match="a whole number of grid points, at least 1"):
        ds.ensf.assimilate(obs, method="ensf", obs_error=0.5, window=2.5,
                           prior_score="local-mixture")  # fmt: skip
    local = ds.ensf.assimilate(obs, method="ensf", obs_error=0.5, window=3,
                               prior_score="local-mixture")  # fmt: skip
    assert local.attrs["xensf_window"] == 3


def test_a_scale_that_would_overflow_is_refused(ds, obs):
    with pytest.raises(OptionError, match="scale=1e-30 for 't'"):
        ds.ensf.assimilate(obs, method="ensf", obs_error=0.5, scale=1e-30)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", ["letkf", "ensf"])
@pytest.mark.parametrize("size", [1e-30, 1e23])
def test_any_magnitude_gives_the_same_analysis_in_its_units(ds, obs, dtype, method, size):
    """Units are arbitrary: the analysis of a state scaled by ``size`` is the scaled one."""
    expected = ds.astype(dtype).ensf.assimilate(
        obs.astype(dtype), method=method, obs_error=0.5, seed=2, **GLOBAL[method]
    )
    scaled = (ds * size).astype(dtype).assign_attrs(ds.attrs)
    scaled.t.attrs = ds.t.attrs
    got = scaled.ensf.assimilate(
        (obs * size).astype(dtype), method=method, obs_error=0.5 * size, seed=2,
        **GLOBAL[method],
    )  # fmt: skip
    assert np.isfinite(got.t.values).all()
    np.testing.assert_allclose(got.t.values / size, expected.t.values, rtol=1e-4)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_relative_error_with_one_observation_names_the_variable(ds, obs, chunked):
    given = obs.chunk() if chunked else obs
    with pytest.raises(OptionError, match=r"obs_error='10%' for 't'.*\(1 observation\)"):
        ds.ensf.assimilate(
            given, method="letkf", loc_radius=None, obs_error="10%"
        )  # before any compute


def test_an_empty_variable_list_is_refused():
    with pytest.raises(OptionError, match="variables= is empty"):
        xensf.era5.open("era5_sample", variables=[])


def test_errors_that_dwarf_the_prior_spread_warn_with_the_numbers(ds, obs):
    with pytest.warns(xensf.ObservationErrorWarning, match=r"'t' .* \(RMS 50\) they are "
                      r"3\d\.\d times"):  # fmt: skip
        ds.ensf.assimilate(obs, method="letkf", loc_radius=None, obs_error=50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", xensf.ObservationErrorWarning)
        ds.ensf.assimilate(obs, method="letkf", loc_radius=None, obs_error=0.5)


def test_an_ensemble_of_copies_of_one_forecast_is_told_to_be_perturbed(ds, obs):
    # It was told its errors were "inf times the spread" and to give smaller errors,
    # which no error can mend.
    copies = xr.concat([ds.isel(member=0)] * ds.sizes["member"], "member")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = copies.ensf.assimilate(obs, method="letkf", loc_radius=None, obs_error=0.5)
    shown = [str(w.message) for w in record if w.category is xensf.ObservationErrorWarning]
    assert len(shown) == 1, shown
    assert "members of 't' are all the same at the observed points" in shown[0]
    assert "needs perturbing" in shown[0] and "inf" not in shown[0]
    np.testing.assert_array_equal(got.t.values, copies.t.values)


def test_the_large_error_warning_judges_each_time_however_the_times_are_chunked(two_days, obs):
    # Pooled over a chunk's times, the errors of one day far above its spread went
    # unsaid beside a day with a wide spread in one chunk, and were said with a chunk
    # per day.
    wide = two_days.copy()
    wide["t"] = two_days.t.where(two_days.time == two_days.time[0], 280 + 20 * (two_days.t - 280))
    errors = obs.expand_dims(time=two_days.time).copy()
    errors["t_error"] = xr.full_like(errors.t, 15.0)
    for data in (wide, wide.chunk(time=1)):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            data.ensf.assimilate(errors, method="letkf", loc_radius=None).compute()
        shown = [str(w.message) for w in record if w.category is xensf.ObservationErrorWarning]
        assert len(shown) == 1, shown
        assert "at 1 of 2 analysed times" in shown[0] or "at 1 of 1 analysed" in shown[0]


def test_a_relative_error_far_above_the_spread_warns_on_the_era5_sample(era5_twin):
    prior, truth = era5_twin
    obs = truth.isel(latitude=slice(0, None, 8), longitude=slice(0, None, 8)).reindex_like(truth)
    with pytest.warns(xensf.ObservationErrorWarning, match="'z'"):
        prior.ensf.assimilate(obs, method="letkf", obs_error="10%", loc_radius=500.0)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        # A mask given for the values: every point "observed" at 0 or 1 K, and an
        # analysis mean of 71 K from a prior near 280 K, without a word.
        (lambda obs: obs.notnull(), "has dtype bool.*obs.where"),
        (lambda obs: obs.astype(str), "has dtype <U"),
        (lambda obs: obs.astype("datetime64[ns]"), "has dtype datetime64"),
        (lambda obs: obs.assign(t_error=obs.t.astype(str)), "error variable 't_error'"),
    ],
)
@pytest.mark.parametrize("entry", ["assimilate", "innovations"])
def test_observations_that_are_not_numbers_are_refused(ds, obs, make, says, entry):
    bad = make(obs)
    with pytest.raises(ObservationMismatchError, match=says):
        if entry == "assimilate":
            ds.ensf.assimilate(bad, method="letkf", obs_error=None, loc_radius=2000.0)
        else:
            ds.ensf.innovations(bad, obs_error=None)
    ints = xr.full_like(obs, 282, dtype=np.int64)  # numbers of any kind are fine
    assert ints.t.dtype.kind == "i"
    ds.ensf.assimilate(ints, method="letkf", obs_error=0.5, loc_radius=2000.0)
    # and an error given as an attribute is no variable to check
    ds.ensf.assimilate(obs.assign(t=obs.t.assign_attrs(obs_error=0.5)), method="letkf",
                       loc_radius=2000.0)  # fmt: skip


def test_observation_levels_are_read_in_their_units():
    # Levels were compared by their numbers alone: observations on levels in Pa were
    # refused against a state in hPa, and 500 and 850 "Pa" were taken as 500 and 850 hPa.
    from xensf.errors import UnitsError

    r = np.random.default_rng(0)
    state = xr.Dataset(
        {"t": (("member", "level", "lat", "lon"), 280 + r.standard_normal((5, 2, 6, 8)), {"units": "K"})},
        coords={"level": ("level", [500.0, 850.0], {"units": "hPa"}), "lat": np.linspace(-60, 60, 6),
                "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    obs = xr.full_like(state.t.isel(member=0), np.nan).to_dataset()
    obs.t[1, 2, 3] = 282.0
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 2000.0}
    expected = state.ensf.assimilate(obs, **options)
    in_pa = obs.assign_coords(level=("level", [50000.0, 85000.0], {"units": "Pa"}))
    assert_same_run(state.ensf.assimilate(in_pa, **options), expected)
    one = in_pa.isel(level=[1])
    assert_same_run(state.ensf.assimilate(one, **options), expected)
    mislabelled = obs.assign_coords(level=("level", [500.0, 850.0], {"units": "Pa"}))
    with pytest.raises(ObservationMismatchError, match=r"values \[5.0, 8.5\] hPa that the state"):
        state.ensf.assimilate(mislabelled, **options)
    with pytest.raises(UnitsError, match="'level' coordinate is in 'm', the state's in 'hPa'"):
        state.ensf.assimilate(
            obs.assign_coords(level=obs.level.assign_attrs(units="m")), **options
        )
    assert obs.level.attrs == {"units": "hPa"} and in_pa.level.values[0] == 50000.0  # untouched
    # levels in messages as numbers, not numpy 2's np.float64(850.0)
    both = obs.copy(deep=True)
    both.t[0, 1, 1] = 281.0
    with pytest.raises(OptionError, match=r"has no entry for the observed levels \[850.0\]\."):
        state.ensf.assimilate(both, **{**options, "obs_error": {"t": {500.0: 0.5}}})
    with pytest.raises(OptionError, match=r"for 't' at \{'level': 500.0\} is relative"):
        state.ensf.assimilate(both, **{**options, "obs_error": "10%"})


@pytest.mark.parametrize("unit, scale", [("km", 1.0), ("m", 1000.0)])
def test_a_station_on_a_planar_grid_is_localised_where_it_is(unit, scale):
    # A station's x was wrapped into [-180, 180) as if it were a longitude, so on a
    # planar grid a station at x = 300 km was localised at -60 (in metres, anywhere):
    # LETKF moved the wrong points. A station on a grid node must give the analysis of
    # the same observation given on the grid.
    r = np.random.default_rng(0)
    state = xr.Dataset(
        {"t": (("member", "y", "x"), 280 + r.standard_normal((6, 6, 8)), {"units": "K"})},
        coords={"y": ("y", np.arange(6) * 100.0 * scale, {"units": unit}),
                "x": ("x", np.arange(8) * 100.0 * scale, {"units": unit})},
    )  # fmt: skip
    gridded = xr.full_like(state.t.isel(member=0), np.nan).to_dataset()
    gridded.t.loc[{"y": 200.0 * scale, "x": 600.0 * scale}] = 281.0
    station = xr.Dataset(
        {"t": ("station", [281.0])},
        coords={"y": ("station", [200.0 * scale]), "x": ("station", [600.0 * scale])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 150.0 * scale}
    on_grid = state.ensf.assimilate(gridded, **options)
    at_station = state.ensf.assimilate(station, **options)
    np.testing.assert_allclose(at_station.t.values, on_grid.t.values, rtol=0, atol=1e-10)
    far = abs(state.x - 600.0 * scale) > 300.0 * scale  # beyond twice the radius
    np.testing.assert_array_equal(at_station.t.where(far).values, state.t.where(far).values)


def test_a_float32_spelling_of_metre_coordinates_is_the_same_grid():
    # Coordinates were compared to 1e-6 in their own units: float32 metres (rounded by
    # up to 0.03 m at 500 km) were "another grid" for a truth and gridded observations,
    # though the comparison was meant to allow float32 spellings.
    r = np.random.default_rng(0)
    axis = -487500.0 + 25000.0 * np.arange(40) + 0.123
    ds = xr.Dataset(
        {"eta": (("member", "y", "x"), r.standard_normal((5, 40, 40)), {"units": "m"})},
        coords={"y": ("y", axis, {"units": "m"}), "x": ("x", axis, {"units": "m"})},
    )
    spelt = {"x": ds.x.astype(np.float32), "y": ds.y.astype(np.float32)}
    truth = ds.eta.isel(member=0)
    xr.testing.assert_identical(ds.ensf.rmse(truth.assign_coords(spelt)), ds.ensf.rmse(truth))
    obs = xr.full_like(truth, np.nan).to_dataset()
    obs.eta[3, 3] = 1.0
    options = {"method": "letkf", "obs_error": 0.1, "loc_radius": 1e5}
    assert_same_run(
        ds.ensf.assimilate(obs.assign_coords(spelt), **options),
        ds.ensf.assimilate(obs, **options),
    )
    moved = obs.assign_coords(x=ds.x + 1.0)  # a metre off is another grid
    with pytest.raises(ObservationMismatchError, match="must be on the state's grid"):
        ds.ensf.assimilate(moved, **options)
    with pytest.raises(DimensionError, match="'x' coordinate differs"):
        ds.ensf.rmse(truth.assign_coords(x=ds.x + 1.0))


def test_a_latent_model_takes_a_float32_spelling_of_its_grid():
    # The data signature compared a hash of the coordinates rounded to 1e-6: the same
    # grid spelt in float32 was another grid to the model.
    from xensf.bridge.dims import find_dims
    from xensf.bridge.layout import StateLayout
    from xensf.bridge.signature import check_signature, data_signature

    axis = 1000.013 + 0.37 * np.arange(16)  # km, not exact in float32
    ds = xr.Dataset(
        {"h": (("member", "y", "x"), np.zeros((2, 16, 16)), {"units": "m"})},
        coords={"y": ("y", axis, {"units": "km"}), "x": ("x", axis, {"units": "km"})},
    )
    layout = StateLayout(("h",), ((),), ((),), (16, 16))

    def signature(data):
        return data_signature(data, find_dims(data), layout)

    spelt = ds.assign_coords(x=ds.x.astype(np.float32), y=ds.y.astype(np.float32))
    assert signature(spelt)["grid_hash"] != signature(ds)["grid_hash"]
    check_signature(signature(ds), signature(spelt), model="m.xensf")
    with pytest.raises(ObservationMismatchError, match="trained on a 16x16"):
        check_signature(signature(ds), signature(ds.assign_coords(x=ds.x + 0.5)), model="m.xensf")


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_table_of_observations_is_assimilated_at_each_row_s_time(two_days, method):
    # A table (rows with a time, a latitude and a longitude each, as pandas'
    # DataFrame.to_xarray() gives) was assimilated whole at every time of the state:
    # the rows' times were not read.
    import pandas as pd

    days = two_days.time.values
    frame = pd.DataFrame(
        {"time": days[[0, 0, 1]], "lat": [10.0, -20.0, 30.0], "lon": [20.0, 100.0, 200.0],
         "t": [281.0, 279.0, 280.5]}
    )  # fmt: skip
    options = {"method": method, "obs_error": 0.5, **GLOBAL[method]}
    with pytest.raises(
        ObservationMismatchError, match=r"obs.set_coords\(\['time', 'lat', 'lon'\]\)"
    ):
        two_days.ensf.assimilate(frame.to_xarray(), **options)
    table = frame.to_xarray().set_coords(["time", "lat", "lon"])
    analysis = two_days.ensf.assimilate(table, **options)
    for day in days:
        rows = frame[frame.time == day]
        stations = xr.Dataset(
            {"t": ("station", rows.t.values)},
            coords={"lat": ("station", rows.lat.values), "lon": ("station", rows.lon.values)},
        ).expand_dims(time=[day])
        alone = two_days.sel(time=[day]).ensf.assimilate(stations, **options)
        np.testing.assert_array_equal(analysis.t.sel(time=[day]).values, alone.t.values)
    late = table.assign_coords(time=table.time + np.timedelta64(3, "h"))
    with pytest.raises(ObservationMismatchError, match="not times of the state"):
        two_days.ensf.assimilate(late, **options)


def test_a_row_without_a_time_is_refused_not_filed_under_another(two_days):
    # A row with NaT for its time was filed by pandas under another row's time: its value
    # replaced the real observation of that time, which was lost without a word.
    from xensf.cycling import Persistence

    day = two_days.time.values[0]
    frame = pd.DataFrame(
        {"time": [day, np.datetime64("NaT")], "lat": [10.0, -20.0], "lon": [20.0, 100.0],
         "t": [281.0, 279.0]}
    )  # fmt: skip
    table = frame.to_xarray().set_coords(["time", "lat", "lon"])
    options = {"method": "letkf", "obs_error": 0.5, **GLOBAL["letkf"]}
    with pytest.raises(ObservationMismatchError, match=r"1 observations have no time \(NaT"):
        two_days.ensf.assimilate(table, **options)
    with pytest.raises(ObservationMismatchError, match=r"1 observations have no time \(NaT"):
        xensf.cycle(Persistence("1D"), two_days.isel(time=[0]), table, progress=False, **options)
    # a row with neither a time nor a value is nothing observed
    blank = table.copy(deep=True)
    blank["t"][1] = np.nan
    got = two_days.ensf.assimilate(blank, **options)
    want = two_days.ensf.assimilate(table.isel(index=[0]), **options)
    assert_same_run(got, want)
    assert not np.array_equal(got.t.sel(time=day).values, two_days.t.sel(time=day).values)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
@pytest.mark.parametrize("chunked", [False, True])
def test_an_infinite_observation_is_refused_not_dropped(two_days, obs, method, chunked):
    # An observation of inf (an overflow upstream) was taken as missing: the analysis
    # came back as the prior without a word.
    bad = obs.expand_dims(time=two_days.time).copy(deep=True)
    bad.t[1, 2, 3] = np.inf
    prior = two_days.chunk(time=1) if chunked else two_days
    options = {"method": method, "obs_error": 0.5, **GLOBAL[method]}
    with pytest.raises(ObservationMismatchError, match="'t' hold 1 infinite value"):
        prior.ensf.assimilate(bad, **options).compute()
    with pytest.raises(ObservationMismatchError, match="'t' hold 1 infinite value"):
        two_days.ensf.innovations(bad, obs_error=0.5)


def test_two_observations_at_each_place_are_told_to_be_points(ds, obs):
    """Two instruments on one grid (or at the same stations): refused with the dim named,
    and the stacking that makes them points of their own, which then gives an analysis."""
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    two = xr.concat([obs, obs + 1.0], "instrument")
    fix = r"points of their own: obs\.stack\(obs=\('instrument', 'lat', 'lon'\)\)"
    with pytest.raises(ObservationMismatchError, match=fix):
        ds.ensf.assimilate(two, **options)
    stacked = two.stack(obs=("instrument", "lat", "lon"))
    assert not np.array_equal(ds.ensf.assimilate(stacked, **options).t, ds.t)
    stations = xr.Dataset(  # the point dim named obs already: another name
        {"t": (("instrument", "obs"), [[282.0, 281.0], [283.0, 280.0]])},
        coords={"lat": ("obs", [0.0, 10.0]), "lon": ("obs", [100.0, 200.0])},
    )
    with pytest.raises(ObservationMismatchError, match=r"stack\(points=\('instrument', 'obs'\)\)"):
        ds.ensf.assimilate(stations, **options)
    assert not np.array_equal(
        ds.ensf.assimilate(stations.stack(points=("instrument", "obs")), **options).t, ds.t
    )


def test_an_observation_without_an_error_is_named(ds, obs):
    # The analysis said only "observation errors must be positive where there are
    # observations"; the innovations left such an observation out without a word.
    err = xr.full_like(obs.t, 0.5)
    err[2, 3] = np.nan
    with pytest.raises(OptionError, match="errors of 't' are NaN at 1 observation"):
        ds.ensf.assimilate(obs.assign(t_error=err), method="letkf", loc_radius=None)
    with pytest.raises(OptionError, match="errors of 't' are NaN at 1 observation"):
        ds.ensf.innovations(obs.assign(t_error=err))
    with pytest.raises(OptionError, match="errors of 't' are zero or negative at 1"):
        ds.ensf.assimilate(obs.assign(t_error=err.fillna(0.0)), method="ensf")
    # an infinite error (1 / a weight of 0) left the observation out without a word,
    # though obs_error=np.inf is refused
    infinite = obs.assign(t_error=err.fillna(np.inf))
    with pytest.raises(OptionError, match="errors of 't' are infinite at 1 observation"):
        ds.ensf.assimilate(infinite, method="letkf", loc_radius=None)
    with pytest.raises(OptionError, match="errors of 't' are infinite at 1 observation"):
        ds.chunk(lat=3).ensf.assimilate(infinite, method="letkf", loc_radius=3000.0).compute()
    with pytest.raises(OptionError, match="errors of 't' are infinite at 1 observation"):
        ds.ensf.innovations(infinite)


def _in_degrees_and_radians(lat, lon) -> tuple[xr.Dataset, xr.Dataset]:
    """One ensemble of t on a latitude/longitude grid, its coordinates in degrees and
    in radians."""
    r = np.random.default_rng(0)
    t = 280 + r.standard_normal((6, lat.size, lon.size))
    degrees = xr.Dataset(
        {"t": (("member", "lat", "lon"), t, {"units": "K"})},
        coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})},
    )  # fmt: skip
    radians = degrees.assign_coords(
        lat=("lat", np.deg2rad(lat), {"units": "radian"}),
        lon=("lon", np.deg2rad(lon), {"units": "radian"}),
    )
    return degrees, radians


def _points_in_degrees(name, values, lat, lon, dim="station") -> xr.Dataset:
    """Observations of ``name`` at points whose positions say they are in degrees."""
    return xr.Dataset(
        {name: (dim, values)},
        coords={"lat": (dim, lat, {"units": "degrees_north"}),
                "lon": (dim, lon, {"units": "degrees_east"})},
    )  # fmt: skip


def _assert_same_analysis(one, other, points, name="t", **options) -> xr.Dataset:
    """``one``'s analysis, after checking that ``other`` (the same state in other
    units) gets the same one."""
    expected = one.ensf.assimilate(points, **options)
    got = other.ensf.assimilate(points, **options)
    np.testing.assert_allclose(got[name].values, expected[name].values, rtol=0, atol=1e-9)
    return expected


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_grid_in_radians_is_a_latitude_longitude_grid(method):
    # Latitude and longitude in radians were read as planar coordinates: distances in
    # radians, so loc_radius=2000 (km) reached every point, and a station's position
    # was a number in the grid's units whatever its own units said.
    state, radians = _in_degrees_and_radians(np.linspace(-60.0, 60.0, 6), np.arange(8) * 45.0)
    station = _points_in_degrees("t", [282.0, 279.0], [-12.0, 30.0], [100.0, 300.0])
    in_radians = station.assign_coords(
        lat=("station", np.deg2rad(station.lat.values), {"units": "rad"}),
        lon=("station", np.deg2rad(station.lon.values), {"units": "rad"}),
    )
    options = {"method": method, "obs_error": 0.5, "seed": 0}
    options.update(loc_radius=2000.0) if method == "letkf" else None
    expected = state.ensf.assimilate(station, **options)
    for grid, points in [(radians, station), (state, in_radians), (radians, in_radians)]:
        got = grid.ensf.assimilate(points, **options)
        np.testing.assert_allclose(got.t.values, expected.t.values, rtol=0, atol=1e-9)
        assert got.lat.attrs["units"] == grid.lat.attrs["units"]  # come back as given
    if method == "letkf":  # localised: far points keep their prior
        assert int((abs(expected.t - state.t) > 1e-9).any("member").sum()) < 48 / 2
    # scores weight rows by the cosine of the latitude, whatever its units
    truth = state.t.isel(member=0) + 1.0
    xr.testing.assert_allclose(
        radians.ensf.rmse(truth.assign_coords(lat=radians.lat, lon=radians.lon)),
        state.ensf.rmse(truth),
    )


@pytest.mark.parametrize(
    ("grid_unit", "station_unit", "factor"), [("km", "m", 1000.0), ("m", "km", 1e-3)]
)
def test_station_positions_are_read_in_their_units(grid_unit, station_unit, factor):
    # A station's y/x were read as numbers in the grid's units: stations in km on a
    # grid in m were put near its origin (a silently wrong analysis), stations in m on
    # a grid in km were refused as outside the grid.
    r = np.random.default_rng(0)
    scale = 1.0 if grid_unit == "km" else 1000.0
    state = xr.Dataset(
        {"t": (("member", "y", "x"), 280 + r.standard_normal((6, 6, 8)), {"units": "K"})},
        coords={"y": ("y", np.arange(6) * 100.0 * scale, {"units": grid_unit}),
                "x": ("x", np.arange(8) * 100.0 * scale, {"units": grid_unit})},
    )  # fmt: skip
    yx = np.array([[250.0, 420.0], [80.0, 610.0]]) * scale
    station = xr.Dataset(
        {"t": ("station", [282.0, 279.0])},
        coords={"y": ("station", yx[:, 0], {"units": grid_unit}),
                "x": ("station", yx[:, 1], {"units": grid_unit})},
    )  # fmt: skip
    other = station.assign_coords(
        y=("station", yx[:, 0] * factor, {"units": station_unit}),
        x=("station", yx[:, 1] * factor, {"units": station_unit}),
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 150.0 * scale}
    expected = state.ensf.assimilate(station, **options)
    got = state.ensf.assimilate(other, **options)
    np.testing.assert_allclose(got.t.values, expected.t.values, rtol=0, atol=1e-9)
    assert not np.array_equal(expected.t.values, state.t.values)
    seconds = other.assign_coords(y=other.y.assign_attrs(units="s"))
    with pytest.raises(xensf.UnitsError, match=r"'y'.*'s'"):
        state.ensf.assimilate(seconds, **options)


def test_stations_in_km_on_a_latitude_longitude_grid_are_refused(ds):
    station = xr.Dataset(
        {"t": ("station", [282.0])},
        coords={"lat": ("station", [10.0], {"units": "km"}),
                "lon": ("station", [20.0], {"units": "km"})},
    )  # fmt: skip
    with pytest.raises(xensf.UnitsError, match="'lat' is in 'km', not an angle"):
        ds.ensf.assimilate(station, method="letkf", obs_error=0.5, loc_radius=2000.0)


def test_an_integer_variable_beside_the_state_names_both_ways_out():
    r = np.random.default_rng(0)
    ds = xr.Dataset(
        {"t": (("member", "lat", "lon"), 280 + r.standard_normal((6, 6, 8)), {"units": "K"}),
         "flag": (("member", "lat", "lon"), np.ones((6, 6, 8), int))},
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    obs = xr.Dataset(
        {"t": ("station", [282.0])},
        coords={"lat": ("station", [12.0]), "lon": ("station", [90.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    with pytest.raises(OptionError, match=r"astype\('float64'\).*variables=\['t'\]"):
        ds.ensf.assimilate(obs, **options)
    kept = ds.ensf.assimilate(obs, variables=["t"], **options)
    xr.testing.assert_equal(kept.flag.drop_vars("member"), ds.flag)  # CF attrs added


def test_numpy_numbers_are_numbers_for_every_option(ds, station):
    # Options were checked with isinstance(value, int | float): np.float32(1.1) was "not
    # a positive number" for inflation, as was np.int64(20) for steps (what a numpy grid
    # of settings gives), while True passed as rtps=1 and loc_radius=1.
    obs = station
    letkf = {"method": "letkf", "obs_error": 0.5}
    same = [
        (dict(letkf, loc_radius=np.float32(3000), inflation=np.float32(1.25), rtps=np.float16(0.5)),
         dict(letkf, loc_radius=3000.0, inflation=1.25, rtps=0.5)),
        (dict(method="ensf", obs_error=0.5, seed=0, steps=np.int64(20), eps_alpha=np.float32(0.5)),
         dict(method="ensf", obs_error=0.5, seed=0, steps=20, eps_alpha=0.5)),
    ]  # fmt: skip
    for numpy_options, python_options in same:
        got = ds.ensf.assimilate(obs, **numpy_options)
        expected = ds.ensf.assimilate(obs, **python_options)
        for analysis in (got, expected):
            del analysis.attrs["history"]  # the call as made, numpy spellings and all
        xr.testing.assert_identical(got, expected)
    for bad in (dict(rtps=True), dict(loc_radius=True), dict(inflation=True)):
        with pytest.raises(OptionError, match=f"{next(iter(bad))}.*True"):
            ds.ensf.assimilate(obs, **{**letkf, "loc_radius": 3000.0, **bad})


def test_a_regional_grid_in_radians_across_the_dateline_is_read_in_degrees():
    # The longitude check read the coordinate as given: in radians, the natural order
    # across the dateline (2.79 ... 3.14, -2.97) jumped by "353.9 degrees" and was refused.
    lon = np.array([160.0, 170.0, 180.0, -170.0, -160.0])
    state, radians = _in_degrees_and_radians(np.array([-10.0, 0.0, 10.0]), lon)
    station = _points_in_degrees("t", [282.0], [2.0], [178.0])
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 1000.0}
    expected = _assert_same_analysis(state, radians, station, **options)
    assert not np.array_equal(expected.t.values, state.t.values)


def test_observations_with_a_dim_the_state_lacks_are_refused_with_the_fix(ds):
    obs = xr.full_like(ds.t.isel(member=0), np.nan).to_dataset()
    obs.t[2, 3] = 282.0
    with pytest.raises(ObservationMismatchError, match=r"member dim 'member'.*isel\(member=0"):
        ds.ensf.assimilate(obs.expand_dims(member=[0]), method="letkf", obs_error=0.5,
                              loc_radius=3000.0)  # fmt: skip
    with pytest.raises(ObservationMismatchError, match=r"obs.squeeze\(\['height'\], drop=True\)"):
        ds.ensf.assimilate(obs.expand_dims(height=[2.0]), method="letkf", obs_error=0.5,
                              loc_radius=3000.0)  # fmt: skip


def test_a_state_at_one_time_takes_only_the_observations_of_that_time():
    # forecast.isel(time=0) keeps its time as a scalar coordinate; observations of
    # another day (a length-1 time dim or a scalar time coordinate) were applied to it.
    r = np.random.default_rng(0)
    time = np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]")
    state = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), 280 + r.standard_normal((2, 6, 6, 8)),
               {"units": "K"})},
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0, "time": time},
    )  # fmt: skip
    obs = xr.Dataset(
        {"t": (("time", "station"), [[282.0], [270.0]])},
        coords={"time": time, "lat": ("station", [12.0]), "lon": ("station", [90.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    expected = state.ensf.assimilate(obs, **options).isel(time=0)
    day_1 = state.isel(time=0)
    for same_day in (obs.isel(time=[0]), obs.isel(time=0)):
        got = day_1.ensf.assimilate(same_day, **options)
        np.testing.assert_array_equal(got.t.values, expected.t.values)
    near = obs.isel(time=[0]).assign_coords(time=time[:1] + np.timedelta64(10, "m"))
    got = day_1.ensf.assimilate(near, obs_time_tolerance="1h", **options)
    np.testing.assert_array_equal(got.t.values, expected.t.values)
    for other_day in (obs.isel(time=[1]), obs.isel(time=1), obs):
        with pytest.raises(ObservationMismatchError, match=r"not times of the state.*2001-01-02"):
            day_1.ensf.assimilate(other_day, **options)
    # a state with no time at all takes observations without one, as before
    untimed = day_1.drop_vars("time").ensf.assimilate(obs.isel(time=1, drop=True), **options)
    assert not np.array_equal(untimed.t.values, day_1.t.values)


def test_a_state_at_one_level_takes_only_the_observations_of_that_level():
    # ds.sel(level=500) keeps its level as a scalar coordinate; observations at 850 hPa
    # (a scalar coordinate too) were applied to it without a word.
    r = np.random.default_rng(0)
    state = xr.Dataset(
        {"t": (("member", "level", "lat", "lon"), 280 + r.standard_normal((6, 2, 6, 8)),
               {"units": "K"})},
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0,
                "level": ("level", [500.0, 850.0], {"units": "hPa"})},
    )  # fmt: skip
    obs = xr.Dataset(
        {"t": (("level", "station"), [[250.0], [282.0]])},
        coords={"level": ("level", [500.0, 850.0], {"units": "hPa"}),
                "lat": ("station", [12.0]), "lon": ("station", [90.0])},
    )  # fmt: skip
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    at_500 = state.sel(level=500.0)
    expected = state.ensf.assimilate(obs.sel(level=[500.0]), **options).sel(level=500.0)
    in_pa = obs.assign_coords(level=("level", [50000.0, 85000.0], {"units": "Pa"}))
    for given in (obs.sel(level=500.0), obs.sel(level=[500.0]), obs, in_pa):
        got = at_500.ensf.assimilate(given, **options)
        np.testing.assert_array_equal(got.t.values, expected.t.values)
    for other, fix in ((obs.sel(level=850.0), "assign_coords"), (obs.sel(level=[850.0]), "sel")):
        with pytest.raises(ObservationMismatchError, match=rf"level=500.0 hPa.*\[850.0\].*{fix}"):
            at_500.ensf.assimilate(other, **options)


def test_a_dataframe_given_as_observations_is_told_how_to_convert(ds):
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame({"lat": [12.0], "lon": [90.0], "t": [282.0]})
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    with pytest.raises(ObservationMismatchError, match=r"got DataFrame; .*to_xarray\(\)"):
        ds.ensf.assimilate(table, **options)
    converted = table.to_xarray().set_coords(["lat", "lon"])  # as the message says
    assert not np.array_equal(ds.ensf.assimilate(converted, **options).t.values, ds.t.values)


def test_the_order_of_the_variables_does_not_change_the_analysis():
    # EnSF's random draws fall on the stacked state vector, which followed the
    # Dataset's order: ds[["t", "q"]] and ds[["q", "t"]] (one file set opened in
    # another order) gave analyses 3.8 K apart with the same seed.
    r = np.random.default_rng(0)
    ds = xr.Dataset(
        {"t": (("member", "lat", "lon"), 280 + r.standard_normal((6, 6, 8)), {"units": "K"}),
         "q": (("member", "lat", "lon"), 0.01 + 0.001 * r.standard_normal((6, 6, 8)),
               {"units": "kg kg-1"})},
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    obs = xr.Dataset(
        {"t": ("station", [282.0, 279.0])},
        coords={"lat": ("station", [12.0, 36.0]), "lon": ("station", [135.0, 225.0])},
    )
    for options in ({"method": "ensf", "seed": 3}, {"method": "letkf", "loc_radius": 3000.0}):
        one = ds[["t", "q"]].ensf.assimilate(obs, obs_error=0.5, **options)
        other = ds[["q", "t"]].ensf.assimilate(obs, obs_error=0.5, **options)
        assert list(other.data_vars) == ["q", "t"]  # the result keeps the given order
        assert_same_run(one, other[["t", "q"]])


def _tiny_latent_case(names) -> tuple:
    """A latent model of random fields ``names`` on an 8 × 8 grid in km, trained one
    epoch (it only has to run), a prior of six of its states and every other point
    observed."""
    r = np.random.default_rng(0)
    axis = ("x", np.arange(8) * 10.0, {"units": "km"})
    train = xr.Dataset(
        {n: (("time", "y", "x"), r.standard_normal((40, 8, 8)), {"units": "m"}) for n in names},
        coords={"y": ("y", *axis[1:]), "x": axis, "time": np.arange(40)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.TrainingDataWarning)
        model = xensf.train_latent(
            train, 2, latent_dim=4, width=4, blocks=1, epochs=1, progress=False, seed=0
        )
    prior = train.isel(time=slice(0, 6)).rename(time="member")
    obs = xr.full_like(prior.isel(member=0), np.nan)
    for k, n in enumerate(names):
        obs[n][::2, ::2] = 0.5 - k
    return model, prior, obs


def test_a_latent_model_takes_its_variables_in_any_order():
    model, prior, obs = _tiny_latent_case(["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.ModelQualityWarning)  # one epoch of training
        one = prior.ensf.assimilate(obs, model=model, seed=1)
        other = prior[["b", "a"]].ensf.assimilate(obs[["b", "a"]], model=model, seed=1)
    assert_same_run(one, other[["a", "b"]])


def test_gridded_observations_on_part_of_the_grid_are_told_how_to_fill_it(ds):
    full = xr.full_like(ds.t.isel(member=0), np.nan).to_dataset()
    full.t[2, 3], full.t[4, 6] = 282.0, 279.0
    region = full.isel(lat=slice(1, 5), lon=slice(2, 7))
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    with pytest.raises(
        ObservationMismatchError, match=r"4 of the state's 6 .*reindex_like"
    ) as err:
        ds.ensf.assimilate(region, **options)
    # the reindex the message gives
    fix = re.search(
        r"obs\.reindex_like\(ds, method='nearest', tolerance=([0-9.]+)\)", str(err.value)
    )
    filled = region.reindex_like(ds, method="nearest", tolerance=float(fix.group(1)))
    assert_same_run(ds.ensf.assimilate(filled, **options), ds.ensf.assimilate(full, **options))


def test_an_obs_error_with_its_units_is_converted_as_a_difference(ds, station):
    # a pint quantity was refused, and text such as "0.5 K" too, while loc_radius
    # took "500 km"
    import pint
    from cf_xarray.units import units

    options = {"method": "letkf", "loc_radius": 3000.0}
    expected = ds.ensf.assimilate(station, obs_error=0.5, **options).t.values
    for given in (
        units.Quantity(500.0, "mK"),
        pint.UnitRegistry().Quantity(0.5, "delta_degC"),  # another registry
        "0.5 K",
        "0.5 degC",  # an error is a difference: 0.5 K, not 273.65 K
        "0.9 degF",
        {"t": "500 mK"},
    ):
        got = ds.ensf.assimilate(station, obs_error=given, **options).t.values
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=repr(given))
    for given, match in (
        ("0.5 m", "obs_error='0.5 m' is in 'm', which does not convert to the units of 't'"),
        ("0.5 furlongs_per_kelvin", "cannot parse the units"),
        (units.Quantity([0.5, 1.0], "K"), r"a quantity of shape \(2,\)"),
    ):
        with pytest.raises(UnitsError, match=match):
            ds.ensf.assimilate(station, obs_error=given, **options)
    with pytest.raises(OptionError, match=r"obs_error for 't' is -0\.5, it must be positive"):
        ds.ensf.assimilate(station, obs_error="-0.5 K", **options)
    with pytest.raises(OptionError, match=r"cannot read obs_error '0\.5'"):  # no units
        ds.ensf.assimilate(station, obs_error="0.5", **options)
    bare = ds.assign(t=ds.t.assign_attrs(units=None))
    with pytest.raises(UnitsError, match="the state variable 't' has none"):
        bare.ensf.assimilate(station, obs_error="0.5 K", **options)


def test_an_obs_error_attribute_with_its_units_is_converted_as_a_difference(ds, station):
    # obs_error="0.5 K" was taken, the same text as the observations' obs_error
    # attribute refused as not a number
    options = {"method": "letkf", "loc_radius": 3000.0}
    expected = ds.ensf.assimilate(station, obs_error=0.5, **options).t.values
    for text in ("0.5 K", "0.5 degC", "500 mK", "0.9 degF"):
        given = station.assign(t=station.t.assign_attrs(obs_error=text))
        got = ds.ensf.assimilate(given, **options).t.values
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=text)
        assert given.t.attrs["obs_error"] == text  # the input as given
    with pytest.raises(UnitsError, match="'m'"):
        ds.ensf.assimilate(station.assign(t=station.t.assign_attrs(obs_error="0.5 m")), **options)
    for text in ("0.5", "10%"):  # text without units: the units are not guessed
        with pytest.raises(OptionError, match=r"must be a number .* or a number with its units"):
            ds.ensf.assimilate(station.assign(t=station.t.assign_attrs(obs_error=text)), **options)


def test_station_metadata_given_as_variables_is_told_where_it_goes(ds):
    obs = xr.Dataset(
        {"t": ("station", [282.0, 279.0]), "name": ("station", ["A", "B"]),
         "qc": ("station", [0, 1])},
        coords={"lat": ("station", [12.0, 36.0]), "lon": ("station", [90.0, 180.0])},
    )  # fmt: skip
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    with pytest.raises(ObservationMismatchError, match=r"set_coords\(\['name', 'qc'\]\)"):
        ds.ensf.assimilate(obs, **options)
    expected = ds.ensf.assimilate(obs[["t"]], **options)
    for fixed in (obs.set_coords(["name", "qc"]), obs.drop_vars(["name", "qc"])):
        np.testing.assert_array_equal(ds.ensf.assimilate(fixed, **options).t, expected.t)


def test_a_curvilinear_grid_in_radians_is_read_in_degrees():
    r = np.random.default_rng(0)
    y, x = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    lat2, lon2 = -30 + 10.0 * y + 2.0 * x, 100 + 12.0 * x + 1.0 * y

    def grid(lat, lon, units):
        return {"nav_lat": (("y", "x"), lat, {"standard_name": "latitude", "units": units}),
                "nav_lon": (("y", "x"), lon, {"standard_name": "longitude", "units": units})}  # fmt: skip

    sst = (("member", "y", "x"), 290 + r.standard_normal((6, 6, 8)), {"units": "K"})
    degrees = xr.Dataset({"sst": sst}, coords=grid(lat2, lon2, "degrees"))
    radians = xr.Dataset({"sst": sst}, coords=grid(np.deg2rad(lat2), np.deg2rad(lon2), "radian"))
    buoy = _points_in_degrees("sst", [292.0], [5.0], [150.0], dim="buoy")
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 1500.0}
    expected = _assert_same_analysis(degrees, radians, buoy, name="sst", **options)
    assert not np.array_equal(expected.sst.values, degrees.sst.values)
    truth = degrees.sst.isel(member=0) + 0.5  # cell areas from the grid in degrees
    np.testing.assert_allclose(
        radians.ensf.rmse(truth.assign_coords(radians.coords)).sst, degrees.ensf.rmse(truth).sst
    )


def test_a_latent_model_takes_its_grid_in_other_units():
    # A model trained on a grid in km refused the same grid in m ("regrid the data").
    model, prior, obs = _tiny_latent_case(["a"])
    axis = prior.x.values
    in_m = {"y": ("y", axis * 1000.0, {"units": "m"}), "x": ("x", axis * 1000.0, {"units": "m"})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.ModelQualityWarning)  # one epoch of training
        expected = prior.ensf.assimilate(obs, model=model, seed=1)
        got = prior.assign_coords(in_m).ensf.assimilate(
            obs.assign_coords(in_m), model=model, seed=1
        )
    np.testing.assert_array_equal(got.a.values, expected.a.values)
    assert got.y.attrs["units"] == "m"  # the data's coordinates come back as given
    elsewhere = {"y": ("y", axis * 1000.0, {"units": "s"}), "x": in_m["x"]}
    with pytest.raises(ObservationMismatchError, match="regrid"):
        prior.assign_coords(elsewhere).ensf.assimilate(
            obs.assign_coords(elsewhere), model=model, seed=1
        )


@pytest.mark.parametrize("chunks", [None, {"lat": 3}])
def test_a_state_at_one_time_draws_from_that_time_s_seed(two_days, chunks):
    # Without a time dim EnSF drew from the bare seed: forecast.isel(time=0) and
    # forecast.isel(time=[0]) gave analyses 4.9 K apart, though both are at one time.
    obs = xr.Dataset(
        {"t": (("time", "station"), [[282.0], [270.0]])},
        coords={"time": two_days.time, "lat": ("station", [12.0]), "lon": ("station", [90.0])},
    )
    options = {"method": "ensf", "obs_error": 0.5, "seed": 3, "prior_score": "paired"}
    state = two_days if chunks is None else two_days.chunk(chunks)
    at_scalar = []
    for i in (0, 1):
        as_dim = state.isel(time=[i]).ensf.assimilate(obs.isel(time=[i]), **options)
        at_scalar.append(state.isel(time=i).ensf.assimilate(obs.isel(time=i), **options))
        np.testing.assert_array_equal(at_scalar[i].t.values, as_dim.t.isel(time=0).values)
    untimed = state.isel(time=0, drop=True).ensf.assimilate(obs.isel(time=0, drop=True), **options)
    assert not np.array_equal(untimed.t.values, at_scalar[0].t.values)  # the bare seed


def _north_to_south_from_the_dateline(d: xr.Dataset) -> xr.Dataset:
    """The same data with latitude from north to south (as ERA5 comes) and longitude
    in -180 … 180 (the other convention), sorted."""
    d = d.isel(lat=slice(None, None, -1))
    return d.assign_coords(lon=((d.lon + 180.0) % 360.0) - 180.0).sortby("lon")


def _south_to_north_from_zero(d: xr.Dataset) -> xr.Dataset:
    return d.sortby("lat").assign_coords(lon=d.lon % 360.0).sortby("lon")


@pytest.mark.parametrize(
    "options, chunks, gridded",
    [
        ({}, None, True),
        ({"prior_score": "paired"}, {"lat": 4, "time": 1}, True),  # in spatial blocks
        ({"prior_score": "local-mixture", "window": 4}, {"time": 1}, False),  # stations on points
    ],
)
def test_the_grid_s_order_does_not_change_the_ensf_analysis(options, chunks, gridded):
    # EnSF's draws fall on the grid points in the state's order, and its noise tiles and
    # windows cut the grid from its first row: the same ensemble with latitude from
    # north to south (ERA5's order) or longitude from -180 got another analysis for one
    # seed (4.7 K apart here), and another with local-mixture windows.
    r = np.random.default_rng(2)
    prior = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), 280 + r.standard_normal((2, 6, 8, 12)),
               {"units": "K"})},
        coords={"time": np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]"),
                "lat": np.linspace(-70.0, 70.0, 8), "lon": np.arange(12) * 30.0},
    )  # fmt: skip
    if gridded:
        obs = xr.full_like(prior.isel(member=0, drop=True), np.nan)
        obs["t"][:, 2, 3] = [282.0, 281.0]
        obs["t"][:, 6, 10] = [279.0, 278.5]
    else:
        obs = xr.Dataset(
            {"t": ("station", [282.0, 279.0])},
            coords={"lat": ("station", [10.0, 50.0]), "lon": ("station", [120.0, 300.0])},
        )
    other_prior = _north_to_south_from_the_dateline(prior)
    other_obs = _north_to_south_from_the_dateline(obs) if gridded else obs
    if chunks is not None:
        prior, other_prior = prior.chunk(chunks), other_prior.chunk(chunks)
    kwargs = {"method": "ensf", "obs_error": 0.5, "seed": 3, **options}
    one = prior.ensf.assimilate(obs, **kwargs)
    other = other_prior.ensf.assimilate(other_obs, **kwargs)
    # the analysis comes back in the order its data came in, in the same chunks
    for d in ("lat", "lon"):
        np.testing.assert_array_equal(other[d].values, other_prior[d].values)
    assert other.t.chunks == other_prior.t.chunks
    assert float(abs(one.t - prior.t).max()) > 0.5  # the observations moved it
    np.testing.assert_array_equal(
        _south_to_north_from_zero(other).t.values, one.t.transpose(*other.t.dims).values
    )


def test_a_time_dim_of_forecast_reference_times_is_refused_with_the_swap():
    # cfgrib labels ensemble forecasts by their reference time 'time', with valid_time
    # along it: observations were matched against the reference times, hours off.
    ds = xensf.open_era5_sample().isel(latitude=slice(0, None, 6), longitude=slice(0, None, 6))
    lead = np.timedelta64(12, "h")
    forecast = ds.isel(number=slice(1, None)).assign_coords(
        step=ds.step.copy(data=12.0), valid_time=ds.valid_time + lead
    )
    forecast.valid_time.attrs.update(standard_name="time")
    obs = ds[["z"]].isel(number=0, drop=True).isel(time=[0])  # labelled at a reference time
    with pytest.raises(xensf.DimensionError, match=r"ds.swap_dims\(\{'time': 'valid_time'\}\)"):
        forecast.ensf.assimilate(obs, method="letkf", obs_error=10.0, loc_radius=1000.0)
    # the same values at their valid time, and the state labelled by it, as the error says
    at_valid = obs.assign_coords(valid_time=obs.valid_time + lead).swap_dims(time="valid_time")
    analysis = forecast.swap_dims(time="valid_time").ensf.assimilate(
        at_valid, method="letkf", obs_error=10.0, loc_radius=1000.0
    )
    assert float(abs(analysis.z - forecast.swap_dims(time="valid_time").z).max()) > 0


def test_the_order_of_the_levels_does_not_change_the_ensf_analysis():
    # ERA5 as cfgrib writes it has levels 850, 500 hPa, WeatherBench2 500, 850: EnSF's
    # draws fell on other levels, and the same data got analyses 4.7 K apart for one seed.
    r = np.random.default_rng(4)
    state = xr.Dataset(
        {"t": (("member", "level", "lat", "lon"), 280 + r.standard_normal((6, 3, 6, 8)),
               {"units": "K"})},
        coords={"level": ("level", [300.0, 500.0, 850.0], {"units": "hPa"}),
                "lat": np.linspace(-60, 60, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    obs = xr.full_like(state.t.isel(member=0), np.nan).to_dataset()
    obs.t[1, 2, 3], obs.t[2, 4, 6] = 282.0, 279.0
    one = state.ensf.assimilate(obs, method="ensf", obs_error=0.5, seed=2)
    down = {"level": slice(None, None, -1)}
    other = state.isel(down).ensf.assimilate(obs.isel(down), method="ensf", obs_error=0.5, seed=2)
    np.testing.assert_array_equal(other.level.values, [850.0, 500.0, 300.0])
    np.testing.assert_array_equal(other.isel(down).t.values, one.t.values)
    table = pd.DataFrame({"lat": [12.0], "lon": [90.0], "t": [281.0]})  # refused as before
    with pytest.raises(ObservationMismatchError, match="got DataFrame"):
        state.isel(down).ensf.assimilate(table, method="ensf", obs_error=0.5)


def test_an_analysis_of_packed_data_is_written_as_it_is(ds, tmp_path):
    # A prior read from an int16-packed file (scale_factor/add_offset, as ERA5 netCDF
    # often is) passed its packing on: an analysis outside the input's range was
    # written wrapped round the int16 range, 12 K off here, without a word.
    lo, hi = float(ds.t.min()), float(ds.t.max())
    ds.t.encoding.update(dtype="int16", scale_factor=(hi - lo) / 65000, add_offset=(hi + lo) / 2,
                         _FillValue=-32767)  # fmt: skip
    ds.to_netcdf(tmp_path / "packed.nc")
    with xr.open_dataset(tmp_path / "packed.nc") as packed:
        obs = xr.full_like(packed.t.isel(member=0), np.nan).to_dataset()
        obs.t.encoding = {}
        obs.t[2, 3] = hi + 8.0
        analysis = packed.ensf.assimilate(obs, method="letkf", obs_error=0.1, loc_radius=3000.0)
        assert float(analysis.t.max()) > hi + 5.0
        analysis.to_netcdf(tmp_path / "analysis.nc")
        assert packed.t.encoding["dtype"] == np.dtype("int16")  # the input's, untouched
    with xr.open_dataset(tmp_path / "analysis.nc") as written:
        np.testing.assert_allclose(written.t.values, analysis.t.values, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method, options", [("letkf", {"loc_radius": 1000.0}), ("ensf", {})])
def test_a_station_at_the_pole_of_a_global_grid_without_pole_rows_is_assimilated(method, options):
    # WeatherBench2's 64 x 32 grid (and Gaussian grids) end half a row short of the
    # poles: the South Pole's station was refused as outside the grid.
    r = np.random.default_rng(0)
    lat, lon = np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625
    state = xr.Dataset(
        {"t": (("member", "lat", "lon"), 250 + r.standard_normal((8, 32, 64)), {"units": "K"})},
        coords={"lat": lat, "lon": lon},
    )
    pole = xr.Dataset(
        {"t": ("station", [260.0])},
        coords={"lat": ("station", [-90.0]), "lon": ("station", [0.0])},
    )
    analysis = state.ensf.assimilate(pole, method=method, obs_error=0.5, seed=1, **options)
    fit = state.ensf.innovations(pole, analysis, obs_error=0.5)
    assert abs(float(fit.oma[0])) < abs(float(fit.omb[0]))  # drawn towards the station
    moved = abs(analysis.t - state.t).mean("member")
    assert float(moved.isel(lat=0).mean()) > float(moved.isel(lat=-1).mean())  # in the south
    north_down = state.isel(lat=slice(None, None, -1))
    again = north_down.ensf.assimilate(pole, method=method, obs_error=0.5, seed=1, **options)
    np.testing.assert_array_equal(again.t.sortby("lat").values, analysis.t.values)


def test_errors_given_in_two_places_say_which_is_used(ds, obs):
    # An obs_error= over the observations' own t_error, or a t_error variable over an
    # obs_error attribute, was taken without a word: the other ignored.
    options = {"method": "letkf", "loc_radius": 3000.0}
    own = obs.assign(t_error=xr.full_like(obs.t, 5.0))
    with pytest.warns(xensf.ObservationErrorWarning, match=r"their own error \(the variable "
                      r"'t_error'\) is not used"):  # fmt: skip
        argument = ds.ensf.assimilate(own, obs_error=0.1, **options)

    # the Dataset's own attributes hold the call's time (to the second) and description
    def same(a, b):
        xr.testing.assert_identical(a.drop_attrs(deep=False), b.drop_attrs(deep=False))

    same(argument, ds.ensf.assimilate(obs, obs_error=0.1, **options))
    both = own.copy()
    both.t.attrs["obs_error"] = 0.1
    with pytest.warns(xensf.ObservationErrorWarning, match=r"in 2 places .*the variable "
                      r"'t_error' is used"):  # fmt: skip
        variable = ds.ensf.assimilate(both, **options)
    same(variable, ds.ensf.assimilate(own, **options))
    with warnings.catch_warnings():
        warnings.simplefilter("error", xensf.ObservationErrorWarning)
        ds.ensf.assimilate(own, **options)  # one place: nothing to say
        ds.ensf.innovations(own, obs_error=None)


def test_one_error_mapping_serves_observations_of_some_state_variables(ds, station):
    # {"t": ..., "q": ...} for a state of t and q was refused when only t was observed
    # ("names variables that are not observed"), so one mapping could not serve a
    # network whose variables come and go.
    state = ds.assign(q=(ds.t - 280) * 1e-3 + 0.01)
    state.q.attrs["units"] = "1"
    options = {"method": "letkf", "loc_radius": 3000.0}
    both = state.ensf.assimilate(station, obs_error={"t": 0.5, "q": 1e-3}, **options)
    xr.testing.assert_equal(both, state.ensf.assimilate(station, obs_error={"t": 0.5}, **options))
    with pytest.raises(OptionError, match=r"names \['tt'\], which are not state variables"):
        state.ensf.assimilate(station, obs_error={"t": 0.5, "tt": 1.0}, **options)
    with pytest.raises(OptionError, match=r"no entry for the observed variables \['t'\]"):
        state.ensf.assimilate(station, obs_error={"q": 1e-3}, **options)


def test_a_radius_far_below_the_grid_spacing_warns(ds, obs):
    # loc_radius=150 meant as km on a grid in metres (25 km apart): every observation
    # updated its own grid point only, a station between points nothing, without a word
    r = np.random.default_rng(0)
    x = xr.DataArray(np.arange(16) * 25e3, dims="x", attrs={"units": "m"})
    planar = xr.Dataset(
        {"h": (("member", "y", "x"), r.standard_normal((8, 16, 16)), {"units": "m"})},
        coords={"y": x.rename(x="y"), "x": x},
    )
    seen = xr.full_like(planar.h[0], np.nan).to_dataset()
    seen.h[8, 8] = 2.0
    with pytest.warns(xensf.LocalisationWarning, match=r"loc_radius=150\.0 m is under 1/4 .* "
                      r"about 2\.5e\+04 m"):  # fmt: skip
        planar.ensf.assimilate(seen, method="letkf", obs_error=0.1, loc_radius=150.0)
    with pytest.warns(xensf.LocalisationWarning, match=r"loc_radius=50\.0 km .* 3\.19e\+03 km"):
        ds.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", xensf.LocalisationWarning)
        planar.ensf.assimilate(seen, method="letkf", obs_error=0.1, loc_radius=150e3)
        ds.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=3000.0)
        ds.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=None)


def test_observations_far_beyond_the_spread_and_errors_warn(ds, obs, two_days):
    # observations in degC without a units attribute, read in the state's kelvin: an
    # analysis mean of 44 K at the observed point, without a word
    celsius = obs.copy(deep=True)
    celsius.t[2, 3] = 8.0
    with pytest.warns(xensf.InnovationWarning, match=r"'t' lie a median of \d+ expected .* "
                      r"observations' median is 8 and the prior mean's there 2\d\d\.\d+"):  # fmt: skip
        ds.ensf.assimilate(celsius, method="letkf", obs_error=0.5, loc_radius=3000.0)
    # judged time by time: one day in degC among days in kelvin warns however chunked
    days = xr.concat([obs, celsius], "time").assign_coords(time=two_days.time)
    for prior in (two_days, two_days.chunk(time=1)):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            prior.ensf.assimilate(days, method="ensf", obs_error=0.5).compute()
        shown = [str(w.message) for w in record if w.category is xensf.InnovationWarning]
        assert len(shown) == 1 and "at 1 of " in shown[0], shown
    with warnings.catch_warnings():
        warnings.simplefilter("error", xensf.InnovationWarning)
        ds.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=3000.0)


@pytest.mark.parametrize(
    "method, options",
    [("letkf", {"loc_radius": 3000.0}), ("ensf", {"prior_score": "paired"})],
)
def test_the_checks_against_the_prior_hold_on_latitude_longitude_blocks(ds, obs, method, options):
    # a prior chunked along latitude and longitude is analysed block by block, and the
    # blocks checked nothing: observations in degC read as K went unsaid, an error a
    # trillionth of the spread was analysed, where the same prior in one chunk warned
    # and refused
    celsius = obs.copy(deep=True)
    celsius.t[2, 3] = 8.0
    for prior in (ds, ds.chunk(lat=3, lon=4)):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            prior.ensf.assimilate(celsius, method=method, obs_error=0.5, **options).compute()
        shown = [str(w.message) for w in record if w.category is xensf.InnovationWarning]
        assert len(shown) == 1 and "observations' median is 8 " in shown[0], shown
        with pytest.raises(xensf.OptionError, match="as small as"):
            prior.ensf.assimilate(obs, method=method, obs_error=1e-12, **options).compute()


def test_points_stacked_from_a_grid_are_the_points_they_name(ds, two_days):
    # grid.stack(station=("lat", "lon")) puts latitude and longitude in a multi-index:
    # assimilate, innovations, cross_validate and cycle raised xarray's "cannot set or
    # update variable(s) 'lat', 'lon', which would corrupt the following index"
    from xensf.cycling import Persistence

    grid = (two_days.t.isel(member=0, drop=True) + 1.0).isel(lat=[1, 4], lon=[0, 3, 6])
    stacked = grid.to_dataset().stack(station=("lat", "lon"))
    plain = stacked.reset_index("station")
    options = dict(method="letkf", obs_error=0.5, loc_radius=3000.0)
    assert_same_run(
        two_days.ensf.assimilate(stacked, **options), two_days.ensf.assimilate(plain, **options)
    )
    xr.testing.assert_identical(
        two_days.ensf.innovations(stacked, obs_error=0.5),
        two_days.ensf.innovations(plain, obs_error=0.5),
    )
    settings = {"inflation": [1.0, 1.1]}
    scores = [
        two_days.ensf.cross_validate(o, settings, folds=2, progress=False, **options).score
        for o in (stacked, plain)
    ]
    xr.testing.assert_identical(*scores)
    runs = [
        xensf.cycle(
            Persistence("1D"), two_days.isel(time=[0]), o.isel(time=[1]), progress=False, **options
        ).drop_attrs()
        for o in (stacked, plain)
    ]
    xr.testing.assert_identical(*runs)
    assert isinstance(stacked.indexes["station"], pd.MultiIndex)  # the input as given


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_numbers_as_a_file_stores_them_are_refused_until_decoded(ds, station, tmp_path, method):
    # A file read with mask_and_scale=False gave EnSF its fill values (1e36) as numbers:
    # the analysis changed by 5e30 everywhere, without a word. Packed counts were refused
    # with the advice to cast them to floats, which gives counts, not kelvin.
    ds = ds.copy(deep=True)
    ds["t"][:, 0, :2] = np.nan  # a land mask
    path = tmp_path / "prior.nc"
    encoding = {"t": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0,
                      "_FillValue": -32767}}  # fmt: skip
    ds.to_netcdf(path, encoding=encoding)
    options = {"method": method, "obs_error": 0.5, **GLOBAL[method]}
    with xr.open_dataset(path) as decoded:
        want = decoded.ensf.assimilate(station, **options)
    for raw in ({"mask_and_scale": False}, {"decode_cf": False}):
        with xr.open_dataset(path, **raw) as stored:
            for prior in (stored, stored.chunk(lat=3)):
                with pytest.raises(EnsembleError, match=r"'t' is not decoded: .*'scale_factor'"):
                    prior.ensf.assimilate(station, **options)
            assert_same_run(xr.decode_cf(stored).ensf.assimilate(station, **options), want)
    filled = ds.fillna(9.969209968386869e36)
    filled.t.attrs["_FillValue"] = 9.969209968386869e36
    with pytest.raises(EnsembleError, match=r"'_FillValue': 9.96"):
        filled.ensf.assimilate(station, **options)
    here = ds.ensf.assimilate(station, **options)
    assert_same_run(xr.decode_cf(filled).ensf.assimilate(station, **options), here)
    packed = station.assign(t=station.t.assign_attrs(scale_factor=2.0))
    with pytest.raises(ObservationMismatchError, match=r"observation variable 't' is not decoded"):
        ds.ensf.assimilate(packed, **options)
    stated = ds.assign(t=ds.t.assign_attrs(_FillValue=np.nan))  # NaN is missing already
    xr.testing.assert_equal(stated.ensf.assimilate(station, **options), here)


def test_zoned_observation_times_are_told_the_conversion_that_works(two_days):
    # Times with a time zone (pandas keeps them as objects) were told to go through
    # pd.to_datetime, which keeps the zone: the same refusal again; and the fix made a
    # table's times a dim of their own.
    days = pd.DatetimeIndex(two_days.time.values).tz_localize("UTC").tz_convert("Europe/Berlin")
    frame = pd.DataFrame({"time": days, "lat": [10.0, -20.0], "lon": [20.0, 100.0],
                          "t": [281.0, 279.0]})  # fmt: skip
    obs = frame.to_xarray().set_coords(["time", "lat", "lon"])
    options = {"method": "letkf", "obs_error": 0.5, **GLOBAL["letkf"]}
    with pytest.raises(ObservationMismatchError, match="time zone Europe/Berlin") as told:
        two_days.ensf.assimilate(obs, **options)
    fix = str(told.value).rsplit("e.g. ", 1)[1]
    fixed = eval(fix, {"obs": obs, "pd": pd})  # the conversion as the message gives it
    naive = frame.assign(time=two_days.time.values).to_xarray().set_coords(["time", "lat", "lon"])
    assert_same_run(two_days.ensf.assimilate(fixed, **options),
                    two_days.ensf.assimilate(naive, **options))  # fmt: skip


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_grid_line_without_a_position_is_named_not_sent_to_be_sorted(ds, station, method):
    # A NaN latitude was refused as "not strictly monotonic; sort it", and sorting
    # leaves the NaN where it is.
    lat = ds.lat.values.copy()
    lat[2] = np.nan
    options = {"method": method, "obs_error": 0.5, **GLOBAL[method]}
    with pytest.raises(DimensionError, match="'lat' coordinate has NaN or infinite values"):
        ds.assign_coords(lat=lat).ensf.assimilate(station, **options)
    unsorted = ds.assign_coords(lat=ds.lat.values[[1, 0, 2, 3, 4, 5]])
    with pytest.raises(DimensionError, match="not strictly monotonic; sort it"):
        unsorted.ensf.assimilate(station, **options)


def test_gridded_observations_on_another_grid_are_told_the_stacking_that_takes_them():
    # The advice named "point observations" without the call that makes them.
    rng = np.random.default_rng(1)
    prior = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), 280 + rng.standard_normal((2, 6, 12, 16)),
               {"units": "K"})},
        coords={"time": [0, 1], "lat": np.linspace(-60, 60, 12), "lon": np.arange(16) * 22.5},
    )  # fmt: skip
    coarse = xr.Dataset(
        {"t": (("time", "lat", "lon"), 280 + rng.standard_normal((2, 4, 5)), {"units": "K"})},
        coords={"time": [0, 1], "lat": np.linspace(-50, 50, 4), "lon": np.arange(5) * 60.0 + 7},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 2000.0}
    with pytest.raises(ObservationMismatchError, match="differs from the state's") as told:
        prior.ensf.assimilate(coarse, **options)
    fix = str(told.value).rsplit(": ", 1)[1]
    points = eval(fix, {"obs": coarse})  # the call as the message gives it
    by_hand = xr.Dataset(
        {"t": (("time", "station"), coarse.t.values.reshape(2, -1), {"units": "K"})},
        coords={"time": [0, 1],
                "lat": ("station", np.repeat(coarse.lat.values, 5)),
                "lon": ("station", np.tile(coarse.lon.values, 4))},
    )  # fmt: skip
    assert_same_run(
        prior.ensf.assimilate(points, **options), prior.ensf.assimilate(by_hand, **options)
    )


def test_an_error_variable_in_percent_is_told_how_to_give_a_relative_error(ds, obs):
    # The refusal's example was geopotential height, of no help for an error in %.
    relative = obs.assign(t_error=(obs.t * 0 + 5).assign_attrs(units="%"))
    with pytest.raises(
        UnitsError, match=r"relative error is a share of each value: give it in 'K'"
    ):
        ds.ensf.assimilate(relative, method="letkf", loc_radius=None)
    humid = ds.assign(
        t=((ds.t - 280) * 0.02 + 0.5).assign_attrs(units="1")
    )  # a share itself: converts
    shared = obs.assign(
        t=(obs.t * 0 + 0.6).assign_attrs(units="1"),
        t_error=(obs.t * 0 + 5).assign_attrs(units="%"),
    )
    want = humid.ensf.assimilate(
        shared.assign(t_error=(shared.t_error * 0 + 0.05).assign_attrs(units="1")),
        method="letkf",
        loc_radius=None,
    )
    assert_same_run(humid.ensf.assimilate(shared, method="letkf", loc_radius=None), want)


def test_observations_with_a_level_each_are_at_their_own_levels():
    # Reports with a level each (a level coordinate along the stations, as a table's
    # pressure column gives) were refused by a state with a level dim, with the advice of
    # one level for all; and a state at one level (a scalar coordinate) took every
    # report as its own, those of 850 hPa at 500 hPa, without a word.
    r = np.random.default_rng(0)
    state = xr.Dataset(
        {"t": (("member", "level", "lat", "lon"), 280 + r.standard_normal((6, 3, 6, 8)),
               {"units": "K"})},
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0,
                "level": ("level", [1000.0, 850.0, 500.0], {"units": "hPa"})},
    )  # fmt: skip
    lat, lon, levels = [0.0, 36.0, 12.0], [90.0, 225.0, 135.0], [500.0, 850.0, 500.0]
    reports = xr.Dataset(
        {"t": ("station", [290.0, 275.0, 284.0])},
        coords={"lat": ("station", lat), "lon": ("station", lon),
                "level": ("station", levels, {"units": "hPa"})},
    )  # fmt: skip
    # the same reports laid out by level by hand, NaN where a station has no report
    by_hand = xr.Dataset(
        {"t": (("level", "station"), [[np.nan, 275.0, np.nan], [290.0, np.nan, 284.0]])},
        coords={"lat": ("station", lat), "lon": ("station", lon),
                "level": ("level", [850.0, 500.0], {"units": "hPa"})},
    )  # fmt: skip
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    expected = state.ensf.assimilate(by_hand, **options)
    in_pa = reports.assign_coords(level=("station", [5e4, 8.5e4, 5e4], {"units": "Pa"}))
    for given in (reports, in_pa):
        assert_same_run(state.ensf.assimilate(given, **options), expected)
    with_errors = reports.assign(t_error=("station", [0.5, 0.5, 0.5], {"units": "K"}))
    assert_same_run(state.ensf.assimilate(with_errors, **{**options, "obs_error": None}), expected)
    at_500 = state.sel(level=500.0)
    np.testing.assert_array_equal(
        at_500.ensf.assimilate(reports, **options).t.values,
        at_500.ensf.assimilate(reports.isel(station=[0, 2]), **options).t.values,
    )
    # a table: a time and a level in each row
    timed = state.expand_dims(time=np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]"))
    table = pd.DataFrame(
        {"time": timed.time.values[[0, 1, 1]], "lat": lat, "lon": lon, "level": levels,
         "t": [290.0, 275.0, 284.0]}
    ).to_xarray().set_coords(["time", "lat", "lon", "level"])  # fmt: skip
    from_table = timed.ensf.assimilate(table, **options)
    for i, rows in enumerate(([0], [1, 2])):
        alone = state.ensf.assimilate(reports.isel(station=rows), **options)
        np.testing.assert_array_equal(from_table.t.isel(time=i).values, alone.t.values)
    # a level the state does not have, a value without a level, all at another level
    with pytest.raises(ObservationMismatchError, match=r"level values \[700.0\] hPa"):
        elsewhere = reports.assign_coords(level=("station", [500.0, 700.0, 500.0]))
        state.ensf.assimilate(elsewhere, **options)
    unplaced = reports.assign_coords(level=("station", [500.0, np.nan, 500.0]))
    with pytest.raises(ObservationMismatchError, match=r"1 observations of \[.t.\] have no level"):
        state.ensf.assimilate(unplaced, **options)
    with pytest.raises(ObservationMismatchError, match=r"level=500.0 hPa.*\[850.0\]"):
        at_500.ensf.assimilate(reports.isel(station=[1]), **options)
    # a level under another name than the state's: told to rename it
    with pytest.raises(ObservationMismatchError, match=r"obs.rename\(\{'plev': 'level'\}\)"):
        state.ensf.assimilate(reports.rename(level="plev"), **options)


def test_observations_without_a_dim_the_state_has_once_are_of_its_one_entry():
    # A CMIP6 store's length-1 dcpp_init_year (labelled NaN) was a level dim the
    # observations had to give; given, its NaN label matched nothing, and the
    # observations were refused as of a dcpp_init_year the state does not have.
    r = np.random.default_rng(0)
    state = xr.Dataset(
        {"tas": (("member_id", "dcpp_init_year", "lat", "lon"),
                 280 + r.standard_normal((6, 1, 6, 8)), {"units": "K"})},
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0,
                "member_id": [f"r{i + 1}i1p1f1" for i in range(6)], "dcpp_init_year": [np.nan]},
    )  # fmt: skip
    stations = xr.Dataset(
        {"tas": ("station", [282.0, 279.0])},
        coords={"lat": ("station", [12.0, -30.0]), "lon": ("station", [90.0, 200.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    squeezed = state.squeeze("dcpp_init_year", drop=True).ensf.assimilate(stations, **options)
    for given in (stations, stations.expand_dims(dcpp_init_year=[np.nan])):
        got = state.ensf.assimilate(given, **options)
        assert got.tas.dims == state.tas.dims
        np.testing.assert_array_equal(
            got.tas.squeeze("dcpp_init_year").values, squeezed.tas.values
        )
    labelled = state.assign_coords(dcpp_init_year=[1990.0])
    with pytest.raises(ObservationMismatchError, match=r"dcpp_init_year values \[2000.0\]"):
        labelled.ensf.assimilate(stations.assign_coords(dcpp_init_year=2000.0), **options)


def test_a_latent_model_tells_to_squeeze_a_dim_of_length_one_it_has_not():
    # train_latent takes a CMIP6 store's dcpp_init_year as a sample dim; the prior's own
    # was then a field level the model lacks, refused without a fix
    r = np.random.default_rng(0)
    train = xr.Dataset(
        {"tas": (("time", "dcpp_init_year", "y", "x"), r.standard_normal((40, 1, 8, 8)),
                 {"units": "K"})},
        coords={"y": ("y", np.arange(8) * 10.0, {"units": "km"}),
                "x": ("x", np.arange(8) * 10.0, {"units": "km"}),
                "time": np.arange(40), "dcpp_init_year": [np.nan]},
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.TrainingDataWarning)
        model = xensf.train_latent(
            train, 2, latent_dim=4, width=4, blocks=1, epochs=1, progress=False, seed=0
        )
    prior = train.isel(time=slice(0, 6)).rename(time="member")
    obs = xr.full_like(prior.isel(member=0, dcpp_init_year=0, drop=True), np.nan)
    obs["tas"][::2, ::2] = 0.5
    with pytest.raises(ObservationMismatchError, match=r"ds.squeeze\(\['dcpp_init_year'\]\)"):
        prior.ensf.assimilate(obs, model=model, method="latent-ensf")
    squeezed = prior.squeeze(["dcpp_init_year"])  # as it says
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        assert squeezed.ensf.assimilate(obs, model=model, method="latent-ensf").tas.notnull().all()


def test_geographic_stations_on_a_projected_grid_are_refused_not_read_as_metres():
    # On a Lambert grid in metres, a station at lat 48.85, lon 2.35 (its coordinates
    # named so, or with standard_name latitude) was read as 48.85 m north and 2.35 m
    # east of the projection's origin, and assimilated at the grid's centre.
    r = np.random.default_rng(0)
    x, y = np.arange(-500e3, 500.1e3, 100e3), np.arange(-400e3, 400.1e3, 100e3)
    ds = xr.Dataset(
        {"tas": (("member", "y", "x"), 280 + r.standard_normal((6, y.size, x.size)),
                 {"units": "K", "grid_mapping": "lambert"})},
        coords={"y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"}),
                "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"})},
    )  # fmt: skip
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 300.0}
    geographic = [
        {"lat": ("station", [48.85]), "lon": ("station", [2.35])},
        {"latitude": ("station", [48.85], {"units": "degrees_north"}),
         "longitude": ("station", [2.35], {"units": "degrees_east"})},
        {"y": ("station", [48.85], {"standard_name": "latitude"}),
         "x": ("station", [2.35], {"standard_name": "longitude"})},
    ]  # fmt: skip
    for coords in geographic:
        stations = xr.Dataset({"tas": ("station", [290.0])}, coords=coords)
        with pytest.raises(ObservationMismatchError, match=r"projected.*pyproj"):
            ds.ensf.assimilate(stations, **options)
    # in the grid's own coordinates they are where they say
    planar = xr.Dataset(
        {"tas": ("station", [290.0])},
        coords={
            "y": ("station", [100.0], {"units": "km"}),
            "x": ("station", [200.0], {"units": "km"}),
        },
    )
    change = abs(ds.ensf.assimilate(planar, **options).tas - ds.tas).mean("member")
    assert change.argmax(...) == {"y": 5, "x": 7}


def test_a_forecast_labelled_by_lead_time_is_told_to_label_it_by_valid_time():
    # cfgrib reads one forecast as dims (number, step, ...), step its lead times and
    # valid_time along it: observations at dates were refused with the advice to decode
    # both alike (xarray.decode_cf), which does not help
    r = np.random.default_rng(0)
    t0 = np.datetime64("2020-01-01T00", "ns")
    lead = np.array([6, 12], "timedelta64[h]").astype("timedelta64[ns]")
    forecast = xr.Dataset(
        {"t": (("number", "step", "lat", "lon"), 280 + r.standard_normal((6, 2, 6, 8)), {"units": "K"})},
        coords={"step": ("step", lead, {"standard_name": "forecast_period"}),
                "time": ((), t0, {"standard_name": "forecast_reference_time"}),
                "valid_time": ("step", t0 + lead, {"standard_name": "time"}),
                "lat": np.linspace(60.0, -60.0, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    dated = xr.Dataset(
        {"t": (("time", "station"), [[290.0], [289.0]])},
        coords={"time": t0 + lead, "lat": ("station", [0.0]), "lon": ("station", [90.0])},
    )
    fix = r"lead times .*ds.swap_dims\(\{'step': 'valid_time'\}\)"
    with pytest.raises(xensf.DimensionError, match=fix):
        forecast.ensf.assimilate(dated, **options)
    by_valid_time = forecast.swap_dims(step="valid_time").ensf.assimilate(dated, **options)
    # observations labelled by lead time too are matched as before
    by_lead = forecast.ensf.assimilate(
        dated.rename(time="step").assign_coords(step=lead), **options
    )
    np.testing.assert_array_equal(by_lead.t.values, by_valid_time.t.values)


def test_observations_between_the_state_s_levels_are_told_how_to_reach_them():
    # Profiles at their own depths (Argo floats) were refused with the levels listed and
    # no way on: the operator does not interpolate between levels.
    r = np.random.default_rng(3)
    depth = ("lev", [5.0, 15.0, 25.0, 50.0], {"units": "m", "positive": "down"})
    prior = xr.Dataset(
        {"thetao": (("member", "lev", "lat", "lon"), 15 + r.standard_normal((6, 4, 6, 8)),
                    {"units": "degC"})},
        coords={"lev": depth, "lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    obs = xr.Dataset(
        {"thetao": ("obs", [16.0, 15.5, 15.2])},
        coords={"lat": ("obs", [0.0] * 3), "lon": ("obs", [10.0] * 3),
                "lev": ("obs", [7.0, 18.0, 33.0], {"units": "m"})},
    )  # fmt: skip
    options = {"method": "letkf", "obs_error": 0.1, "loc_radius": 3000.0}
    with pytest.raises(ObservationMismatchError, match="does not interpolate") as info:
        prior.ensf.assimilate(obs, **options)
    fix = re.search(r"nearest state level, (obs\.assign_coords\(.*\)\)) \(its", str(info.value))
    nearest = eval(fix.group(1))  # the recipe as the message spells it
    assert nearest.lev.values.tolist() == [5.0, 15.0, 25.0]
    assert np.isfinite(prior.ensf.assimilate(nearest, **options).thetao.values).any()
    # below the deepest level: dropped, as the message says
    deep = obs.assign_coords(lev=("obs", [60.0, 70.0, 80.0], {"units": "m"}))
    with pytest.raises(ObservationMismatchError, match="beyond its levels") as info:
        prior.ensf.assimilate(deep, **options)
    assert "obs.where((obs['lev'] >= 5.0) & (obs['lev'] <= 50.0), drop=True)" in str(info.value)
    # gridded observations on their own levels: interpolated along the level dim
    gridded = prior.isel(member=0, drop=True).interp(lev=[10.0, 20.0])
    with pytest.raises(ObservationMismatchError, match="does not interpolate") as info:
        prior.ensf.assimilate(gridded, **options)
    fix = re.search(r"\((obs\.interp\(.*\)) interpolates", str(info.value))
    assert fix.group(1) == "obs.interp(lev=prior['lev'].values)"


def test_stations_without_a_position_or_with_text_for_one(ds):
    # A station with NaN latitude and no value (a table's station that did not report)
    # was refused as "outside the grid (nan, 100)"; one with a value was told the same;
    # positions written as text were read as numbers, and '45N' crashed in numpy.
    stations = xr.Dataset(
        {"t": ("obs", [282.0, np.nan, 281.0])},
        coords={"lat": ("obs", [0.0, np.nan, 12.0]), "lon": ("obs", [10.0, 100.0, 200.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    expected = ds.ensf.assimilate(stations.isel(obs=[0, 2]), **options)
    got = ds.ensf.assimilate(stations, **options)
    np.testing.assert_array_equal(got.t.values, expected.t.values)
    reported = stations.assign(t=("obs", [282.0, 283.0, 281.0]))
    with pytest.raises(ObservationMismatchError, match="1 observations have no position") as e:
        ds.ensf.assimilate(reported, **options)
    fix = re.search(r"drop them: (obs\.where\(.*\))$", str(e.value)).group(1)
    assert_same_run(ds.ensf.assimilate(eval(fix, {"obs": reported}), **options),
                    ds.ensf.assimilate(reported.isel(obs=[0, 2]), **options))  # fmt: skip
    for text in (["0", "nan", "12"], ["0N", "", "12N"]):
        with pytest.raises(ObservationMismatchError, match="'lat' has dtype <U"):
            ds.ensf.assimilate(stations.assign_coords(lat=("obs", text)), **options)


def test_observation_times_without_labels_are_refused_against_dated_states(two_days):
    # A time dim without a coordinate was called "numbers" and told to decode both alike.
    stations = xr.Dataset(
        {"t": (("time", "obs"), [[282.0], [281.0]])},
        coords={"lat": ("obs", [0.0]), "lon": ("obs", [10.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    with pytest.raises(ObservationMismatchError, match="time dim 'time' has no coordinate"):
        two_days.ensf.assimilate(stations, **options)
    labelled = stations.assign_coords(time=two_days.time.values)
    # the other way round it was the state's times that were "numbers"
    with pytest.raises(ObservationMismatchError, match="state's time dim 'time' has no coord"):
        two_days.drop_vars("time").ensf.assimilate(labelled, **options)
    # with no labels on either, the times pair by position, as xarray pairs them, where
    # there are as many (else a raw xarray AlignmentError came out)
    with pytest.raises(ObservationMismatchError, match=r"\(1 entries\) nor the state's"):
        two_days.drop_vars("time").ensf.assimilate(stations.isel(time=[0]), **options)
    # a state whose times are the numbers 0, 1, … pairs with xarray's numbering
    numbered = two_days.assign_coords(time=[0.0, 1.0])
    assert_same_run(
        numbered.ensf.assimilate(stations, **options),
        numbered.ensf.assimilate(stations.assign_coords(time=[0.0, 1.0]), **options),
    )
    with pytest.raises(ObservationMismatchError, match=r"holds other numbers, \[0.0, 6.0\]"):
        two_days.assign_coords(time=[0.0, 6.0]).ensf.assimilate(stations, **options)
    assert_same_run(
        two_days.drop_vars("time").ensf.assimilate(stations, **options),
        two_days.ensf.assimilate(labelled, **options).drop_vars("time"),
    )


def test_an_option_read_out_of_an_array_is_the_number_it_holds(ds, obs):
    # cv.loc_radius[i].values is a 0-d array: it was refused as "not a positive distance"
    options = {"method": "letkf", "obs_error": 0.5}
    want = ds.ensf.assimilate(obs, loc_radius=3000.0, inflation=1.1, **options)
    got = ds.ensf.assimilate(obs, loc_radius=np.array(3000.0), inflation=np.array(1.1), **options)
    assert_same_run(got, want)
    with pytest.raises(OptionError, match="loc_radius must be a positive distance"):
        ds.ensf.assimilate(obs, loc_radius=np.array([3000.0]), **options)


def test_reports_with_levels_against_a_state_without_level_labels_are_refused(ds):
    # A raw numpy reshape error came out of the observation errors.
    unlabelled = ds.expand_dims(plev=3, axis=1)
    reports = xr.Dataset(
        {"t": ("obs", [282.0])},
        coords={"lat": ("obs", [0.0]), "lon": ("obs", [10.0]), "plev": ("obs", [500.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0}
    with pytest.raises(ObservationMismatchError, match="level dim 'plev' has no coordinate"):
        unlabelled.ensf.assimilate(reports, **options)
    # gridded, with fewer levels than the state and neither labelled: no way to pair them
    gridded = xr.full_like(unlabelled.t.isel(member=0, plev=[0, 1]), np.nan).to_dataset()
    gridded.t[1, 2, 3] = 282.0
    with pytest.raises(ObservationMismatchError, match="have 2 entries along 'plev', the state 3"):
        unlabelled.ensf.assimilate(gridded, **options)
    labelled = unlabelled.assign_coords(plev=("plev", [1000.0, 850.0, 500.0], {"units": "hPa"}))
    got = labelled.ensf.assimilate(reports, vertical_radius=0.1, **options)
    moved = abs(got.t - labelled.t).max(["member", "lat", "lon"])
    assert moved.sel(plev=500.0) > 0 and moved.sel(plev=1000.0) == 0


def test_an_error_mapping_without_entries_for_empty_variables_or_levels_says_so():
    # obs = xr.full_like(forecast.isel(member=0), np.nan) with only t filled in: a
    # mapping {"t": ...} was refused for lacking "the observed variable" z, all NaN.
    r = np.random.default_rng(4)
    prior = xr.Dataset(
        {v: (("member", "plev", "lat", "lon"), base + r.standard_normal((6, 3, 6, 8)),
             {"units": u}) for v, base, u in (("t", 280.0, "K"), ("z", 5000.0, "m"))},
        coords={"plev": ("plev", [1000.0, 850.0, 500.0], {"units": "hPa"}),
                "lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    obs = xr.full_like(prior.isel(member=0, drop=True), np.nan)
    obs.t[1:, 2, 3] = [282.0, 283.0]
    options = {"method": "letkf", "loc_radius": 3000.0}
    with pytest.raises(OptionError, match=r"only NaN: leave them out, obs\.drop_vars") as info:
        prior.ensf.assimilate(obs, obs_error={"t": 0.5}, **options)
    obs = eval(re.search(r"leave them out, (obs\.\S+\))\.", str(info.value)).group(1))
    per_level = {"t": {850.0: 0.7, 500.0: 0.5}}
    with pytest.raises(OptionError, match=r"levels \[1000.0\]; .* obs.drop_sel") as info:
        prior.ensf.assimilate(obs, obs_error=per_level, **options)
    obs = eval(re.search(r"leave them out, (obs\.\S+\))\.", str(info.value)).group(1))
    assert obs.plev.values.tolist() == [850.0, 500.0] and list(obs.data_vars) == ["t"]
    got = prior.ensf.assimilate(obs, obs_error=per_level, **options)
    flat = prior.ensf.assimilate(obs, obs_error={"t": 0.7}, **options)
    assert not np.array_equal(got.t.values, flat.t.values)  # 500 hPa read with its 0.5
    # a level with observations still needs its entry, and is not called empty
    with pytest.raises(OptionError, match=r"levels \[850.0\]\. obs_error must"):
        prior.ensf.assimilate(obs, obs_error={"t": {500.0: 0.5}}, **options)


def test_per_level_errors_are_relative_only_where_given_so_whatever_the_key_type():
    # {"500": "10%"} (a level as text, which the mapping accepts) was read as an
    # absolute 0.1 K; and a level with one observation and an absolute error was
    # refused as if its error were relative.
    r = np.random.default_rng(5)
    prior = xr.Dataset(
        {"t": (("member", "plev", "lat", "lon"), 280 + r.standard_normal((6, 2, 6, 8)),
               {"units": "K"})},
        coords={"plev": ("plev", [850.0, 500.0], {"units": "hPa"}),
                "lat": np.linspace(-60.0, 60.0, 6), "lon": np.arange(8) * 45.0},
    )  # fmt: skip
    noise = 5 * r.standard_normal((2, 6, 8))
    obs = (prior.t.mean("member") + noise).where(r.random((2, 6, 8)) < 0.5).to_dataset()
    options = {"method": "letkf", "loc_radius": 3000.0}
    spread_500 = float(obs.t.sel(plev=500.0).std())
    want = prior.ensf.assimilate(
        obs, obs_error={"t": {850: 0.5, 500: 0.1 * spread_500}}, **options
    )
    for keys in ((850, 500), ("850", "500"), (np.float32(850), np.float64(500))):
        spec = {"t": {keys[0]: 0.5, keys[1]: "10%"}}
        np.testing.assert_allclose(
            prior.ensf.assimilate(obs, obs_error=spec, **options).t.values,
            want.t.values,
            rtol=1e-12,
        )
    one_at_850 = obs.where((obs.plev == 500.0) | ((obs.lat == 12.0) & (obs.lon == 135.0)))
    one_at_850.t.loc[{"plev": 850.0, "lat": 12.0, "lon": 135.0}] = 282.0
    prior.ensf.assimilate(one_at_850, obs_error={"t": {850: 0.5, 500: "10%"}}, **options)
    with pytest.raises(OptionError, match=r"at \{'plev': 850.0\} is relative"):
        prior.ensf.assimilate(one_at_850, obs_error={"t": {850: "10%", 500: 0.5}}, **options)


def test_gridded_observations_of_another_size_on_an_unlabelled_grid_are_refused():
    # A raw xarray AlignmentError came out.
    r = np.random.default_rng(6)
    prior = xr.Dataset({"h": (("member", "y", "x"), r.standard_normal((6, 6, 8)))})
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3.0}
    for shape in ((5, 8), (6, 7)):
        obs = xr.Dataset({"h": (("y", "x"), np.full(shape, np.nan))})
        obs.h[2, 3] = 1.0
        with pytest.raises(ObservationMismatchError, match="must be on the state's grid"):
            prior.ensf.assimilate(obs, **options)
    same = xr.Dataset({"h": (("y", "x"), np.full((6, 8), np.nan))})
    same.h[2, 3] = 1.0
    assert np.isfinite(prior.ensf.assimilate(same, **options).h.values).all()


def test_the_functions_refuse_a_dataarray_where_a_dataset_goes_with_what_to_do(ds, obs):
    # a raw TypeError, not an XensfError; the DataArray's own way was not said
    from xensf.cycling import ShallowWaterForecaster

    with pytest.raises(OptionError, match=r"got a DataArray: .*da.ensf.assimilate\(obs"):
        xensf.assimilate(ds.t, obs, obs_error=0.5)
    start = ds.t.expand_dims(time=[0.0])
    with pytest.raises(OptionError, match=r"initial_ensemble .*got a DataArray .*to_dataset"):
        xensf.cycle(ShallowWaterForecaster(), start, obs, obs_error=0.5)
    with pytest.raises(OptionError, match="the training data must be an xarray Dataset"):
        xensf.train_latent(ds.t.values, 2)


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_a_state_with_an_empty_dim_is_refused(two_days, station, method):
    # a time slice outside the data: a raw reshape error deep in the analysis
    empty = two_days.isel(time=slice(0, 0))
    options = {"obs_error": 0.5, **({"loc_radius": 3000.0} if method == "letkf" else {})}
    with pytest.raises(DimensionError, match=r"no values along \['time'\] \(size 0\)"):
        empty.ensf.assimilate(station, method=method, **options)
    with pytest.raises(DimensionError, match=r"no values along \['time'\]"):
        empty.ensf.innovations(station, obs_error=0.5)


def test_an_ensf_scale_whose_noise_outweighs_the_prior_spread_warns(ds, obs):
    # EnSF adds sqrt(eps_beta) * scale to every member: scale=100 against a spread of
    # about 1 made an analysis 17 times wider than the prior without a word
    import warnings

    from xensf.errors import SpreadWarning

    options = {"method": "ensf", "obs_error": 0.5, "seed": 1}
    spread = float(ds.t.std("member").mean())
    with pytest.warns(SpreadWarning, match=r"sqrt\(eps_beta\) \* scale = 15\.8 .* of 't'"):
        wide = ds.ensf.assimilate(obs, scale=100.0, **options)
    assert float(wide.t.std("member").mean()) > 10 * spread  # what it warns of
    with pytest.warns(SpreadWarning):  # the same through a mapping, and in dask blocks
        lazy = ds.chunk(lat=3).ensf.assimilate(
            obs, scale={"t": 100.0}, prior_score="paired", **options
        )
        lazy.compute()  # (told when the blocks run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpreadWarning)
        ds.ensf.assimilate(obs, **options)  # the default scale: the spread itself
        ds.ensf.assimilate(obs, scale=2.0, **options)  # sqrt(0.025) * 2 = 0.32 < spread
