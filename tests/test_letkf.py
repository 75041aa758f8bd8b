"""Tests of the LETKF analysis and of the localisation helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xensf.errors import EnsembleError, ObservationMismatchError, OptionError
from xensf.filters.letkf import letkf_analysis
from xensf.filters.localization import (
    cyclic_distance,
    euclidean_distance,
    gaspari_cohn,
    great_circle_distance,
)
from xensf.filters.operators import LinearObservationOperator

# ---------------------------------------------------------------------------------------
# An independent reference: the global ETKF in the ensemble-transform form (Bishop et al.
# 2001 / Wang et al. 2004), written in numpy: Kalman gain from sample covariances for
# the mean, symmetric square root of (I + S Sᵀ)⁻¹ for the perturbations.
# ---------------------------------------------------------------------------------------


def _sym_inv_sqrt(a):
    lam, q = np.linalg.eigh(a)
    return (q / np.sqrt(lam)) @ q.T


def etkf_reference(prior, hx, y, r_var, inflation=1.0, rtps=0.0):
    """prior (N, d), hx (N, m) = H(prior), y (m,), r_var (m,) observation variances."""
    n = prior.shape[0]
    xm = prior.mean(0)
    x0 = prior - xm
    xp = inflation * x0
    yp = inflation * (hx - hx.mean(0))
    pxy = xp.T @ yp / (n - 1)
    pyy = yp.T @ yp / (n - 1) + np.diag(r_var)
    gain = pxy @ np.linalg.inv(pyy)
    mean = xm + gain @ (y - hx.mean(0))
    s = yp / np.sqrt(r_var) / np.sqrt(n - 1)  # (N, m)
    t = _sym_inv_sqrt(np.eye(n) + s @ s.T)
    xa = t @ xp
    if rtps:
        sb = x0.std(0, ddof=1)
        sa = xa.std(0, ddof=1)
        xa = xa * (1 + rtps * (sb - sa) / sa)
    return mean + xa


@pytest.fixture
def small_problem():
    rng = np.random.default_rng(42)
    n, d = 12, 30
    cov = np.exp(-0.5 * (np.subtract.outer(np.arange(d), np.arange(d)) / 3.0) ** 2)
    prior = rng.standard_normal((n, d)) @ np.linalg.cholesky(cov + 1e-9 * np.eye(d)).T + 1.0
    idx = np.arange(0, d, 3)
    y = rng.standard_normal(idx.size) + 1.0
    return prior, idx, y


@pytest.mark.parametrize(("inflation", "rtps"), [(1.0, 0.0), (1.1, 0.0), (1.0, 0.5), (1.05, 0.7)])
def test_global_letkf_matches_numpy_etkf(small_problem, inflation, rtps):
    prior, idx, y = small_problem
    r_var = np.full(idx.size, 0.3**2)
    want = etkf_reference(prior, prior[:, idx], y, r_var, inflation, rtps)
    got = letkf_analysis(prior, y, idx, 0.3, inflation=inflation, rtps=rtps)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_letkf_on_device_matches_numpy_etkf(small_problem, device):
    prior, idx, y = small_problem
    want = etkf_reference(prior, prior[:, idx], y, np.full(idx.size, 0.3**2), 1.05, 0.5)
    got = letkf_analysis(
        torch.as_tensor(prior, device=device),
        torch.as_tensor(y, device=device),
        torch.as_tensor(idx, device=device),
        0.3,
        inflation=1.05,
        rtps=0.5,
    )
    assert got.device.type == device
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-9)


def test_global_letkf_weighted_operator_and_per_obs_errors(small_problem):
    prior, _, _ = small_problem
    rng = np.random.default_rng(1)
    d = prior.shape[1]
    indices = rng.integers(0, d, size=(7, 3))
    weights = rng.uniform(0.1, 1.0, size=(7, 3))
    h = np.zeros((7, d))
    for i in range(7):
        np.add.at(h[i], indices[i], weights[i])
    op = LinearObservationOperator(torch.as_tensor(indices), torch.as_tensor(weights))
    y = rng.standard_normal(7)
    std = rng.uniform(0.2, 1.0, size=7)
    want = etkf_reference(prior, prior @ h.T, y, std**2)
    got = letkf_analysis(prior, y, op, std)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_nonlinear_operator_uses_ensemble_of_h(small_problem):
    prior, idx, y = small_problem
    y = np.arctan(y)
    want = etkf_reference(prior, np.arctan(prior[:, idx]), y, np.full(idx.size, 0.05**2))
    got = letkf_analysis(
        torch.as_tensor(prior), y, lambda x: torch.arctan(x[..., torch.as_tensor(idx)]), 0.05
    )
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)


def test_missing_observations_have_no_weight(small_problem):
    prior, idx, y = small_problem
    y_nan = y.copy()
    y_nan[[1, 4]] = np.nan
    std_inf = np.full(idx.size, 0.5)
    std_inf[[1, 4]] = np.inf
    keep = np.setdiff1d(np.arange(idx.size), [1, 4])
    want = letkf_analysis(prior, y[keep], idx[keep], 0.5)
    np.testing.assert_allclose(letkf_analysis(prior, y_nan, idx, 0.5), want, atol=1e-12)
    np.testing.assert_allclose(letkf_analysis(prior, y, idx, std_inf), want, atol=1e-12)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_an_infinite_observation_is_refused_not_taken_as_missing(small_problem, value):
    # It was taken as missing without a word (EnSF returned NaN for it).
    prior, idx, y = small_problem
    y = y.copy()
    y[2] = value
    with pytest.raises(ObservationMismatchError, match="y holds 1 infinite values"):
        letkf_analysis(prior, y, idx, 0.5)


def test_linear_gaussian_mean_and_covariance_are_kalman():
    """ETKF is exact for linear-Gaussian with sample moments (mean and covariance)."""
    rng = np.random.default_rng(3)
    n, d = 400, 10
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    prior = rng.standard_normal((n, d)) @ (a + np.eye(d)).T + 2.0
    h = rng.standard_normal((4, d))
    r = np.diag(rng.uniform(0.1, 0.5, 4))
    y = rng.standard_normal(4)
    xm = prior.mean(0)
    pb = np.cov(prior.T)
    k = pb @ h.T @ np.linalg.inv(h @ pb @ h.T + r)
    mean_kalman = xm + k @ (y - h @ xm)
    cov_kalman = (np.eye(d) - k @ h) @ pb
    post = letkf_analysis(prior, y, lambda x: x @ torch.as_tensor(h).T, np.sqrt(np.diag(r)))
    np.testing.assert_allclose(post.mean(0), mean_kalman, atol=1e-10)
    np.testing.assert_allclose(np.cov(post.T), cov_kalman, atol=1e-10)


def test_batch_dims_match_separate_analyses(small_problem):
    prior, idx, y = small_problem
    rng = np.random.default_rng(5)
    priors = np.stack([prior, prior + rng.standard_normal(prior.shape), prior * 0.5])
    ys = np.stack([y, y + 1, y - 1])
    stds = np.array([[0.3], [0.5], [1.0]])
    got = letkf_analysis(priors, ys, idx, stds, inflation=1.05, rtps=0.3)
    for b in range(3):
        want = letkf_analysis(priors[b], ys[b], idx, float(stds[b, 0]), inflation=1.05, rtps=0.3)
        np.testing.assert_allclose(got[b], want, atol=1e-12)


def test_types_and_dtypes(small_problem):
    prior, idx, y = small_problem
    out32 = letkf_analysis(prior.astype(np.float32), y, idx, 0.3)
    assert isinstance(out32, np.ndarray) and out32.dtype == np.float32
    t = torch.as_tensor(prior, dtype=torch.float32)
    out_t = letkf_analysis(t, torch.as_tensor(y), torch.as_tensor(idx), 0.3)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    ref = letkf_analysis(prior, y, idx, 0.3)
    np.testing.assert_allclose(out_t.numpy(), ref, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Localisation
# ---------------------------------------------------------------------------------------


@pytest.fixture
def ring_problem():
    rng = np.random.default_rng(7)
    n, d = 10, 40
    # Smooth periodic members: white noise circularly convolved with a Gaussian kernel.
    lag = np.minimum(np.arange(d), d - np.arange(d))
    kernel = np.fft.rfft(np.exp(-0.5 * (lag / 3.0) ** 2))
    prior = np.fft.irfft(np.fft.rfft(rng.standard_normal((n, d))) * kernel, n=d)
    idx = np.arange(0, d, 2)
    y = rng.standard_normal(idx.size)
    return prior, idx, y


def test_huge_radius_equals_global(ring_problem):
    prior, idx, y = ring_problem
    glob = letkf_analysis(prior, y, idx, 0.5, inflation=1.03, rtps=0.2)
    loc = letkf_analysis(
        prior,
        y,
        idx,
        0.5,
        inflation=1.03,
        rtps=0.2,
        loc_radius=1e7,
        state_coords=np.arange(40.0),
        distance=cyclic_distance(40),
    )
    np.testing.assert_allclose(loc, glob, atol=1e-8)


def test_small_radius_far_observations_have_no_effect(ring_problem):
    prior, idx, y = ring_problem
    kw = dict(loc_radius=2.0, state_coords=np.arange(40.0), distance=cyclic_distance(40))
    base = letkf_analysis(prior, y, idx, 0.5, **kw)
    y2 = y.copy()
    y2[10] += 5.0  # observation at grid point 20; its support ends at distance 4
    moved = letkf_analysis(prior, y2, idx, 0.5, **kw)
    changed = np.flatnonzero(np.abs(moved - base).max(0) > 0)
    assert changed.size > 0
    assert changed.min() >= 17 and changed.max() <= 23
    # Components with no observation within the support keep the prior exactly.
    only_one = letkf_analysis(prior, y[:1], idx[:1], 0.5, **kw)  # observation at point 0
    far = np.r_[4:37]
    np.testing.assert_array_equal(only_one[:, far], prior[:, far])


def test_local_analysis_is_etkf_with_tapered_errors(ring_problem):
    """At one location, the LETKF is the global ETKF with R divided by the GC weights."""
    prior, idx, y = ring_problem
    radius, p = 3.0, 13
    post = letkf_analysis(
        prior,
        y,
        idx,
        0.5,
        inflation=1.02,
        loc_radius=radius,
        state_coords=np.arange(40.0),
        distance=cyclic_distance(40),
    )
    dist = np.abs(idx - p)
    dist = np.minimum(dist, 40 - dist)
    taper = gaspari_cohn(torch.as_tensor(dist, dtype=torch.float64), radius).numpy()
    use = taper > 0
    want = etkf_reference(prior, prior[:, idx[use]], y[use], 0.25 / taper[use], inflation=1.02)
    np.testing.assert_allclose(post[:, p], want[:, p], atol=1e-11)


def test_locations_shared_by_several_components(ring_problem):
    """(d, k) coords with repeats == (P, k) coords + state_location == stacked variables."""
    prior, idx, y = ring_problem
    two = np.concatenate([prior, 2.0 * prior + 1.0], axis=1)  # 2 variables on 40 points
    loc_of = np.r_[np.arange(40), np.arange(40)]
    kw = dict(loc_radius=3.0, distance=cyclic_distance(40))
    a = letkf_analysis(two, y, idx, 0.5, state_coords=np.arange(40.0), state_location=loc_of, **kw)
    b = letkf_analysis(two, y, idx, 0.5, state_coords=loc_of.astype(float), **kw)
    np.testing.assert_allclose(a, b, atol=1e-12)
    single = letkf_analysis(prior, y, idx, 0.5, state_coords=np.arange(40.0), **kw)
    np.testing.assert_allclose(a[:, :40], single, atol=1e-12)
    # The second variable is an affine copy, so its analysis is the same affine copy.
    np.testing.assert_allclose(a[:, 40:], 2.0 * single + 1.0, atol=1e-11)
    # A third on every second point only: locations with 3 components and with 2.
    three = np.concatenate([two, 3.0 * prior[:, ::2]], axis=1)
    at = np.r_[loc_of, np.arange(0, 40, 2)]
    c = letkf_analysis(three, y, idx, 0.5, state_coords=np.arange(40.0), state_location=at, **kw)
    np.testing.assert_allclose(c[:, :80], a, atol=1e-12)
    np.testing.assert_allclose(c[:, 80:], 3.0 * single[:, ::2], atol=1e-11)


def test_chunking_does_not_change_the_result(ring_problem):
    prior, idx, y = ring_problem
    kw = dict(loc_radius=3.0, state_coords=np.arange(40.0), distance=cyclic_distance(40))
    whole = letkf_analysis(prior, y, idx, 0.5, **kw)
    for chunk in (1, 7, 100):
        np.testing.assert_allclose(
            letkf_analysis(prior, y, idx, 0.5, chunk_size=chunk, **kw), whole, atol=1e-12
        )


def test_obs_coords_per_batch_entry(ring_problem):
    prior, _, _ = ring_problem
    rng = np.random.default_rng(11)
    sites = np.stack([np.arange(0, 40, 4), np.arange(1, 40, 4)])  # (2, 10)
    ys = rng.standard_normal((2, 10))
    kw = dict(loc_radius=3.0, state_coords=np.arange(40.0), distance=cyclic_distance(40))
    got = letkf_analysis(
        np.stack([prior, prior]),
        ys,
        torch.as_tensor(sites),
        0.5,
        obs_coords=sites[..., None].astype(float),
        **kw,
    )
    for b in range(2):
        want = letkf_analysis(prior, ys[b], sites[b], 0.5, **kw)  # coords inferred from idx
        np.testing.assert_allclose(got[b], want, atol=1e-12)


def test_great_circle_localisation_on_a_grid():
    lat, lon = np.meshgrid(np.linspace(-60, 60, 7), np.arange(0, 360, 30), indexing="ij")
    coords = np.stack([lat.ravel(), lon.ravel()], -1)  # 84 points
    rng = np.random.default_rng(2)
    prior = rng.standard_normal((8, coords.shape[0]))
    idx = np.array([0, 40, 83])
    y = np.zeros(3)
    post = letkf_analysis(prior, y, idx, 1.0, loc_radius=1500.0, state_coords=coords)
    d = great_circle_distance(torch.as_tensor(coords), torch.as_tensor(coords[idx])).numpy()
    untouched = (d >= 3000.0).all(1)
    assert untouched.any() and not untouched.all()
    np.testing.assert_array_equal(post[:, untouched], prior[:, untouched])
    assert not np.allclose(post[:, ~untouched], prior[:, ~untouched])


# ---------------------------------------------------------------------------------------
# Localisation helpers
# ---------------------------------------------------------------------------------------


def test_gaspari_cohn_properties():
    c = 2.5
    r = torch.linspace(0, 3 * c, 30001, dtype=torch.float64)
    w = gaspari_cohn(r, c)
    assert w[0] == 1.0
    assert torch.all(w[r >= 2 * c] == 0)
    assert torch.all(w[r < 2 * c] > 0)
    assert torch.all(torch.diff(w) <= 1e-15)  # monotone non-increasing
    assert torch.abs(torch.diff(w)).max() < 1e-3  # continuous: no jump on a fine grid
    # The two pieces meet at r = c with value 5/24 and matching slope.
    eps = 1e-7
    left, right = gaspari_cohn(torch.tensor([c - eps, c + eps], dtype=torch.float64), c)
    assert abs(float(left) - 5 / 24) < 1e-6 and abs(float(right) - 5 / 24) < 1e-6
    assert torch.allclose(gaspari_cohn(-r, c), w)
    with pytest.raises(OptionError):
        gaspari_cohn(r, 0.0)
    with pytest.raises(OptionError, match=r"got '2\.5'"):  # (a raw TypeError)
        gaspari_cohn(r, "2.5")


def test_gaspari_cohn_is_a_correlation_on_a_ring():
    """Its matrix on a fine ring is positive semi-definite (it is a correlation function)."""
    x = torch.arange(200, dtype=torch.float64)[:, None]
    dist = cyclic_distance(200)(x, x)
    lam = torch.linalg.eigvalsh(gaspari_cohn(dist, 10.0))
    assert lam.min() > -1e-10


def test_great_circle_known_pairs():
    a = torch.tensor([[0.0, 0.0], [90.0, 0.0], [51.5, -0.13]], dtype=torch.float64)
    b = torch.tensor(
        [[0.0, 180.0], [0.0, 90.0], [0.0, 1.0], [48.86, 2.35], [0.0, 360.0]],
        dtype=torch.float64,
    )
    d = great_circle_distance(a, b)
    assert d.shape == (3, 5)
    half = math.pi * 6371.0
    assert abs(float(d[0, 0]) - half) < 1e-6  # antipodes
    assert abs(float(d[1, 1]) - half / 2) < 1e-6  # pole to equator
    assert abs(float(d[0, 2]) - half / 180) < 1e-6  # one degree of the equator
    assert abs(float(d[2, 3]) - 343.5) < 2.0  # London–Paris
    assert abs(float(d[0, 4])) < 1e-6  # 0° and 360° are the same meridian
    batched = great_circle_distance(a, torch.stack([b, b]))
    assert batched.shape == (2, 3, 5)


def test_cyclic_and_euclidean_distance():
    ring = cyclic_distance(40)
    a = torch.tensor([[0.0], [10.0]])
    b = torch.tensor([[39.0], [21.0], [30.0], [80.0]])
    np.testing.assert_allclose(ring(a, b).numpy(), [[1, 19, 10, 0], [11, 11, 20, 10]])
    torus = cyclic_distance([10.0, math.inf])
    d = torus(torch.tensor([[0.0, 0.0]]), torch.tensor([[9.0, 4.0]]))
    np.testing.assert_allclose(d.numpy(), [[math.hypot(1.0, 4.0)]], rtol=1e-6)
    e = euclidean_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[[3.0, 4.0]]]))
    assert e.shape == (1, 1, 1) and float(e) == 5.0
    with pytest.raises(OptionError):
        cyclic_distance(-1.0)
    # text and locations of different dimension were raw torch errors
    with pytest.raises(OptionError, match="period must be a positive number"):
        cyclic_distance("40")
    with pytest.raises(OptionError, match=r"same k coordinates, got shapes \(1, 2\) and"):
        euclidean_distance(torch.zeros(1, 2), torch.zeros(3, 1))


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(inflation=0.0), OptionError, "inflation"),
        (dict(rtps=1.5), OptionError, "rtps"),
        # text read as a number passed the check, then failed in torch (raw TypeError)
        (dict(inflation="1.1"), OptionError, "got '1.1'"),
        (dict(rtps="0.5"), OptionError, "got '0.5'"),
        (dict(loc_radius="3", state_coords=np.arange(30.0)), OptionError, "got '3'"),
        (dict(loc_radius=-1.0, state_coords=np.arange(30.0)), OptionError, "loc_radius"),
        (dict(loc_radius=3.0), OptionError, "state_coords"),
        (dict(loc_radius=3.0, state_coords=np.arange(30.0), distance="cyclic"), OptionError, "period"),
        (dict(loc_radius=3.0, state_coords=np.arange(30.0), distance="manhattan"), OptionError, "unknown distance"),
        (dict(loc_radius=3.0, state_coords=np.arange(12.0)), OptionError, "state_location"),
        (dict(loc_radius=3.0, state_coords=np.arange(30.0), obs_coords=np.zeros((3, 1))), ObservationMismatchError, "obs_coords"),
        # positions that are no positions were taken without a word
        (dict(loc_radius=3.0, state_coords=np.r_[np.nan, np.arange(29.0)]), OptionError, "1 rows with NaN"),
        (dict(loc_radius=3.0, state_coords=np.arange(30.0), obs_coords=np.r_[np.nan, np.arange(9.0)]), ObservationMismatchError, "NaN or infinite for 1 observations that count"),
        (dict(loc_radius=300.0, state_coords=np.c_[np.arange(30.0) * 10, np.zeros(30)]), OptionError, "latitudes beyond"),
        (dict(loc_radius=300.0, state_coords=np.c_[np.zeros(30), np.arange(30.0)], obs_coords=np.c_[np.full(10, 91.0), np.zeros(10)]), OptionError, "obs_coords has latitudes beyond"),
    ],
)  # fmt: skip
def test_option_errors(small_problem, kwargs, error, match):
    prior, idx, y = small_problem
    with pytest.raises(error, match=match):
        letkf_analysis(prior, y, idx, 0.3, **kwargs)


def test_a_missing_observation_needs_no_position(small_problem):
    prior, idx, y = small_problem
    y = y.copy()
    y[0] = np.nan
    where = np.arange(30.0)[idx]
    unplaced = where.copy()
    unplaced[0] = np.nan
    kwargs = {"loc_radius": 3.0, "state_coords": np.arange(30.0), "distance": "euclidean"}
    np.testing.assert_array_equal(
        letkf_analysis(prior, y, idx, 0.3, obs_coords=unplaced, **kwargs),
        letkf_analysis(prior, y, idx, 0.3, obs_coords=where, **kwargs),
    )


def test_obs_coords_required_for_callable_operator(small_problem):
    prior, idx, y = small_problem
    with pytest.raises(OptionError, match="obs_coords"):
        letkf_analysis(
            prior, y, lambda x: x[..., idx], 0.3, loc_radius=2.0, state_coords=np.arange(30.0)
        )


def test_ensemble_errors(small_problem):
    prior, idx, y = small_problem
    with pytest.raises(EnsembleError, match="at least 2"):
        letkf_analysis(prior[:1], y, idx, 0.3)
    bad = prior.copy()
    bad[2, 5] = np.nan
    with pytest.raises(EnsembleError, match="NaN"):
        letkf_analysis(bad, y, idx, 0.3)
    with pytest.raises(EnsembleError):
        letkf_analysis(prior[0], y, idx, 0.3)


def test_observation_errors(small_problem):
    prior, idx, y = small_problem
    with pytest.raises(ObservationMismatchError, match="y has shape"):
        letkf_analysis(prior, y[:-1], idx, 0.3)
    with pytest.raises(OptionError, match="obs_std"):
        letkf_analysis(prior, y, idx, 0.0)
    with pytest.raises(ObservationMismatchError, match="obs_std"):
        letkf_analysis(prior, y, idx, np.ones(3))
    # an index past the state (or negative) is named, not torch's gather error
    for outside in (prior.shape[-1], -1):
        bad_idx = np.array(idx, copy=True)
        bad_idx[-1] = outside
        with pytest.raises(OptionError, match=r"outside \[0, 30\)"):
            letkf_analysis(prior, y, bad_idx, 0.3)
