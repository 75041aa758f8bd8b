"""The shipped intake catalog opens and its local entry reads the packaged sample."""

from __future__ import annotations

import xensf


def test_catalog_local_sample_entry():
    cat = xensf.catalog()
    entry = cat.entries["era5_sample"]
    assert "Copernicus" in entry.metadata["description"]
    assert entry.metadata["latitude_order"] == "descending"
    ds = cat.era5_sample.read()
    assert dict(ds.sizes) == {
        "number": 10,
        "time": 4,
        "isobaricInhPa": 2,
        "latitude": 61,
        "longitude": 120,
    }
    assert ds.latitude.values[0] > ds.latitude.values[-1]
