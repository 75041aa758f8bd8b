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
