"""Tests of the EnSF analysis on tensors (xensf.filters.ensf)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from xensf.errors import EnsembleError, ObservationMismatchError, OptionError
from xensf.filters.ensf import ensf_analysis
from xensf.filters.operators import CallableObservationOperator, LinearObservationOperator
from xensf.filters.schedule import DiffusionSchedule, linear_damping


@pytest.fixture
def small_problem():
    """A 3-time batch of 200-member, 5-component ensembles with 3 observed components."""
    gen = torch.Generator().manual_seed(0)
    prior = torch.randn(3, 200, 5, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    idx = torch.tensor([0, 2, 4])
    y = torch.randn(3, 3, generator=gen)
    return prior, y, idx


# -- schedule ------------------------------------------------------------------------


def test_schedule_matches_its_definition():
    s = DiffusionSchedule(eps_alpha=0.05, eps_beta=0.025)
    assert s.alpha(0.0) == 1.0 and s.alpha(1.0) == pytest.approx(0.05)
    assert s.beta2(0.0) == pytest.approx(0.025) and s.beta2(1.0) == pytest.approx(1.0)
    for tau in (0.1, 0.5, 0.9):
        d = 1e-6
        dlog_alpha = (np.log(s.alpha(tau + d)) - np.log(s.alpha(tau - d))) / (2 * d)
        dbeta2 = (s.beta2(tau + d) - s.beta2(tau - d)) / (2 * d)
        assert s.drift(tau) == pytest.approx(dlog_alpha, rel=1e-6)
        assert s.diffusion2(tau) == pytest.approx(dbeta2 - 2 * s.drift(tau) * s.beta2(tau))
        # the property the integrator's stability rests on
        assert s.diffusion2(tau) / s.beta2(tau) >= -2 * s.drift(tau)


# -- correctness against the method's continuous-time limit --------------------------


def _continuous_limit(prior, idx, y, obs_std, scale, schedule=None):
    """Mean and spread EnSF tends to for a Gaussian prior with the ensemble's moments.

    For a Gaussian prior and a linear operator the reverse SDE is linear, so its
    marginal stays Gaussian; this integrates its mean and covariance ODEs exactly (to
    solver tolerance). As N → ∞ the mixture score of the ensemble tends to the score
    of N(α m, α² P + β² I) (standardised), which is what is used here.
    """
    schedule = schedule or DiffusionSchedule()
    prior = np.asarray(prior, dtype=float)
    d = prior.shape[-1]
    mean = prior.mean(0)
    pz = np.cov(prior.T, bias=True) / np.outer(scale, scale)
    hz = np.zeros((len(idx), d))
    hz[np.arange(len(idx)), idx] = scale[idx]
    rinv = np.diag(np.broadcast_to(1.0 / np.asarray(obs_std, float) ** 2, (len(idx),)))
    hrh = hz.T @ rinv @ hz
    hry = hz.T @ rinv @ (np.asarray(y, float) - mean[idx])
    eye = np.eye(d)

    def rhs(s, u):  # s = 1 − τ runs from 0 to 1
        tau = 1.0 - s
        a, b2 = schedule.alpha(tau), schedule.beta2(tau)
        g2, h = schedule.diffusion2(tau), linear_damping(tau)
        k = -schedule.drift(tau) * eye - g2 * (np.linalg.inv(a * a * pz + b2 * eye) + h * hrh)
        m, v = u[:d], u[d:].reshape(d, d)
        return np.concatenate([k @ m + g2 * h * hry, (k @ v + v @ k.T + g2 * eye).ravel()])

    u0 = np.concatenate([np.zeros(d), eye.ravel()])
    sol = solve_ivp(rhs, (0.0, 1.0), u0, rtol=1e-9, atol=1e-11, method="LSODA")
    m, v = sol.y[:d, -1], sol.y[d:, -1].reshape(d, d)
    return mean + scale * m, scale * np.sqrt(np.diag(v))


def test_linear_gaussian_matches_continuous_limit():
    """Posterior mean and spread agree with the method's N → ∞, dτ → 0 limit.

    Given the prior ensemble, the N posterior particles are independent draws, so the
    sampling error of their mean is s/√N and of their spread s/√(2N). The finite
    ensemble's mixture score differs from the Gaussian one by an error of the same
    order (an importance-sampling error over the N members), so each standard error is
    inflated by √2. Every standardised error must be below 5, and their average over all
    batch entries and components (a systematic bias) below 4 of its own standard error.
    """
    d, n, batch = 4, 400, 16
    rng = np.random.default_rng(0)
    root = rng.normal(size=(d, d)) / np.sqrt(d)
    cov = root @ root.T + 0.3 * np.eye(d)
    std = np.sqrt(np.diag(cov))
    idx = np.array([0, 2])
    obs_std = std[idx]  # observation error equal to the prior spread
    priors = rng.multivariate_normal(np.ones(d), cov, size=(batch, n)).astype(np.float32)
    y = (1.0 + 0.5 * std[idx] * rng.choice([-1.0, 1.0], size=(batch, 2))).astype(np.float32)
    scale = priors.std(axis=1)

    post = ensf_analysis(
        priors, y, idx, obs_std.astype(np.float32), scale=scale, generator=list(range(batch))
    )

    z_mean, z_std = [], []
    for b in range(batch):
        ref_mean, ref_std = _continuous_limit(priors[b], idx, y[b], obs_std, scale[b])
        se_mean = np.sqrt(2.0) * ref_std / np.sqrt(n)
        se_std = np.sqrt(2.0) * ref_std / np.sqrt(2.0 * n)
        z_mean.append((post[b].mean(0) - ref_mean) / se_mean)
        z_std.append((post[b].std(0) - ref_std) / se_std)
    z = np.concatenate([np.ravel(z_mean), np.ravel(z_std)])
    assert np.abs(z).max() < 5.0
    assert abs(np.mean(z_mean)) < 4.0 / np.sqrt(np.size(z_mean))
    assert abs(np.mean(z_std)) < 4.0 / np.sqrt(np.size(z_std))


def test_small_observation_error_is_stable():
    """σ = 1e-3 of the spread: finite, observed components at y, the correlated one follows."""
    gen = torch.Generator().manual_seed(1)
    n = 100
    base = torch.randn(n, 1, generator=gen)
    prior = torch.cat(
        [base, base + 0.1 * torch.randn(n, 1, generator=gen), torch.randn(n, 2, generator=gen)],
        dim=-1,
    )
    spread = prior.std(0)
    sigma = 1e-3 * spread[0]
    y = torch.tensor([0.8])
    post = ensf_analysis(prior, y, torch.tensor([0]), sigma, scale=spread, generator=3)
    assert torch.isfinite(post).all()
    assert abs(post[:, 0].mean() - 0.8) < 3 * sigma / np.sqrt(n) + 1e-5
    assert post[:, 0].std() < 3 * sigma
    # component 1 is component 0 plus noise of 0.1: its posterior sits near y
    assert abs(post[:, 1].mean() - 0.8) < 0.15
    # independent components keep roughly their prior spread
    assert torch.all((post[:, 2:].std(0) > 0.5) & (post[:, 2:].std(0) < 1.5))


def test_scale_is_a_change_of_units(small_problem):
    """Analysing x with scale s equals analysing x/s with scale 1, then multiplying by s."""
    prior, y, idx = small_problem
    s = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    obs_std = 0.3 * s[idx]
    post = ensf_analysis(prior, y, idx, obs_std, scale=s, generator=[1, 2, 3])
    post_unit = ensf_analysis(
        prior / s, y / s[idx], idx, obs_std / s[idx], scale=None, generator=[1, 2, 3]
    )
    torch.testing.assert_close(post, post_unit * s, rtol=1e-4, atol=1e-4)


# -- operators -----------------------------------------------------------------------


def test_arctan_callable_equals_linear_transform(small_problem):
    prior, y, idx = small_problem
    y = torch.arctan(y)

    def arctan_obs(x):
        return torch.arctan(x[..., idx])

    linear = LinearObservationOperator.from_index(idx)
    linear = LinearObservationOperator(linear.indices, linear.weights, torch.arctan)
    a = ensf_analysis(prior, y, arctan_obs, 0.05, generator=7)
    b = ensf_analysis(prior, y, linear, 0.05, generator=7)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the observations did move the observed components towards tan(y)
    prior_err = (prior[..., idx].mean(-2) - torch.tan(y)).abs().mean()
    post_err = (a[..., idx].mean(-2) - torch.tan(y)).abs().mean()
    assert post_err < 0.5 * prior_err


@pytest.fixture
def dense_problem():
    """200 members of 40 components, 10 observations that each read every component."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(10, 40, generator=gen) / 40**0.5
    prior = torch.randn(200, 40, generator=gen)
    truth = torch.randn(40, generator=gen)
    return prior, truth @ h.T, h


@pytest.mark.parametrize("sigma", [0.1, 0.01])
def test_a_mixing_callable_agrees_with_the_same_linear_operator(dense_problem, sigma):
    """A dense linear operator given as a lambda is analysed as its LinearObservationOperator
    is (before, the lambda's curvature was no bound: at σ = 0.1 the analysis mean missed
    the observations by 55 RMS, the prior mean by about 1; at 0.01, NaN). The two differ only in the curvature majorant of the exact step, so they
    agree to discretisation and sampling error, not to the bit."""
    prior, y, h = dense_problem
    linear = LinearObservationOperator(torch.arange(40).expand(10, 40), h)
    a = ensf_analysis(prior, y, linear, sigma, generator=1)
    b = ensf_analysis(prior, y, lambda x: x @ h.T, sigma, generator=1)
    assert torch.isfinite(b).all()
    assert float((a.mean(0) - b.mean(0)).abs().max()) < 0.25  # the prior spread is 1
    torch.testing.assert_close(b.std(0).mean(), a.std(0).mean(), rtol=0.1, atol=0)
    fit = float((b.mean(0) @ h.T - y).pow(2).mean().sqrt())
    assert fit < 2 * sigma  # the prior mean misses y by about 1


def test_a_nonlinear_mixing_callable_fits_its_observations(dense_problem):
    prior, y, h = dense_problem
    y = torch.tanh(y)
    post = ensf_analysis(prior, y, lambda x: torch.tanh(x @ h.T), 0.01, generator=1)
    assert torch.isfinite(post).all()
    assert float((torch.tanh(post.mean(0) @ h.T) - y).pow(2).mean().sqrt()) < 0.05
    assert float(post.abs().max()) < 10  # no member thrown out (before: 29)


def test_the_callable_operator_tells_mixing_from_componentwise(dense_problem):
    prior, _, h = dense_problem
    precision = torch.ones(10)
    assert CallableObservationOperator(lambda x: x @ h.T).mixes(prior, precision)
    idx = torch.tensor([1, 5, 7, 30])
    select = CallableObservationOperator(lambda x: torch.arctan(x[..., idx]))
    assert not select.mixes(prior, torch.ones(4))
    # a component read twice, once with each sign: (Jᵀ√p)² would be 0 there
    twice = CallableObservationOperator(lambda x: torch.stack([x[..., 3], -x[..., 3]], -1))
    assert twice.mixes(prior, torch.ones(2))
    bound = twice.curvature_bound(prior, torch.ones(2))
    assert bool((bound[..., 3] >= 2.0).all())  # the curvature there is 1 + 1
    # one observation of two components: Jᵀ Π J = [[1, 1], [1, 1]], eigenvalue 2, while
    # (Jᵀ√p)² is 1 at each
    pair = CallableObservationOperator(lambda x: x[..., 2:3] + x[..., 9:10])
    assert pair.mixes(prior, torch.ones(1))
    bound = pair.curvature_bound(prior, torch.ones(1))
    assert bool((bound[..., [2, 9]] >= 2.0).all())


def test_the_curvature_bound_of_a_mixing_callable_bounds_the_curvature(dense_problem):
    """diag(c) ⪰ Jᵀ Π J: every eigenvalue of Jᵀ Π J − diag(c) is ≤ 0."""
    prior, _, h = dense_problem
    precision = torch.rand(10, generator=torch.Generator().manual_seed(2)) + 0.5
    op = CallableObservationOperator(lambda x: torch.tanh(x @ h.T))
    c = op.curvature_bound(prior[:5], precision)
    for j in range(5):
        jac = (1 - torch.tanh(prior[j] @ h.T) ** 2)[:, None] * h  # (m, d)
        curvature = jac.T @ (precision[:, None] * jac)
        assert float(torch.linalg.eigvalsh(curvature - torch.diag(c[j])).max()) <= 1e-5


def test_missing_observations_equal_dropping_them(small_problem):
    prior, y, idx = small_problem
    y_nan = y.clone()
    y_nan[:, 1] = float("nan")
    with_nan = ensf_analysis(prior, y_nan, idx, 0.2, generator=5)
    std_inf = torch.tensor([0.2, float("inf"), 0.2])
    with_inf = ensf_analysis(prior, y, idx, std_inf, generator=5)
    dropped = ensf_analysis(prior, y[:, [0, 2]], idx[[0, 2]], 0.2, generator=5)
    torch.testing.assert_close(with_nan, dropped)
    torch.testing.assert_close(with_inf, dropped)


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_an_infinite_observation_is_refused_not_a_nan_analysis(small_problem, value):
    # The analysis came back NaN, without a word (the LETKF took it as missing).
    prior, y, idx = small_problem
    y = y.clone()
    y[:, 1] = value
    with pytest.raises(ObservationMismatchError, match=r"y holds \d+ infinite values"):
        ensf_analysis(prior, y, idx, 0.2, generator=5)


def test_no_observations_paired_keeps_members(small_problem):
    """With nothing observed, "paired" returns each member smoothed by √ε_β · scale."""
    prior, y, idx = small_problem
    post = ensf_analysis(
        prior, torch.full_like(y, float("nan")), idx, 1.0, prior_score="paired", generator=2
    )
    spread = prior.std(-2, keepdim=True)
    rms = ((post - prior) / spread).pow(2).mean().sqrt()
    assert 0.5 * np.sqrt(0.025) < rms < 2.0 * np.sqrt(0.025)


# -- batching and determinism --------------------------------------------------------


def test_batched_equals_one_by_one_with_per_entry_seeds(small_problem):
    prior, y, idx = small_problem
    seeds = [11, 12, 13]
    together = ensf_analysis(prior, y, idx, 0.2, generator=seeds)
    for b, seed in enumerate(seeds):
        alone = ensf_analysis(prior[b], y[b], idx, 0.2, generator=[seed])
        torch.testing.assert_close(together[b], alone, rtol=1e-6, atol=1e-6)
        as_int = ensf_analysis(prior[b], y[b], idx, 0.2, generator=seed)
        torch.testing.assert_close(as_int, alone, rtol=0, atol=0)


def test_same_seed_same_result(small_problem):
    prior, y, idx = small_problem
    a = ensf_analysis(prior, y, idx, 0.2, generator=4)
    b = ensf_analysis(prior, y, idx, 0.2, generator=torch.Generator().manual_seed(4))
    c = ensf_analysis(prior, y, idx, 0.2, generator=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_obs_broadcast_over_batch(small_problem):
    """One observation vector for all times equals repeating it per time."""
    prior, y, idx = small_problem
    a = ensf_analysis(prior, y[0], idx, 0.2, generator=[1, 2, 3])
    b = ensf_analysis(prior, y[:1].expand(3, -1), idx, 0.2, generator=[1, 2, 3])
    torch.testing.assert_close(a, b)


# -- array types and dtypes ----------------------------------------------------------


def test_numpy_in_numpy_out(small_problem):
    prior, y, idx = small_problem
    out = ensf_analysis(prior.numpy(), y.numpy(), idx.numpy(), 0.2, steps=10, generator=1)
    ref = ensf_analysis(prior, y, idx, 0.2, steps=10, generator=1)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref.numpy())


@pytest.mark.parametrize("as_numpy", [False, True])
def test_float64_is_kept(small_problem, as_numpy):
    prior, y, idx = small_problem
    prior = prior.double().numpy() if as_numpy else prior.double()
    out = ensf_analysis(prior, y, idx, 0.2, steps=10, generator=1)
    assert out.dtype in (np.float64, torch.float64)


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"prior": lambda p: p.half()}, OptionError, "float32 or float64"),
        ({"prior": lambda p: p[:, :1]}, EnsembleError, "at least 2"),
        ({"prior": lambda p: p[0, :, 0]}, EnsembleError, r"\(\.\.\., N, d\)"),
        (
            {"prior": lambda p: p.index_put((torch.tensor(0),), torch.tensor(float("nan")))},
            EnsembleError,
            "NaN",
        ),
        # observations that do not fit the operator: the class letkf_analysis raises
        ({"y": lambda y: y[:, :2]}, ObservationMismatchError, "y's last dim"),
        ({"obs_std": torch.ones(2) * 0.2}, ObservationMismatchError, "obs_std"),
        ({"idx": lambda i: i + 3}, OptionError, "outside"),
        ({"prior_score": "kde"}, OptionError, "mixture"),
        ({"steps": 0}, OptionError, "steps"),
        ({"obs_std": -1.0}, OptionError, "obs_std"),
        ({"eps_beta": 0.0}, OptionError, "eps_beta"),
        ({"damping": "cosine"}, OptionError, "damping"),
        # a weight that is no finite number >= 0 gave a NaN or exploding analysis
        ({"damping": lambda tau: float("nan")}, OptionError, r"damping\(1\) gave nan"),
        ({"damping": lambda tau: tau - 0.5}, OptionError, r"damping\(0\.\d+\) gave -"),
        ({"generator": [1, 2]}, OptionError, "one seed per entry"),
        ({"scale": torch.ones(4)}, OptionError, "scale"),
        ({"scale": -torch.ones(5)}, OptionError, "scale"),
    ],
)
def test_bad_inputs_raise(small_problem, change, error, match):
    prior, y, idx = small_problem
    args = {"prior": prior, "y": y, "idx": idx, "obs_std": 0.2}
    kwargs = {"steps": 5}
    for key, value in change.items():
        if key in args:
            args[key] = value(args[key]) if callable(value) else value
        else:
            kwargs[key] = value
    with pytest.raises(error, match=match):
        ensf_analysis(args["prior"], args["y"], args["idx"], args["obs_std"], **kwargs)


# -- the exact Gaussian likelihood ---------------------------------------------------


def _kalman(prior, idx, y, obs_std, eps_beta):
    """Kalman posterior mean and spread for the sample moments of ``prior`` (N − 1).

    The reverse SDE samples the ensemble smoothed by its kernel of variance ``ε_β``
    (standardised units), so the prior covariance is ``P + ε_β diag(scale²)``, ``scale``
    the ensemble spread used to standardise.
    """
    mean = prior.mean(0)
    scale = prior.std(0)
    cov = np.cov(prior.T) + eps_beta * np.diag(scale**2)
    h = np.zeros((len(idx), prior.shape[1]))
    h[np.arange(len(idx)), idx] = 1.0
    s = h @ cov @ h.T + np.diag(np.broadcast_to(obs_std, (len(idx),)) ** 2)
    gain = cov @ h.T @ np.linalg.inv(s)
    post_cov = cov - gain @ h @ cov
    return mean + gain @ (y - mean[idx]), np.sqrt(np.diag(post_cov))


def _standardised_errors(post, priors, idx, y, obs_std, n):
    """(post − Kalman) / standard error, for the means and spreads of every entry.

    As in the continuous-limit test, the sampling errors s/√N and s/√(2N) are inflated
    by √2 for the importance-sampling error of the finite ensemble's mixture score.
    """
    z_mean, z_std = [], []
    for b in range(len(priors)):
        ref_mean, ref_std = _kalman(priors[b].astype(float), idx, y[b], obs_std, 0.025)
        z_mean.append((post[b].mean(0) - ref_mean) / (np.sqrt(2.0) * ref_std / np.sqrt(n)))
        z_std.append((post[b].std(0) - ref_std) / (np.sqrt(2.0) * ref_std / np.sqrt(2.0 * n)))
    return np.array(z_mean), np.array(z_std)


def test_gaussian_likelihood_matches_kalman(device):
    """Linear operator, Gaussian prior ensemble: mean and spread are Kalman's (MC error)."""
    d, n, batch = 6, 400, 8
    rng = np.random.default_rng(0)
    root = rng.normal(size=(d, d)) / np.sqrt(d)
    cov = root @ root.T + 0.3 * np.eye(d)
    std = np.sqrt(np.diag(cov))
    idx = np.array([0, 2, 3])
    obs_std = std[idx]
    priors = rng.multivariate_normal(np.zeros(d), cov, size=(batch, n))
    y = rng.normal(size=(batch, len(idx))) * std[idx]
    post = ensf_analysis(
        torch.as_tensor(priors, device=device),
        torch.as_tensor(y, device=device),
        torch.as_tensor(idx, device=device),
        torch.as_tensor(obs_std, device=device),
        likelihood="gaussian",
        scale=torch.as_tensor(priors.std(axis=1), device=device),
        generator=list(range(batch)),
    )
    assert post.device.type == device
    post = post.cpu().numpy()
    z_mean, z_std = _standardised_errors(post, priors, idx, y, obs_std, n)
    z = np.concatenate([z_mean.ravel(), z_std.ravel()])
    assert np.abs(z).max() < 5.0
    assert abs(z_mean.mean()) < 4.0 / np.sqrt(z_mean.size)
    assert abs(z_std.mean()) < 4.0 / np.sqrt(z_std.size)


def test_damped_likelihood_is_not_kalman():
    """Why "gaussian" exists: the damped EnSF's spread is biased by many standard errors.

    Unit prior, observation error equal to the prior spread: Kalman gives variance
    0.506 (with the ε_β smoothing), the damped score about 0.45.
    """
    n, batch = 400, 16
    gen = torch.Generator().manual_seed(0)
    priors = torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)
    priors = (priors - priors.mean(1, keepdim=True)) / priors.std(1, keepdim=True)
    y = torch.ones(batch, 1, dtype=torch.float64)
    idx = np.array([0])
    results = {}
    for likelihood in ("damped", "gaussian"):
        post = ensf_analysis(
            priors, y, idx, 1.0, likelihood=likelihood, generator=list(range(batch))
        )
        _, z_std = _standardised_errors(post.numpy(), priors.numpy(), idx, y.numpy(), 1.0, n)
        results[likelihood] = z_std.mean() * np.sqrt(z_std.size)  # ~ N(0, 1) if unbiased
    assert results["damped"] < -4.0
    assert abs(results["gaussian"]) < 3.0


def test_gaussian_likelihood_small_error_is_stable():
    """σ = 1e-3 of the spread: finite, observed component near y, correlated one follows.

    With 100 steps the result is not yet the Kalman posterior for such a small σ: the
    last steps leave a spread of a few per cent of the prior's (see ensf_analysis).
    """
    gen = torch.Generator().manual_seed(1)
    n = 200
    base = torch.randn(n, 1, generator=gen)
    prior = torch.cat(
        [base, base + 0.1 * torch.randn(n, 1, generator=gen), torch.randn(n, 2, generator=gen)],
        dim=-1,
    )
    spread = prior.std(0)
    y = torch.tensor([0.8])
    post = ensf_analysis(
        prior, y, torch.tensor([0]), 1e-3 * spread[0], likelihood="gaussian", generator=3
    )
    ref_mean, _ = _kalman(prior.double().numpy(), np.array([0]), y.numpy(), 1e-3, 0.025)
    assert torch.isfinite(post).all()
    assert abs(post[:, 0].mean() - 0.8) < 0.05 * spread[0]
    assert post[:, 0].std() < 0.15 * spread[0]
    assert abs(post[:, 1].mean() - ref_mean[1]) < 0.1 * spread[1]
    assert torch.all((post[:, 2:].std(0) > 0.7) & (post[:, 2:].std(0) < 1.3))


def test_gaussian_likelihood_of_an_ensemble_without_spread_is_finite():
    """Members equal but for their mean's rounding: the standardised deviations are the
    same in every member, two components of ~1e-7 (the values of a latent ensemble the
    property suite drew). The float32 eigh of their Gram matrix returned NaN, and the
    likelihood's Cholesky failed with torch's LinAlgError; in float64 it is finite,
    rank one, and the likelihood's score is finite."""
    from xensf.filters.gaussian_likelihood import GaussianLikelihood

    z0 = torch.zeros(12, 16)
    z0[:, 4], z0[:, 7] = 1.7513643513211719e-07, -2.9057567019208363e-08
    idx = torch.arange(0, 16, 2)[:, None]
    op = LinearObservationOperator(idx, torch.ones(idx.shape))
    likelihood = GaussianLikelihood(
        z0, torch.zeros(1, 16), torch.ones(1, 16), op, torch.full((1, 8), 0.3),
        torch.full((1, 8), 4.0), 0.025,
    )  # fmt: skip
    assert torch.isfinite(likelihood.lam).all() and torch.isfinite(likelihood.u).all()
    expected = float(z0[0].double().square().sum() * 12 / 11)  # the one nonzero eigenvalue
    assert float(likelihood.lam[..., -1]) == pytest.approx(expected, rel=1e-5)
    score, _ = likelihood.score(
        torch.randn(12, 16, generator=torch.Generator().manual_seed(0)), 0.5, 0.6
    )
    assert torch.isfinite(score).all()


def test_gaussian_interpolation_operator_matches_kalman_mean():
    """Rows sharing a state component (dense m×m path) agree with index rows' algebra."""
    gen = torch.Generator().manual_seed(2)
    prior = torch.randn(2, 300, 5, generator=gen, dtype=torch.float64)
    op = LinearObservationOperator(
        torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    )
    y = torch.tensor([0.4, -0.3], dtype=torch.float64)
    post = ensf_analysis(prior, y, op, 0.5, likelihood="gaussian", generator=[1, 2])
    w = np.array([[0.5, 0.5, 0, 0, 0], [0, 0.5, 0.5, 0, 0]])
    for b in range(2):
        p = prior[b].numpy()
        cov = np.cov(p.T) + 0.025 * np.diag(p.std(0) ** 2)
        s = w @ cov @ w.T + 0.25 * np.eye(2)
        ref = p.mean(0) + cov @ w.T @ np.linalg.solve(s, y.numpy() - w @ p.mean(0))
        err = (post[b].mean(0).numpy() - ref) / (np.sqrt(2.0) * p.std(0) / np.sqrt(300))
        assert np.abs(err).max() < 5.0


@pytest.mark.parametrize(
    "obs_op",
    [
        lambda: lambda x: torch.arctan(x[..., [0, 2, 4]]),
        lambda: LinearObservationOperator(
            torch.tensor([[0], [2], [4]]), torch.ones(3, 1), torch.arctan
        ),
    ],
)
def test_gaussian_likelihood_refuses_nonlinear_operators(small_problem, obs_op):
    prior, y, _ = small_problem
    with pytest.raises(OptionError, match=r"linear observation operator.*damped"):
        ensf_analysis(prior, y, obs_op(), 0.2, likelihood="gaussian", steps=5)


def test_gaussian_likelihood_takes_no_damping(small_problem):
    prior, y, idx = small_problem
    with pytest.raises(OptionError, match="no damping"):
        ensf_analysis(prior, y, idx, 0.2, likelihood="gaussian", damping="none", steps=5)
    with pytest.raises(OptionError, match="likelihood must be one of"):
        ensf_analysis(prior, y, idx, 0.2, likelihood="exact", steps=5)
