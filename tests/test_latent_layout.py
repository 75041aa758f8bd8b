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
from xensf.errors import (
    BundleError,
    ObservationLayoutWarning,
    ObservationMismatchError,
    OptionError,
)
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


def _analyse(model, prior, obs, seeds, **options):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = model.analyse(
            prior, obs, generator=seeds, batch_size=prior.shape[1], return_latent=True, **options
        )
    return out, _layout_warnings(record)


def test_the_model_keeps_them_from_its_encoder_too(case):  # noqa: F811
    """A direct ``LatentModel.analyse`` call: as the accessor, with its own warning."""
    model, prior, truth, _ = case
    x = prior.h.values[:, :, None]
    dense = truth.h.where((truth.y % 20 == 0) & (truth.x % 20 == 0)).values[:, None]
    on_layout = np.where(model.obs_points.numpy(), dense, np.nan)
    seeds = [5, 6, 7, 8]
    (post, latent), (message,) = _analyse(model, x, dense, seeds)
    (alone, latent_alone), none = _analyse(model, x, on_layout, seeds)
    assert none == []
    assert "432 of 576 observed values (at 4 of 4 times)" in message
    assert "LatentModel.obs_points" in message
    np.testing.assert_array_equal(post, alone)
    for k in ("count", "coverage", "innovation"):
        torch.testing.assert_close(latent["diagnostics"][k], latent_alone["diagnostics"][k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_model_returns_a_time_with_no_observation_as_its_prior(case, dtype):  # noqa: F811
    """Time 1 has nothing on the layout (its values shifted off it), time 3 nothing at
    all: both come back as their prior, bit for bit; times 0 and 2 as if analysed alone."""
    model, prior, truth, obs = case
    x = prior.h.values[:, :, None].astype(dtype)
    y = obs.h.values[:, None].copy()
    shifted = truth.h.where((truth.y % 40 == 20) & (truth.x % 40 == 20)).values
    y[1, 0], y[3] = shifted[1], np.nan
    given = (x.copy(), y.copy())
    seeds = [5, 6, 7, 8]
    (post, latent), (message,) = _analyse(model, x, y, seeds, obs_noise=[0.1, 0.2, 0.3, 0.4])
    assert "2 time(s) with none on the layout are returned as the prior" in message
    assert post.dtype == dtype
    np.testing.assert_array_equal(post[[1, 3]], x[[1, 3]])
    (seen, latent_seen), _ = _analyse(model, x[[0, 2]], y[[0, 2]], [5, 7], obs_noise=[0.1, 0.3])
    np.testing.assert_array_equal(post[[0, 2]], seen)
    assert not np.array_equal(post[[0, 2]], x[[0, 2]])
    np.testing.assert_array_equal(x, given[0])  # nothing the caller gave is modified
    np.testing.assert_array_equal(y, given[1])
    diag = latent["diagnostics"]
    assert diag["count"].tolist() == [36.0, 0.0, 36.0, 0.0]
    assert float(diag["innovation"][1]) == 0.0 == float(diag["reconstruction"][3])
    assert bool(torch.isnan(latent["obs"][[1, 3]]).all())
    torch.testing.assert_close(latent["posterior"][[1, 3]], latent["prior"][[1, 3]])
    torch.testing.assert_close(latent["posterior"][[0, 2]], latent_seen["posterior"])
    torch.testing.assert_close(latent["prior"][[0, 2]], latent_seen["prior"])
    encoded = model.encode(torch.from_numpy(x[3]).float(), batch_size=x.shape[1])[0]
    torch.testing.assert_close(latent["prior"][3], encoded)
    # nothing observed at any time: the prior, and no network pass needed for it
    (untouched, _), _ = _analyse(model, x, np.full_like(y, np.nan), seeds)
    np.testing.assert_array_equal(untouched, x)
    # options are checked all the same, before any work
    with pytest.raises(OptionError, match="deterministic"):
        model.analyse(x, np.full_like(y, np.nan), method="latent-letkf", generator=seeds)
    # their values too, though no filter runs
    for bad, match in (
        (dict(steps=0), "steps"),
        (dict(eps_alpha=1.5), "eps_alpha"),
        (dict(obs_noise=-0.1), "obs_noise"),
        (dict(damping="linear"), "damping applies to"),  # the latent EnSF is Gaussian
        (dict(method="latent-letkf", inflation=0.0), "inflation"),
        (dict(method="latent-letkf", rtps=2.0), "rtps"),
    ):
        with pytest.raises(OptionError, match=match):
            model.analyse(x, np.full_like(y, np.nan), **bad)


def test_the_model_reads_a_mask_as_given_and_refuses_what_it_cannot_read(case):  # noqa: F811
    """A mask broadcast over the times is the NaN pattern's equal; anything may stand
    where it is False (inf too); a mask that does not fit, or an infinite observed value,
    is refused before any work."""
    model, prior, truth, _ = case
    x = prior.h.values[:, :, None]
    points = model.obs_points.numpy()
    y = np.where(points, truth.h.values[:, None], np.nan)
    (expected, latent), _ = _analyse(model, x, y, [5, 6, 7, 8])
    anything = np.where(points, y, np.inf)
    (post, latent_mask), none = _analyse(model, x, anything, [5, 6, 7, 8], mask=points)
    assert none == []
    np.testing.assert_array_equal(post, expected)
    for k, v in latent["diagnostics"].items():
        assert torch.equal(latent_mask["diagnostics"][k], v)
    with pytest.raises(
        ObservationMismatchError, match=r"mask of shape \(1, 24, 12\) does not fit"
    ):
        model.analyse(x, y, points[..., :12])
    with pytest.raises(ObservationMismatchError, match=r"144 observed value\(s\) are infinite"):
        model.analyse(x, np.where(points, np.inf, np.nan)[None].repeat(4, 0))


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
