"""latent-letkf localises on the latent grid: each latent value sits at its cell.

The references are the ETKF run by hand on the latent values the model returns
(``return_latent``), not the model's own localisation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_latent import GRID, _tiny, blobs, random_positions

from xensf.errors import OptionError
from xensf.filters.letkf import letkf_analysis
from xensf.filters.localization import resolve_distance
from xensf.latent import LatentModel, gridded_stride_obs
from xensf.latent.model import LATENT_RADIUS


@pytest.fixture(scope="module")
def case():
    """An (untrained-quality) model with a 4 x 4 latent grid, a prior and observations."""
    pos = random_positions(140, torch.Generator().manual_seed(0))
    states = blobs(pos[:, 0], pos[:, 1])
    model = _tiny(states[:120], 0, latent_dim=64)
    prior = states[120:132].reshape(2, 6, 1, GRID, GRID)
    obs, _ = gridded_stride_obs(3, 0.1)(states[132:134], torch.Generator().manual_seed(1))
    return model, prior, obs


def _latent(model, prior, obs, **options):
    return model.analyse(prior, obs, method="latent-letkf", return_latent=True, **options)[1]


def test_the_latent_grid_has_cells_to_localise_on(case):
    model, _, _ = case
    channels, h, w = model.latent_shape
    assert h * w > 4 and channels * h * w == model.latent_dim


def test_a_short_radius_analyses_each_cell_from_its_own_values(case):
    """With a radius below one cell, each cell's channels see only the encoded
    observation of that cell: the global ETKF on those channels alone."""
    model, prior, obs = case
    channels, h, w = model.latent_shape
    latent = _latent(model, prior, obs, latent_radius=0.1, rtps=0.5)
    for cell in range(h * w):
        idx = torch.arange(cell, channels * h * w, h * w)  # the channels of one cell
        alone = letkf_analysis(
            latent["prior"][..., idx],
            latent["obs"][:, idx],
            torch.arange(channels),
            latent["obs_std"][..., idx],
            rtps=0.5,
        )
        torch.testing.assert_close(latent["posterior"][..., idx], alone)


def test_no_radius_is_the_global_etkf(case):
    model, prior, obs = case
    latent = _latent(model, prior, obs, latent_radius=None, inflation=1.1)
    identity = torch.arange(model.latent_dim)
    glob = letkf_analysis(
        latent["prior"], latent["obs"], identity, latent["obs_std"], inflation=1.1
    )
    torch.testing.assert_close(latent["posterior"], glob)


def test_the_default_radius_localises(case):
    model, prior, obs = case
    default = _latent(model, prior, obs)["posterior"]
    torch.testing.assert_close(
        default, _latent(model, prior, obs, latent_radius=LATENT_RADIUS)["posterior"]
    )
    assert not torch.allclose(default, _latent(model, prior, obs, latent_radius=None)["posterior"])


def test_auto_analyses_a_latent_the_members_span_globally(case):
    """16 latent values, 20 members: "auto" is the global ETKF; 6 members cannot span
    them, and "auto" localises."""
    obs = case[2]
    small = _tiny(blobs(*random_positions(60, torch.Generator().manual_seed(2)).T), 1)
    assert small.latent_dim == 16 and small.latent_shape[1] * small.latent_shape[2] > 1
    pos = random_positions(40, torch.Generator().manual_seed(3))
    many = blobs(pos[:, 0], pos[:, 1]).reshape(2, 20, 1, GRID, GRID)
    auto = _latent(small, many, obs)["posterior"]
    torch.testing.assert_close(auto, _latent(small, many, obs, latent_radius=None)["posterior"])
    few = many[:, :6]
    auto = _latent(small, few, obs)["posterior"]
    local = _latent(small, few, obs, latent_radius=LATENT_RADIUS)["posterior"]
    torch.testing.assert_close(auto, local)
    assert not torch.allclose(auto, _latent(small, few, obs, latent_radius=None)["posterior"])


def test_each_time_is_analysed_as_if_alone(case):
    """(One time per network pass, as the accessor asks, so that only the filter could
    make the times depend on each other.)"""
    model, prior, obs = case
    n = prior.shape[1]
    both = model.analyse(prior, obs, method="latent-letkf", batch_size=n)
    for t in range(prior.shape[0]):
        alone = model.analyse(
            prior[t : t + 1], obs[t : t + 1], method="latent-letkf", batch_size=n
        )
        np.testing.assert_array_equal(both[t].numpy(), alone[0].numpy())


def test_columns_wrap_around_on_a_periodic_model(case):
    model, _, _ = case
    metadata = copy.deepcopy(model.metadata())
    metadata["config"]["architecture"]["periodic_lon"] = True
    periodic = LatentModel.from_parts(model.tensors(), metadata)
    w = model.latent_shape[2]
    for m, far in ((model, w - 1), (periodic, 1)):
        options = m._latent_localisation({}, n_members=6)
        coords = options["state_coords"]
        distance = resolve_distance(options["distance"])
        first, last = coords[:1], coords[w - 1 : w]  # row 0: the first and last column
        assert float(distance(first, last)) == pytest.approx(far)
        assert options["loc_radius"] == LATENT_RADIUS


@pytest.mark.parametrize(
    "options, match",
    [
        ({"latent_radius": -1.0}, "latent_radius"),
        ({"latent_radius": 0}, "latent_radius"),
        ({"latent_radius": True}, "latent_radius"),
        ({"latent_radius": "2"}, "latent_radius"),
        ({"state_coords": np.zeros((16, 2))}, "latent grid"),
        ({"loc_radius": 300.0}, "latent_radius"),
        ({"steps": 50}, r"takes no option.*steps"),
        ({"adaptive_inflation": True}, r"takes no option.*adaptive_inflation"),
        ({"distance": "euclidean"}, "latent grid"),
    ],
)
def test_bad_localisation_options_are_refused_before_work(case, options, match):
    model, prior, obs = case
    with pytest.raises(OptionError, match=match):
        model.analyse(prior, obs, method="latent-letkf", **options)


def test_latent_ensf_refuses_the_latent_radius(case):
    model, prior, obs = case
    with pytest.raises(OptionError, match=r"latent-ensf takes no option.*latent_radius"):
        model.analyse(prior, obs, generator=[0, 1], latent_radius=1.0)
