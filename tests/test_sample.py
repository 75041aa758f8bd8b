"""The real ERA5 sample shipped with xensf opens as real ERA5 files come."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from xensf.era5 import COPERNICUS_NOTICE, open_era5_sample

SAMPLE_FILE = Path(__file__).resolve().parent.parent / "xensf" / "data" / "era5-sample.nc"


@pytest.fixture(scope="module")
def sample():
    with open_era5_sample() as ds:
        yield ds


def test_sample_has_the_cfgrib_structure(sample):
    assert dict(sample.sizes) == {
        "number": 10,
        "time": 4,
        "isobaricInhPa": 2,
        "latitude": 61,
        "longitude": 120,
    }
    assert set(sample.data_vars) == {"z", "t"}
    assert set(sample.coords) == {
        "number",
        "time",
        "valid_time",
        "step",
        "isobaricInhPa",
        "latitude",
        "longitude",
    }
    assert sample.valid_time.dims == ("time",)
    assert sample.step.dims == ()
    for name in ("z", "t"):
        assert sample[name].dims == ("number", "time", "isobaricInhPa", "latitude", "longitude")


def test_sample_coordinates(sample):
    lat = sample.latitude.values
    assert lat[0] == 90.0 and lat[-1] == -90.0
    assert np.all(np.diff(lat) < 0), "latitude must stay descending, as ERA5 stores it"
    assert sample.longitude.values[0] == 0.0 and sample.longitude.values[-1] == 357.0
    assert sample.isobaricInhPa.values.tolist() == [850.0, 500.0]
    assert sample.number.values.tolist() == list(range(10))
    assert [str(t)[:13] for t in sample.time.values] == [
        "2017-01-01T00",
        "2017-01-01T12",
        "2017-01-02T00",
        "2017-01-02T12",
    ]
    np.testing.assert_array_equal(sample.valid_time.values, sample.time.values)


def test_sample_keeps_the_grib_attributes(sample):
    assert sample.z.attrs["units"] == "m**2 s**-2"
    assert sample.z.attrs["standard_name"] == "geopotential"
    assert sample.t.attrs["units"] == "K"
    assert sample.t.attrs["standard_name"] == "air_temperature"
    assert sample.t.attrs["GRIB_shortName"] == "t"
    assert sample.latitude.attrs["stored_direction"] == "decreasing"
    # As cfgrib labels ERA5's time, which xensf's output metadata must mend.
    assert sample.time.attrs["standard_name"] == "forecast_reference_time"
    assert sample.attrs["Conventions"] == "CF-1.7"
    assert sample.attrs["GRIB_centre"] == "ecmf"
    assert "cfgrib" in sample.attrs["history"]


def test_sample_carries_the_copernicus_notice(sample):
    assert COPERNICUS_NOTICE in sample.attrs["license"]
    readme = SAMPLE_FILE.with_name("README.md").read_text()
    assert COPERNICUS_NOTICE in readme


def test_sample_is_float32_with_plausible_values(sample):
    assert sample.z.dtype == np.float32
    assert sample.t.dtype == np.float32
    assert not sample.z.isnull().any() and not sample.t.isnull().any()
    t = sample.t.values
    assert 180.0 < t.min() and t.max() < 320.0
    z500 = sample.z.sel(isobaricInhPa=500).values / 9.80665  # geopotential height, m
    assert 4500.0 < z500.min() and z500.max() < 6000.0
    # Members differ: it is an ensemble, not ten copies.
    assert float(sample.t.std("number").mean()) > 0.01


def test_sample_opens_lazily_with_chunks():
    with open_era5_sample(chunks={"time": 1}) as ds:
        assert isinstance(ds.t.data, da.Array)
        assert ds.t.chunks[1] == (1, 1, 1, 1)
        assert ds.t.dtype == np.float32
        # the members in one chunk: the file's one per chunk was a ChunkingError in
        # the analysis the docstring's lazy open led to
        assert ds.t.chunks[0] == (10,)
        prior, truth = ds.isel(number=slice(1, None)), ds.isel(number=0)
        obs = truth[["t"]].isel(latitude=[30], longitude=[60]).reindex_like(truth)
        lazy = prior.ensf.assimilate(obs, method="letkf", obs_error=0.5, loc_radius=500.0)
        assert isinstance(lazy.t.data, da.Array)
        assert np.isfinite(lazy.t.isel(time=0).values).all()
    with open_era5_sample(chunks={"number": 2}) as ds:  # as asked
        assert ds.t.chunks[0] == (2,) * 5


def test_sample_file_is_small():
    assert SAMPLE_FILE.stat().st_size < 3_000_000
