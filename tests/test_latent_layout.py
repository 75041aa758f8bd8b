"""Gridded observations outside a latent model's observation layout.

The observation encoder reads values at the points it was trained on; values elsewhere
are inputs it never saw. They are kept from it, with an ``ObservationLayoutWarning``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_latent_accessor import case  # noqa: F401  (module-scoped fixture)

import xensf
from xensf.errors import BundleError, ObservationLayoutWarning, OptionError
from xensf.latent import (
    LatentModel,
    calibrate_obs_error,
    gridded_stride_obs,
    mask_obs,
    train_latent_model,
)


def _layout_warnings(record) -> list[str]:
    return [str(w.message) for w in record if w.category is ObservationLayoutWarning]


def _assimilate(prior, obs, **options):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = prior.ensf.assimilate(obs, **options)
    return out, _layout_warnings(record)


def test_a_stride_model_knows_its_layout(case):  # noqa: F811
    model = case[0]  # every 4th point of 24 x 24 from (0, 0)
    points = model.obs_points
    assert points.shape == (1, 24, 24) and points.dtype == torch.bool
    assert int(points.sum()) == 36 == model.obs_layout_values
    assert bool(points[0, ::4, ::4].all())


def test_extra_observations_are_kept_from_the_encoder(case):  # noqa: F811
    """Every other point observed: the 36 on the layout are analysed as if alone."""
    model, prior, truth, _ = case
    dense = truth.where((truth.y % 20 == 0) & (truth.x % 20 == 0))  # 144 points
    on_layout = truth.where((truth.y % 40 == 0) & (truth.x % 40 == 0))  # the 36
    options = dict(model=model, seed=3, device="cpu")
    analysis, messages = _assimilate(prior, dense, **options)
    alone, none = _assimilate(prior, on_layout, **options)
    assert none == []
    (message,) = messages
    assert "432 of 576 observed values (at 4 of 4 analysed times)" in message
    assert "(36 values)" in message and "latent-ensf-letkf" in message
    np.testing.assert_array_equal(analysis.h.values, alone.h.values)


def test_a_time_with_nothing_on_the_layout_is_left_as_the_prior(case):  # noqa: F811
    """The layout shifted by two cells at times 1 and 3: nothing there for the encoder."""
    model, prior, truth, obs = case
    shifted = truth.where((truth.y % 40 == 20) & (truth.x % 40 == 20))
    mixed = obs.where(~obs.time.isin(obs.time[[1, 3]]), shifted)
    analysis, (message,) = _assimilate(prior, mixed, model=model, seed=3, device="cpu")
    assert "At 2 time(s) no observation lies on the layout" in message
    for t in (1, 3):
        np.testing.assert_array_equal(analysis.h[t].values, prior.h[t].values)
    for t in (0, 2):
        assert not np.array_equal(analysis.h[t].values, prior.h[t].values)
    # float64: the prior returned exactly too
    prior64 = prior.astype("float64")
    analysis64, _ = _assimilate(prior64, mixed, model=model, seed=3, device="cpu")
    assert analysis64.h.dtype == np.float64
    np.testing.assert_array_equal(analysis64.h[1].values, prior64.h[1].values)


def test_the_hybrid_still_assimilates_them_with_its_letkf(case):  # noqa: F811
    model, prior, truth, _ = case
    dense = truth.where((truth.y % 20 == 0) & (truth.x % 20 == 0))
    on_layout = truth.where((truth.y % 40 == 0) & (truth.x % 40 == 0))
    options = dict(
        model=model, method="latent-ensf-letkf", obs_error=0.05, loc_radius=40.0, seed=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.ModelQualityWarning)
        analysis, (message,) = _assimilate(prior, dense, **options)
        alone, _ = _assimilate(prior, on_layout, **options)
    assert "latent-ensf-letkf still assimilates them in its LETKF step" in message
    # its blend and its LETKF see four times the observations
    err = lambda a: float(np.sqrt(((a.h.mean("member") - truth.h) ** 2).mean()))  # noqa: E731
    assert err(analysis) < err(alone)


def _tiny(make_obs, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_latent_model(
            torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(0)),
            make_obs,
            latent_dim=4,
            width=4,
            blocks=1,
            epochs=1,
            progress=False,
            **options,
        )


def test_a_mask_layout_is_recorded_and_saved(tmp_path):
    mask = np.zeros((8, 8), bool)
    mask[1, 2] = mask[5, 6] = mask[3, 3] = True
    model = _tiny(mask_obs(mask))
    points = model.obs_points
    assert points.shape == (2, 8, 8) and int(points.sum()) == 6 == model.obs_layout_values
    assert bool(points[:, 1, 2].all()) and not bool(points[:, 0, 0].any())
    model.save(tmp_path / "m.xensf")
    loaded = xensf.load(tmp_path / "m.xensf")
    assert torch.equal(loaded.obs_points, points)
    assert loaded.content_digest() == model.content_digest()
    # a custom make_obs may change its points from sample to sample: no layout
    custom = _tiny(lambda x, g: (x, torch.rand(x.shape, generator=g) < 0.3))
    assert custom.obs_points is None


def test_an_older_mask_model_gets_its_layout_when_calibrated():
    mask = np.zeros((8, 8), bool)
    mask[::3, ::3] = True
    model = _tiny(mask_obs(mask))
    model._obs_points = None  # as a model saved before the layout was recorded
    assert model.obs_points is None
    calibrate_obs_error(model, torch.rand(8, 2, 8, 8), mask_obs(mask))
    assert int(model.obs_points.sum()) == 2 * int(mask.sum())
    with pytest.raises(OptionError, match="obs_points"):
        model.obs_points = np.zeros((3, 3), bool)
    with pytest.raises(OptionError, match="no observed value"):
        model.obs_points = np.zeros((8, 8), bool)


@pytest.mark.parametrize(
    "points, field",
    [
        (torch.ones(1, 8, 8, dtype=torch.uint8), "obs_layout.points"),
        (torch.zeros(2, 8, 8, dtype=torch.uint8), "obs_layout.points"),
        (torch.ones(2, 8, 8, dtype=torch.float32), "obs_layout.points"),
    ],
)
def test_a_bad_layout_tensor_is_refused_at_load(points, field):
    model = _tiny(gridded_stride_obs(2))
    tensors = {**model.tensors(), "obs_layout.points": points}
    with pytest.raises(BundleError, match=f"edited.xensf.*{field}"):
        LatentModel.from_parts(tensors, model.metadata(), source="edited.xensf")
