"""``train_latent``: a Latent-EnSF model from an xarray Dataset, numpy- or dask-backed.

Small grids and tiny networks for the plumbing; one module-scoped twin experiment (an
advected blob, :mod:`blob`) for the acceptance test: from 1/100 of the points observed
with 10 % noise, the latent analysis must beat both the prior and full-space EnSF
where the prior ensemble sits in the wrong place.
"""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from blob import (
    BlobGrid,
    blob_observations,
    blob_prior,
    blob_training,
    blob_truth,
    relative_rmse,
)
from dask.callbacks import Callback

from xensf.bridge.training import train_latent
from xensf.errors import (
    EnsembleError,
    ObservationDomainError,
    ObservationLayoutWarning,
    ObservationMismatchError,
    OptionError,
    PrecisionWarning,
)
from xensf.latent import gridded_stride_obs, station_obs

SMALL = BlobGrid(n=16, dx_km=25.0, sigma=3.0)
TINY = dict(latent_dim=8, width=4, blocks=1, epochs=2, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def runs() -> xr.Dataset:
    """24 states, ``h(time=6, member=4, y=16, x=16)``."""
    return blob_training(n_runs=4, n_times=6, grid=SMALL)


def _weights(model) -> dict[str, torch.Tensor]:
    return model.tensors()


def _same(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- numpy and dask input --------------------------------------------------------------
def test_numpy_training_records_the_data_signature(runs):
    model = train_latent(runs, 4, **TINY)
    data = model.config["data"]
    assert data["variables"] == ["h"]
    assert data["fields"] == [["h", {}]]
    assert data["units"] == {"h": "m"}
    assert data["grid_shape"] == [16, 16]
    assert (data["lat_dim"], data["lon_dim"]) == ("y", "x")
    np.testing.assert_allclose(data["lon"], runs.x.values)
    assert model.config["variables"] == ["h"] and model.config["units"] == ["m"]
    assert model.config["obs_layout"]["stride"] == [4, 4]
    assert model.config["obs_layout"]["noise"] == {"std_fraction": 0.1}
    assert model.config["architecture"]["periodic_lon"] is False  # planar km grid
    training = model.config["training"]
    assert training["sample_dims"] == ["time", "member"] and not training["streamed"]
    assert training["n_train"] + training["n_val"] == 24


def test_same_seed_gives_the_same_model(runs):
    a = train_latent(runs, 4, seed=3, **TINY)
    b = train_latent(runs, 4, seed=3, **TINY)
    c = train_latent(runs, 4, seed=4, **TINY)
    assert _same(a, b)
    assert not _same(a, c)
    # nil noise, relative or in the state's units, is one setting (once "0%" was refused)
    assert _same(train_latent(runs, 4, noise="0%", **TINY), train_latent(runs, 4, noise=0, **TINY))


def test_training_on_the_device_draws_its_noise_there(runs, device):
    """Training runs on each device, observation dropout included, and the same seed
    gives the same model there. The observations' noise comes from the generator's
    device: a CPU generator gives the CPU's numbers whatever device the states are on
    (so the analyses' calibration draws agree across devices); the training's own
    generator lives on the training device (no field drawn on the host per batch)."""
    a = train_latent(runs, 4, seed=3, device=device, obs_dropout=0.3, **TINY)
    b = train_latent(runs, 4, seed=3, device=device, obs_dropout=0.3, **TINY)
    assert _same(a, b)
    history = a.config["training"]["history"]
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert set(history[0]["train_terms"]) == {"rec", "rec_obs", "latent", "kl", "kl_obs"}
    sampler = gridded_stride_obs(4, 0.1)
    x = torch.randn(3, 1, 16, 16)
    cpu = sampler(x, torch.Generator().manual_seed(5))
    there = sampler(x.to(device), torch.Generator().manual_seed(5))
    assert there[0].device.type == torch.device(device).type
    np.testing.assert_array_equal(there[0].cpu().numpy(), cpu[0].numpy())
    own = sampler(x.to(device), torch.Generator(device=device).manual_seed(5))
    again = sampler(x.to(device), torch.Generator(device=device).manual_seed(5))
    assert torch.equal(own[0].nan_to_num(), again[0].nan_to_num())
    assert torch.equal(own[1], cpu[1].to(device))


class _ComputeLog(Callback):
    """Counts dask computations and the largest result of any task."""

    def __init__(self):
        super().__init__()
        self.computes = 0
        self.largest = 0

    def _start(self, dsk):
        self.computes += 1

    def _posttask(self, key, result, dsk, state, worker_id):
        self.largest = max(self.largest, getattr(result, "nbytes", 0))


def test_dask_input_is_streamed_block_by_block(runs):
    lazy = runs.chunk({"time": 2, "member": -1})  # chunks of 8 states
    batch = 8
    state_bytes = 16 * 16 * 4
    with _ComputeLog() as log:
        model = train_latent(lazy, 4, **{**TINY, "batch_size": batch})
    assert lazy.h.chunks is not None  # nothing was loaded in place
    # Every task made at most one batch of states; the 24 states were read piece by
    # piece, several times (statistics, epochs, validation).
    assert 0 < log.largest <= batch * state_bytes
    assert log.computes >= 3 * 3
    training = model.config["training"]
    assert training["streamed"] and training["n_train"] + training["n_val"] == 24
    assert training["n_val"] >= 1 and training["n_train"] >= 8
    assert model.config["data"] == train_latent(runs, 4, **TINY).config["data"]
    again = train_latent(lazy, 4, **{**TINY, "batch_size": batch})
    assert _same(model, again)


def test_dask_pieces_never_exceed_the_batch_size(runs):
    # chunks larger than a batch are cut inside the chunk
    lazy = runs.chunk({"time": 3, "member": 4})  # 12 states per chunk
    with _ComputeLog() as log:
        train_latent(lazy, 4, **{**TINY, "batch_size": 5, "epochs": 1})
    assert log.largest <= 12 * 16 * 16 * 4  # the chunk itself, at most
    from xensf.bridge.training import _blocks

    pieces = _blocks(lazy, ["h"], ["time", "member"], 5)
    sizes = [np.prod([s.stop - s.start for s in p.values()]) for p in pieces]
    assert max(sizes) <= 5 and sum(sizes) == 24


# -- layouts -----------------------------------------------------------------------------
def test_mask_and_point_layouts(runs):
    mask = xr.zeros_like(runs.h.isel(time=0, member=0, drop=True), dtype=bool)
    mask[2::5, 3::5] = True
    model = train_latent(runs, mask, noise=0.01, **TINY)
    layout = model.config["obs_layout"]
    assert layout["sampler"] == "mask" and layout["n_observed"] == int(mask.sum())
    assert layout["noise"] == {"std": [0.01]}

    dx = SMALL.dx_km
    stations = xr.Dataset(
        coords={
            "y": ("station", [3.2 * dx, 10.9 * dx]),  # cell centres are at (i + 0.5) dx
            "x": ("station", [0.9 * dx, 15.5 * dx]),
        }
    )
    model = train_latent(runs, stations, **TINY)
    layout = model.config["obs_layout"]
    assert layout["kind"] == "points" and layout["n_obs"] == 2
    assert layout["interpolation"] == "bilinear" and layout["n_points"] == 2
    assert layout["point_dim"] == "station" and layout["variables"] == ["h"]
    assert layout["slot_channels"] == [0, 0]
    # bilinear weights between the cell centres around each station
    n = SMALL.n
    assert layout["indices"][0] == [2 * n + 0, 2 * n + 1, 3 * n + 0, 3 * n + 1]
    np.testing.assert_allclose(layout["weights"][0], [0.3 * 0.6, 0.3 * 0.4, 0.7 * 0.6, 0.7 * 0.4])
    by_point = dict(zip(layout["indices"][1], layout["weights"][1], strict=True))
    np.testing.assert_allclose(by_point[10 * n + 15], 0.6)  # on the last column
    np.testing.assert_allclose(by_point[11 * n + 15], 0.4)
    np.testing.assert_allclose(sum(layout["weights"][1]), 1.0)
    # the sampler sees what the accessor's operator sees: the interpolated state
    h = runs.h.isel(time=0, member=0)
    expected = h.interp(y=stations.y, x=stations.x).values
    fields = torch.from_numpy(h.values[None, None].astype(np.float32))
    zero_noise = station_obs(layout["indices"], layout["weights"], noise_std=0.0)
    values, mask = zero_noise(fields, torch.Generator())
    np.testing.assert_allclose(values[0].numpy(), expected, rtol=1e-5)
    assert bool(mask.all())


@pytest.mark.filterwarnings("ignore::xensf.ModelQualityWarning")  # one epoch
def test_a_layout_mask_in_another_order_is_the_same_layout(era5):
    """A gridded layout mask on the data's points from north to south, or with its
    longitudes from -180, is read by its labels (the second was refused as another
    grid)."""
    mask = xr.zeros_like(era5.t.isel(number=0, time=0, isobaricInhPa=0, drop=True), dtype=bool)
    mask[::8, ::8] = True
    options = {**TINY, "epochs": 1, "batch_size": 20}
    expected = train_latent(era5, mask, **options).config["obs_layout"]
    flipped = mask.isel(latitude=slice(None, None, -1))
    signed = flipped.assign_coords(longitude=((mask.longitude + 180) % 360) - 180)
    assert (
        train_latent(era5, signed.sortby("longitude"), **options).config["obs_layout"] == expected
    )
    with pytest.raises(ObservationMismatchError, match="another grid"):
        train_latent(era5, mask.assign_coords(longitude=mask.longitude + 1.5), **options)


def test_levels_become_channels_and_global_grids_are_periodic(era5):
    model = train_latent(era5, 8, **{**TINY, "epochs": 1, "batch_size": 20})
    data = model.config["data"]
    assert model.config["variables"] == ["z", "z", "t", "t"]
    assert [f[0] for f in data["fields"]] == ["z", "z", "t", "t"]
    assert data["fields"][0][1] == {"isobaricInhPa": 850.0}
    assert model.config["architecture"]["periodic_lon"] is True  # 3 degrees x 120
    assert model.config["training"]["sample_dims"] == ["number", "time"]
    assert model.channels == 4


@pytest.mark.filterwarnings("ignore::xensf.ModelQualityWarning")  # one epoch
def test_the_models_data_in_another_order_or_level_units_is_its_own(era5):
    """A model trained on ERA5 as stored (latitude north to south, levels 850, 500 hPa)
    takes the same data south to north, levels 500, 850, or levels in Pa, and gives
    the analysis of the data in its own order, put back in the order given."""
    model = train_latent(era5, 8, **{**TINY, "epochs": 1, "batch_size": 20})
    assert model.config["data"]["level_units"] == {"isobaricInhPa": "hPa"}
    prior = era5.isel(time=[0])
    obs = era5.isel(number=0, time=[0], drop=True)
    obs = obs.where(((90 - obs.latitude) % 24 == 0) & (obs.longitude % 24 == 0))  # layout
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObservationLayoutWarning)
        expected = prior.ensf.assimilate(obs, model=model)
    assert float(abs(expected.t - prior.t).max()) > 0.1
    turned = {"latitude": slice(None, None, -1), "isobaricInhPa": slice(None, None, -1)}
    got = prior.isel(turned).ensf.assimilate(obs.isel(turned), model=model)
    assert float(got.latitude[0]) == -90.0
    for name in ("z", "t"):
        np.testing.assert_array_equal(got[name].isel(turned), expected[name])
    got = prior.isel(turned).ensf.assimilate(obs, model=model)  # observations as stored
    for name in ("z", "t"):
        np.testing.assert_array_equal(got[name].isel(turned), expected[name])
    in_pa = {"isobaricInhPa": ("isobaricInhPa", [85000.0, 50000.0], {"units": "Pa"})}
    got = prior.assign_coords(in_pa).ensf.assimilate(obs, model=model)
    np.testing.assert_array_equal(got.t, expected.t)
    xr.testing.assert_identical(prior.isel(turned).ensf.encode(model), prior.ensf.encode(model))
    xr.testing.assert_identical(  # the variables named in another order: the model's
        prior.ensf.encode(model, variables=["t", "z"]), prior.ensf.encode(model)
    )
    with pytest.raises(ObservationMismatchError, match=r"in any order \(variables=\['z', 't'\]"):
        prior.ensf.encode(model, variables="t")
    with pytest.raises(OptionError, match=r"variables is empty; the model encodes \['z', 't'\]"):
        prior.ensf.encode(model, variables=[])  # an IndexError before
    with pytest.raises(OptionError, match=r"names \['q'\], which the model does not encode"):
        prior.ensf.encode(model, variables=["q"])  # was told the Dataset lacked 'q'
    decoded = prior.ensf.encode(model).ensf.decode(model)
    assert decoded.isobaricInhPa.attrs["units"] == "hPa"
    with pytest.raises(ObservationMismatchError, match="fields"):  # not the model's levels
        prior.assign_coords(isobaricInhPa=[700.0, 500.0]).ensf.encode(model)
    # the levels under another name (ERA5 from the CDS's newer files): named, with the fix
    renamed = prior.rename(isobaricInhPa="pressure_level")
    fix = r"ds.rename\(\{'pressure_level': 'isobaricInhPa'\}\)"
    for apply in (
        lambda ds: ds.ensf.encode(model),
        lambda ds: ds.ensf.assimilate(obs, model=model),
    ):
        with pytest.raises(ObservationMismatchError, match=fix):
            apply(renamed)  # encode read the levels as states, and said the data had none
    xr.testing.assert_identical(
        renamed.rename(pressure_level="isobaricInhPa").ensf.encode(model), prior.ensf.encode(model)
    )
    more = xr.concat([prior, prior.isel(isobaricInhPa=[0]).assign_coords(isobaricInhPa=[1000.0])],
                     "isobaricInhPa")  # fmt: skip
    with pytest.raises(
        ObservationMismatchError, match=r"ds.sel\(\{'isobaricInhPa': \[850.0, 500.0\]"
    ):
        more.ensf.encode(model)


@pytest.mark.filterwarnings("ignore::xensf.ModelQualityWarning")  # one epoch
def test_a_model_of_one_level_takes_that_level_only(era5):
    """A model trained at one level (``ds.sel(level=850)``: a scalar coordinate) records
    it: data at another level was encoded and analysed with it without a word, and data
    with the level dim was encoded as if each level were a state of its own."""
    model = train_latent(
        era5.sel(isobaricInhPa=850.0), 8, **{**TINY, "epochs": 1, "batch_size": 20}
    )
    assert model.config["data"]["scalar_levels"] == {"isobaricInhPa": [850.0, "hPa"]}
    prior = era5.isel(time=[0])
    obs = era5.isel(number=0, time=[0], drop=True).sel(isobaricInhPa=850.0)
    obs = obs.where(((90 - obs.latitude) % 24 == 0) & (obs.longitude % 24 == 0))
    at = prior.sel(isobaricInhPa=850.0)
    in_pa = at.assign_coords(isobaricInhPa=((), 85000.0, {"units": "Pa"}))
    np.testing.assert_array_equal(
        in_pa.ensf.assimilate(obs, model=model).t, at.ensf.assimilate(obs, model=model).t
    )
    decoded = at.ensf.encode(model).ensf.decode(model)
    assert float(decoded.isobaricInhPa) == 850.0 and decoded.isobaricInhPa.attrs["units"] == "hPa"
    other = prior.sel(isobaricInhPa=500.0)
    for apply in (
        lambda ds: ds.ensf.encode(model),
        lambda ds: ds.ensf.assimilate(obs, model=model),
    ):
        with pytest.raises(
            ObservationMismatchError,
            match=r"trained at one level, isobaricInhPa=850.0 hPa, .* at isobaricInhPa=500.0",
        ):
            apply(other)
        with pytest.raises(
            ObservationMismatchError, match=r"ds.sel\(\{'isobaricInhPa': 850.0\}\)"
        ):
            apply(prior)  # both levels
    at.drop_vars("isobaricInhPa").ensf.encode(model)  # a level it does not name: taken


# -- bad input ---------------------------------------------------------------------------
def test_bad_input_is_refused_before_training(runs):
    bad = runs.copy(deep=True)
    bad["h"][2, 1, 5, 5] = np.nan
    with pytest.raises(EnsembleError, match=r"'h'.*NaN"):
        train_latent(bad, 4, **TINY)
    with pytest.raises(EnsembleError, match=r"'h'.*NaN"):
        train_latent(bad.chunk({"time": 1}), 4, **TINY)
    with pytest.raises(ObservationMismatchError, match="larger than the 16x16 grid"):
        train_latent(runs, (4, 20), **TINY)
    other = xr.DataArray(
        np.ones((16, 16), bool), dims=("y", "x"), coords={"y": runs.y + 1000.0, "x": runs.x}
    )
    with pytest.raises(ObservationMismatchError, match="another grid"):
        train_latent(runs, other, **TINY)
    outside = xr.Dataset(coords={"y": ("station", [50.0]), "x": ("station", [5000.0])})
    with pytest.raises(ObservationDomainError, match="outside"):
        train_latent(runs, outside, **TINY)
    # between the first cell centre and the edge of the first cell: outside the grid
    edge = xr.Dataset(coords={"y": ("station", [50.0]), "x": ("station", [0.4 * SMALL.dx_km])})
    with pytest.raises(ObservationDomainError, match="outside"):
        train_latent(runs, edge, **TINY)
    # a station without a place, or with its place as text, was refused as outside the
    # grid at (nan, 5) or read as numbers
    unplaced = xr.Dataset(coords={"y": ("station", [50.0, np.nan]), "x": ("station", [5.0] * 2)})
    with pytest.raises(ObservationMismatchError, match="1 observations of the obs_layout have"):
        train_latent(runs, unplaced, **TINY)
    with pytest.raises(ObservationMismatchError, match="'y' has dtype <U"):
        train_latent(runs, unplaced.assign_coords(y=("station", ["50", "60"])), **TINY)
    with pytest.raises(EnsembleError, match="at least 10"):
        train_latent(runs.isel(time=slice(0, 2)), 4, **TINY)
    with pytest.raises(OptionError, match="'u'"):
        train_latent(runs, 4, variables=["u"], **TINY)
    with pytest.raises(OptionError, match="noise"):
        train_latent(runs, 4, noise="ten percent", **TINY)
    with pytest.raises(OptionError, match="noise"):
        train_latent(runs, 4, noise="-5%", **TINY)
    # torch's generators take 64 bits: once a raw ValueError from torch
    with pytest.raises(OptionError, match="seed must lie between"):
        train_latent(runs, 4, seed=2**70, **TINY)
    with pytest.raises(OptionError, match="obs_layout"):
        train_latent(runs, "every 4th", **TINY)
    with pytest.raises(OptionError, match="'latent_dims': did you mean 'latent_dim'"):
        train_latent(runs, 4, latent_dims=16, width=8, epochs=1, progress=False)
    with pytest.raises(OptionError, match=r"unknown option\(s\) \['banana'\]"):
        train_latent(runs, 4, banana=1, **TINY)
    no_points = xr.Dataset(coords={"y": ("station", []), "x": ("station", [])})
    with pytest.raises(ObservationMismatchError, match="no points along 'station'"):
        train_latent(runs, no_points, **TINY)


# -- the acceptance twin experiment ------------------------------------------------------
@pytest.fixture(scope="module")
def twin():
    """A model trained on random blob runs; truth, prior and observations held out."""
    training = blob_training(n_runs=60, n_times=10, seed=1)
    model = train_latent(
        training,
        10,  # 16 of 1600 points: 1/100
        noise="10%",
        latent_dim=64,  # 4 x 4 x 4: patch 5, one downsampling
        width=16,
        blocks=1,
        epochs=20,
        batch_size=16,
        lr=3e-3,
        patience=25,
        progress=False,
    )
    truth = blob_truth(4)
    prior = blob_prior(10, 4)
    obs, std = blob_observations(truth, stride=10, noise=0.1)
    return model, truth, prior, obs, std


def test_latent_analysis_moves_a_misplaced_blob(twin):
    model, truth, prior, obs, std = twin
    assert int(np.isfinite(obs.h.isel(time=0)).sum()) == 16
    prior_err = relative_rmse(prior, truth)
    assert prior_err > 1.2  # the prior's bump is in the wrong place

    latent = prior.ensf.assimilate(obs, model=model)  # latent-ensf, the default
    latent_letkf = prior.ensf.assimilate(obs, model=model, method="latent-letkf")
    hybrid = prior.ensf.assimilate(
        obs, model=model, method="latent-ensf-letkf", loc_radius=None, obs_error=float(std.mean())
    )
    ensf = prior.ensf.assimilate(obs, method="ensf", obs_error=float(std.mean()))
    err = {
        "latent-ensf": relative_rmse(latent, truth),
        "latent-letkf": relative_rmse(latent_letkf, truth),
        "latent-ensf-letkf": relative_rmse(hybrid, truth),
        "ensf": relative_rmse(ensf, truth),
    }
    assert latent.h.dims == prior.h.dims and latent.attrs["xensf_method"] == "latent-ensf"
    # The full-space filter cannot move the bump from 16 points...
    assert err["ensf"] > 0.8 * prior_err
    # ...the latent one can: clearly better than both.
    assert err["latent-ensf"] < 0.6 * prior_err
    assert err["latent-ensf"] < 0.6 * err["ensf"]
    assert err["latent-letkf"] < prior_err
    # (seen for training seeds 0-3: latent-ensf 0.39-0.57, latent-ensf-letkf 0.32-0.46,
    # latent-letkf 1.05-1.13, against a prior of 1.55 and full-space EnSF of 1.53)
    assert err["latent-ensf-letkf"] < 0.6 * prior_err
    assert hybrid.attrs["xensf_method"] == "latent-ensf-letkf"


def test_dask_backed_prior_gives_the_same_latent_analysis(twin):
    model, _, prior, obs, _ = twin
    eager = prior.ensf.assimilate(obs, model=model, seed=5)
    lazy = prior.chunk({"time": 1}).ensf.assimilate(obs.chunk({"time": 1}), model=model, seed=5)
    assert lazy.h.chunks is not None
    with dask.config.set(scheduler="threads"):
        xr.testing.assert_allclose(eager, lazy.compute(), atol=1e-5)


# -- training on gaps (obs_dropout) --------------------------------------------------------
def test_obs_dropout_is_checked_and_recorded(runs):
    for bad in (-0.1, 1.0, True, "half", float("nan")):
        with pytest.raises(OptionError, match="obs_dropout"):
            train_latent(runs, 4, obs_dropout=bad, **TINY)
    model = train_latent(runs, 4, obs_dropout=0.5, **TINY)
    assert model.config["training"]["obs_dropout"] == 0.5 and model.obs_dropout == 0.5
    # the values of a whole layout: every 4th point of the 16 x 16 grid
    assert model.config["obs_layout"]["n_values"] == 16 == model.obs_layout_values
    del model.config["obs_layout"]["n_values"]  # a bundle saved before it was recorded
    assert model.obs_layout_values == 16
    assert train_latent(runs, 4, **TINY).obs_dropout == 0.0


def test_bfloat16_where_the_cpu_only_emulates_it_trains_in_float32(runs, monkeypatch):
    import xensf.latent.training as training

    monkeypatch.setattr(training, "cpu_has_bfloat16", lambda: False)
    with pytest.warns(PrecisionWarning, match="emulated.*float32 instead"):
        fallback = train_latent(runs, 4, precision="bfloat16", device="cpu", **TINY)
    assert fallback.config["training"]["precision"] == "float32"
    assert _same(fallback, train_latent(runs, 4, precision="float32", device="cpu", **TINY))
    monkeypatch.setattr(training, "cpu_has_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        native = train_latent(runs, 4, precision="bfloat16", device="cpu", **TINY)
    assert native.config["training"]["precision"] == "bfloat16"
