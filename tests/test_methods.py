"""The method objects: options as checked fields, one registry, the bridge calls analyse."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr

import xensf  # noqa: F401  (registers the accessor)
from xensf.bridge.methods import LETKF, METHODS, EnSF, Method, resolve_method
from xensf.errors import OptionError


def test_every_method_is_a_checked_frozen_picklable_object():
    for name, cls in METHODS.items():
        method = cls()
        assert method.name == name and cls.description
        assert pickle.loads(pickle.dumps(method)) == method  # it travels in the task graph
        assert type(method)(**method.options()) == method
        field = next(iter(method.options()))
        with pytest.raises(FrozenInstanceError):
            setattr(method, field, None)


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("letkf", {"inflation": 0.5}, "inflation must be >= 1"),
        ("letkf", {"rtps": 2}, "rtps must lie in"),
        ("ensf", {"steps": 2.5}, "steps must be a whole number"),
        ("ensf", {"scale": -1.0}, "scale must be a positive"),
        ("ensf", {"loc_radius": 100.0}, r"unknown option\(s\) \['loc_radius'\]"),
        ("kalman", {}, "unknown method 'kalman'"),
        ("LETKF", {}, r"unknown method 'LETKF'.*\(did you mean 'letkf'\?\)"),
        ("latent_ensf", {}, r"\(did you mean 'latent-ensf'\?\)"),
        ("ensfl", {}, r"'ensfl': did you mean 'ensf'\?"),
        # window sizes local-mixture's windows only: with the mixture it did nothing
        ("ensf", {"window": 4}, "window=4 sizes the windows"),
    ],
)
def test_bad_options_are_refused_when_the_method_is_made(method, options, match):
    with pytest.raises(OptionError, match=match):
        resolve_method(method, None, options)


def test_resolve_method_defaults_and_model_rules():
    assert resolve_method(None, None, {}) == EnSF()
    assert resolve_method("letkf", None, {"loc_radius": 500.0}) == LETKF(loc_radius=500.0)
    with pytest.raises(OptionError, match="needs a trained latent model"):
        resolve_method("latent-ensf", None, {})
    with pytest.raises(OptionError, match="does not use a model"):
        resolve_method("letkf", object(), {})


@dataclass(frozen=True)
class _Relax(Method):
    """A toy method: each member moves ``weight`` of the way to the prior mean."""

    name: ClassVar[str] = "relax"
    description: ClassVar[str] = "relaxation to the ensemble mean (a test method)"
    weight: float = 0.5

    def analyse(self, block):
        x = block.x.astype(block.work)
        return x + self.weight * (x.mean(1, keepdims=True) - x)


def test_a_new_method_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(METHODS, "relax", _Relax)
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"t": (("member", "lat", "lon"), rng.standard_normal((4, 3, 5)), {"units": "K"})},
        coords={"lat": [0.0, 10.0, 20.0], "lon": np.arange(5) * 10.0},
    )
    obs = xr.full_like(ds.t[0], np.nan).to_dataset()
    out = ds.ensf.assimilate(obs, method="relax", weight=0.25, obs_error=1.0)
    expected = ds.t + 0.25 * (ds.t.mean("member") - ds.t)
    np.testing.assert_allclose(out.t.values, expected.transpose(*ds.t.dims).values)
    assert out.attrs["xensf_method"] == "relax" and out.attrs["xensf_weight"] == 0.25
