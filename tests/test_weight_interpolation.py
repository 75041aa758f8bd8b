"""Weight interpolation of the LETKF (Yang et al. 2009): the anchors and their bilinear
weights, analyses equal to the full one at the anchors, close between them, and bad
input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from xensf.bridge.geometry import coarse_anchors
from xensf.errors import LocalisationWarning, OptionError


def test_the_anchor_weights_reproduce_a_linear_field_and_are_exact_on_anchors():
    nlat, nlon = 11, 17
    anchors, neighbours, weights = coarse_anchors((nlat, nlon), 4)
    i, j = np.meshgrid(np.arange(nlat), np.arange(nlon), indexing="ij")
    field = (2.0 * i - 3.0 * j + 5.0).ravel()
    np.testing.assert_allclose((weights * field[anchors][neighbours]).sum(-1), field)
    np.testing.assert_allclose(weights.sum(-1), 1.0)
    own = np.flatnonzero(np.isin(np.arange(nlat * nlon), anchors))
    assert np.all(weights[own].max(-1) == 1.0)
    rows, cols = np.unique(anchors // nlon), np.unique(anchors % nlon)
    assert rows.tolist() == [0, 4, 8, 10] and cols.tolist() == [0, 4, 8, 12, 16]


def _case(levels=False):
    r = np.random.default_rng(0)
    lat, lon = np.linspace(-60, 60, 25), np.arange(48) * 7.5
    shape = (12, lat.size, lon.size)
    dims = ("member", "lat", "lon")
    coords = {"lat": lat, "lon": lon}
    if levels:
        shape, dims = (12, 2, lat.size, lon.size), ("member", "level", "lat", "lon")
        coords["level"] = ("level", [850.0, 500.0], {"units": "hPa"})
    ds = xr.Dataset({"t": (dims, 280 + r.standard_normal(shape), {"units": "K"})}, coords)
    n = 40
    values = 280 + 2 * r.standard_normal((2, n) if levels else n)
    obs = xr.Dataset(
        {"t": (("level", "s") if levels else ("s",), values, {"units": "K"})},
        coords={"lat": ("s", r.uniform(-60, 60, n)), "lon": ("s", r.uniform(0, 345, n))}
        | ({"level": coords["level"]} if levels else {}),
    )
    return ds.astype("float64"), obs


@pytest.mark.parametrize("levels", [False, True])
def test_the_analysis_is_the_full_one_at_the_anchors_and_close_between(levels):
    ds, obs = _case(levels)
    options = dict(method="letkf", obs_error=1.0, loc_radius=3000.0, obs_dim="s")
    if levels:
        options["vertical_radius"] = 0.5
    full = ds.ensf.assimilate(obs, **options)
    np.testing.assert_array_equal(
        ds.ensf.assimilate(obs, weight_stride=1, **options).t.values, full.t.values
    )
    coarse = ds.ensf.assimilate(obs, weight_stride=3, **options)
    assert coarse.attrs["xensf_weight_stride"] == 3
    on = dict(lat=ds.lat[[0, 3, 6, 21, 24]], lon=ds.lon[[0, 3, 45, 47]])
    np.testing.assert_allclose(coarse.t.sel(on).values, full.t.sel(on).values, rtol=1e-12)
    increment = (full.t - ds.t).mean("member")
    error = (coarse.t - full.t).mean("member")
    assert float(np.sqrt((error**2).mean())) < 0.25 * float(np.sqrt((increment**2).mean()))
    assert not np.allclose(coarse.t.values, full.t.values)  # interpolated in between


def test_weight_stride_is_checked_before_any_work():
    import xensf

    ds, obs = _case()
    options = dict(method="letkf", obs_error=1.0, loc_radius=2000.0, obs_dim="s")
    for bad in (0, 2.5, True):
        with pytest.raises(OptionError, match="weight_stride must be a whole number"):
            ds.ensf.assimilate(obs, weight_stride=bad, **options)
    with pytest.raises(OptionError, match="adaptive_inflation needs a transform"):
        ds.ensf.assimilate(obs, weight_stride=2, adaptive_inflation=True, **options)
    with pytest.raises(OptionError, match="interpolate_from needs loc_radius"):
        xensf.letkf_analysis(
            np.zeros((3, 4)) + np.arange(3)[:, None], np.ones(4), np.arange(4), 1.0,
            interpolate_from=([0], [[0]] * 4, [[1.0]] * 4),
        )  # fmt: skip


@pytest.mark.parametrize("levels", [False, True])
def test_spatial_blocks_interpolate_from_the_whole_grids_anchors(levels):
    """A block's edge interpolates from anchors in other blocks: their transforms are
    computed at those locations (they need only the observations), so chunked equals
    the whole grid's interpolated analysis."""
    ds, obs = _case(levels)
    options = dict(method="letkf", obs_error=1.0, loc_radius=2000.0, obs_dim="s")
    if levels:
        options["vertical_radius"] = 0.5
    whole = ds.ensf.assimilate(obs, weight_stride=3, **options)
    blocks = ds.chunk({"lat": 7, "lon": 10}).ensf.assimilate(obs, weight_stride=3, **options)
    assert blocks.t.chunks is not None
    np.testing.assert_allclose(blocks.t.values, whole.t.values, rtol=1e-12)
    assert not np.allclose(whole.t.values, ds.t.values)


def test_anchors_farther_apart_than_the_radius_warn():
    # weight_stride=50 on this grid leaves anchors at the corners only, which no
    # observation reaches: the analysis came back the prior, without a word
    ds, obs = _case()
    options = dict(method="letkf", obs_error=1.0, loc_radius=1000.0, obs_dim="s")
    with pytest.warns(LocalisationWarning, match=r"weight_stride=50 times .* weight_stride <= 1"):
        ds.ensf.assimilate(obs, weight_stride=50, **options)
    with pytest.warns(LocalisationWarning, match=r"weight_stride <= 1 here"):
        ds.ensf.assimilate(obs, weight_stride=2, **options)  # 2 x 614 km > 1000 km
    with warnings.catch_warnings():
        warnings.simplefilter("error", LocalisationWarning)
        ds.ensf.assimilate(obs, weight_stride=3, **{**options, "loc_radius": 2000.0})
