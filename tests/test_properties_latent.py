"""Property-based tests of the latent methods through ``assimilate``.

The companion of ``test_properties.py`` for ``latent-ensf``, ``latent-letkf`` and
``latent-ensf-letkf``: a small blob model (gridded observations every 4th point, or
ten stations off the grid points), and Hypothesis varies what the model leaves free:
the ensemble dim's name and the dims' order, float32 or float64, the number of
members and times, times as numpy datetimes, cftime dates or numbers, gaps in the
observations (whole times unobserved, everything unobserved), observations where the
model has none, every form of observation error, the methods' options, and numpy or
dask with random time chunks.

The property: an ``XensfError``, or a correct result: finite, the prior's dims, dtype
and coordinates, every unobserved time returned exactly as given (for the latent
methods alone also every time observed only off the gridded model's layout), the hybrid's per-time
outputs in range, numpy = dask bit for bit, the methods that draw noise the same bits
again from a rebuilt copy of their input; and the input never modified.

And the same model's ``LatentModel.analyse`` called directly (``model_cases``): gridded
observations on the layout, on half of it, on and off it, off it only or none, station
slots with gaps, a mask with anything where it is False, float32 or float64, either
update, every form of ``obs_noise``. The property: the prior's shape and dtype, finite,
an ``ObservationLayoutWarning`` exactly when values lie off the layout, every time with
nothing the encoder reads returned exactly as given, every other time bit for bit as
analysed alone; the input never modified.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from test_latent import GRID, blobs, random_positions
from test_properties import OBS_ERROR_FORMS, TIME_KINDS, _times, analysed, give_obs_error

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xensf  # noqa: E402
from xensf.bridge.dims import find_dims  # noqa: E402
from xensf.bridge.layout import StateLayout  # noqa: E402
from xensf.bridge.signature import data_signature  # noqa: E402
from xensf.errors import XensfWarning  # noqa: E402
from xensf.latent import gridded_stride_obs, train_latent_model  # noqa: E402

STATIONS_Y = [15.0, 37.5, 62.0, 95.0, 118.0, 141.5, 170.0, 205.0]
STATIONS_X = [22.0, 140.5, 65.0, 201.0, 17.5, 110.0, 48.0, 160.0]
AXIS = np.arange(GRID) * 10.0  # km


def _grid(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(y=("y", AXIS, {"units": "km"}), x=("x", AXIS, {"units": "km"}))


@functools.cache
def _models() -> dict[str, xensf.LatentModel]:
    """The gridded and the station model, trained briefly (once per process): the
    properties hold for any model, a good one is not needed. A second gridded model has
    a latent of 27 values (3 × 3 × 3), a size at which torch's batched CPU products
    sum in another order for another number of times (tests/test_latent_accessor.py)."""
    pos = random_positions(120, torch.Generator().manual_seed(0))
    fields = blobs(pos[:, 0], pos[:, 1])
    training = _grid(xr.Dataset({"h": (("time", "y", "x"), fields[:, 0].numpy(), {"units": "m"})}))
    small = dict(latent_dim=16, width=8, blocks=1, epochs=6, batch_size=32, lr=3e-3, seed=0)
    gridded = train_latent_model(
        fields, gridded_stride_obs(4, 0.1), patience=8, device="cpu", progress=False,
        variables=["h"], units=["m"], **small,
    )  # fmt: skip
    odd = train_latent_model(
        fields, gridded_stride_obs(4, 0.1), patience=8, device="cpu", progress=False,
        variables=["h"], units=["m"], **dict(small, latent_dim=27), latent_channels=3,
    )  # fmt: skip
    layout = StateLayout(("h",), ((),), ((),), (GRID, GRID))
    ensemble = training.isel(time=[0]).rename(time="member")
    for model in (gridded, odd):
        model.config["data"] = data_signature(training, find_dims(ensemble), layout)
    stations = xr.Dataset(coords={"y": ("station", STATIONS_Y), "x": ("station", STATIONS_X)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XensfWarning)
        station = xensf.train_latent(training, stations, progress=False, **small)
    return {"gridded": gridded, "gridded-27": odd, "stations": station}


@st.composite
def cases(draw):
    """A prior, observations and ``assimilate`` keyword arguments."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_mem = draw(st.sampled_from([1, 2, 5, 12]))  # 1 member: refused
    n_time = draw(st.sampled_from([None, 1, 2, 3]))
    nt = n_time or 1
    truth_pos = random_positions(nt, gen)
    prior_pos = random_positions(nt, gen) if draw(st.booleans()) else truth_pos
    jitter = draw(st.sampled_from([0.0, 0.5, 2.0])) * torch.randn(2, nt, n_mem, generator=gen)
    members = blobs(
        (prior_pos[:, None, 0] + jitter[0]).flatten(),
        (prior_pos[:, None, 1] + jitter[1]).flatten(),
    ).reshape(nt, n_mem, GRID, GRID)
    truth = blobs(*truth_pos.T)[:, 0].numpy()
    member = draw(st.sampled_from(["member", "number", "realization"]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    dims = ["time", member, "y", "x"]
    values = members.numpy().astype(dtype)
    if n_time is None:
        dims, values, truth = dims[1:], values[0], truth[0]
    order = draw(st.permutations(dims))
    values = values.transpose([dims.index(d) for d in order])
    coords = {}
    if n_time is not None:
        coords["time"] = _times(draw(st.sampled_from(TIME_KINDS)), nt)
    prior = _grid(xr.Dataset({"h": (order, values, {"units": "m"})}, coords))
    truth = _grid(xr.DataArray(truth, dims=[d for d in dims if d != member], coords=coords))

    kind = draw(st.sampled_from(["gridded", "stations"]))
    noise = draw(st.sampled_from([0.0, 0.05]))
    if kind == "gridded":
        mask = (truth.y % 40 == 0) & (truth.x % 40 == 0)
        if draw(st.booleans()):  # a point the model's observation encoder never saw
            mask = mask | ((truth.y == 10.0) & (truth.x == 10.0))
        gaps = xr.zeros_like(truth, bool).copy(
            data=rng.random(truth.shape) < draw(st.sampled_from([0.0, 0.5, 1.0]))
        )
        obs = (truth + noise * rng.standard_normal(truth.shape)).where(mask & ~gaps)
    else:
        take = np.sort(rng.choice(len(STATIONS_Y), draw(st.integers(0, 8)), replace=False))
        if draw(st.booleans()):  # a station outside the domain
            take = np.append(take, -1)
        sy, sx = np.append(STATIONS_Y, 400.0), np.append(STATIONS_X, 50.0)
        at = truth.interp(y=xr.DataArray(np.clip(sy, 0, 230), dims="station"),
                          x=xr.DataArray(sx, dims="station")).isel(station=take)  # fmt: skip
        sy, sx = sy[take], sx[take]
        obs = (at + noise * rng.standard_normal(at.shape)).drop_vars(["y", "x"])
        obs = obs.assign_coords(y=("station", sy), x=("station", sx))
    obs = obs.astype(dtype).assign_attrs(units="m").to_dataset(name="h")
    if n_time is not None and draw(st.booleans()):  # nothing observed at the last time
        obs["h"] = obs.h.where(obs.time != obs.time[-1])

    method = draw(st.sampled_from(["latent-ensf", "latent-letkf", "latent-ensf-letkf"]))
    name = draw(st.sampled_from(["gridded", "gridded-27"])) if kind == "gridded" else kind
    kwargs = {"method": method, "model": _models()[name], "device": "cpu"}
    if method in ("latent-ensf", "latent-ensf-letkf"):
        kwargs["steps"] = 10
    if method in ("latent-ensf", "latent-letkf"):
        kwargs["update"] = draw(st.sampled_from(["decode", "increment"]))
    if method == "latent-ensf-letkf" or draw(st.booleans()):
        give_obs_error(draw(OBS_ERROR_FORMS), obs, kwargs, "h", 0.05, "m", "10%")
    if method == "latent-ensf-letkf":
        kwargs["loc_radius"] = draw(st.sampled_from([None, 80.0]))
        kwargs["blend_evidence"] = draw(st.sampled_from([None, 0.0, 6.0]))
        if draw(st.booleans()):
            kwargs["adaptive_inflation"] = True
        else:
            kwargs["inflation"] = draw(st.sampled_from([1.0, 1.1]))
    chunks = draw(st.integers(1, n_time)) if n_time is not None and draw(st.booleans()) else None
    return prior, obs, kwargs, chunks


def _unobserved_times(prior: xr.Dataset, obs: xr.Dataset) -> list[int]:
    if "time" not in prior.dims:
        return [] if bool(obs.h.notnull().any()) else [None]
    seen = obs.h.notnull().any([d for d in obs.h.dims if d != "time"]).values
    return [i for i in range(prior.sizes["time"]) if not seen[i]]


def _check(case) -> str:
    """``"refused"`` (an XensfError) or ``"analysed"`` (a correct result); asserts both:
    the contract of every result (:func:`test_properties.analysed`), and the latent
    methods' own."""
    out = analysed(case, "h", "m")
    if out is None:
        return "refused"
    prior, obs, kwargs, _ = case
    unobserved = _unobserved_times(prior, obs)
    for t in unobserved:
        where = {} if t is None else {"time": t}
        np.testing.assert_array_equal(out.h.isel(where).values, prior.h.isel(where).values)
    if kwargs["method"] != "latent-ensf-letkf" and kwargs["model"].obs_kind == "gridded":
        # a time observed only off the model's layout: nothing for the encoder, the prior
        on_layout = obs.assign(h=obs.h.where((obs.y % 40 == 0) & (obs.x % 40 == 0)))
        for t in _unobserved_times(prior, on_layout):
            where = {} if t is None else {"time": t}
            np.testing.assert_array_equal(out.h.isel(where).values, prior.h.isel(where).values)
    if kwargs["method"] == "latent-ensf-letkf":
        weight = out.blend_weight.values
        assert ((weight >= 0) & (weight <= 1)).all()
        for t in unobserved:
            assert float(out.blend_weight.isel({} if t is None else {"time": t})) == 0.0
        if kwargs["blend_evidence"] is not None:
            evidence = out.blend_evidence.values
            assert np.isfinite(evidence).all() and (evidence >= 0).all()
    return "analysed"


# the same examples every run unless the "fuzz" profile is loaded (tests/conftest.py)
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=20, **_COMMON)
@given(cases())
def test_latent_assimilate_gives_a_result_or_an_xensf_error(case):
    outcome = _check(case)
    hypothesis.event(outcome)
    assert outcome in ("refused", "analysed")


@pytest.mark.slow
@settings(max_examples=300, **_COMMON)
@given(cases())
def test_latent_assimilate_gives_a_result_or_an_xensf_error_many(case):
    outcome = _check(case)
    hypothesis.event(outcome)
    assert outcome in ("refused", "analysed")


@st.composite
def model_cases(draw):
    """``LatentModel.analyse`` called directly: a prior array, observations (gridded
    with any pattern on and off the layout, or station slots), a mask or none, and
    keyword arguments."""
    kind = draw(st.sampled_from(["gridded", "stations"]))
    model = _models()[kind]
    seed = draw(st.integers(0, 2**31 - 1))
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    n_time, n_mem = draw(st.integers(1, 3)), draw(st.sampled_from([2, 5]))
    pos = random_positions(n_time * (n_mem + 1), gen)
    fields = blobs(pos[:, 0], pos[:, 1])[:, 0].reshape(n_time, n_mem + 1, 1, GRID, GRID)
    prior = fields[:, 1:].numpy().astype(draw(st.sampled_from(["float32", "float64"])))
    truth = fields[:, 0].numpy()
    if kind == "gridded":
        points = model.obs_points.numpy()
        patterns = st.sampled_from(["layout", "half", "layout and off", "off", "none"])
        obs = np.full(truth.shape, np.nan)
        for t in range(n_time):
            pattern = draw(patterns)
            keep = points & (rng.random(points.shape) < 0.5) if pattern == "half" else points
            if pattern == "off":
                keep = np.roll(points, 2, axis=-1)
            elif pattern == "layout and off":
                keep = keep | np.roll(points, 2, axis=-1)
            obs[t] = np.where(keep if pattern != "none" else False, truth[t], np.nan)
    else:
        slots = model.config["obs_layout"]["n_obs"]
        obs = rng.standard_normal((n_time, slots)) * 0.1 + 1.0
        obs[rng.random(obs.shape) < draw(st.sampled_from([0.0, 0.5, 1.0]))] = np.nan
        if draw(st.booleans()):
            obs[draw(st.integers(0, n_time - 1))] = np.nan
    mask = None
    if draw(st.booleans()):  # a mask, and anything where it is False
        mask = ~np.isnan(obs)
        obs = np.where(mask, obs, draw(st.sampled_from([0.0, np.inf, -7.5])))
    method = draw(st.sampled_from(["latent-ensf", "latent-letkf"]))
    kwargs = {"method": method, "batch_size": n_mem}
    if method == "latent-ensf":
        kwargs.update(steps=10, generator=[int(s) for s in rng.integers(0, 1000, n_time)])
    kwargs["update"] = draw(st.sampled_from(["decode", "increment"]))
    noise = draw(st.sampled_from([None, "one", "per time"]))
    if noise is not None:
        kwargs["obs_noise"] = 0.1 if noise == "one" else list(rng.uniform(0.0, 0.3, n_time))
    return model, prior, obs.astype("float32"), mask, kwargs


def _read(model, obs: np.ndarray, mask) -> np.ndarray:
    """``(T,)`` bool: the times with a value the model's encoder reads."""
    observed = ~np.isnan(obs) if mask is None else mask
    if model.obs_points is not None:
        observed = observed & model.obs_points.numpy()
    return observed.reshape(len(obs), -1).any(-1)


def _check_model(case) -> None:
    model, prior, obs, mask, kwargs = case
    given = [a.copy() for a in (prior, obs, *([] if mask is None else [mask]))]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        post = model.analyse(prior, obs, mask, **kwargs)
    for before, after in zip(given, (prior, obs, mask), strict=False):
        np.testing.assert_array_equal(before, after)  # nothing given is modified
    assert post.shape == prior.shape and post.dtype == prior.dtype
    assert np.isfinite(post).all()
    off = mask if mask is not None else ~np.isnan(obs)
    if model.obs_points is not None:
        off = off & ~model.obs_points.numpy()
        warned = any(issubclass(w.category, xensf.ObservationLayoutWarning) for w in record)
        assert warned == bool(off.any())
    read = _read(model, obs, mask)
    for t in np.flatnonzero(~read):
        np.testing.assert_array_equal(post[t], prior[t])  # exactly the prior
    for t in np.flatnonzero(read):  # as if analysed alone
        alone = dict(kwargs)
        if "generator" in alone:
            alone["generator"] = [kwargs["generator"][t]]
        if isinstance(kwargs.get("obs_noise"), list):
            alone["obs_noise"] = [kwargs["obs_noise"][t]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", XensfWarning)
            single = model.analyse(
                prior[t : t + 1],
                obs[t : t + 1],
                None if mask is None else mask[t : t + 1],
                **alone,
            )
        np.testing.assert_array_equal(post[t], single[0])


@settings(max_examples=15, **_COMMON)
@given(model_cases())
def test_the_model_analyses_what_it_reads_and_returns_the_rest(case):
    _check_model(case)


@pytest.mark.slow
@settings(max_examples=200, **_COMMON)
@given(model_cases())
def test_the_model_analyses_what_it_reads_and_returns_the_rest_many(case):
    _check_model(case)
