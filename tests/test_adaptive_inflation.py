"""Adaptive inflation (Miyoshi 2011) in the LETKF: the estimate against its closed form
written out here with numpy, the limit of a trusted field (= the fixed inflation it
holds), locations no observation reaches, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xensf.errors import InflationLimitWarning, OptionError
from xensf.filters import AdaptiveInflation, cyclic_distance, letkf_analysis


def _twin(d=400, n=20, truth_scale=2.0, seed=0):
    """Prior members of unit spread about 0; a truth drawn ``truth_scale`` times wider."""
    r = np.random.default_rng(seed)
    prior = r.standard_normal((n, d))
    truth = truth_scale * r.standard_normal(d)
    y = truth + r.standard_normal(d)
    return prior, y


def test_a_prior_twice_too_narrow_is_inflated_by_four_as_the_closed_form_says():
    prior, y = _twin()
    _, field = letkf_analysis(
        prior, y, np.arange(prior.shape[1]), 1.0,
        adaptive_inflation=AdaptiveInflation(std=1e3, maximum=100.0),
    )  # fmt: skip
    # Miyoshi's observation estimate, all observations at one location, unit errors
    d = y - prior.mean(0)
    spread = prior.var(0, ddof=1)
    closed_form = (d @ d - d.size) / spread.sum()
    assert isinstance(field.mean, np.ndarray) and field.mean.shape == (prior.shape[1],)
    np.testing.assert_allclose(field.mean, closed_form, rtol=1e-6)  # std ≫: Δᵃ → Δᵒ
    assert 3.3 < closed_form < 4.7  # the truth's variance over the members': 4


@pytest.mark.parametrize("damping", [1.0, 0.5])
def test_the_update_weighs_the_old_field_and_the_estimate_by_their_variances(damping):
    prior, y = _twin(d=200, n=10, truth_scale=1.5, seed=3)
    std, start = 0.3, 1.2
    settings = AdaptiveInflation(start, std, maximum=10.0, damping=damping)
    _, field = letkf_analysis(prior, y, np.arange(200), 1.0, adaptive_inflation=settings)
    d = y - prior.mean(0)
    trace, p = prior.var(0, ddof=1).sum(), d.size
    estimate = (d @ d - p) / trace
    relaxed = 1 + damping * (start - 1)  # towards 1 before the update
    v_obs = 2.0 / p * ((relaxed * trace + p) / trace) ** 2
    expected = (relaxed * v_obs + estimate * std**2) / (std**2 + v_obs)
    assert expected < 10.0
    np.testing.assert_allclose(field.mean, expected, rtol=1e-6)


def test_the_limit_warning_reads_the_same_at_every_analysis():
    """Its text does not change with how much of the state is at the bound, so the
    warnings registry shows it once per calling line, not once per time or chunk of
    a long assimilate."""
    settings = AdaptiveInflation(std=0.1)
    texts = []
    for share in (0.6, 0.8, 1.0):
        field = torch.where(torch.arange(100) < 100 * share, 2.0, 1.3)
        with pytest.warns(InflationLimitWarning) as caught:
            settings.warn_if_saturated(field)
        texts.append(str(caught[0].message))
    assert len(set(texts)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings.warn_if_saturated(torch.where(torch.arange(100) < 40, 2.0, 1.3))


def test_each_analysis_of_a_batch_is_judged_on_its_own():
    # a time with 80 % of its field at the bound beside a calm one (two times that one
    # dask chunk analyses in one call) was judged on the pair, 40 %, and not told
    settings = AdaptiveInflation(std=0.1)
    saturated = torch.where(torch.arange(100) < 80, 2.0, 1.3)
    with pytest.warns(InflationLimitWarning):
        settings.warn_if_saturated(torch.stack([saturated, torch.full((100,), 1.3)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings.warn_if_saturated(torch.full((2, 100), 1.3))  # neither time at the bound


def test_the_field_stays_within_its_bounds():
    prior, y = _twin(d=200, n=10, truth_scale=3.0, seed=4)  # far too narrow a prior
    with pytest.warns(InflationLimitWarning, match=r"maximum \(2\) over 50% or more of"):
        _, field = letkf_analysis(
            prior, y, np.arange(200), 1.0, adaptive_inflation=AdaptiveInflation(1.9, std=1.0)
        )
    np.testing.assert_array_equal(field.mean, 2.0)  # the default maximum
    _, field = letkf_analysis(
        prior * 10, y, np.arange(200), 1.0, adaptive_inflation=AdaptiveInflation(std=1.0)
    )  # far too wide: deflation is not allowed below the minimum
    np.testing.assert_array_equal(field.mean, 1.0)


@pytest.mark.parametrize("loc_radius", [None, 40.0, 3.0])  # global, dense and sparse paths
def test_a_field_trusted_fully_gives_the_fixed_inflation_it_holds(loc_radius):
    prior, y = _twin(d=400, n=12, seed=1)
    prior = torch.from_numpy(prior)
    options = {}
    if loc_radius is not None:
        ring = torch.arange(400.0, dtype=torch.float64)
        options = dict(loc_radius=loc_radius, state_coords=ring, distance=cyclic_distance(400))
    fixed = letkf_analysis(prior, y, torch.arange(400), 1.0, inflation=1.1, **options)
    adaptive, field = letkf_analysis(
        prior, y, torch.arange(400), 1.0,
        adaptive_inflation=AdaptiveInflation(1.21, std=1e-9), **options,
    )  # fmt: skip
    torch.testing.assert_close(adaptive, fixed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(field.mean, torch.full((400,), 1.21, dtype=torch.float64))


def test_locations_no_observation_reaches_keep_their_field_and_inflate_by_it():
    prior, y = _twin(d=100, n=10, seed=2)
    y[50:] = np.nan  # only the first half of the ring is observed
    ring = np.arange(100.0)
    analysis, field = letkf_analysis(
        prior, y, np.arange(100), 1.0, loc_radius=2.0, state_coords=ring,
        distance=cyclic_distance(100), adaptive_inflation=AdaptiveInflation(1.44, 0.1),
    )  # fmt: skip
    far = slice(60, 96)  # beyond 2c = 4 of every observation
    np.testing.assert_allclose(field.mean[far], 1.44)
    assert np.all(field.mean[5:45] != 1.44)
    perturbations = prior[:, far] - prior[:, far].mean(0)
    np.testing.assert_allclose(analysis[:, far] - analysis[:, far].mean(0), 1.2 * perturbations)


@pytest.mark.parametrize("loc_radius", [None, 5.0])
def test_a_field_held_at_its_maximum_by_errors_the_ensemble_misses_warns(loc_radius):
    """Cycle after cycle a fresh prior of unit spread meets a truth three times wider
    (errors that only Δ ≈ 9 explains): the analysis warns whenever the field sits at its
    maximum 2 over half the ring or more. Globally the 200 observations make one precise
    estimate, and the field is at the bound after the first analysis; localised (about
    ten observations in reach of each point) it climbs by about ``std`` a cycle, and the
    warning waits for it. A truth 1.3 times wider (Δ ≈ 1.7, within the bound) and one the
    spread explains never warn."""
    options = {}
    if loc_radius is not None:
        ring = np.arange(200.0)
        options = dict(loc_radius=loc_radius, state_coords=ring, distance=cyclic_distance(200))

    def cycles(truth_scale):
        settings, history = AdaptiveInflation(std=0.1), []
        for k in range(30):
            prior, y = _twin(d=200, n=20, truth_scale=truth_scale, seed=100 + k)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _, settings = letkf_analysis(
                    prior, y, np.arange(200), 1.0, adaptive_inflation=settings, **options
                )
            limit = [w for w in caught if issubclass(w.category, InflationLimitWarning)]
            history.append((float(np.mean(settings.mean == 2.0)), len(limit)))
        return history

    wide = cycles(3.0)
    assert all((share >= 0.5) == bool(n) for share, n in wide)  # warns exactly then
    first = next(k for k, (_, n) in enumerate(wide) if n)
    assert first == 0 if loc_radius is None else first >= 5
    assert wide[-1] == (1.0, 1)  # at the bound everywhere: one warning an analysis
    assert not any(n for _, n in cycles(1.3) + cycles(1.0))


def test_bad_adaptive_inflation_is_refused_before_any_work():
    prior, y = _twin(d=10, n=5)
    with pytest.raises(OptionError, match="replaces the fixed factor"):
        letkf_analysis(
            prior, y, np.arange(10), 1.0, inflation=1.05, adaptive_inflation=AdaptiveInflation()
        )
    with pytest.raises(OptionError, match="std must be a positive number"):
        AdaptiveInflation(std=-0.1)
    with pytest.raises(OptionError, match="damping"):
        AdaptiveInflation(damping=1.5)
    with pytest.raises(OptionError, match="minimum"):
        AdaptiveInflation(minimum=2.0, maximum=1.5)
    with pytest.raises(OptionError, match="mean must be positive"):
        AdaptiveInflation(mean=[1.0, 0.0])
    # a start beyond the bounds was clamped at the first update: 0.5 analysed as 1
    with pytest.raises(OptionError, match=r"ranges over \[0.5, 1\], beyond its bounds"):
        AdaptiveInflation(mean=[1.0, 0.5])
    with pytest.raises(OptionError, match="beyond its bounds"):
        AdaptiveInflation(mean=3.0)
    deflating = AdaptiveInflation(mean=0.5, minimum=0.5)
    field = np.float32(np.nextafter(np.float32(2.0), np.float32(0)))  # stored in float32
    AdaptiveInflation(mean=np.array([field, 1.0, 2.0], np.float32))
    out, updated = letkf_analysis(prior, y, np.arange(10), 1.0, adaptive_inflation=deflating)
    assert float(np.min(updated.mean)) >= 0.5 and np.isfinite(out).all()
    with pytest.raises(OptionError, match="does not broadcast"):
        letkf_analysis(
            prior, y, np.arange(10), 1.0, adaptive_inflation=AdaptiveInflation(np.ones(7))
        )
    with pytest.raises(OptionError, match="AdaptiveInflation"):
        letkf_analysis(prior, y, np.arange(10), 1.0, adaptive_inflation=1.05)


# --------------------------------------------------------------------------------------
# through the accessor and xensf.cycle
# --------------------------------------------------------------------------------------
def _grid_case(seed=0):
    import xarray as xr

    r = np.random.default_rng(seed)
    times = np.array(["2001-01-01", "2001-01-02"], "datetime64[ns]")
    ds = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), 280 + r.standard_normal((2, 8, 10, 16)),
               {"units": "K"})},
        coords={"time": times, "lat": np.linspace(-60, 60, 10), "lon": np.arange(16) * 22.5},
    )  # fmt: skip
    obs = (ds.t.mean("member") + 3 * r.standard_normal((2, 10, 16))).to_dataset()
    obs["t"] = obs.t.where(r.random((2, 10, 16)) < 0.3)
    return ds, obs


LETKF = dict(method="letkf", obs_error=1.0, loc_radius=1500.0)


def test_the_analysis_gives_its_inflation_field_the_same_however_chunked():
    ds, obs = _grid_case()
    a = ds.ensf.assimilate(obs, adaptive_inflation=True, **LETKF)
    assert a.inflation.dims == ("time", "lat", "lon") and a.inflation.attrs["units"] == "1"
    assert (a.inflation >= 1).all() and (a.inflation > 1.001).any()
    assert "Miyoshi" in a.attrs["xensf_adaptive_inflation"]
    b = ds.chunk({"time": 1}).ensf.assimilate(obs, adaptive_inflation=True, **LETKF)
    assert b.inflation.chunks is not None
    np.testing.assert_array_equal(b.inflation.values, a.inflation.values)
    np.testing.assert_array_equal(b.t.values, a.t.values)
    # each time starts from the given field: the second time alone gives the same
    one = ds.isel(time=[1]).ensf.assimilate(obs.isel(time=[1]), adaptive_inflation=True, **LETKF)
    np.testing.assert_array_equal(one.inflation.values[0], a.inflation.values[1])


def test_a_trusted_field_on_the_grid_is_the_fixed_inflation_it_holds():
    import xensf

    ds, obs = _grid_case(1)
    fixed = ds.ensf.assimilate(obs, inflation=1.1, **LETKF)
    field = xensf.AdaptiveInflation(mean=ds.t.isel(time=0, member=0) * 0 + 1.21, std=1e-9)
    adaptive = ds.ensf.assimilate(obs, adaptive_inflation=field, **LETKF)
    np.testing.assert_allclose(adaptive.t.values, fixed.t.values, rtol=0, atol=1e-9)
    np.testing.assert_allclose(adaptive.inflation.values, 1.21)


def test_a_field_in_another_order_is_read_by_its_labels():
    """A field with latitude north to south, longitudes from -180 or rolled (a previous
    analysis sorted, a file of another convention) was refused with the advice to
    interpolate it: it is the same points."""
    import xensf

    ds, obs = _grid_case(2)
    field = 1.0 + 0.05 * abs(ds.t.isel(time=0, member=0) - 280)
    want = ds.ensf.assimilate(obs, adaptive_inflation=xensf.AdaptiveInflation(mean=field), **LETKF)
    signed = field.assign_coords(lon=(field.lon + 180.0) % 360.0 - 180.0)
    for other in (field.isel(lat=slice(None, None, -1)), field.roll(lon=5, roll_coords=True),
                  signed.sortby("lon"), field.transpose()):  # fmt: skip
        got = ds.ensf.assimilate(
            obs, adaptive_inflation=xensf.AdaptiveInflation(mean=other), **LETKF
        )
        np.testing.assert_array_equal(got.t.values, want.t.values)
        np.testing.assert_array_equal(got.inflation.values, want.inflation.values)
    with pytest.raises(xensf.OptionError, match="on other 'lat' coordinates"):  # other points
        shifted = field.assign_coords(lat=field.lat + 1.0)
        ds.ensf.assimilate(obs, adaptive_inflation=xensf.AdaptiveInflation(mean=shifted), **LETKF)


def test_adaptive_inflation_options_are_checked_before_any_work():
    import xensf

    ds, obs = _grid_case()
    with pytest.raises(OptionError, match="replaces the fixed factor"):
        ds.ensf.assimilate(obs, adaptive_inflation=True, inflation=1.1, **LETKF)
    with pytest.raises(OptionError, match="AdaptiveInflation"):
        ds.ensf.assimilate(obs, adaptive_inflation="yes", **LETKF)
    half = ds.t.isel(time=0, member=0, lat=slice(0, 5))
    with pytest.raises(OptionError, match=r"grid shape|coordinates"):
        ds.ensf.assimilate(obs, adaptive_inflation=xensf.AdaptiveInflation(half * 0 + 1), **LETKF)
    with pytest.raises(OptionError, match="grid dims"):
        ds.ensf.assimilate(obs, adaptive_inflation=xensf.AdaptiveInflation(ds.t * 0 + 1), **LETKF)
    with pytest.raises(OptionError, match="rename it"):
        ds.assign(inflation=ds.t.isel(member=0)).ensf.assimilate(
            obs, adaptive_inflation=True, **LETKF
        )


def test_spatial_blocks_give_the_state_and_the_field_of_the_whole_grid():
    import xensf

    ds, obs = _grid_case(2)
    start = xensf.AdaptiveInflation(mean=1.0 + 0.01 * ds.lat.broadcast_like(ds.t.isel(
        time=0, member=0)), std=0.05, minimum=0.4)  # fmt: skip
    whole = ds.ensf.assimilate(obs, adaptive_inflation=start, **LETKF)
    blocks = ds.chunk({"time": 1, "lat": 4, "lon": 6}).ensf.assimilate(
        obs, adaptive_inflation=start, **LETKF
    )
    assert blocks.inflation.chunks is not None and blocks.inflation.dims == ("time", "lat", "lon")
    np.testing.assert_allclose(blocks.t.values, whole.t.values, rtol=1e-12)
    np.testing.assert_allclose(blocks.inflation.values, whole.inflation.values, rtol=1e-12)
    assert float(abs(whole.inflation - start.mean).max()) > 1e-3  # the field was updated


def test_a_cycled_run_carries_and_stores_the_field_and_resumes_to_the_same_run(tmp_path):
    import xensf
    from xensf.cycling import ShallowWaterForecaster
    from xensf.models.swe import ShallowWaterConfig

    truth = xensf.models.shallow_water(n=16, steps=60, every=10, device="cpu")
    start = xensf.models.shallow_water(
        np.linspace(1e5, 3e5, 6), np.full(6, 2e5), n=16, steps=0, every=1, device="cpu"
    )
    obs = truth.isel(time=slice(1, None), x=slice(None, None, 4), y=slice(None, None, 4))
    obs = obs.reindex(x=truth.x, y=truth.y)  # every 4th point observed, NaN elsewhere
    model = ShallowWaterForecaster(ShallowWaterConfig(n=16), device="cpu")
    options = dict(
        method="letkf", obs_error={"eta": 2e-3, "u": 5e-4, "v": 5e-4}, loc_radius=150e3,
        progress=False, adaptive_inflation=xensf.AdaptiveInflation(std=0.2),
    )  # fmt: skip
    full = xensf.cycle(model, start, obs, store=tmp_path / "full.zarr", **options).load()
    assert full.inflation.dims == ("time", "y", "x") and full.sizes["time"] == 6
    means = full.inflation.mean(("x", "y")).values
    assert means[0] > 1 and np.all(np.diff(means) > 0)  # carried on: it grows cycle by cycle
    part = xensf.cycle(
        model, start, obs, store=tmp_path / "part.zarr", until=obs.time.values[2], **options
    )
    part.close()
    rest = xensf.cycle(model, start, obs, store=tmp_path / "part.zarr", **options).load()
    np.testing.assert_array_equal(rest.inflation.values, full.inflation.values)
    np.testing.assert_array_equal(rest.eta_analysis_mean.values, full.eta_analysis_mean.values)


def test_a_cycled_run_whose_members_miss_the_truth_reports_the_field_at_its_bound():
    """The 16 × 16 basin with all six members started from bumps away from the truth's:
    LETKF cannot move them onto it, the innovations keep asking for more inflation, and
    the field reaches its maximum over more and more of the basin. ``xensf.cycle``
    reports the analyses' warnings once, with the number of cycles they fired in: those
    whose stored field sits at the bound over half the grid."""
    import re

    import xensf
    from xensf.cycling import ShallowWaterForecaster
    from xensf.models.swe import ShallowWaterConfig

    truth = xensf.models.shallow_water(n=16, steps=200, every=10, device="cpu")
    start = xensf.models.shallow_water(
        np.linspace(1e5, 3e5, 6), np.full(6, 2e5), n=16, steps=0, every=1, device="cpu"
    )
    obs = truth.isel(time=slice(1, None), x=slice(None, None, 4), y=slice(None, None, 4))
    obs = obs.reindex(x=truth.x, y=truth.y)
    model = ShallowWaterForecaster(ShallowWaterConfig(n=16), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = xensf.cycle(
            model, start, obs, method="letkf", obs_error={"eta": 2e-3, "u": 5e-4, "v": 5e-4},
            loc_radius=150e3, progress=False, adaptive_inflation=xensf.AdaptiveInflation(std=0.2),
        )  # fmt: skip
    limit = [str(w.message) for w in caught if w.category is xensf.InflationLimitWarning]
    assert len(limit) == 1, limit
    share = (run.inflation.values == 2.0).mean(axis=(1, 2))
    at_bound = int((share >= 0.5).sum())
    assert 0 < at_bound < 20 and share[-1] > 0.5
    assert re.search(rf"in {at_bound} of the 20 cycles of this run", limit[0])
    assert "add members" in limit[0].lower() and "latent-ensf-letkf" in limit[0]
