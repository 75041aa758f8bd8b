"""A static land mask: NaN at the same points in every member and time is a mask, not an
error; the analysis leaves it NaN and works on the rest."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
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


def _analysed(prior, obs, **options):
    """The analysis and the texts of its warnings."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = prior.ensf.assimilate(obs, obs_error=0.3, **options).compute()
    return out, sorted({str(w.message).split(" (")[0] for w in record})


@pytest.mark.parametrize(
    "options",
    [
        {"method": "letkf", "loc_radius": 1500.0},
        {"method": "letkf", "loc_radius": 1500.0, "adaptive_inflation": True},
        {"method": "ensf", "prior_score": "paired", "steps": 20},
    ],
)
def test_a_masked_prior_in_latitude_longitude_blocks_is_analysed_as_in_one_chunk(ocean, options):
    """An ocean grid big enough to chunk has land on it: the localised LETKF and the
    paired EnSF analyse its blocks (they refused a mask there) with the one chunk's
    mask, scale and warning."""
    prior, obs, land, _ = ocean
    stations = xr.Dataset(  # on land, on the coast, at sea; across block edges
        {"sst": (("time", "station"), [[16.0, 14.0, 15.5], [16.5, 14.5, 15.0]])},
        coords={"lat": ("station", [-11.25, 0.0, 22.0]), "lon": ("station", [25.0, 45.0, 95.0])},
    ).assign_coords(time=[0, 1])
    for observations in (obs, stations) if options["method"] == "letkf" else (obs,):
        whole, said = _analysed(prior, observations, **options)
        blocks, told = _analysed(prior.chunk(lat=4, lon=5), observations, **options)
        assert told == said and any("fall on masked points" in w for w in said)
        xr.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-10)
        assert bool(blocks.sst.where(land).isnull().all())
        assert not np.allclose(blocks.sst.where(~land, 0.0), prior.sst.where(~land, 0.0))


@pytest.mark.parametrize(
    "options",
    [
        {"method": "letkf", "loc_radius": 1500.0},
        {"method": "letkf", "loc_radius": 1500.0, "adaptive_inflation": True},
        {"method": "ensf", "steps": 20},
        {"method": "ensf", "prior_score": "paired", "steps": 20},
    ],
)
def test_sea_ice_that_comes_and_goes_is_each_times_own_mask(ocean, options):
    """A mask that moves in time (sea ice over the land's mask) is each time's own: every
    time is analysed as it is alone, in memory, in one dask chunk of times or in
    latitude/longitude blocks. (It was refused in memory and taken by dask chunks of one
    time: the refusal hung on the chunking.)"""
    prior, obs, land, _ = ocean
    prior = xr.concat([prior, prior.isel(time=[0]).assign_coords(time=[2])], "time")
    obs = xr.concat([obs, obs.isel(time=[1]).assign_coords(time=[2])], "time")
    ice = xr.zeros_like(prior.sst.isel(member=0), dtype=bool)
    ice[0, 6:, :4] = ice[2, 6:, :4] = True  # times 0 and 2 share a mask, time 1 has its own
    ice[1, :2, 8:] = True
    icy = prior.where(~ice)
    alone = xr.concat(
        [
            _analysed(icy.isel(time=[t]), obs.isel(time=[t]), seed=3, **options)[0]
            for t in range(3)
        ],
        "time",
    )
    blocked = (
        [icy.chunk(lat=4, lon=5)] if options.get("loc_radius") or "prior_score" in options else []
    )
    on_the_mask = int((obs.sst.notnull() & (ice | land)).sum())  # at their own times
    for source in [icy, icy.chunk(time=2), *blocked]:
        got, said = _analysed(source, obs, seed=3, **options)
        xr.testing.assert_allclose(got, alone, rtol=0, atol=1e-10)
        if source is icy:  # one chunk: the count of all its times (it said the first's)
            assert f"{on_the_mask} observations fall on masked points of the prior" in said
        assert bool(got.sst.where(ice | land).isnull().all())
        sea = ~(ice | land)
        assert bool(np.isfinite(got.sst.where(sea, 0.0)).all())
        assert not np.allclose(got.sst.where(sea, 0.0), icy.sst.where(sea, 0.0))


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
    with pytest.raises(EnsembleError, match="not a mask"):  # in latitude/longitude blocks
        holey.chunk(lat=4, lon=5).ensf.assimilate(
            obs, method="letkf", obs_error=0.3, loc_radius=1500.0
        ).compute()
    infinite = prior.copy(deep=True)
    infinite.sst[:, :, 0, 0] = np.inf
    with pytest.raises(EnsembleError, match="not a mask"):
        infinite.ensf.assimilate(obs, method="letkf", obs_error=0.3, loc_radius=1500.0)


def test_a_complete_model_refuses_a_masked_prior_with_the_remedy():
    from xensf.experiments.demo_swe import DEMO_SETUP, shipped_model_path
    from xensf.experiments.twin import initial_ensemble, truth_run

    setup = DEMO_SETUP.with_(steps=10, members=4)
    prior = initial_ensemble(setup, device="cpu").expand_dims(time=[0])
    prior = prior.where(prior.x > prior.x[2])  # a strip of "land"
    obs = truth_run(setup, device="cpu").isel(time=[0]).assign_coords(time=[0])
    obs = obs.where((obs.x % 4 == 0) & (obs.y % 4 == 0))
    with pytest.raises(EnsembleError, match=r"trained on complete states.*same mask.*'letkf'"):
        prior.ensf.assimilate(obs, model=xensf.load(shipped_model_path()), method="latent-ensf")


def _masked_runs(n_time=30, n_member=4, seed=0):
    """Smooth random 'ocean' fields on 16 x 16 with a land block (NaN everywhere)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    c = rng.standard_normal((n_time, n_member, 3, 1, 1))
    values = (
        15
        + c[:, :, 0] * np.sin(y / 4)
        + c[:, :, 1] * np.cos(x / 5)
        + 0.5 * c[:, :, 2] * np.sin((x + y) / 6)
    )
    land = np.zeros((16, 16), bool)
    land[5:9, 6:12] = True
    return xr.Dataset(
        {"sst": (("time", "member", "y", "x"), np.where(land, np.nan, values), {"units": "degC"})},
        coords={"time": np.arange(n_time), "y": np.arange(16.0) * 10, "x": np.arange(16.0) * 10},
    ), land


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory):
    data, land = _masked_runs()
    model = xensf.train_latent(
        data, 2, latent_dim=16, width=8, blocks=1, epochs=3, progress=False, seed=0
    )
    path = tmp_path_factory.mktemp("masked") / "ocean.xensf"
    model.save(path)
    return data, land, model, path


def test_latent_models_train_on_a_masked_ocean_and_keep_the_mask(masked_model):
    data, land, model, path = masked_model
    np.testing.assert_array_equal(model.valid.numpy()[0], ~land)
    assert model.config["mask"] == {"masked_values": int(land.sum()), "values": land.size}
    # the statistics and the quality record come from the ocean points only
    assert float(model.mean[0]) == pytest.approx(float(data.sst.mean()), abs=0.05)  # 90 % split
    assert np.isfinite(model.config["quality"]["relative_rmse"]).all()
    decoded = model.decode(torch.zeros(2, model.latent_dim)).numpy()
    assert np.isnan(decoded[:, 0][:, land]).all() and np.isfinite(decoded[:, 0][:, ~land]).all()
    loaded = xensf.load(path)
    assert model.metadata()["format_version"] == 3  # older readers refuse it
    assert torch.equal(loaded.valid, model.valid)
    assert loaded.content_digest() == model.content_digest()


@pytest.mark.parametrize("method", ["latent-ensf", "latent-ensf-letkf"])
def test_latent_methods_analyse_the_unmasked_points_of_a_masked_prior(masked_model, method):
    _, land, _, path = masked_model
    prior = _masked_runs(n_time=2, n_member=6, seed=1)[0]
    truth = _masked_runs(n_time=2, n_member=1, seed=2)[0].sst.isel(member=0)
    every = (np.arange(16)[:, None] % 2 == 0) & (np.arange(16)[None, :] % 2 == 0)
    obs = truth.fillna(15.0).where(every).to_dataset()  # some on land
    options = {"obs_error": 0.1, "loc_radius": 40.0} if method == "latent-ensf-letkf" else {}
    with pytest.warns(MaskedObservationWarning):  # the observations on land are dropped
        out = prior.ensf.assimilate(obs, model=path, method=method, **options)
    assert out.sst.isel(y=5, x=6).isnull().all()
    assert bool(out.sst.where(~land).notnull().sum() == prior.sst.notnull().sum())
    assert not np.allclose(out.sst.where(~land).fillna(0), prior.sst.where(~land).fillna(0))


def test_a_masked_model_returns_an_unobserved_time_as_its_prior(masked_model):
    """``LatentModel.analyse`` directly: NaN on land, the sea as given, at a time with
    nothing observed; the observed time analysed."""
    _, land, model, _ = masked_model
    prior = _masked_runs(n_time=2, n_member=6, seed=1)[0].sst.values[:, :, None]
    truth = _masked_runs(n_time=2, n_member=1, seed=2)[0].sst.values[:, 0, None]
    obs = np.where(model.obs_points.numpy(), truth, np.nan)
    obs[1] = np.nan
    post = model.analyse(prior, obs, generator=[0, 1])
    np.testing.assert_array_equal(post[1], prior[1])  # NaN on land in both
    assert np.isnan(post[0][..., land]).all()
    assert not np.allclose(post[0][..., ~land], prior[0][..., ~land])


def test_latent_methods_refuse_a_prior_with_another_mask(masked_model):
    data, _, _, path = masked_model
    prior = _masked_runs(n_time=1, n_member=4, seed=1)[0]
    obs = prior.sst.isel(member=0).where(prior.x == 0).to_dataset()
    other = prior.where(prior.y != 0)  # one more row of "land"
    with pytest.raises(EnsembleError, match=r"not the one the model .* 16 differ"):
        other.ensf.assimilate(obs, model=path, method="latent-ensf")
    states = np.concatenate([data.sst.values[0], other.sst.values[0]])[:, None]
    with pytest.raises(EnsembleError, match="NaN at the same points in every state"):
        xensf.latent.train_latent_model(
            torch.from_numpy(states), xensf.latent.gridded_stride_obs(2), latent_dim=16,
            width=8, epochs=1, progress=False,
        )  # fmt: skip
