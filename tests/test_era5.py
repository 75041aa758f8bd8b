"""The ERA5 loader: one canonical Dataset from every store schema, lazily, with clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import dask.array
import numpy as np
import pytest
import xarray as xr

import xensf
import xensf.era5
from xensf.errors import OptionError, StoreError

sys.path.insert(0, str(Path(__file__).parent))
from era5_stores import write_arco_store, write_wb2_store

SAMPLE = Path(__file__).parent / "data" / "era5-z-t-500hPa-5members.nc"
REQUEST = dict(
    variables=["z500", "t850", "u", "v", "t2m", "msl", "lsm"],
    levels=[500, 850],
    time=("2020-01-01T06", "2020-01-02T12"),
    every="6h",
)


@pytest.fixture(scope="module")
def wb2_store(tmp_path_factory) -> Path:
    return write_wb2_store(tmp_path_factory.mktemp("wb2") / "wb2-era5.zarr")


@pytest.fixture(scope="module")
def arco_store(tmp_path_factory) -> Path:
    return write_arco_store(tmp_path_factory.mktemp("arco") / "arco-era5.zarr")


def _without_global_attrs(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy()
    out.attrs = {}
    return out


# --------------------------------------------------------------------------------------
# the two store schemas give one Dataset
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("latitude", ["ascending", "descending"])
def test_wb2_and_arco_schemas_give_identical_datasets(wb2_store, arco_store, latitude):
    raw_wb2, raw_arco = xr.open_zarr(wb2_store), xr.open_zarr(arco_store)
    # the stores really differ in what the loader must normalise
    assert raw_wb2.geopotential.dims == ("time", "level", "longitude", "latitude")
    assert raw_arco.geopotential.dims == ("time", "level", "latitude", "longitude")
    assert raw_wb2.latitude[0] < raw_wb2.latitude[-1]
    assert raw_arco.latitude[0] > raw_arco.latitude[-1]
    assert raw_wb2.sizes["time"] * 6 == raw_arco.sizes["time"]  # 6-hourly vs hourly

    a = xensf.era5.open(wb2_store, latitude=latitude, **REQUEST)
    b = xensf.era5.open(arco_store, latitude=latitude, **REQUEST)
    xr.testing.assert_identical(_without_global_attrs(a), _without_global_attrs(b))
    lat = a.latitude.values
    assert (np.diff(lat) > 0).all() if latitude == "ascending" else (np.diff(lat) < 0).all()
    assert "xensf.era5.open" in a.attrs["history"]


def test_latitude_order_restored_gives_the_store_back(wb2_store, arco_store):
    """Flipping latitude loses nothing: the ARCO order of WB2 data is the ARCO data."""
    a = xensf.era5.open(wb2_store, variables=["z"], levels=[500], latitude="descending")
    raw = xr.open_zarr(arco_store).geopotential.sel(level=500, time=a.time.values)
    np.testing.assert_array_equal(a.z.sel(level=500).values, raw.values)
    np.testing.assert_array_equal(a.latitude.values, raw.latitude.values.astype(np.float64))


def test_values_follow_their_coordinates(wb2_store):
    """Transposition and flipping move values with their labels."""
    ds = xensf.era5.open(wb2_store, variables=["z850"])
    raw = xr.open_zarr(wb2_store).geopotential
    point = dict(time="2020-01-01T18", latitude=45.0, longitude=90.0)
    assert float(ds.z850.sel(point)) == float(raw.sel(level=850, **point))


def test_canonical_form(arco_store):
    ds = xensf.era5.open(arco_store, variables=["z", "t2m", "lsm"], levels=[500, 850])
    assert ds.z.dims == ("time", "level", "latitude", "longitude")
    assert ds.lsm.dims == ("latitude", "longitude")
    assert ds.time.attrs["standard_name"] == "time"
    assert ds.level.attrs == {
        "standard_name": "air_pressure",
        "long_name": "pressure",
        "units": "hPa",
        "positive": "down",
        "axis": "Z",
    }
    assert ds.level.dtype == np.float64 and ds.latitude.dtype == np.float64
    assert ds.latitude.attrs["standard_name"] == "latitude"
    assert ds.longitude.attrs["units"] == "degrees_east"
    assert ds.z.attrs["units"] == "m2 s-2"  # GRIB's m**2 s**-2
    assert ds.lsm.attrs["units"] == "1"  # GRIB's (0 - 1)
    assert ds.t2m.attrs["standard_name"] == "air_temperature"  # filled in from the table
    assert ds.attrs["valid_time_start"] == "2020-01-01"  # store attributes kept


def test_loader_is_lazy(arco_store):
    ds = xensf.era5.open(arco_store, variables=["z500", "t"], time=("2020-01-01", "2020-01-01T05"))
    for name in ds.data_vars:
        assert isinstance(ds[name].data, dask.array.Array)
    # one task chain per store chunk (one time each), nothing computed yet
    assert ds.z500.data.numblocks[0] == 6


def test_user_chunks(arco_store):
    ds = xensf.era5.open(arco_store, variables=["z500"], chunks={"time": 12})
    assert ds.z500.chunks[0][0] == 12


# --------------------------------------------------------------------------------------
# the real ERA5 sample as cfgrib writes it
# --------------------------------------------------------------------------------------
def test_real_sample_is_normalised():
    raw = xr.open_dataset(SAMPLE)
    assert "Copernicus" in raw.attrs["license"]
    assert set(raw.dims) == {"number", "time", "isobaricInhPa", "latitude", "longitude"}
    ds = xensf.era5.open(SAMPLE)
    assert ds.z.dims == ("member", "time", "level", "latitude", "longitude")
    assert ds.member.attrs["standard_name"] == "realization"
    assert ds.time.attrs["standard_name"] == "time"  # was forecast_reference_time
    assert "valid_time" not in ds.coords and "step" not in ds.coords  # analyses: lead 0
    assert ds.latitude.values[0] == -90.0 and "stored_direction" not in ds.latitude.attrs
    assert ds.z.attrs["units"] == "m2 s-2" and ds.t.attrs["units"] == "K"
    for name in ("latitude", "longitude", "level"):
        assert ds[name].encoding.get("_FillValue") is None
    xr.testing.assert_equal(
        ds.z.isel(level=0, drop=True).rename(member="number").drop_vars("number"),
        raw.z.isel(isobaricInhPa=0, drop=True)
        .isel(latitude=slice(None, None, -1))
        .drop_vars(["number", "valid_time", "step"]),
    )


def test_real_sample_matches_packaged_sample():
    small = xensf.era5.open(SAMPLE, variables=["z500", "t500"]).load()
    full = xensf.era5.open("era5_sample", variables=["z500", "t500"]).isel(member=slice(0, 5))
    xr.testing.assert_allclose(
        _without_global_attrs(small), _without_global_attrs(full.load()), rtol=1e-6
    )


def test_valid_time_and_pressure_level_dims():
    """The CDS netCDF layout: dims ``valid_time`` and ``pressure_level``, levels in Pa."""
    ds = xr.Dataset(
        {"t": (("valid_time", "pressure_level", "lat", "lon"), np.ones((2, 2, 3, 4)))},
        coords={
            "valid_time": np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"),
            "pressure_level": ("pressure_level", [50000.0, 85000.0], {"units": "Pa"}),
            "lat": [10.0, 0.0, -10.0],
            "lon": [0.0, 90.0, 180.0, 270.0],
        },
    )
    out = xensf.era5.normalise(ds)
    assert out.t.dims == ("time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(out.level.values, [500.0, 850.0])
    assert out.level.attrs["units"] == "hPa"
    np.testing.assert_array_equal(out.latitude.values, [-10.0, 0.0, 10.0])


def test_forecast_time_keeps_the_reference_time():
    ds = xr.Dataset(
        {"z": (("time", "latitude", "longitude"), np.zeros((2, 2, 2)))},
        coords={
            "time": ("time", np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"),
                     {"standard_name": "forecast_reference_time"}),
            "valid_time": ("time", np.array(["2020-01-01T06", "2020-01-02T06"], "datetime64[ns]")),
            "latitude": [0.0, 1.0],
            "longitude": [0.0, 1.0],
        },
    )  # fmt: skip
    out = xensf.era5.normalise(ds)
    assert str(out.time.values[0]).startswith("2020-01-01T06")
    assert out.forecast_reference_time.attrs["standard_name"] == "forecast_reference_time"
    assert out.time.attrs["standard_name"] == "time"


@pytest.mark.parametrize(
    ("grib", "cf"),
    [("m**2 s**-2", "m2 s-2"), ("m s**-1", "m s-1"), ("kg kg**-1", "kg kg-1"), ("K", "K"),
     ("(0 - 1)", "1"), ("~", "1"), ("Pa s**-1", "Pa s-1"), ("m of water equivalent", "m")],
)  # fmt: skip
def test_grib_units_become_parsable(grib, cf):
    from xensf.bridge.units import parse_units

    assert xensf.era5.cf_units(grib) == cf
    parse_units(cf, where="test")  # pint (cf-xarray's registry) reads it


# --------------------------------------------------------------------------------------
# the output feeds training and assimilation directly
# --------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::xensf.ModelQualityWarning")  # one epoch on 3 times
def test_loader_output_feeds_train_latent_and_assimilate():
    ds = xensf.era5.open(SAMPLE, variables=["z500", "t500"], chunks={"time": 1})
    ds = ds.isel(latitude=slice(None, None, 2), longitude=slice(None, None, 2))  # 6° grid
    model = xensf.train_latent(
        ds.isel(time=slice(0, 3)), obs_layout=4, latent_dim=8, width=4, blocks=1, epochs=1,
        batch_size=5, seed=0, progress=False,
    )  # fmt: skip
    assert model.config["training"]["streamed"]
    assert model.config["data"]["variables"] == ["z500", "t500"]
    prior = ds.isel(time=[3], member=slice(1, None)).load()
    truth = ds.isel(time=[3], member=0, drop=True).load()
    observed = xr.zeros_like(truth.z500, dtype=bool)
    observed[..., ::4, ::4] = True
    analysis = prior.ensf.assimilate(truth.where(observed), model=model, seed=0)
    assert analysis.sizes == prior.sizes
    assert list(analysis.data_vars) == ["z500", "t500"]
    assert np.isfinite(analysis.z500.values).all()


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
def test_missing_variable_lists_what_the_store_has(wb2_store):
    with pytest.raises(OptionError, match=r"no variable 'q'.*z \(geopotential\).*levels"):
        xensf.era5.open(wb2_store, variables=["z500", "q"])


def test_missing_level_lists_the_levels(wb2_store):
    with pytest.raises(OptionError, match=r"no level 550 hPa.*50, 100, 150"):
        xensf.era5.open(wb2_store, variables=["z550"])
    with pytest.raises(OptionError, match="no level 1 hPa"):
        xensf.era5.open(wb2_store, variables=["t"], levels=[1, 500])
    # [] gave a Dataset of no level, and a level listed twice came back twice
    with pytest.raises(OptionError, match=r"levels=\[\] asks for no level"):
        xensf.era5.open(wb2_store, variables=["t"], levels=[])
    with pytest.raises(OptionError, match="lists 500 hPa more than once"):
        xensf.era5.open(wb2_store, variables=["t"], levels=[500, 850, 500])


def test_a_resolution_or_storage_options_with_a_dataset_are_refused_not_ignored():
    sample = xensf.open_era5_sample()
    with pytest.raises(OptionError, match="either source= or resolution="):
        xensf.era5.open(sample, resolution="240x121")
    # storage_options with an open Dataset were ignored without a word
    with pytest.raises(OptionError, match="source is an open Dataset, already read"):
        xensf.era5.open(sample, storage_options={"token": "anon"})


@pytest.mark.parametrize("every, says", [("banana", "takes a duration such as '6h'"),
                                         ("0h", "must be a positive duration"),
                                         ("5h", "must divide a day"),
                                         ("36h", "or be a whole number of days")])  # fmt: skip
def test_a_bad_every_is_an_option_error(wb2_store, every, says):
    # 'banana' was pandas' ValueError; 5h and 36h took the times that are multiples of
    # them since 1970, one day this hour and the next another (on the ERA5 sample, 5h
    # kept 2017-01-01T12 alone)
    with pytest.raises(OptionError, match=says):
        xensf.era5.open(wb2_store, variables=["z500"], every=every)


def test_every_takes_whole_days_from_the_first_day():
    times = xensf.era5.open("era5_sample", variables=["z500"], every="2D").time.values
    np.testing.assert_array_equal(times, np.array(["2017-01-01T00"], "datetime64[ns]"))
    times = xensf.era5.open("era5_sample", variables=["z500"], every="1D").time.values
    assert [str(t)[:13] for t in times] == ["2017-01-01T00", "2017-01-02T00"]


def test_the_sample_opens_with_its_members_in_one_chunk_and_assimilates_lazily():
    # The sample's file holds one member per chunk, and the loader kept them: its own
    # result was refused by assimilate with a ChunkingError.
    ds = xensf.era5.open("era5_sample", variables=["z500"], chunks={"time": 1})
    assert ds.z500.chunks[:2] == ((10,), (1, 1, 1, 1))
    prior, truth = ds.isel(member=slice(1, None)), ds.isel(member=0, drop=True)
    mask = np.zeros((ds.sizes["latitude"], ds.sizes["longitude"]), bool)
    mask[::8, ::8] = True
    obs = truth.where(xr.DataArray(mask, dims=("latitude", "longitude")))
    options = dict(method="letkf", obs_error=10.0, loc_radius=500.0)
    analysis = prior.ensf.assimilate(obs, **options)
    assert isinstance(analysis.z500.data, dask.array.Array)
    eager = prior.load().ensf.assimilate(obs.load(), **options)
    np.testing.assert_array_equal(analysis.z500.values, eager.z500.values)
    # members chunked on purpose stay so
    own = xensf.era5.open("era5_sample", variables=["z500"], chunks={"member": 5})
    assert own.z500.chunks[0] == (5, 5)


def test_level_on_a_surface_variable(wb2_store):
    with pytest.raises(OptionError, match="no level dim"):
        xensf.era5.open(wb2_store, variables=["msl500"])


@pytest.mark.parametrize(
    "time",
    [("2019-12-31", "2020-01-01T12"), ("2020-01-01", "2020-01-05"), "1959-01-01",
     ["2020-01-01T00", "2021-06-01T00"]],
)  # fmt: skip
def test_time_outside_the_span(wb2_store, time):
    with pytest.raises(OptionError, match=r"span 2020-01-01T00 to 2020-01-02T18"):
        xensf.era5.open(wb2_store, variables=["z500"], time=time)


def test_a_time_range_given_backwards(wb2_store):
    # it was told that no time of the store lies in it, with the span it lies in
    with pytest.raises(OptionError, match="starts at 2020-01-02 after it stops at 2020-01-01"):
        xensf.era5.open(wb2_store, variables=["z500"], time=("2020-01-02", "2020-01-01"))


def test_time_not_in_the_store(wb2_store):
    with pytest.raises(OptionError, match=r"not times of the store.*2020-01-01T03"):
        xensf.era5.open(wb2_store, variables=["z500"], time="2020-01-01T03")


def test_unknown_entry_and_resolution():
    with pytest.raises(OptionError, match="wb2_era5_64x32"):
        xensf.era5.open("wb2_era5_1x1")
    with pytest.raises(OptionError, match=r"64x32.*240x121.*1440x721"):
        xensf.era5.open(resolution="128x64")


# --------------------------------------------------------------------------------------
# unreachable stores: clear errors, no network needed
# --------------------------------------------------------------------------------------
@pytest.fixture
def no_gcsfs(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` raises ImportError


def test_gs_store_without_gcsfs_says_what_to_install(no_gcsfs):
    with pytest.raises(StoreError, match=r"gs://weatherbench2/.*64x32.*gcsfs.*xensf\[gcs\]"):
        xensf.era5.open(resolution="64x32", variables="z500")


def test_unreachable_store_names_the_url(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", sys.modules.get("gcsfs") or object())

    def fail(*args, **kwargs):
        raise OSError("Cannot connect to host storage.googleapis.com:443")

    monkeypatch.setattr(xr, "open_dataset", fail)
    url = "gs://weatherbench2/datasets/era5/nothing.zarr"
    with pytest.raises(StoreError) as info:
        xensf.era5.open(url)
    message = str(info.value)
    assert url in message and "network" in message and "Cannot connect" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("url", ["memory://xensf-no-such-store.zarr", "/no/such/era5.zarr"])
def test_missing_store_names_the_url(url):
    with pytest.raises(StoreError, match=url):
        xensf.era5.open(url)


def test_a_store_under_home_is_read_from_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    xr.Dataset({"z": ("x", np.arange(3.0))}).to_zarr(tmp_path / "small.zarr")
    ds = xensf.era5.open_store("~/small.zarr")
    np.testing.assert_array_equal(ds.z.values, [0.0, 1.0, 2.0])


def test_chunks_name_the_dims_of_the_result():
    ds = xensf.era5.open("era5_sample", chunks={"member": -1, "time": 1})
    assert ds["z"].chunksizes["member"] == (ds.sizes["member"],)
    assert set(ds["z"].chunksizes["time"]) == {1}
    with pytest.raises(OptionError, match=r"chunks names \['number'\]"):
        xensf.era5.open("era5_sample", chunks={"number": 3})
    # dask's raw errors (0, -2, 1.5, tuples that do not add up), and a string other
    # than "auto" was ignored
    for chunks, match in [({"time": 0}, r"chunks\['time'\] must be a positive"),
                          ({"time": -2}, r"chunks\['time'\] must be a positive"),
                          ({"time": 1.5}, r"chunks\['time'\] must be a positive"),
                          ({"time": (2, 3)}, r"do not fit the dims \{'time': 4\}"),
                          ("small", "must be a mapping")]:  # fmt: skip
        with pytest.raises(OptionError, match=match):
            xensf.era5.open("era5_sample", chunks=chunks)
    assert xensf.era5.open("era5_sample", chunks={"time": (1, 3)})["z"].chunksizes["time"] == (
        1,
        3,
    )
    names = np.array(["z500", "t"])  # names in an array are a list of names
    assert list(xensf.era5.open("era5_sample", variables=names).data_vars) == ["z500", "t"]
    for source, variables, match in [(3, None, "source must be a catalog entry"),
                                     ("era5_sample", 3, "variables must be a name")]:  # fmt: skip
        with pytest.raises(OptionError, match=match):  # (raw TypeErrors)
            xensf.era5.open(source, variables=variables)
