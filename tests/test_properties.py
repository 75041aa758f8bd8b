"""Property-based tests of ``assimilate``: any input gives a correct result or an
``XensfError``, never another exception, and the input is never modified.

Hypothesis generates small ensembles with varied dim names and orders, latitude either
way, both longitude conventions, float32 or float64, gridded or station observations
with random gaps, every form of observation error, numpy or dask with random time
chunks, times as numpy datetimes, cftime dates of a noleap or 360-day calendar or
numbers (observed at them, or an hour later with ``obs_time_tolerance``), and length-1
dims; EnSF, which draws noise, must give the same bits again
from a deep copy of its input. A second property holds on geographic and planar grids
(km or m, anywhere): a station on a grid node gives LETKF's analysis of the same
observation given on the grid. A third: a prior chunked along latitude and longitude
(and perhaps cut after chunking) gives the analysis, warnings and refusals of the
prior in one chunk. Gridded observations in another order are read by their labels;
a global grid given a closing column (its first column again) gives the open grid's
analysis, warnings and refusals, the first column's analysis in both. A modest number
of examples runs by default; ``-m slow`` runs many more.
"""

from __future__ import annotations

import copy
import datetime
import warnings

import numpy as np
import pytest
import xarray as xr

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xensf  # noqa: E402, F401  (registers the accessor)
from xensf.bridge.dims import find_dims  # noqa: E402
from xensf.errors import ChunkingError, XensfError, XensfWarning  # noqa: E402

OBS_ERROR_FORMS = st.sampled_from(["number", "dict", "relative", "variable", "attribute"])


def give_obs_error(form, obs, kwargs, name, err, units, relative) -> None:
    """State the error ``err`` of the observations of ``name`` in ``form``: a number,
    a mapping, the ``relative`` error, an ``<name>_error`` variable or an attribute
    (into ``kwargs`` or the fresh ``obs``)."""
    if form == "number":
        kwargs["obs_error"] = err
    elif form == "dict":
        kwargs["obs_error"] = {name: err}
    elif form == "relative":
        kwargs["obs_error"] = relative
    elif form == "variable":
        obs[f"{name}_error"] = xr.full_like(obs[name], err).assign_attrs(units=units)
    else:
        obs[name].attrs["obs_error"] = err


#: the kinds of time coordinate drawn: numpy datetimes, cftime dates of two climate
#: calendars (object arrays), numbers
TIME_KINDS = ("datetime64", "noleap", "360_day", "numeric")


#: the methods that draw noise (from seeds of the user's seed and the analysis time)
RANDOM_METHODS = ("ensf", "latent-ensf", "latent-ensf-letkf")


def _times(kind: str, n: int) -> np.ndarray:
    if kind == "datetime64":
        return np.arange(n).astype("datetime64[D]").astype("datetime64[ns]")
    if kind == "numeric":
        return np.arange(n) * 6.0
    import cftime

    start = cftime.datetime(2001, 2, 28, calendar=kind)  # past February's end
    return np.array([start + datetime.timedelta(days=d) for d in range(n)])


def _hour_later(times: np.ndarray, kind: str) -> np.ndarray:
    """``times`` (of :func:`_times`) an hour later (numeric ones, 6 apart: 0.5 later)."""
    if kind == "numeric":
        return times + 0.5
    if kind == "datetime64":
        return times + np.timedelta64(1, "h")
    return np.array([t + datetime.timedelta(hours=1) for t in times])


@st.composite
def cases(draw, unlabelled: bool = True):
    """A prior, observations and ``assimilate`` keyword arguments; with ``unlabelled``,
    some without the coordinates of a dim (paired by position, or refused)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_mem = draw(st.integers(1, 5))  # 1 member: refused with an EnsembleError
    n_lat, n_lon = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    n_time = draw(st.sampled_from([None, 1, 2, 3]))
    names = {
        "member": draw(st.sampled_from(["member", "number", "realization"])),
        "lat": draw(st.sampled_from(["lat", "latitude"])),
        "lon": draw(st.sampled_from(["lon", "longitude"])),
    }
    dtype = draw(st.sampled_from(["float32", "float64"]))
    lat = np.linspace(-60, 60, n_lat) if n_lat > 1 else np.array([10.0])
    if draw(st.booleans()):
        lat = lat[::-1]
    global_lon = draw(st.booleans())
    step = 360.0 / n_lon if global_lon else 5.0
    lon = 100.0 + step * np.arange(n_lon)
    if draw(st.booleans()):  # the -180..180 convention
        lon = (lon + 180.0) % 360.0 - 180.0
    dims = [names["member"], names["lat"], names["lon"]]
    if n_time is not None:
        dims.append("time")
    order = draw(st.permutations(dims))
    sizes = {names["member"]: n_mem, names["lat"]: n_lat, names["lon"]: n_lon, "time": n_time}
    shape = [sizes[d] for d in order]
    scale = draw(st.sampled_from([1.0, 1e-3, 1e4]))
    values = (280.0 + rng.standard_normal(shape)) * scale
    coords = {names["lat"]: lat, names["lon"]: lon}
    if n_time is not None:
        time_kind = draw(st.sampled_from(TIME_KINDS))
        coords["time"] = _times(time_kind, n_time)
    prior = xr.Dataset({"t": (order, values.astype(dtype), {"units": "K"})}, coords=coords)

    truth = prior.t.isel({names["member"]: 0}, drop=True)
    stations = draw(st.booleans())
    if stations:
        n_obs = draw(st.integers(0, 4))
        slat = rng.uniform(lat.min() - 5, lat.max() + 5, n_obs)  # some may lie outside
        slon = rng.uniform(lon.min(), lon.min() + step * n_lon, n_obs)
        if n_obs and draw(st.booleans()):  # a station without a position
            slat[0] = np.nan
        obs_dims = (("time",) if n_time is not None else ()) + ("station",)
        ov = (
            280.0 * scale
            + rng.standard_normal(((n_time,) if n_time is not None else ()) + (n_obs,)) * scale
        )
        if n_obs and np.isnan(slat[0]) and draw(st.booleans()):  # and no value: left out
            ov[..., 0] = np.nan
        obs = xr.Dataset(
            {"t": (obs_dims, ov.astype(dtype), {"units": "K"})},
            coords={"lat": ("station", slat), "lon": ("station", slon)}
            | ({"time": prior.time.values} if n_time is not None else {}),
        )
    else:
        gaps = rng.random(truth.shape) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
        obs = truth.where(~gaps).to_dataset()
    kwargs = {}
    if n_time is not None and draw(st.booleans()):  # observed an hour off the state's times
        obs = obs.assign_coords(time=_hour_later(obs.time.values, time_kind))
        kwargs["obs_time_tolerance"] = 1.0 if time_kind == "numeric" else "2h"
    give_obs_error(draw(OBS_ERROR_FORMS), obs, kwargs, "t", 0.5 * scale, "K", "20%")
    method = draw(st.sampled_from(["letkf", "ensf"]))
    kwargs["method"] = method
    if method == "ensf":
        kwargs["steps"] = 8
    elif draw(st.booleans()):
        kwargs["loc_radius"] = 3000.0
        kwargs["cross_variable"] = draw(st.booleans())
    if n_time is not None and draw(st.booleans()):  # observed at fewer times
        obs = obs.isel(time=slice(0, draw(st.integers(1, n_time))))
    # coordinates left out, as files without them open: paired by position or refused
    dropped = [(), ("prior", "time"), ("obs", "time"), ("obs", "grid")] if unlabelled else [()]
    if left_out := draw(st.sampled_from(dropped)):
        whose, what = left_out
        drop = (
            ["time"]
            if what == "time"
            else [c for c in (*obs.coords, *obs.dims) if "lat" in c or "lon" in c]
        )
        if whose == "prior" and "time" in prior.coords:
            prior = prior.drop_vars("time")
        elif whose == "obs":
            obs = obs.drop_vars([c for c in drop if c in obs.coords])
    chunks = None
    if n_time is not None and draw(st.booleans()):
        chunks = draw(st.integers(1, n_time))
    return prior, obs, kwargs, chunks


def _assimilate(prior, obs, kwargs):
    with warnings.catch_warnings():  # computed here too: a lazy analysis warns then
        warnings.simplefilter("ignore", XensfWarning)
        return prior.ensf.assimilate(obs, seed=5, **kwargs).compute()


def analysed(case, name: str = "t", units: str = "K") -> xr.Dataset | None:
    """The analysis of a generated case, or None where it was refused with an
    XensfError; asserts what holds either way (the input unchanged) and what every
    result keeps (variable ``name``: the prior's dims, dtype, coordinates and units,
    finite; numpy = dask bit for bit in every output)."""
    prior, obs, kwargs, chunks = case
    prior_before, obs_before = copy.deepcopy(prior), copy.deepcopy(obs)
    try:
        out = _assimilate(prior, obs, kwargs)
    except XensfError:
        return None
    finally:
        xr.testing.assert_identical(prior, prior_before)
        xr.testing.assert_identical(obs, obs_before)
    assert out[name].dims == prior[name].dims and out[name].dtype == prior[name].dtype
    for coord_name, coord in prior.coords.items():  # values kept (attributes may be mended)
        np.testing.assert_array_equal(out[coord_name].values, coord.values)
    assert np.isfinite(out[name].values).all()
    assert out[name].attrs["units"] == units
    if chunks is not None:
        lazy = _assimilate(prior.chunk({"time": chunks}), obs.chunk({"time": chunks}), kwargs)
        for var in out.data_vars:
            np.testing.assert_array_equal(lazy[var].values, out[var].values, err_msg=var)
    if kwargs["method"] in RANDOM_METHODS:  # the same bits from a copy of the input
        again = _assimilate(_rebuilt(prior), _rebuilt(obs), kwargs)
        for var in out.data_vars:
            np.testing.assert_array_equal(again[var].values, out[var].values, err_msg=var)
    return out


def _rebuilt(ds: xr.Dataset) -> xr.Dataset:
    """A copy of ``ds`` whose coordinates hold new objects (a deep copy shares its
    indexes, and with them the cftime dates), as a Dataset built again would."""
    fresh = {c: (ds[c].dims, copy.deepcopy(ds[c].values), ds[c].attrs) for c in ds.coords}
    return ds.copy(deep=True).assign_coords(fresh)


def _check(case) -> str:
    """``"refused"`` (an XensfError) or ``"analysed"`` (a correct result); asserts both."""
    return "refused" if analysed(case) is None else "analysed"


# the same examples every run unless the "fuzz" profile is loaded (tests/conftest.py)
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=25, **_COMMON)
@given(cases())
def test_assimilate_gives_a_result_or_an_xensf_error(case):
    assert _check(case) in ("refused", "analysed")


@pytest.mark.slow
@settings(max_examples=400, **_COMMON)
@given(cases())
def test_assimilate_gives_a_result_or_an_xensf_error_many(case):
    assert _check(case) in ("refused", "analysed")


@st.composite
def block_cases(draw):
    """A case of :func:`cases` whose method can run on latitude × longitude blocks (a
    localised LETKF, EnSF with the paired prior score; perhaps on a prior with a land
    mask, perhaps one that moves in time), chunk sizes along both, and a cut of the grid made after chunking (as
    ``ds.sel`` of a region of a chunked store)."""
    prior, obs, kwargs, chunks = draw(cases())
    if kwargs["method"] == "ensf":
        kwargs["prior_score"] = "paired"
    elif kwargs.get("loc_radius") is None:
        kwargs["loc_radius"] = 3000.0
    dims = find_dims(prior)
    if draw(st.booleans()):  # land: a mask on some points, perhaps moving in time (ice)
        where = (dims.lat, dims.lon)
        if dims.time is not None and draw(st.booleans()):
            where = (dims.time, *where)
        shape = tuple(prior.sizes[d] for d in where)
        land = np.asarray(draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                         max_size=int(np.prod(shape))))).reshape(shape)  # fmt: skip
        if not land.all():
            prior = prior.where(~xr.DataArray(land, dims=where))
    sizes = {d: draw(st.integers(1, prior.sizes[d])) for d in (dims.lat, dims.lon)}
    if chunks is not None:
        sizes["time"] = chunks
    cut = {
        d: slice(1, None)
        for d in (dims.lat, dims.lon)
        if prior.sizes[d] > 2 and draw(st.booleans())
    }
    if cut and set(cut) <= set(obs.dims):  # gridded observations: on the cut grid
        obs = obs.isel(cut)
    return prior, obs, kwargs, sizes, cut


def _outcome(prior, obs, kwargs):
    """The analysis (or the XensfError's class) and the classes of the warnings."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", XensfWarning)
        try:
            out = prior.ensf.assimilate(obs, seed=5, **kwargs).compute()
        except XensfError as error:
            out = type(error)
    return out, {w.category for w in record if issubclass(w.category, XensfWarning)}


def _check_blocks_agree(case) -> None:
    """A prior chunked along latitude and longitude (and perhaps cut after) gives the
    analysis of the prior in one chunk, to rounding, with the same warnings; or both are refused; or the blocks
    are refused with a ChunkingError (what they cannot do: a station between grid
    points for EnSF)."""
    prior, obs, kwargs, sizes, cut = case
    whole, said = _outcome(prior.isel(cut), obs, kwargs)
    blocks, said_blocks = _outcome(prior.chunk(sizes).isel(cut), obs, kwargs)
    if isinstance(whole, type):
        assert isinstance(blocks, type), (whole, "refused, the blocks analysed")
        return
    if blocks is ChunkingError:
        return
    assert not isinstance(blocks, type), (blocks, "refused, one chunk analysed")
    assert said_blocks == said, (said, said_blocks)
    scale = float(np.abs(prior.t).max())
    np.testing.assert_allclose(blocks.t.values, whole.t.values, rtol=0, atol=2e-5 * scale)


@settings(max_examples=15, **_COMMON)
@given(block_cases())
def test_latitude_longitude_blocks_give_the_analysis_and_warnings_of_one_chunk(case):
    # Caught the blocks skipping the checks against the prior (no InnovationWarning,
    # no refusal of errors too small to compute with).
    _check_blocks_agree(case)


@pytest.mark.slow
@settings(max_examples=200, **_COMMON)
@given(block_cases())
def test_latitude_longitude_blocks_give_the_analysis_and_warnings_of_one_chunk_many(case):
    _check_blocks_agree(case)


@st.composite
def reordered_cases(draw):
    """A case of :func:`cases` with gridded observations, and the same observations with
    their latitudes the other way round and their longitudes rolled (on a global grid,
    perhaps into the other convention)."""
    prior, obs, kwargs, _ = draw(cases(unlabelled=False))
    dims = find_dims(prior)
    if not (dims.lat in obs.dims and dims.lon in obs.dims):  # stations: nothing to turn
        return prior, obs, obs, kwargs
    turned = obs.isel({dims.lat: slice(None, None, -1)}) if draw(st.booleans()) else obs
    turned = turned.roll({dims.lon: draw(st.integers(0, obs.sizes[dims.lon]))}, roll_coords=True)
    if draw(st.booleans()):
        lon = turned[dims.lon]
        signed = (lon + 180.0) % 360.0 - 180.0 if float(lon.max()) > 180.0 else lon % 360.0
        turned = turned.assign_coords({dims.lon: signed})
    return prior, obs, turned, kwargs


def _check_observations_read_by_their_labels(case) -> None:
    """Gridded observations in another order give the analysis and warnings of the same
    observations in the prior's order, or the same refusal."""
    prior, obs, turned, kwargs = case
    expected, got = _outcome(prior, obs, kwargs), _outcome(prior, turned, kwargs)
    if _check_the_same_outcome(expected, got, "in the prior's order"):
        np.testing.assert_array_equal(got[0].t.values, expected[0].t.values)


def _check_the_same_outcome(expected, got, where: str) -> bool:
    """Assert that two :func:`_outcome` results agree: the same refusal, or analyses with
    the same warnings; whether they are analyses (``where`` names the expected one)."""
    (want, said), (have, told) = expected, got
    if isinstance(want, type):
        assert have is want, (want, have)
        return False
    assert not isinstance(have, type), (have, f"refused, {where} analysed")
    assert told == said, (said, told)
    return True


@settings(max_examples=15, **_COMMON)
@given(reordered_cases())
def test_gridded_observations_in_another_order_are_read_by_their_labels(case):
    _check_observations_read_by_their_labels(case)


@pytest.mark.slow
@settings(max_examples=200, **_COMMON)
@given(reordered_cases())
def test_gridded_observations_in_another_order_are_read_by_their_labels_many(case):
    _check_observations_read_by_their_labels(case)


@st.composite
def closed_cases(draw):
    """A case of :func:`cases` on a global grid of 2 columns or more, and the same prior
    and gridded observations with a closing column: the first again, its longitude
    written again."""
    prior, obs, kwargs, _ = draw(cases(unlabelled=False))
    dims = find_dims(prior)
    lon = np.asarray(prior[dims.lon].values, np.float64)
    step = np.mod(np.diff(lon), 360.0)
    assume(lon.size >= 2 and np.isclose(step.sum() + step[0], 360.0))
    closed = [
        xr.concat([ds, ds.isel({dims.lon: [0]})], dims.lon) if dims.lon in ds.dims else ds
        for ds in (prior, obs)
    ]
    return prior, obs, *closed, kwargs, dims.lon


def _check_a_closing_column_is_its_first(case) -> None:
    """A prior and gridded observations with a closing column give the analysis and
    warnings of the open grid, with the first column's analysis in the closing one; or
    the same refusal."""
    prior, obs, closed_prior, closed_obs, kwargs, lon = case
    expected, got = _outcome(prior, obs, kwargs), _outcome(closed_prior, closed_obs, kwargs)
    if _check_the_same_outcome(expected, got, "the open grid"):
        closed = got[0].t
        np.testing.assert_array_equal(
            closed.isel({lon: slice(0, -1)}).values, expected[0].t.values
        )
        np.testing.assert_array_equal(closed.isel({lon: -1}).values, closed.isel({lon: 0}).values)


@settings(max_examples=25, **_COMMON)
@given(closed_cases())
def test_a_closing_column_is_analysed_as_its_first(case):
    _check_a_closing_column_is_its_first(case)


@pytest.mark.slow
@settings(max_examples=200, **_COMMON)
@given(closed_cases())
def test_a_closing_column_is_analysed_as_its_first_many(case):
    _check_a_closing_column_is_its_first(case)


@st.composite
def node_cases(draw):
    """A prior on a geographic or planar grid, a grid node, and LETKF's options: the
    same observation given at the node as a station and on the grid."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_y, n_x, n_mem = draw(st.integers(2, 5)), draw(st.integers(2, 6)), draw(st.integers(2, 5))
    if draw(st.booleans()):  # latitude/longitude in degrees
        names = (
            draw(st.sampled_from(["lat", "latitude"])),
            draw(st.sampled_from(["lon", "longitude"])),
        )
        ys = np.linspace(-60, 60, n_y)
        step = 360.0 / n_x if draw(st.booleans()) else 5.0
        xs = 100.0 + step * np.arange(n_x)
        if draw(st.booleans()):  # the -180..180 convention
            xs = (xs + 180.0) % 360.0 - 180.0
        attrs, spacing = ({}, {}), 111.0 * min(120.0 / (n_y - 1), step)  # km
    else:  # planar, in km or m, anywhere
        names = ("y", "x")
        unit, per_km = draw(st.sampled_from([("km", 1.0), ("m", 1000.0)]))
        spacing = draw(st.sampled_from([50.0, 200.0])) * per_km
        origin = draw(st.sampled_from([0.0, -700.0, 2500.0])) * per_km
        ys, xs = origin + spacing * np.arange(n_y), origin + spacing * np.arange(n_x)
        attrs = ({"units": unit}, {"units": unit})
    if draw(st.booleans()):
        ys = ys[::-1]
    values = 280.0 + rng.standard_normal((n_mem, n_y, n_x))
    prior = xr.Dataset(
        {"t": (("member", *names), values, {"units": "K"})},
        coords={names[0]: (names[0], ys, attrs[0]), names[1]: (names[1], xs, attrs[1])},
    )
    i, j = draw(st.integers(0, n_y - 1)), draw(st.integers(0, n_x - 1))
    value = 280.0 + rng.standard_normal()
    gridded = xr.full_like(prior.t.isel(member=0), np.nan).to_dataset()
    gridded.t[i, j] = value
    station = xr.Dataset(
        {"t": ("station", [value])},
        coords={names[0]: ("station", [ys[i]]), names[1]: ("station", [xs[j]])},
    )
    radius = draw(st.sampled_from([None, 1.5, 4.0]))
    options = {"method": "letkf", "obs_error": 0.5, "seed": 5}
    options["loc_radius"] = None if radius is None else radius * spacing
    return prior, gridded, station, options


def _node_difference(case) -> float:
    """The largest difference between the analyses of the station and of the gridded
    observation."""
    prior, gridded, station, options = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XensfWarning)
        on_grid = prior.ensf.assimilate(gridded, **options)
        at_station = prior.ensf.assimilate(station, **options)
    return float(np.abs(at_station.t.values - on_grid.t.values).max())


@settings(max_examples=20, **_COMMON)
@given(node_cases())
def test_a_station_on_a_grid_node_is_the_gridded_observation_there(case):
    # Caught the station of a planar grid localised at its x wrapped as a longitude.
    assert _node_difference(case) <= 1e-9


@pytest.mark.slow
@settings(max_examples=200, **_COMMON)
@given(node_cases())
def test_a_station_on_a_grid_node_is_the_gridded_observation_there_many(case):
    assert _node_difference(case) <= 1e-9
