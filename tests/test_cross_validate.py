"""``ds.ensf.cross_validate``: the analysis' fit to withheld observations per setting.

The fields are smooth and low-rank (six large-scale patterns), so a withheld point is
well predicted from its observed neighbours by any analysis that reaches it, and not at
all by one that does not: the scores must tell those apart, and equal a recomputation
from the folds and :func:`~xensf.bridge.innovations.innovations`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xensf
from xensf.bridge.innovations import innovations
from xensf.bridge.validation import _fold_labels

LAT, LON = np.linspace(-60, 60, 9), np.arange(18) * 20.0


def _patterns() -> np.ndarray:
    la, lo = np.deg2rad(LAT)[:, None], np.deg2rad(LON)[None, :]
    return np.stack([
        np.ones((9, 18)) * np.cos(la), np.sin(la) + 0 * lo, np.cos(lo) * np.cos(la),
        np.sin(lo) * np.cos(la), np.cos(2 * lo) * np.cos(la), np.sin(la) * np.sin(lo),
    ])  # fmt: skip


def _smooth_twin(n_mem=40, n_time=2, sigma_o=0.05, seed=0):
    rng = np.random.default_rng(seed)
    pat = _patterns()
    coef = rng.standard_normal((n_time, n_mem + 1, pat.shape[0]))
    fields = np.einsum("tnk,kij->tnij", coef, pat)
    coords = {"time": np.arange(n_time), "lat": LAT, "lon": LON}
    prior = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), fields[:, 1:], {"units": "K"})}, coords=coords
    )
    truth = fields[:, 0]
    noisy = truth + sigma_o * rng.standard_normal(truth.shape)
    mask = np.zeros((9, 18), bool)
    mask[::2, ::2] = True
    obs = xr.Dataset(
        {"t": (("time", "lat", "lon"), np.where(mask, noisy, np.nan), {"units": "K"})},
        coords=coords,
    )
    return prior, obs


def _cv(prior, obs, settings, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        return prior.ensf.cross_validate(obs, settings, progress=False, **kwargs)


def test_the_scores_tell_an_analysis_that_reaches_the_withheld_points_from_one_that_does_not():
    prior, obs = _smooth_twin()
    before = (prior.copy(deep=True), obs.copy(deep=True))
    cv = _cv(prior, obs, {"loc_radius": [100.0, None]}, method="letkf", obs_error=0.05)
    xr.testing.assert_identical(prior, before[0])  # nothing the user gave is modified
    xr.testing.assert_identical(obs, before[1])
    # 100 km: each point sees only itself, so withheld points keep the prior mean
    assert cv.ratio.sel(variable="t").values[0] == pytest.approx(1.0, abs=1e-6)
    # the global ETKF learns the six patterns from the observed points
    assert cv.ratio.sel(variable="t").values[1] < 0.3
    assert cv.attrs["best_setting"] == 1 and cv.loc_radius.values[1] is None
    assert cv.attrs["best_score"] == pytest.approx(float(cv.score[1]))
    # far better than the first setting, beyond any fold-to-fold noise: still chosen
    assert cv.attrs["one_se_setting"] == 1
    assert float(cv.score_se[1]) == 0.0 and float(cv.score_se[0]) < 0.7
    assert int(cv["count"].sel(variable="t")) == 2 * 45  # every observed value, once


def test_a_prior_chunked_along_latitude_longitude_scores_as_one_chunk():
    # the localised LETKF analyses such a prior block by block, but its innovations
    # were refused, so its cross-validation too
    prior, obs = _smooth_twin(n_mem=10)
    settings = {"loc_radius": [1000.0, 3000.0]}
    whole = _cv(prior, obs, settings, method="letkf", obs_error=0.05)
    blocks = _cv(prior.chunk(lat=4, lon=6), obs, settings, method="letkf", obs_error=0.05)
    xr.testing.assert_allclose(blocks, whole, rtol=1e-10)


def test_an_observation_error_that_ignores_the_observations_scores_one():
    prior, obs = _smooth_twin()
    cv = _cv(prior, obs, {"obs_error": [0.05, 1e4]}, method="letkf", loc_radius=None)
    assert cv.ratio.values[0, 0] < 0.3
    assert cv.ratio.values[1, 0] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(cv.obs_error.values, [0.05, 1e4])


def test_a_warning_of_every_analysis_is_reported_once_with_its_count():
    """Each fold's analysis finds its own numbers: the user gets one summary, not one
    version per setting and fold."""
    prior, obs = _smooth_twin()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        prior.ensf.cross_validate(
            obs, {"obs_error": [1e3, 1e4]}, method="letkf", loc_radius=None, progress=False
        )
    shown = [str(w.message) for w in record if w.category is xensf.ObservationErrorWarning]
    assert len(shown) == 1, shown
    assert shown[0].startswith(
        "ObservationErrorWarning in 8 of the 8 analyses of this cross-validation; the "
        "first, at obs_error=1000.0, fold 1: the observation errors of 't'"
    )


def test_the_ratio_is_recomputed_from_the_folds_and_the_innovations():
    prior, obs = _smooth_twin(n_time=1)
    kwargs = dict(method="ensf", obs_error=0.05)
    cv = _cv(prior, obs, {"steps": [50]}, folds=3, seed=5, **kwargs)
    label, names, gridded = _fold_labels(prior, obs, 3, 5, {})
    assert names == ["t"] and gridded
    # each observed point in one fold, the folds balanced, the unobserved in none
    seen = obs.t.notnull().any("time")
    assert ((label >= 0) == seen).all()
    assert sorted(np.bincount(label.values[seen.values])) == [15, 15, 15]
    num = den = 0.0
    for fold in range(3):
        used, withheld = obs.where(label != fold), obs.where(label == fold)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", xensf.XensfWarning)
            analysis = prior.ensf.assimilate(used, seed=5, steps=50, **kwargs)
        d = innovations(prior, withheld, analysis, with_errors=False)
        w = np.cos(np.deg2rad(d.latitude.values))
        ok = np.isfinite(d.oma.values)
        num += float((w * d.oma.values**2)[ok].sum())
        den += float((w * d.omb.values**2)[ok].sum())
    assert float(cv.ratio[0, 0]) == pytest.approx(np.sqrt(num / den), rel=1e-9)


def test_stations_are_withheld_whole_and_every_level_with_its_location():
    prior, _ = _smooth_twin(n_time=1)
    prior = xr.concat([prior, prior * 1.5], "level").assign_coords(level=[850.0, 500.0])
    prior = prior.transpose("time", "member", "level", "lat", "lon")
    rng = np.random.default_rng(3)
    truth = prior.t.isel(member=0)
    lats, lons = rng.uniform(-55, 55, 12), rng.uniform(0, 340, 12)
    at = truth.interp(
        lat=xr.DataArray(lats, dims="station"), lon=xr.DataArray(lons, dims="station")
    )
    stations = (
        at.drop_vars(["lat", "lon"])
        .assign_coords(lat=("station", lats), lon=("station", lons))
        .to_dataset(name="t")
    )
    stations.t.values[0, 0, 3] = np.nan  # one level missing at one station
    label, _, gridded = _fold_labels(prior, stations, 4, 0, {})
    assert not gridded and label.dims == ("station",)
    assert sorted(np.bincount(label.values)) == [3, 3, 3, 3]
    cv = _cv(prior, stations, {"loc_radius": [500.0, 4000.0]}, method="letkf", obs_error=0.05)
    assert int(cv["count"].sel(variable="t")) == 2 * 12 - 1
    assert cv.ratio.values[1, 0] < cv.ratio.values[0, 0] <= 1.0 + 1e-6


@pytest.mark.parametrize(
    ("settings", "kwargs", "match"),
    [
        ([300.0], {}, "non-empty mapping"),
        ({}, {}, "non-empty mapping"),
        ({"loc_radius": []}, {}, "non-empty list"),
        ({"loc_radius": "300"}, {}, "non-empty list"),
        # each analysed twice in every fold, and two settings of one label in the table
        ({"loc_radius": [300.0, 600.0, 300]}, {}, "lists 300 more than once"),
        ({"loc_radius": [300.0]}, {"loc_radius": 300.0}, "both a setting"),
        # a seed the user never gave was called "a fixed argument" too
        ({"seed": [0, 1]}, {}, "'seed' is an argument of cross_validate itself"),
        ({"loc_radius": [300.0]}, {"folds": 1}, "at least 2"),
        ({"loc_radius": [300.0]}, {"folds": 46}, "at least 46 observed locations"),
        ({"loc_radius": [300.0]}, {"seed": -1}, "non-negative integer"),  # numpy's error
        ({"loc_radius": [300.0]}, {"progress": "no"}, "progress must be True or False"),
    ],
)
def test_bad_settings_are_refused_before_any_analysis(settings, kwargs, match):
    prior, obs = _smooth_twin(n_time=1)
    with pytest.raises(xensf.errors.OptionError, match=match):
        prior.ensf.cross_validate(
            obs, settings, method="letkf", obs_error=0.05, **{"progress": False, **kwargs}
        )


def test_an_unknown_option_fails_as_assimilate_would():
    prior, obs = _smooth_twin(n_time=1)
    with pytest.raises(xensf.errors.OptionError, match="unknown option"):
        _cv(prior, obs, {"radius": [300.0]}, method="letkf", obs_error=0.05, loc_radius=300.0)


def test_a_bad_value_in_the_last_setting_fails_before_the_first_analysis(monkeypatch):
    import xensf.bridge.analysis as analysis

    prior, obs = _smooth_twin(n_time=1)
    calls = []
    monkeypatch.setattr(analysis, "assimilate", lambda *a, **k: calls.append(1))
    with pytest.raises(xensf.errors.OptionError, match="loc_radius"):
        prior.ensf.cross_validate(
            obs, {"loc_radius": [300.0, -5.0]}, method="letkf", obs_error=0.05, progress=False
        )
    assert calls == []


def test_the_scores_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from xensf.plot import plot_cross_validation

    prior, obs = _smooth_twin(n_time=1)
    cv = _cv(prior, obs, {"loc_radius": [500.0, 4000.0]}, method="letkf", obs_error=0.05)
    path = plot_cross_validation(cv, title="radius", path=tmp_path / "cv.png")
    assert path.stat().st_size > 10_000
    both = _cv(
        prior, obs, {"loc_radius": [500.0, None], "inflation": [1.0, 1.1]},
        method="letkf", obs_error=0.05,
    )  # fmt: skip
    assert both.sizes["setting"] == 4
    assert plot_cross_validation(both, title="two options", path=tmp_path / "b.png").exists()
    with pytest.raises(xensf.errors.OptionError, match="cross_validate returns"):
        plot_cross_validation(cv.drop_vars("score"), title="", path=tmp_path / "c.png")


def test_near_ties_go_to_the_first_setting_listed():
    prior, obs = _smooth_twin()
    # inflations 1.0 and 1.001 give scores within rounding of each other; whichever is
    # lower, the one-standard-error rule takes the first listed
    cv = _cv(prior, obs, {"inflation": [1.001, 1.0]}, method="letkf", obs_error=0.05,
             loc_radius=None)  # fmt: skip
    assert abs(float(cv.score[0] - cv.score[1])) < 1e-3
    assert cv.attrs["one_se_setting"] == 0
    best = cv.attrs["best_setting"]
    assert float(cv.score[1 - best]) <= float(cv.score[best] + cv.score_se[1 - best])


def test_values_to_try_may_be_an_array():
    # np.linspace / np.geomspace of radii to sweep were refused as "not a list"
    prior, obs = _smooth_twin()
    listed = _cv(prior, obs, {"loc_radius": [500.0, 3000.0]}, method="letkf", obs_error=0.05)
    swept = _cv(prior, obs, {"loc_radius": np.linspace(500.0, 3000.0, 2)}, method="letkf",
                obs_error=0.05)  # fmt: skip
    xr.testing.assert_identical(swept, listed)
    assert type(swept.loc_radius.values.tolist()[0]) is float
    with pytest.raises(xensf.errors.OptionError, match=r"non-empty list \(or 1-D array\)"):
        _cv(prior, obs, {"loc_radius": np.ones((2, 2))}, method="letkf", obs_error=0.05)


def test_a_result_over_settings_of_any_kind_is_written_to_netcdf(tmp_path):
    # settings of mixed kinds (a relative and an absolute error) or mappings made a
    # coordinate of Python objects: to_netcdf raised xarray's "unable to infer dtype"
    prior, obs = _smooth_twin()
    for settings, as_text in [({"obs_error": ["10%", 0.05]}, ["10%", "0.05"]),
                              ({"obs_error": [{"t": 0.05}, {"t": 0.1}]},
                               ["{'t': 0.05}", "{'t': 0.1}"]),
                              ({"prior_score": ["mixture", "paired"]}, ["mixture", "paired"])]:  # fmt: skip
        method = "ensf" if "prior_score" in settings else "letkf"
        fixed = {"obs_error": 0.05} if method == "ensf" else {"loc_radius": 3000.0}
        cv = _cv(prior, obs, settings, method=method, **fixed)
        (name,) = settings
        assert cv[name].values.tolist() == as_text
        cv.to_netcdf(tmp_path / "cv.nc")
        with xr.open_dataset(tmp_path / "cv.nc") as back:
            assert back[name].values.tolist() == as_text
            np.testing.assert_array_equal(back.score.values, cv.score.values)


def test_radii_with_their_units_are_settings_that_read_back():
    # a pint quantity was labelled by its repr, "<Quantity(500, 'kilometer')>", which
    # assimilate cannot read back from cv.loc_radius[i].item()
    import pint

    km = pint.UnitRegistry().km
    prior, obs = _smooth_twin()
    in_km = _cv(prior, obs, {"loc_radius": [500.0, 3000.0]}, method="letkf", obs_error=0.05)
    for radii in (["500 km", "3000 km"], [500 * km, 3000 * km]):
        cv = _cv(prior, obs, {"loc_radius": radii}, method="letkf", obs_error=0.05)
        np.testing.assert_array_equal(cv.score.values, in_km.score.values)
        label = cv.loc_radius[1].item()
        xr.testing.assert_identical(
            prior.ensf.assimilate(
                obs, method="letkf", obs_error=0.05, loc_radius=label
            ).drop_attrs(),
            prior.ensf.assimilate(
                obs, method="letkf", obs_error=0.05, loc_radius=3000.0
            ).drop_attrs(),
        )


def test_dask_backed_inputs_give_the_same_scores():
    prior, obs = _smooth_twin()
    settings = {"loc_radius": [500.0, 3000.0]}
    eager = _cv(prior, obs, settings, method="letkf", obs_error=0.05)
    lazy = _cv(prior.chunk({"time": 1}), obs.chunk({"time": 1}), settings, method="letkf",
               obs_error=0.05)  # fmt: skip
    np.testing.assert_array_equal(lazy.ratio.values, eager.ratio.values)


def test_a_location_s_fold_does_not_depend_on_the_order_the_locations_come_in():
    # The folds were drawn over the locations in the order given: the same observations
    # with latitude from north to south, or the same stations in another order, were
    # split otherwise and scored otherwise (3000 km: 0.186 against 0.150 here).
    prior, obs = _smooth_twin(n_time=1)
    settings, kwargs = {"loc_radius": [500.0, 3000.0]}, dict(method="letkf", obs_error=0.05)
    flip = {"lat": slice(None, None, -1)}
    label, *_ = _fold_labels(prior, obs, 4, 0, {})
    flipped, *_ = _fold_labels(prior.isel(flip), obs.isel(flip), 4, 0, {})
    xr.testing.assert_equal(flipped.isel(flip), label)
    one = _cv(prior, obs, settings, **kwargs)
    np.testing.assert_allclose(_cv(prior.isel(flip), obs.isel(flip), settings, **kwargs).ratio,
                               one.ratio, rtol=1e-12)  # fmt: skip
    points = (
        obs.isel(time=0).stack(station=("lat", "lon")).dropna("station").reset_index("station")
    )
    shuffled = points.isel(station=np.random.default_rng(1).permutation(points.sizes["station"]))
    as_given, *_ = _fold_labels(prior, points, 4, 0, {})
    reordered, *_ = _fold_labels(prior, shuffled, 4, 0, {})
    by_place = {(float(a), float(b)): int(f) for a, b, f in
                zip(points.lat.values, points.lon.values, as_given.values, strict=True)}  # fmt: skip
    assert [by_place[float(a), float(b)] for a, b in zip(shuffled.lat.values,
            shuffled.lon.values, strict=True)] == list(reordered.values)  # fmt: skip
    # and a grid's observations given as stations fall into the same folds
    assert [label.sel(lat=a, lon=b).item() for a, b in by_place] == list(by_place.values())


def test_reports_at_one_place_are_withheld_together():
    # Rows of a table at one place (two levels of one sounding) fell into different
    # folds: the analysis that predicted one had the other, a few metres away, to use.
    prior, _ = _smooth_twin(n_time=1)
    prior = xr.concat([prior, prior * 1.5], "level").assign_coords(level=[850.0, 500.0])
    prior = prior.transpose("time", "member", "level", "lat", "lon")
    rng = np.random.default_rng(3)
    lats, lons = rng.uniform(-55, 55, 6), rng.uniform(0, 340, 6)
    rows = xr.Dataset(
        {"t": (("time", "row"), np.ones((1, 12)))},
        coords={"time": prior.time, "lat": ("row", np.repeat(lats, 2)),
                "lon": ("row", np.repeat(lons, 2)), "level": ("row", [850.0, 500.0] * 6)},
    )  # fmt: skip
    label, _, _ = _fold_labels(prior, rows, 3, 0, {})
    assert (label.values[::2] == label.values[1::2]).all()  # a place's rows together
    assert sorted(np.bincount(label.values)) == [4, 4, 4]
    with pytest.raises(
        xensf.OptionError, match="needs at least 7 observed locations; the observations have 6"
    ):
        _fold_labels(prior, rows, 7, 0, {})
