"""The shipped intake catalog: it parses, its remote entries point at the right stores with
the right options, every entry documents itself, and local entries open lazily."""

from __future__ import annotations

import sys

import dask.array
import pytest
import yaml

import xensf
import xensf.era5
from xensf.era5 import catalog_entries, catalog_path
from xensf.errors import StoreError

REMOTE = {
    "wb2_era5_64x32": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-6h-64x32_equiangular_conservative.zarr",
    "wb2_era5_240x121": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr",
    "wb2_era5_1440x721": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-wb13-6h-1440x721_with_derived_variables.zarr",
    "arco_era5": "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3",
}
LATITUDE_ORDER = {
    "wb2_era5_64x32": "ascending",
    "wb2_era5_240x121": "ascending",
    "wb2_era5_1440x721": "descending",
    "arco_era5": "descending",
    "era5_sample": "descending",
}
DOCUMENTED = {"description", "resolution", "grid", "time_span", "time_step", "variables",
              "levels", "latitude_order", "dims", "license"}  # fmt: skip


def test_catalog_file_is_plain_intake2_yaml():
    with open(catalog_path()) as f:
        spec = yaml.safe_load(f)
    assert spec["version"] == 2
    assert set(spec["entries"]) == set(REMOTE) | {"era5_sample"}


def test_catalog_lists_the_catalog_entries():
    cat = xensf.catalog()
    assert set(cat.entries) == set(REMOTE) | {"era5_sample"}


@pytest.mark.parametrize("name", sorted(REMOTE))
def test_remote_entries_carry_url_and_anonymous_access(name):
    entry = catalog_entries()[name]
    assert entry["url"] == REMOTE[name]
    assert entry["storage_options"] == {"token": "anon"}
    assert entry["kind"] == "remote"
    reader = xensf.catalog()[name]
    assert reader.kwargs["chunks"] == {}  # opened lazily, in the store's own chunks


@pytest.mark.parametrize("name", sorted(LATITUDE_ORDER))
def test_every_entry_documents_itself(name):
    metadata = xensf.catalog().entries[name].metadata
    assert DOCUMENTED <= set(metadata)
    assert metadata["latitude_order"] == LATITUDE_ORDER[name]
    assert "z" in metadata["variables"] or "geopotential" in metadata["variables"]
    assert 500 in metadata["levels"] and 850 in metadata["levels"]


def test_resolutions_documented():
    entries = catalog_entries()
    assert entries["wb2_era5_64x32"]["grid"].startswith("64 x 32")
    assert entries["wb2_era5_240x121"]["grid"].startswith("240 x 121")
    assert entries["wb2_era5_1440x721"]["grid"].startswith("1440 x 721")
    assert entries["wb2_era5_64x32"]["time_span"] == "1959-01-01T00/2023-01-10T18"


def test_catalog_local_sample_entry_opens_lazily():
    cat = xensf.catalog()
    entry = cat.entries["era5_sample"]
    assert "Copernicus" in entry.metadata["description"]
    ds = cat.era5_sample.read()
    assert dict(ds.sizes) == {
        "number": 10,
        "time": 4,
        "isobaricInhPa": 2,
        "latitude": 61,
        "longitude": 120,
    }
    assert ds.latitude.values[0] > ds.latitude.values[-1]  # as the file has it
    assert isinstance(ds.z.data, dask.array.Array)


def test_remote_entry_without_gcsfs_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(StoreError, match=r"gs://gcp-public-data-arco-era5/.*gcsfs.*xensf\[gcs\]"):
        xensf.catalog().arco_era5.read()


def test_the_old_catalog_module_still_imports_with_a_warning_and_stays_callable():
    import importlib

    sys.modules.pop("xensf.catalog", None)
    with pytest.warns(FutureWarning, match=r"xensf\.era5\.catalog_entries"):
        module = importlib.import_module("xensf.catalog")
    try:
        assert sorted(module().entries) == sorted(xensf.era5.catalog().entries)
        assert module.era5_entries() == catalog_entries()
    finally:  # the package attribute back to the function, for the other tests
        sys.modules.pop("xensf.catalog", None)
        xensf.catalog = xensf.era5.catalog


def test_the_catalog_lists_its_entries_and_one_name_serves_both_uses():
    import subprocess
    import sys

    names = ["arco_era5", "era5_sample", "wb2_era5_1440x721", "wb2_era5_240x121", "wb2_era5_64x32"]
    cat = xensf.catalog()
    assert sorted(cat) == names
    assert all(n in str(cat) for n in names)
    # in a fresh interpreter: one function under each name, before and after the
    # packages that hold them are imported
    code = (
        "import inspect, xensf; f = xensf.catalog; import xensf.era5; "
        "print(sorted(xensf.era5.catalog_entries())); "
        "import xensf.cycling; print(inspect.isfunction(xensf.cycle) and "
        "inspect.isfunction(f) and f is xensf.catalog is xensf.era5.catalog, "
        "xensf.cycle is xensf.cycling.cycle)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [str(names), "True True"]
