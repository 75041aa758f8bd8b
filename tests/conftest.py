"""Shared fixtures: small synthetic ensembles and the packaged real ERA5 sample."""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr
from hypothesis import settings

import xensf

# The property suites (tests/test_*properties*.py) draw the same examples on every run,
# so that a red CI is reproducible. `--hypothesis-profile=fuzz --hypothesis-seed=N`
# draws others: run with fresh seeds now and then, it has found defects the fixed
# examples did not (README, Quickstart, "To run the tests").
settings.register_profile("xensf", derandomize=True)
settings.register_profile("fuzz", derandomize=False)


def pytest_configure(config):
    if config.getoption("hypothesis_profile", None) is None:
        settings.load_profile("xensf")


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory):
    """Model objects passed to the accessor are cached here, not in the user's cache."""
    old = os.environ.get("XENSF_CACHE_DIR")
    os.environ["XENSF_CACHE_DIR"] = str(tmp_path_factory.mktemp("xensf-cache"))
    yield
    if old is None:
        os.environ.pop("XENSF_CACHE_DIR", None)
    else:
        os.environ["XENSF_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def era5() -> xr.Dataset:
    """The real ERA5 ensemble sample (10 members, 4 times, 2 levels, 61 x 120), in memory."""
    return xensf.open_era5_sample().load()


@pytest.fixture(scope="session")
def era5_twin(era5):
    """Member 0 as truth, the other nine members as the prior ensemble."""
    return era5.isel(number=slice(1, None)), era5.isel(number=0, drop=True)


def make_ensemble(
    n_members: int = 8,
    n_times: int = 3,
    nlat: int = 10,
    nlon: int = 16,
    seed: int = 0,
    names=("member", "time", "lat", "lon"),
) -> xr.Dataset:
    """A small smooth random ensemble on a global lat/lon grid, CF-annotated."""
    rng = np.random.default_rng(seed)
    member, time, lat_name, lon_name = names
    lat = np.linspace(-80, 80, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    base = 280 + 20 * np.cos(np.deg2rad(lat))[:, None] + 0 * lon
    noise = rng.standard_normal((n_members, n_times, nlat, nlon))
    # smooth the noise along longitude so neighbouring points are correlated
    noise = (noise + np.roll(noise, 1, -1) + np.roll(noise, -1, -1)) / 3
    temp = base + 2.0 * noise
    ds = xr.Dataset(
        {"t": ((member, time, lat_name, lon_name), temp.astype(np.float32), {"units": "K"})},
        coords={
            member: np.arange(n_members),
            time: np.array("2020-01-01", "datetime64[ns]")
            + np.arange(n_times) * np.timedelta64(6, "h"),
            lat_name: (lat_name, lat, {"units": "degrees_north", "standard_name": "latitude"}),
            lon_name: (lon_name, lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
    )
    return ds


@pytest.fixture
def small():
    return make_ensemble()


def _devices():
    import torch

    params = [pytest.param("cpu", id="cpu")]
    params.append(
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        )
    )
    return params


@pytest.fixture(params=_devices())
def device(request):
    """Run a test on the CPU and, where one is present, on a CUDA device."""
    return request.param
