"""Latent methods through the accessor: ``model=``, encode/decode, and the checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_latent import GRID, blobs, random_positions

import xensf
from xensf.bridge.dims import find_dims
from xensf.bridge.layout import StateLayout
from xensf.bridge.signature import data_signature
from xensf.errors import ObservationMismatchError, OptionError
from xensf.latent import gridded_stride_obs, train_latent_model


def _coords(n_times):
    return {
        "time": np.datetime64("2020-01-01", "ns") + np.arange(n_times) * np.timedelta64(1, "h"),
        "y": ("y", np.arange(GRID) * 10.0, {"units": "km"}),
        "x": ("x", np.arange(GRID) * 10.0, {"units": "km"}),
    }


@pytest.fixture(scope="module")
def case():
    """A small blob model, a displaced prior ensemble and sparse gridded observations."""
    pos = random_positions(300, torch.Generator().manual_seed(0))
    model = train_latent_model(
        blobs(pos[:, 0], pos[:, 1]), gridded_stride_obs(4, 0.1), latent_dim=4, width=8,
        depth=2, epochs=12, batch_size=32, lr=3e-3, patience=6, seed=0, device="cpu",
        progress=False, variables=["h"], units=["m"],
    )  # fmt: skip
    gen = torch.Generator().manual_seed(321)
    n_times, n_members = 4, 12
    truth = blobs(*random_positions(n_times, gen).T)[:, 0]
    wrong = random_positions(n_times, gen)
    jitter = 0.5 * torch.randn(2, n_times, n_members, generator=gen)
    members = blobs(
        (wrong[:, None, 0] + jitter[0]).flatten(), (wrong[:, None, 1] + jitter[1]).flatten()
    ).reshape(n_times, n_members, GRID, GRID)
    coords = _coords(n_times)
    prior = xr.Dataset(
        {"h": (("time", "member", "y", "x"), members.numpy(), {"units": "m"})}, coords
    )
    truth = xr.Dataset({"h": (("time", "y", "x"), truth.numpy(), {"units": "m"})}, coords)
    obs = truth.where((truth.y % 40 == 0) & (truth.x % 40 == 0))
    layout = StateLayout(("h",), ((),), ((),), (GRID, GRID))
    model.config["data"] = data_signature(prior, find_dims(prior), layout)
    return model, prior, truth, obs


def test_accessor_matches_the_model_and_beats_the_prior(case):
    model, prior, truth, obs = case
    # on the CPU, like the direct call below (a GPU draws other random numbers)
    analysis = prior.ensf.assimilate(obs, model=model, seed=3, device="cpu")  # latent-ensf
    assert analysis.attrs["xensf_method"] == "latent-ensf"
    seeds = xensf.bridge.analysis.analysis_seeds(3, prior.time.values)
    direct = model.analyse(
        prior.h.values[:, :, None], obs.h.values[:, None], method="latent-ensf", generator=seeds
    )
    np.testing.assert_array_equal(analysis.h.values, direct[:, :, 0])
    err = lambda e: float(np.sqrt(((e.h.mean("member") - truth.h) ** 2).mean()))  # noqa: E731
    assert err(analysis) < 0.6 * err(prior)


def test_chunking_does_not_matter(case):
    """Same seed, other chunks: the same analysis up to float32 round-off.

    Not bit for bit, unlike the full-space methods: the networks' kernels may sum in
    another order for another batch size (differences ~3e-7 seen on CPU, ~1e-5 on an
    H200 GPU, for fields of size ~1).
    """
    model, prior, _, obs = case
    eager = prior.ensf.assimilate(obs, model=model, seed=1)
    lazy = prior.chunk(time=1).ensf.assimilate(obs, model=model, seed=1)
    assert lazy.h.chunks is not None
    xr.testing.assert_allclose(lazy.compute(), eager, rtol=0, atol=1e-4)
    letkf = prior.chunk(time=3).ensf.assimilate(obs, model=model, method="latent-letkf")
    xr.testing.assert_allclose(
        letkf.compute(),
        prior.ensf.assimilate(obs, model=model, method="latent-letkf"),
        rtol=0,
        atol=1e-4,
    )


def test_model_by_path_and_a_time_without_observations(case, tmp_path):
    model, prior, _, obs = case
    model.save(tmp_path / "blob.xensf")
    gappy = obs.where(obs.time != obs.time[2])
    by_path = prior.ensf.assimilate(gappy, model=str(tmp_path / "blob.xensf"), seed=1)
    by_object = prior.ensf.assimilate(gappy, model=xensf.load(tmp_path / "blob.xensf"), seed=1)
    xr.testing.assert_equal(by_path, by_object)
    np.testing.assert_array_equal(by_path.h.isel(time=2).values, prior.h.isel(time=2).values)


def test_encode_decode(case):
    model, prior, _, _ = case
    latent = prior.ensf.encode(model, device="cpu")
    assert latent.latent_mean.dims == ("time", "member", "latent")
    np.testing.assert_allclose(
        latent.latent_mean.values.reshape(-1, 4),
        model.encode(prior.h.values.reshape(-1, 1, GRID, GRID))[0].numpy(),
        rtol=1e-6,
    )
    chunked = prior.chunk(time=2).ensf.encode(model, device="cpu").compute()
    xr.testing.assert_allclose(chunked, latent, rtol=1e-4, atol=1e-5)  # batch-size round-off
    states = latent.ensf.decode(model)
    assert states.h.attrs["units"] == "m"
    assert states.h.transpose(*prior.h.dims).shape == prior.h.shape
    np.testing.assert_array_equal(states.y.values, prior.y.values)


def test_data_that_does_not_fit_the_model(case):
    model, prior, _, obs = case
    with pytest.raises(ObservationMismatchError, match=r"trained on the variables \['h'\]"):
        prior.rename(h="q").ensf.assimilate(obs.rename(h="q"), model=model)
    with pytest.raises(ObservationMismatchError, match="grid"):
        prior.isel(x=slice(0, 20)).ensf.assimilate(obs.isel(x=slice(0, 20)), model=model)
    with pytest.raises(ObservationMismatchError, match="'h' in 'm'"):
        prior.assign(h=prior.h.assign_attrs(units="cm")).ensf.assimilate(obs, model=model)
    with pytest.raises(OptionError, match="drop obs_error"):
        prior.ensf.assimilate(obs, model=model, obs_error=0.1)
    with pytest.raises(OptionError, match="needs a trained latent model"):
        prior.ensf.assimilate(obs, method="latent-ensf")
    points = (
        obs.isel(time=0)
        .h.isel(y=[0, 4], x=[0, 4])
        .stack(station=("y", "x"))
        .reset_index("station")
    )
    points = points.to_dataset().assign_coords(
        lat=("station", [1.0, 2, 3, 4]), lon=("station", [1.0, 2, 3, 4])
    )
    with pytest.raises(ObservationMismatchError, match="gridded"):
        prior.ensf.assimilate(points.drop_vars(["y", "x"]), model=model)


def test_increment_update_adds_the_decoded_latent_increment(case):
    model, prior, truth, obs = case
    inc = prior.ensf.assimilate(obs, model=model, seed=3, update="increment", device="cpu")
    assert inc.attrs["xensf_update"] == "increment"
    seeds = xensf.bridge.analysis.analysis_seeds(3, prior.time.values)
    _, latent = model.analyse(
        prior.h.values[:, :, None], obs.h.values[:, None], generator=seeds, return_latent=True
    )
    shape = prior.h.shape
    decoded = lambda z: model.decode(z.reshape(-1, 4)).numpy().reshape(shape)  # noqa: E731
    expected = prior.h.values + decoded(latent["posterior"]) - decoded(latent["prior"])
    np.testing.assert_allclose(inc.h.values, expected, rtol=0, atol=1e-5)
    err = lambda e: float(np.sqrt(((e.h.mean("member") - truth.h) ** 2).mean()))  # noqa: E731
    assert err(inc) < 0.6 * err(prior)
    with pytest.raises(OptionError, match="update must be"):
        prior.ensf.assimilate(obs, model=model, update="replace")
