"""A static land mask: NaN at the same points in every member and time is a mask, not an
error; the analysis leaves it NaN and works on the rest."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xensf
from xensf.errors import EnsembleError, MaskedObservationWarning


@pytest.fixture
def ocean():
    """An 'ocean' prior with a land block, gridded observations (some on land)."""
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-30, 30, 9), np.arange(12) * 10.0
    x = 15 + rng.standard_normal((2, 8, 9, 12))
    land = np.zeros((9, 12), bool)
    land[2:5, 3:7] = True
    prior = xr.Dataset(
        {"sst": (("time", "member", "lat", "lon"), np.where(land, np.nan, x), {"units": "degC"})},
        coords={"time": [0, 1], "lat": lat, "lon": lon},
    )
    truth = 15 + rng.standard_normal((2, 9, 12))
    every = (np.arange(9)[:, None] % 2 == 0) & (np.arange(12)[None, :] % 2 == 0)
    obs = xr.Dataset(
        {"sst": (("time", "lat", "lon"), np.where(every, truth, np.nan), {"units": "degC"})},
        coords=prior.coords,
    )
    return prior, obs, xr.DataArray(land, dims=("lat", "lon")), every


OPTIONS = {
    "letkf": {"loc_radius": 1500.0},
    "ensf": {"steps": 20, "scale": {"sst": 1.0}},
}


@pytest.mark.parametrize("method", ["letkf", "ensf"])
@pytest.mark.parametrize("lazy", [False, True])
def test_masked_points_stay_nan_and_the_rest_is_analysed_as_without_them(ocean, method, lazy):
    prior, obs, land, _ = ocean
    source = prior.chunk(time=1) if lazy else prior
    with pytest.warns(MaskedObservationWarning, match=r"^(8|4) observations fall on masked"):
        got = source.ensf.assimilate(obs, method=method, obs_error=0.3, seed=1, **OPTIONS[method])
        got = got.compute()
    assert bool(got.sst.where(land).isnull().all())
    assert bool(np.isfinite(got.sst.where(~land, 0.0)).all())
    assert not np.allclose(got.sst.where(~land, 0.0), prior.sst.where(~land, 0.0))
    # the same analysis by hand: land filled with a constant, its observations removed
    filled = prior.fillna(0.0)
    off_land = obs.where(~land)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedObservationWarning)
        manual = filled.ensf.assimilate(
            off_land, method=method, obs_error=0.3, seed=1, **OPTIONS[method]
        )
    np.testing.assert_allclose(got.sst.where(~land), manual.sst.where(~land), rtol=1e-6)


def test_a_station_next_to_the_coast_reads_only_the_sea(ocean):
    prior, _, land, _ = ocean
    stations = xr.Dataset(
        {"sst": (("time", "station"), [[16.0, 14.0], [16.0, 14.0]], {"units": "degC"})},
        coords={"lat": ("station", [-15.0 + 3.75, 0.0]), "lon": ("station", [25.0, 45.0])},
    ).assign_coords(time=[0, 1])
    with pytest.warns(MaskedObservationWarning, match=r"2 observations fall on masked .* 2 next"):
        out = prior.ensf.assimilate(stations, method="letkf", obs_error=0.3, loc_radius=1500.0)
    # the coastal station moved the sea; the station on land did nothing
    inland_only = stations.isel(station=[1])
    with pytest.warns(MaskedObservationWarning, match=r"^2 observations fall"):
        unchanged = prior.ensf.assimilate(
            inland_only, method="letkf", obs_error=0.3, loc_radius=1500.0
        )
    np.testing.assert_array_equal(unchanged.sst, prior.sst)
    assert not bool((out.sst == prior.sst).where(~land, True).all())


def test_nan_that_is_not_a_mask_is_still_an_error(ocean):
    prior, obs, _, _ = ocean
    holey = prior.copy(deep=True)
    holey.sst[0, 3, 7, 8] = np.nan  # one member at one time
    with pytest.raises(EnsembleError, match="not a mask"):
        holey.ensf.assimilate(obs, method="letkf", obs_error=0.3, loc_radius=1500.0)
    with pytest.raises(EnsembleError, match="not a mask"):
        holey.chunk(time=1).ensf.assimilate(
            obs, method="letkf", obs_error=0.3, loc_radius=1500.0
        ).compute()
    infinite = prior.copy(deep=True)
    infinite.sst[:, :, 0, 0] = np.inf
    with pytest.raises(EnsembleError, match="not a mask"):
        infinite.ensf.assimilate(obs, method="letkf", obs_error=0.3, loc_radius=1500.0)


def test_latent_methods_refuse_a_mask_with_the_remedy():
    from xensf.experiments.demo_swe import DEMO_SETUP, shipped_model_path
    from xensf.experiments.twin import initial_ensemble, truth_run

    setup = DEMO_SETUP.with_(steps=10, members=4)
    prior = initial_ensemble(setup, device="cpu").expand_dims(time=[0])
    prior = prior.where(prior.x > prior.x[2])  # a strip of "land"
    obs = truth_run(setup, device="cpu").isel(time=[0]).assign_coords(time=[0])
    obs = obs.where((obs.x % 4 == 0) & (obs.y % 4 == 0))
    with pytest.raises(EnsembleError, match=r"needs every point.*'letkf' or 'ensf'"):
        prior.ensf.assimilate(obs, model=xensf.load(shipped_model_path()), method="latent-ensf")
