"""The LETKF's fast localisation (near-observation search, sparse local algebra).

For large problems with a provided distance, each chunk of locations only looks at
the observations that can reach it, and each location's ensemble-space algebra uses
only its own observations. Both must give the textbook analysis, computed here point
by point with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xensf.filters.letkf as letkf_module
from xensf.filters.letkf import letkf_analysis
from xensf.filters.localization import (
    cyclic_distance,
    gaspari_cohn,
    great_circle_distance,
)


def _point_by_point(ens, y, obs_idx, rows, radius, infl, points, std):
    """Hunt et al. (2007) at each of ``points`` (``rows[i]``: its distances), in numpy."""
    n = ens.shape[0]
    xm = ens.mean(0)
    xp = (ens - xm) * infl
    yp = xp[:, obs_idx] / std
    out = np.empty((n, len(points)))
    for i, p in enumerate(points):
        w = gaspari_cohn(torch.as_tensor(rows[i]), radius).numpy()
        sel = w > 0
        ys, ws = yp[:, sel], w[sel]
        innov = (y[sel] - xm[obs_idx][sel]) / std
        a = (n - 1) * np.eye(n) + (ys * ws) @ ys.T
        lam, q = np.linalg.eigh(a)
        wbar = q @ ((q.T @ (ys * ws) @ innov) / lam)
        wsq = (q * np.sqrt((n - 1) / lam)) @ q.T
        out[:, i] = xm[p] + (wbar[None, :] + wsq.T) @ xp[:, p]
    return out


def test_ring_search_matches_point_by_point(monkeypatch):
    d, n = 3000, 12
    rng = np.random.default_rng(0)
    ens = rng.standard_normal((n, d))
    obs_idx = np.arange(0, d, 2)
    y = rng.standard_normal(obs_idx.size)
    ring = torch.arange(float(d), dtype=torch.float64)
    dist = cyclic_distance(d)
    assert d * obs_idx.size > letkf_module._SEARCH_FROM  # the search path is taken
    sparse = []
    original = letkf_module._increment_transforms_sparse
    monkeypatch.setattr(
        letkf_module,
        "_increment_transforms_sparse",
        lambda *a, **k: sparse.append(1) or original(*a, **k),
    )
    post = letkf_analysis(
        ens, y, obs_idx, 0.7, inflation=1.05, loc_radius=6.0, state_coords=ring, distance=dist
    )
    assert sparse  # and the sparse local algebra
    points = np.r_[0:40, 1490:1510, d - 40 : d]  # both ends of the ring: the wrap-around
    rows = dist(ring[points, None], ring[obs_idx, None]).numpy()
    ref = _point_by_point(ens, y, obs_idx, rows, 6.0, 1.05, points, 0.7)
    np.testing.assert_allclose(post[:, points], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk_size", [None, 500])
def test_sphere_search_matches_all_pairs(chunk_size):
    """A lat/lon grid with great-circle distances: the search path equals all pairs."""
    lat = np.linspace(-80, 80, 30)
    lon = np.arange(0, 360, 4.0)
    grid = np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2)
    d, n = grid.shape[0], 10
    rng = np.random.default_rng(1)
    ens = rng.standard_normal((n, d))
    obs_idx = rng.choice(d, 500, replace=False)
    y = rng.standard_normal(obs_idx.size)
    assert d * obs_idx.size > letkf_module._SEARCH_FROM
    kw = dict(inflation=1.02, loc_radius=800.0, state_coords=grid, chunk_size=chunk_size)
    fast = letkf_analysis(ens, y, obs_idx, 0.5, distance=great_circle_distance, **kw)
    # a wrapped distance is not recognised: every location-observation pair is evaluated
    slow = letkf_analysis(
        ens, y, obs_idx, 0.5, distance=lambda a, b: great_circle_distance(a, b), **kw
    )
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


def _sphere_case(seed=1):
    lat = np.linspace(-80, 80, 30)
    lon = np.arange(0, 360, 4.0)
    grid = np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    ens = rng.standard_normal((10, grid.shape[0]))
    obs_idx = rng.choice(grid.shape[0], 500, replace=False)
    return grid, ens, obs_idx, rng.standard_normal(obs_idx.size)


def test_compact_chunks_are_small_patches_that_cover_every_location_once():
    """On a lat/lon grid in row order a run of locations is a band round the globe; the
    chunks of the search are patches, so the observations searched for are few."""
    grid, *_ = _sphere_case()
    locs = torch.as_tensor(grid)
    chunks = letkf_module._compact_chunks(locs, great_circle_distance, 200)
    flat = torch.cat(chunks)
    assert sorted(flat.tolist()) == list(range(grid.shape[0]))
    assert max(c.numel() for c in chunks) <= 200

    def reach(chunk):  # how far the search must look from the chunk's first location
        return float(great_circle_distance(locs[chunk[:1]], locs[chunk]).max())

    runs = [torch.arange(q, min(q + 200, len(locs))) for q in range(0, len(locs), 200)]
    assert np.mean([reach(c) for c in chunks]) < np.mean([reach(r) for r in runs]) / 2
    again = letkf_module._compact_chunks(locs, great_circle_distance, 200)
    assert all(torch.equal(a, b) for a, b in zip(chunks, again, strict=True))


def test_sphere_search_with_adaptive_inflation_and_weight_interpolation_matches_all_pairs():
    """The patches of the search carry the adaptive inflation field and the anchors of
    weight interpolation to the right locations: the same as every pair evaluated."""
    from xensf.filters import AdaptiveInflation

    grid, ens, obs_idx, y = _sphere_case(2)
    d = grid.shape[0]
    assert d * obs_idx.size > letkf_module._SEARCH_FROM
    slow_distance = lambda a, b: great_circle_distance(a, b)  # noqa: E731  (not recognised)
    kw = dict(loc_radius=800.0, state_coords=grid)
    runs = {}
    for name, distance in (("fast", great_circle_distance), ("slow", slow_distance)):
        runs[name] = letkf_analysis(
            ens, y, obs_idx, 0.5, distance=distance,
            adaptive_inflation=AdaptiveInflation(std=0.2), **kw,
        )  # fmt: skip
    (fast, fast_field), (slow, slow_field) = runs["fast"], runs["slow"]
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fast_field.mean, slow_field.mean, rtol=1e-9, atol=1e-9)
    assert np.ptp(np.asarray(fast_field.mean)) > 0  # the field varies from place to place
    # every other location an anchor; each location the mean of two anchors
    anchors = np.arange(0, d, 2)
    first = np.minimum(np.arange(d) // 2, anchors.size - 1)
    neighbours = np.stack([first, np.minimum(first + 1, anchors.size - 1)], 1)
    weights = np.full(neighbours.shape, 0.5)
    kw.update(state_location=np.arange(d), interpolate_from=(anchors, neighbours, weights))
    fast = letkf_analysis(ens, y, obs_idx, 0.5, distance=great_circle_distance, **kw)
    slow = letkf_analysis(ens, y, obs_idx, 0.5, distance=slow_distance, **kw)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("wrapper", ["variables", "levels"])
def test_chunks_keep_variables_apart_and_match_all_pairs(wrapper):
    """Each variable keeps to itself (its own observations, infinitely far from the
    other's): a chunk mixing two variables would have to search every observation.
    Levels with vertical localisation may share a chunk. Either way: all pairs' answer."""
    from xensf.filters.localization import with_vertical, within_variable

    grid, ens, obs_idx, y = _sphere_case(3)
    second = 0 if wrapper == "variables" else 500.0  # a variable id, or a height (hPa)
    coords = np.concatenate(
        [np.c_[grid, np.zeros(len(grid))], np.c_[grid, np.full(len(grid), second + 1.0)]]
    )
    ens = np.concatenate([ens, ens[::-1]], 1)  # the second field
    obs_idx = np.concatenate([obs_idx, obs_idx[:250] + len(grid)])
    y = np.concatenate([y, y[:250]])
    if wrapper == "variables":
        distance = within_variable(great_circle_distance)
        chunks = letkf_module._compact_chunks(torch.as_tensor(coords), distance, 300)
        assert all(len(set(coords[c.numpy(), 2])) == 1 for c in chunks)
    else:
        distance = with_vertical(great_circle_distance, 800.0 / 300.0)
    kw = dict(inflation=1.02, loc_radius=800.0, state_coords=coords)
    fast = letkf_analysis(ens, y, obs_idx, 0.5, distance=distance, **kw)
    slow = letkf_analysis(ens, y, obs_idx, 0.5, distance=lambda a, b: distance(a, b), **kw)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("geometry", ["ring", "sphere"])
def test_observations_sharing_positions_match_point_by_point(geometry):
    """Several observations at each position (a station's variables and levels), with
    their own values: the distances are evaluated once per position and gathered to
    each observation, which must still give every observation its own weight."""
    rng = np.random.default_rng(4)
    if geometry == "ring":
        d = 3000
        coords = torch.arange(float(d), dtype=torch.float64)[:, None]
        distance, radius, sites = cyclic_distance(d), 6.0, np.arange(0, d, 4)
    else:
        coords = torch.as_tensor(_sphere_case()[0])
        d = coords.shape[0]
        distance, radius, sites = great_circle_distance, 800.0, rng.choice(d, 300, False)
    ens = rng.standard_normal((10, d))
    obs_idx = np.concatenate([sites, sites, sites])  # three values at each site
    y = rng.standard_normal(obs_idx.size)
    assert d * obs_idx.size > letkf_module._SEARCH_FROM  # the search path is taken
    post = letkf_analysis(
        ens, y, obs_idx, 0.6, inflation=1.03, loc_radius=radius,
        state_coords=coords.numpy().squeeze(), distance=distance,
    )  # fmt: skip
    points = np.r_[0:30, d // 2 : d // 2 + 30, d - 30 : d]
    rows = distance(coords[points], coords[obs_idx]).numpy()
    ref = _point_by_point(ens, y, obs_idx, rows, radius, 1.03, points, 0.6)
    np.testing.assert_allclose(post[:, points], ref, rtol=1e-9, atol=1e-9)
