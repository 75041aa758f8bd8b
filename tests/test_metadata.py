"""CF output metadata of an analysis, checked by the IOOS compliance checker."""

from __future__ import annotations

import copy
import datetime as dt
import json
import warnings
from pathlib import Path

import dask.array as da
import netCDF4
import numpy as np
import pytest
import xarray as xr

import xensf
from xensf.bridge.metadata import (
    CFMetadataWarning,
    analysis_metadata,
    netcdf_attr_value,
    xensf_version,
)
from xensf.era5 import open_era5_sample

checker_runner = pytest.importorskip("compliance_checker.runner")

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ioos_sos checker is deprecated:DeprecationWarning"
)

NOW = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
CALL = "ds.ensf.assimilate(obs, method='ensf', obs_error=0.1)"
PARAMETERS = {
    "steps": 100,
    "eps_beta": 0.025,
    "obs_error": {"t": 0.5, "z": 10.0},
    "paired": False,
    "loc_radius": None,
    "scale": [1.5, 200.0],
}


def cf_errors(path) -> list[str]:
    """The high-priority (error) messages of ``compliance-checker --test cf:1.11``."""
    checker_runner.CheckSuite.load_all_available_checkers()
    report = path.with_suffix(".json")
    checker_runner.ComplianceChecker.run_checker(
        str(path),
        ["cf:1.11"],
        verbose=0,
        criteria="normal",
        output_filename=str(report),
        output_format="json",
    )
    result = json.loads(report.read_text())["cf:1.11"]
    return [msg for group in result["high_priorities"] for msg in group["msgs"]]


def snapshot(ds: xr.Dataset):
    """Everything about a Dataset's metadata that must survive untouched."""
    return copy.deepcopy(
        (
            dict(ds.attrs),
            {name: (dict(v.attrs), dict(v.encoding)) for name, v in ds.variables.items()},
            set(ds.coords),
        )
    )


@pytest.fixture
def prior():
    with open_era5_sample() as ds:
        yield ds.load()


@pytest.fixture
def result(prior):
    """A stand-in analysis: new data, attributes lost on the way, as after arithmetic."""
    out = prior.copy(deep=True)
    out["z"] = out.z + 1.0
    out["t"] = out.t - 0.5
    out.attrs = {}
    for name in out.data_vars:
        out[name].attrs = {}
    return out


def mended(result, prior, **overrides):
    kwargs = dict(
        member_dim="number",
        time_dim="time",
        call=CALL,
        method="ensf",
        parameters=PARAMETERS,
        now=NOW,
    )
    kwargs.update(overrides)
    return analysis_metadata(result, prior, **kwargs)


@pytest.mark.parametrize("how", ["packaged file", "written by xarray"])
def test_raw_sample_fails_the_cf_checker(tmp_path, how):
    """The sample has the flaws the metadata mends, so the tests below can catch a regression."""
    with open_era5_sample() as ds:
        if how == "packaged file":
            path = tmp_path / "era5-sample.nc"
            path.write_bytes(Path(ds.encoding["source"]).read_bytes())
        else:
            path = tmp_path / "raw.nc"
            ds.to_netcdf(path)
    errors = cf_errors(path)
    for coord in ("isobaricInhPa", "latitude", "longitude"):
        assert (
            f"The coordinate variable '{coord}' must not have the _FillValue attribute." in errors
        )
    assert any("'time' should have standard_name='time'" in e for e in errors)


def test_mended_output_passes_the_cf_checker(tmp_path, result, prior):
    path = tmp_path / "analysis.nc"
    mended(result, prior).to_netcdf(path)
    assert cf_errors(path) == []
    with netCDF4.Dataset(path) as nc:
        for coord in ("isobaricInhPa", "latitude", "longitude", "number", "time"):
            assert "_FillValue" not in nc[coord].ncattrs()
        assert nc.Conventions == "CF-1.11"


_PRODUCTS = {
    "mean": lambda p, t, o: p.ensf.mean(),
    "spread": lambda p, t, o: p.ensf.spread(),
    "rmse": lambda p, t, o: p.ensf.rmse(t),
    "crps": lambda p, t, o: p.ensf.crps(t),
    "spread_skill": lambda p, t, o: p.ensf.spread_skill(t),
    "rank_histogram": lambda p, t, o: p.ensf.rank_histogram(t),
    "innovations": lambda p, t, o: p.ensf.innovations(o, obs_error={"z": 50.0, "t": 0.5}),
    "cross_validate": lambda p, t, o: p.isel(time=[0]).ensf.cross_validate(
        o.isel(time=[0]), {"loc_radius": [500.0, 1000.0]}, method="letkf",
        obs_error={"z": 50.0, "t": 0.5}, folds=2, progress=False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("product", sorted(_PRODUCTS))
def test_products_of_the_ensemble_pass_the_cf_checker(tmp_path, prior, product):
    # the mean, spread and scores of the ERA5 sample kept its _FillValue on coordinates
    # and its time labelled forecast_reference_time (5 CF errors); the innovations had
    # a time without a standard_name, the cross-validation a bare setting coordinate
    before = snapshot(prior)
    ensemble, truth = prior.isel(number=slice(1, None)), prior.isel(number=0, drop=True)
    obs = truth.where((truth.latitude % 15 == 0) & (truth.longitude % 15 == 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        out = _PRODUCTS[product](ensemble, truth, obs)
    path = tmp_path / f"{product}.nc"
    out.to_netcdf(path)
    assert cf_errors(path) == []
    assert snapshot(prior) == before  # the input's metadata untouched


def test_mended_output_keeps_the_information(tmp_path, result, prior):
    path = tmp_path / "analysis.nc"
    mended(result, prior).to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_allclose(back.t, result.t)
        assert back.time.attrs["standard_name"] == "time"
        assert "forecast reference time" in back.time.attrs["comment"]
        assert back.valid_time.attrs["standard_name"] == "time"
        assert back.step.attrs["standard_name"] == "forecast_period"
        np.testing.assert_array_equal(back.time.values, prior.time.values)
        np.testing.assert_array_equal(back.latitude.values, prior.latitude.values)
        for name in ("z", "t"):
            for key in ("units", "standard_name", "long_name", "GRIB_paramId"):
                assert back[name].attrs[key] == prior[name].attrs[key]


def test_global_attributes(result, prior):
    out = mended(result, prior)
    for key in ("GRIB_centre", "institution", "license"):
        assert out.attrs[key] == prior.attrs[key]
    assert out.attrs["Conventions"] == "CF-1.11"
    assert out.attrs["title"]
    assert out.attrs["xensf_method"] == "ensf"
    assert out.attrs["xensf_version"] == xensf_version()
    assert out.attrs["xensf_steps"] == 100
    assert out.attrs["xensf_eps_beta"] == 0.025
    assert json.loads(out.attrs["xensf_obs_error"]) == {"t": 0.5, "z": 10.0}
    assert out.attrs["xensf_paired"] == 0
    assert out.attrs["xensf_loc_radius"] == "none"
    np.testing.assert_array_equal(out.attrs["xensf_scale"], [1.5, 200.0])


def test_history_is_prepended_newest_first(result, prior):
    first = mended(result, prior)
    lines = first.attrs["history"].split("\n")
    assert lines[0] == f"2025-03-04T05:06:07Z xensf {xensf_version()}: {CALL}"
    assert lines[1:] == prior.attrs["history"].split("\n")

    later = NOW + dt.timedelta(hours=1)
    second = mended(first, first, call="cycle step 2", now=later)
    lines2 = second.attrs["history"].split("\n")
    assert lines2[0] == f"2025-03-04T06:06:07Z xensf {xensf_version()}: cycle step 2"
    assert lines2[1:] == lines


def test_cycled_analysis_replaces_old_parameters(result, prior):
    first = mended(result, prior)
    second = mended(first, first, method="letkf", parameters={"inflation": 1.1})
    assert second.attrs["xensf_method"] == "letkf"
    assert second.attrs["xensf_inflation"] == 1.1
    assert "xensf_steps" not in second.attrs


def test_member_coordinate_is_a_realization(result, prior):
    out = mended(result, prior)
    assert out.number.attrs["standard_name"] == "realization"
    assert out.number.attrs["long_name"] == prior.number.attrs["long_name"]


def test_member_dimension_without_coordinate_gets_one(result, prior):
    bare = result.drop_vars("number")
    out = mended(bare, prior.drop_vars("number"))
    assert out.number.values.tolist() == list(range(10))
    assert out.number.attrs["standard_name"] == "realization"
    assert out.number.attrs["long_name"] == "ensemble member"


def test_inputs_are_not_modified(result, prior):
    result.z.encoding["scale_factor"] = 0.1
    before = snapshot(result), snapshot(prior)
    mended(result, prior)
    assert (snapshot(result), snapshot(prior)) == before


def test_dimensions_coords_and_names_are_the_inputs(result, prior):
    out = mended(result, prior)
    assert dict(out.sizes) == dict(prior.sizes)
    assert set(out.coords) == set(prior.coords)
    assert set(out.data_vars) == set(prior.data_vars)
    xr.testing.assert_equal(out, result)


def test_float_packing_is_dropped(result, prior):
    # The original cfgrib file stores float64 with scale_factor 0.1 (CF 8.1 warns).
    result.t.encoding.update(scale_factor=0.1, dtype=np.dtype("float64"))
    result.number.encoding.update(scale_factor=1)
    out = mended(result, prior)
    assert "scale_factor" not in out.t.encoding
    assert out.number.encoding["scale_factor"] == 1  # int storage: real packing, kept


def test_lazy_input_stays_lazy(prior):
    with open_era5_sample(chunks={"time": 1}) as lazy:
        out = mended(lazy, lazy)
        assert isinstance(out.t.data, da.Array)
        assert out.t.data is lazy.t.data
        assert out.time.attrs["standard_name"] == "time"


def test_nonzero_lead_time_is_not_relabelled(result, prior):
    lead = np.timedelta64(6, "h")
    forecast = result.assign_coords(
        valid_time=("time", result.valid_time.values + lead, result.valid_time.attrs),
        step=((), 6.0, result.step.attrs),
    )
    with pytest.warns(CFMetadataWarning, match="forecast_reference_time"):
        out = mended(forecast, forecast)
    assert out.time.attrs["standard_name"] == "forecast_reference_time"


def test_time_without_attributes_gets_standard_name(result, prior):
    # WeatherBench2 stores time with no CF attributes at all.
    plain = result.drop_vars(["valid_time", "step"])
    plain.time.attrs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CFMetadataWarning)
        out = mended(plain, plain)
    assert out.time.attrs["standard_name"] == "time"


def test_missing_latitude_attributes_are_filled(tmp_path, result, prior):
    plain = prior.copy()
    plain.latitude.attrs = {}
    out = mended(result.assign_coords(latitude=plain.latitude), plain)
    assert out.latitude.attrs == {"standard_name": "latitude", "units": "degrees_north"}
    path = tmp_path / "analysis.nc"
    out.to_netcdf(path)
    assert cf_errors(path) == []


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, "CF-1.11"),
        ("CF-1.7", "CF-1.11"),
        ("CF-1.6, ACDD-1.3", "CF-1.11, ACDD-1.3"),
        ("ACDD-1.3", "CF-1.11 ACDD-1.3"),
    ],
)
def test_conventions(result, prior, existing, expected):
    prior = prior.copy()
    prior.attrs = {k: v for k, v in prior.attrs.items() if k != "Conventions"}
    if existing is not None:
        prior.attrs["Conventions"] = existing
    assert mended(result, prior).attrs["Conventions"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 1),
        (np.bool_(False), 0),
        (None, "none"),
        ("ensf", "ensf"),
        (3, 3),
        ({"b": 1, "a": np.float32(2.0)}, '{"a": 2.0, "b": 1}'),
        (["x", 1], '["x", 1]'),
    ],
)
def test_netcdf_attr_value(value, expected):
    assert netcdf_attr_value(value) == expected


def test_unknown_dimension_is_an_error(result, prior):
    with pytest.raises(ValueError, match="member_dim 'member'"):
        mended(result, prior, member_dim="member")
    with pytest.raises(ValueError, match="time_dim 'valid_time'"):
        mended(result, prior, time_dim="valid_time")
