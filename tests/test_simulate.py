"""The xarray simulators and the forecasters built on the tensor models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xensf
import xensf.models as models
from xensf.cycling.forecast import (
    Forecaster,
    Persistence,
    ShallowWaterForecaster,
    TorchForecaster,
    forecaster_settings,
)
from xensf.models.l96 import lorenz96_run
from xensf.models.swe import ShallowWaterConfig, initial_state, shallow_water_run


def test_shallow_water_simulator_labels_the_tensor_run():
    ds = models.shallow_water(2e5, -1e5, n=24, steps=30, every=10, device="cpu")
    cfg = ShallowWaterConfig(n=24)
    ref = shallow_water_run(initial_state(cfg, 2e5, -1e5), cfg, 30, 10)
    assert dict(ds.sizes) == {"time": 4, "y": 24, "x": 24}
    for c, v in enumerate(("eta", "u", "v")):
        np.testing.assert_array_equal(ds[v].values, ref[:, c].numpy())
    assert ds.eta.attrs["units"] == "m" and ds.u.attrs["units"] == "m s-1"
    assert ds.x.attrs["standard_name"] == "projection_x_coordinate"
    step = ds.time.values[1] - ds.time.values[0]
    assert abs(step / np.timedelta64(1, "ns") - 10 * cfg.dt * 1e9) < 10
    assert ds.attrs["Conventions"].startswith("CF")


def test_shallow_water_simulator_members_and_dims_found_by_the_accessor():
    ds = models.shallow_water([1e5, 2e5, 3e5], [0.0, 1e4, 2e4], n=20, steps=10, every=5)
    assert ds.eta.dims == ("time", "member", "y", "x")
    np.testing.assert_allclose(ds.bump_x.values, [1e5, 2e5, 3e5])
    from xensf.bridge.dims import find_dims

    dims = find_dims(ds)
    assert (dims.member, dims.lat, dims.lon, dims.time) == ("member", "y", "x", "time")


def test_shallow_water_simulator_rejects_bad_positions():
    with pytest.raises(xensf.OptionError, match="1-D"):
        models.shallow_water(np.zeros((2, 2)), np.zeros((2, 2)), n=10, steps=2, every=1)
    with pytest.raises(xensf.OptionError, match="basin"):
        models.shallow_water(2e6, 0.0, n=10, steps=2, every=1)
    # once blamed on the bump height after a run of NaN, and numpy's ValueError after
    # the whole run
    with pytest.raises(xensf.OptionError, match=r"must be finite, got nan"):
        models.shallow_water(float("nan"), 0.0, n=10, steps=2, every=1)
    with pytest.raises(xensf.OptionError, match="start='banana' is not a time"):
        models.shallow_water(n=10, steps=2, every=1, start="banana")
    # once numpy's raw broadcast ValueError, and an ensemble of no members
    with pytest.raises(xensf.OptionError, match=r"one length.*got 2 and 3"):
        models.shallow_water(np.zeros(2), np.zeros(3), n=10, steps=2, every=1)
    with pytest.raises(xensf.OptionError, match="at least 1"):
        models.shallow_water(np.zeros(0), np.zeros(0), n=10, steps=2, every=1)
    assert models.shallow_water([0.0, 1e5], 0.0, n=10, steps=2, every=1).sizes["member"] == 2
    with pytest.raises(xensf.OptionError, match="numbers or 1-D arrays of numbers"):
        models.shallow_water("east", 0.0, n=10, steps=2, every=1)  # (numpy's ValueError)


def test_the_simulators_take_a_dtype_by_name_or_numpy_and_refuse_others():
    # "float64" and numpy.float64 gave a raw AttributeError ('str' object has no
    # attribute 'is_floating_point')
    kw = dict(n=8, steps=2, every=1, device="cpu")
    for dtype in ("float64", np.float64, "f8"):
        assert models.shallow_water(dtype=dtype, **kw).eta.dtype == np.float64
    assert models.lorenz96(steps=2, spinup=0, dtype="float32").x.dtype == np.float32
    for dtype in ("int32", "double precision"):
        with pytest.raises(xensf.OptionError, match="dtype must be a floating dtype"):
            models.shallow_water(dtype=dtype, **kw)


@pytest.mark.parametrize(
    "options, says",
    [
        ({"d": 0}, "d=0 is out of range"),  # an IndexError before
        ({"members": -1}, "members=-1 is out of range"),  # torch's RuntimeError
        ({"members": 0}, "members=0 is out of range"),  # an empty ensemble
        ({"dt": float("nan")}, "dt=nan is out of range"),  # NaN states, without a word
        ({"forcing": 1e6, "steps": 200}, "the run produced NaN or inf"),  # the same
        ({"x0": np.full(12, np.nan)}, "x0 holds NaN or inf"),  # the same
        ({"seed": None}, "seed=None is out of range"),  # torch's RuntimeError
        ({"every": 5.0}, "every=5.0 is out of range"),  # torch's TypeError
        ({"spinup": -1}, "spinup=-1 is out of range"),  # named "n_steps", a name not its own
        ({"steps": 2.5, "every": 1}, "steps=2.5 is out of range"),
        ({"x0": np.zeros((2, 2, 12))}, r"x0 has shape \(2, 2, 12\)"),  # xarray's ValueError
        ({"x0": np.ones(8)}, r"x0 has shape \(8,\); give \(12,\)"),  # 8 sites, d=12 dropped
    ],
)
def test_lorenz96_simulator_refuses_what_would_give_no_finite_run(options, says):
    with pytest.raises(xensf.OptionError, match=says):
        models.lorenz96(**{"d": 12, "steps": 20, "every": 5, **options})


def test_lorenz96_simulator():
    ds = models.lorenz96(d=12, members=4, steps=20, every=5, spinup=50, seed=3)
    assert ds.x.dims == ("time", "member", "site") and ds.sizes["time"] == 5
    ref = lorenz96_run(torch.as_tensor(ds.x.isel(time=0).values), 20, every=5)
    np.testing.assert_allclose(ds.x.values, ref.numpy(), rtol=1e-12)
    again = models.lorenz96(d=12, members=4, steps=20, every=5, spinup=50, seed=3)
    xr.testing.assert_identical(ds, again)


def _state(n=16, members=3):
    return models.shallow_water(
        np.linspace(-2e5, 2e5, members), np.zeros(members), n=n, steps=0, every=1
    ).isel(time=0)


def test_shallow_water_forecaster_matches_the_step_and_leaves_its_input_alone():
    state = _state()
    before = state.copy(deep=True)
    f = ShallowWaterForecaster(ShallowWaterConfig(n=16), device="cpu")
    assert isinstance(f, Forecaster)
    out = f.forecast(state, 7)
    xr.testing.assert_identical(state, before)
    cfg = ShallowWaterConfig(n=16)
    x = torch.as_tensor(np.stack([state[v].values for v in ("eta", "u", "v")], axis=1))
    ref = shallow_water_run(x, cfg, 7)[-1].numpy()
    for c, v in enumerate(("eta", "u", "v")):
        np.testing.assert_array_equal(out[v].values, ref[:, c])
    assert out.eta.attrs == state.eta.attrs
    assert forecaster_settings(f)["n"] == 16


def test_torch_forecaster_wraps_a_module_and_checks_shapes():
    class Damp(torch.nn.Module):
        def forward(self, x):
            return 0.5 * x

    state = _state()
    f = TorchForecaster(Damp(), ["eta", "u", "v"], np.timedelta64(1, "h"), device="cpu")
    out = f.forecast(state, 2)
    np.testing.assert_allclose(out.eta.values, 0.25 * state.eta.values, rtol=1e-6)
    bad = TorchForecaster(lambda x: x[..., :-1], ["eta"], 1.0, device="cpu")
    with pytest.raises(xensf.OptionError, match="keep the shape"):
        bad.forecast(state, 1)
    with pytest.raises(xensf.OptionError, match="no variable"):
        TorchForecaster(Damp(), ["h"], 1.0).forecast(state, 1)
    assert TorchForecaster(Damp(), ["eta"], "6h").time_step == np.timedelta64(6, "h")
    with pytest.raises(xensf.OptionError, match="time_step"):
        TorchForecaster(Damp(), ["eta"], "six hours")
    # a name listed twice was stacked twice and written back twice, without a word
    with pytest.raises(xensf.OptionError, match=r"lists \['eta'\] more than once"):
        TorchForecaster(Damp(), ["eta", "u", "eta"], "6h")
    # settings a run store cannot record as JSON: an object was recorded by its repr,
    # whose address changes with the process, so that the run could not be resumed;
    # keys other than text and settings other than a mapping were raw TypeErrors
    for settings, match in [({"net": object()}, "not JSON-able"),
                            ({1: "x"}, "mapping with text keys"),
                            ([("a", 1)], "mapping with text keys")]:  # fmt: skip
        with pytest.raises(xensf.OptionError, match=match):
            TorchForecaster(Damp(), ["eta"], "6h", settings=settings)
    with_arrays = TorchForecaster(Damp(), ["eta"], "6h", settings={"w": np.arange(2)})
    assert forecaster_settings(with_arrays)["w"].tolist() == [0, 1]

    class Custom(Persistence):
        def settings(self):
            return {"net": object()}

    with pytest.raises(xensf.OptionError, match=r"Custom.settings\(\) holds a value"):
        forecaster_settings(Custom(np.timedelta64(1, "h")))
    with pytest.raises(xensf.OptionError, match="config must be a"):
        ShallowWaterForecaster("150x150")  # (a raw AttributeError)


def test_persistence():
    state = _state()
    p = Persistence(np.timedelta64(6, "h"))
    out = p.forecast(state, 3)
    xr.testing.assert_identical(out, state)
    assert out.eta.values is not state.eta.values
    assert forecaster_settings(p)["time_step"] == f"{6 * 3600 * 10**9} ns"
    with pytest.raises(xensf.OptionError, match="positive"):
        Persistence(np.timedelta64(0, "h"))
