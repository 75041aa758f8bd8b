"""The latent observation error follows the observation error the user states."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from test_latent_accessor import case, station_case  # noqa: F401  (module-scoped fixtures)

import xensf
from xensf.bridge.observations import _errors_given
from xensf.errors import EnsembleError, OptionError
from xensf.latent import (
    COVERAGES,
    NOISE_SCALES,
    calibrate_obs_error,
    coverage_error_curve,
    gridded_stride_obs,
)


def test_training_records_the_curve_and_its_training_point_is_latent_obs_std(case):  # noqa: F811
    model = case[0]
    curve = model.config["latent"]["obs_error"]
    noise, std = np.array(curve["noise"]), np.array(curve["std"])
    assert std.shape == (len(NOISE_SCALES), model.latent_dim)
    assert noise[0] == 0 and np.all(np.diff(noise) > 0)
    # the same draws scaled: the noise RMS is proportional to the scale
    np.testing.assert_allclose(noise[1:] / noise[2], np.array(NOISE_SCALES[1:]), rtol=1e-6)
    # at the training noise: the error the training stored, from the same draws
    np.testing.assert_allclose(std[2], model.latent_obs_std.numpy(), rtol=1e-5)
    # more noise, a larger error (over the latent values)
    rms = np.sqrt((std**2).mean(1))
    assert np.all(np.diff(rms) > 0)
    assert rms[-1] > 1.5 * rms[2]


def test_the_error_at_a_noise_interpolates_the_curve_in_variance(case):  # noqa: F811
    model = case[0]
    curve = model.config["latent"]["obs_error"]
    noise, std = np.array(curve["noise"]), np.array(curve["std"])
    at = model.latent_obs_std_at(noise).numpy()
    np.testing.assert_allclose(at, std, rtol=1e-5)
    assert model.latent_obs_std_at(float(noise[3])).shape == (model.latent_dim,)
    # halfway in variance between two points: the mean of their variances
    mid = np.sqrt((noise[2] ** 2 + noise[3] ** 2) / 2)
    np.testing.assert_allclose(
        model.latent_obs_std_at(mid).numpy() ** 2, (std[2] ** 2 + std[3] ** 2) / 2, rtol=1e-5
    )
    # beyond the last point: along the last segment
    far = noise[-1] * 2
    slope = (std[-1] ** 2 - std[-2] ** 2) / (noise[-1] ** 2 - noise[-2] ** 2)
    expected = std[-1] ** 2 + slope * (far**2 - noise[-1] ** 2)
    np.testing.assert_allclose(model.latent_obs_std_at(far).numpy() ** 2, expected, rtol=1e-4)
    with pytest.raises(OptionError, match="finite and >= 0"):
        model.latent_obs_std_at(-0.1)
    with pytest.raises(OptionError, match=r"a number or an array of numbers.*0.1 for 10 %"):
        model.latent_obs_std_at("10%")  # (a raw TypeError from torch)


def _noise_error(model, scale):
    """An obs_error (state units) whose normalised RMS is ``scale`` x the training noise."""
    return float(model.config["latent"]["obs_error"]["noise"][2] * scale * model.std[0])


def test_the_accessor_reads_the_latent_error_at_the_stated_error(case):  # noqa: F811
    model, prior, _, obs = case
    options = dict(model=model, seed=3, device="cpu")
    default = prior.ensf.assimilate(obs, **options)
    # stated at the training noise: the training's error, so the same analysis
    same = prior.ensf.assimilate(obs, obs_error=_noise_error(model, 1.0), **options)
    np.testing.assert_allclose(same.h.values, default.h.values, rtol=0, atol=1e-4)
    # the error as a variable on the observations is read the same way
    with_var = obs.assign(h_error=obs.h * 0 + _noise_error(model, 1.0))
    np.testing.assert_allclose(
        prior.ensf.assimilate(with_var, **options).h.values, same.h.values, rtol=0, atol=1e-4
    )

    # noisier observations: a larger latent error, so a smaller pull towards them and
    # a wider analysis
    def pull(a):
        return float(np.abs(a.h.mean("member") - prior.h.mean("member")).mean())

    def spread(a):
        return float(a.h.std("member").mean())

    noisy = prior.ensf.assimilate(obs, obs_error=_noise_error(model, 4.0), **options)
    exact = prior.ensf.assimilate(obs, obs_error=_noise_error(model, 0.01), **options)
    assert pull(noisy) < pull(default)
    assert spread(exact) < spread(default) < spread(noisy)
    assert noisy.attrs["xensf_method"] == "latent-ensf"


def test_errors_for_some_variables_only_or_a_model_without_the_curve_are_refused(case):  # noqa: F811
    model, prior, _, obs = case
    obs2 = obs.assign(g=obs.h * 2, h_error=obs.h * 0 + 0.1)
    with pytest.raises(OptionError, match=r"not for \['g'\]"):
        _errors_given(obs2, ["h", "g"], None)
    assert _errors_given(obs2, ["h"], None) and not _errors_given(obs2, ["g"], None)
    old = copy.copy(model)
    old.config = copy.deepcopy(model.config)
    del old.config["latent"]["obs_error"]
    with pytest.raises(OptionError, match="no calibration of its observation error"):
        prior.ensf.assimilate(obs, model=old, obs_error=0.1)
    # without a stated error it still works, at the training noise
    assert prior.ensf.assimilate(obs, model=old, seed=1).h.notnull().all()


def test_calibrating_a_model_again_on_other_states(case):  # noqa: F811
    model = copy.copy(case[0])
    model.config = copy.deepcopy(case[0].config)
    del model.config["latent"]["obs_error"]
    states = torch.as_tensor(case[2].h.values[:, None])
    curve = calibrate_obs_error(model, states, gridded_stride_obs(4, 0.1), seed=5)
    assert model.config["latent"]["obs_error"] is curve
    assert np.all(np.diff(curve["noise"]) > 0)
    with pytest.raises(OptionError, match="noise-free"):
        calibrate_obs_error(model, states, gridded_stride_obs(4, 0.0))
    # raw torch errors before, or a NaN blamed on the observation mask
    sampler = gridded_stride_obs(4, 0.1)
    for args, error, match in [
        ((model, states[:, :, :-1], sampler), EnsembleError, "states must end in"),
        ((model, states * np.nan, sampler), EnsembleError, "states holds NaN"),
        ((model, states, None), OptionError, "make_obs must be the observation sampler"),
        (("model.xensf", states, sampler), OptionError, "model must be a LatentModel"),
    ]:
        with pytest.raises(error, match=match):
            calibrate_obs_error(*args)
    with pytest.raises(OptionError, match="seed must be an integer"):
        calibrate_obs_error(model, states, sampler, seed="5")


# -- observations with gaps: the coverage curve ------------------------------------------
def test_training_records_the_coverage_curve(case, station_case):  # noqa: F811
    """The encoder's error at shares of its layout: largest with nothing observed, the
    whole layout's close to the error training measured there (other noise draws)."""
    for model in (case[0], station_case[0]):
        curve = model.config["latent"]["coverage_error"]
        std = np.array(curve["std"])
        assert curve["coverage"] == list(COVERAGES)
        assert std.shape == (len(COVERAGES), model.latent_dim)
        rms = np.sqrt((std**2).mean(1))
        decoded = np.array(curve["obs_relative_rmse"])
        assert rms[0] > 2 * rms[-1] and decoded[0] > 2 * decoded[-1]
        assert rms[COVERAGES.index(0.5)] > rms[-1] and decoded[COVERAGES.index(0.5)] > decoded[-1]
        whole = float(np.sqrt((model.latent_obs_std.numpy() ** 2).mean()))
        assert 0.67 < rms[-1] / whole < 1.5
        quality = float(np.sqrt(np.mean(np.square(model.config["quality"]["obs_relative_rmse"]))))
        assert 0.67 < decoded[-1] / quality < 1.5


def test_the_coverage_curve_needs_the_whole_layout_last(case):  # noqa: F811
    states = torch.as_tensor(case[2].h.values[:, None])
    for bad in ((0.0, 0.5), (0.5, 0.25, 1.0), (-0.1, 1.0), (1.0,)):
        with pytest.raises(OptionError, match="coverages"):
            coverage_error_curve(case[0], [states], gridded_stride_obs(4, 0.1), seed=0,
                                 coverages=bad)  # fmt: skip


def test_the_coverage_excess_interpolates_the_curve(case):  # noqa: F811
    model = case[0]
    curve = model.config["latent"]["coverage_error"]
    v = np.array(curve["std"]) ** 2
    d = np.array(curve["obs_relative_rmse"]) ** 2
    latent, decoded = model.coverage_excess(np.array(COVERAGES))
    np.testing.assert_allclose(latent.numpy(), np.maximum(v - v[-1], 0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(decoded.numpy(), np.maximum(d - d[-1], 0), rtol=1e-6, atol=1e-12)
    assert not latent[-1].any() and decoded[-1] == 0  # the whole layout: nothing added
    # halfway between two measured coverages: halfway between their variances
    mid = (COVERAGES[2] + COVERAGES[3]) / 2
    half = np.maximum((v[2] + v[3]) / 2 - v[-1], 0)
    np.testing.assert_allclose(
        model.coverage_excess(mid)[0][0].numpy(), half, rtol=1e-6, atol=1e-12
    )
    with pytest.raises(OptionError, match="coverage"):
        model.coverage_excess(1.5)
    old = copy.copy(model)
    old.config = copy.deepcopy(model.config)
    del old.config["latent"]["coverage_error"]  # a model from before the curve
    assert not old.coverage_excess([0.2, 0.5])[0].any()


def test_gaps_widen_the_latent_error_and_a_whole_layout_is_unchanged(case):  # noqa: F811
    """The analysis's latent error grows by the curve's excess at the coverage of each
    time; with the whole layout it is exactly that of a model without the curve."""
    model, prior, _, obs = case
    old = copy.copy(model)
    old.config = copy.deepcopy(model.config)
    del old.config["latent"]["coverage_error"]
    x = prior.h.values[:, :, None]
    whole = obs.h.values[:, None]
    # every other observed point left out at times 1 and 3 (18 of 36)
    gappy = whole.copy()
    gappy[[1, 3], :, ::8] = np.nan
    options = dict(
        generator=[1, 2, 3, 4],
        batch_size=12,
        latent_error="curve",
        return_latent=True,
        coverage_error=True,
    )
    post_new, latent_new = model.analyse(x, whole, **options)
    post_old, _ = old.analyse(x, whole, **options)
    np.testing.assert_array_equal(post_new, post_old)
    np.testing.assert_array_equal(latent_new["diagnostics"]["coverage"].numpy(), np.ones(4))
    _, latent_gap = model.analyse(x, gappy, **options)
    coverage = latent_gap["diagnostics"]["coverage"].numpy()
    np.testing.assert_allclose(coverage, [1, 0.5, 1, 0.5])
    expected = torch.sqrt(model.latent_obs_std.double() ** 2 + model.coverage_excess(0.5)[0][0])
    for t in (1, 3):
        np.testing.assert_allclose(latent_gap["obs_std"][t].numpy(), expected.numpy(), rtol=1e-5)
        assert bool((latent_gap["obs_std"][t] >= model.latent_obs_std).all())
    for t in (0, 2):
        np.testing.assert_array_equal(
            latent_gap["obs_std"][t].numpy(), model.latent_obs_std.numpy()
        )
    # without coverage_error (the latent methods alone): the curve's error at every time
    _, latent_plain = model.analyse(x, gappy, **{**options, "coverage_error": False})
    np.testing.assert_array_equal(latent_plain["obs_std"].numpy(), model.latent_obs_std.numpy())
    with pytest.raises(OptionError, match="coverage_error"):
        model.analyse(x, gappy, coverage_error="yes")
    with pytest.raises(OptionError, match="return_latent must be True or False, got 'no'"):
        model.analyse(x, gappy, return_latent="no")  # (returned the latent: 'no' is true)


def test_the_hybrid_leaves_times_with_gaps_to_the_real_observations(case):  # noqa: F811
    """latent-ensf-letkf widens the latent error where half the layout is missing, so it
    moves the prior less far towards the latent analysis there; elsewhere as before."""
    model, prior, _, obs = case
    old = copy.copy(model)
    old.config = copy.deepcopy(model.config)
    del old.config["latent"]["coverage_error"]
    gappy = obs.where((obs.y % 80 == 0) | ~obs.time.isin(obs.time[[1, 3]]))  # 18 of 36
    options = dict(method="latent-ensf-letkf", obs_error=0.05, loc_radius=40.0, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.ModelQualityWarning)  # the gaps: expected
        new_w = prior.ensf.assimilate(gappy, model=model, **options).blend_weight.values
        old_w = prior.ensf.assimilate(gappy, model=old, **options).blend_weight.values
    np.testing.assert_array_equal(new_w[[0, 2]], old_w[[0, 2]])
    assert old_w[[1, 3]].min() > 0
    assert np.all(new_w[[1, 3]] < 0.8 * old_w[[1, 3]])


def test_a_station_model_reads_its_latent_error_at_the_stated_error(station_case):  # noqa: F811
    """Stations between grid points: the stated error, in the model's normalised units,
    picks the latent error exactly as the model's own call with that noise does."""
    model, prior, _, obs = station_case
    assert "obs_error" in model.config["latent"]
    error = 0.02
    analysis = prior.ensf.assimilate(obs, model=model, obs_error=error, seed=3, device="cpu")
    seeds = xensf.bridge.analysis.analysis_seeds(3, prior.time.values)
    direct = model.analyse(
        prior.h.values[:, :, None],
        obs.h.values,
        generator=seeds,
        batch_size=prior.sizes["member"],
        obs_noise=error / float(model.std[0]),
    )
    np.testing.assert_array_equal(analysis.h.values, direct[:, :, 0])
    default = prior.ensf.assimilate(obs, model=model, seed=3, device="cpu")
    assert not np.array_equal(analysis.h.values, default.h.values)


def _check_ensemble_error(model, x, y, observe):
    """latent_error="ensemble" against its recomputation from public pieces; ``observe``
    maps members ``(N, C, H, W)`` to what the observations ``y[t]`` hold there."""
    seeds = [11, 12, 13, 14][: x.shape[0]]
    noise = 2.0 * model.config["latent"]["obs_error"]["noise"][2]
    _, curve = model.analyse(
        x, y, generator=seeds, obs_noise=noise, latent_error="curve", return_latent=True
    )
    _, ens = model.analyse(x, y, generator=seeds, obs_noise=noise, return_latent=True)
    with pytest.raises(OptionError, match=r"obs_noise must be a number"):
        model.analyse(x, y, generator=seeds, obs_noise="10%")  # (a raw TypeError)
    # the first analysis is the curve's (same seeds): decode its members, observe them
    # where the observations are, and compare the two encodings
    members = model.decode(curve["posterior"].reshape(-1, model.latent_dim))
    z_members = model.encode(members)[0].reshape(curve["posterior"].shape)
    members = members.reshape(x.shape)
    seen = torch.as_tensor(~np.isnan(y))
    base = model.latent_obs_std_at(0.0).double() ** 2
    noise_part = model.latent_obs_std_at(noise).double() ** 2 - base
    for t in range(x.shape[0]):
        observed = torch.where(seen[t], observe(members[t]), torch.nan)
        z_obs = model.encode_obs(observed)[0]
        error = (z_obs - z_members[t]).double().square().mean()
        measured = error / base.mean() * base + noise_part
        # then lowered where the latent innovations are smaller than prior + that error
        z_b, y_t = ens["prior"][t].double(), ens["obs"][t].double()
        spread = (1 + 1 / z_b.shape[0]) * z_b.var(0)
        ratio = ((y_t - z_b.mean(0)).square() - spread).mean() / measured.mean()
        expected = (measured * ratio.clamp(0.25, 1.0)).sqrt()
        torch.testing.assert_close(ens["obs_std"][t].double(), expected, rtol=1e-4, atol=1e-6)
    # the analyses differ through that error alone: the same prior and observations
    torch.testing.assert_close(ens["prior"], curve["prior"])
    assert not torch.equal(ens["posterior"], curve["posterior"])


def test_the_ensemble_latent_error_measures_the_encoder_on_a_first_analysis(case):  # noqa: F811
    """latent_error="ensemble" (latent-ensf's default): the curve's noise-0 part rescaled
    per time by the encoder's error on the decoded members of the curve's analysis,
    observed where the observations are; the noise's part added as it is; the whole
    lowered by the innovation factor where the innovations are smaller."""
    model, prior, _, obs = case
    _check_ensemble_error(model, prior.h.values[:, :, None], obs.h.values[:, None], lambda m: m)


def test_the_ensemble_latent_error_of_a_station_model(station_case):  # noqa: F811
    """Stations between grid points: the members are observed by the model's own
    operator (bilinear, normalised; undone here)."""
    model, prior, _, obs = station_case
    chan = torch.as_tensor(model.config["obs_layout"]["slot_channels"])

    def observe(members):
        normalised = model.observe(members.reshape(members.shape[0], -1))
        return normalised * model.std[chan] + model.mean[chan]

    _check_ensemble_error(model, prior.h.values[:, :, None], obs.h.values, observe)


def test_the_latent_error_option_is_checked_before_any_work(case):  # noqa: F811
    model, prior, _, obs = case
    x, y = prior.h.values[:, :, None], obs.h.values[:, None]
    with pytest.raises(OptionError, match="latent_error must be 'ensemble' or 'curve'"):
        model.analyse(x, y, latent_error="flow")
    with pytest.raises(OptionError, match='latent_error="ensemble" is for method="latent-ensf"'):
        model.analyse(x, y, method="latent-letkf", latent_error="ensemble")
    with pytest.raises(OptionError, match="latent_error must be 'ensemble' or 'curve'"):
        prior.ensf.assimilate(obs, model=model, latent_error="flow")
    # the accessor passes it on: "curve" is the model's own call with "curve"
    seeds = xensf.bridge.analysis.analysis_seeds(3, prior.time.values)
    analysis = prior.ensf.assimilate(obs, model=model, seed=3, device="cpu", latent_error="curve")
    direct = model.analyse(
        x, y, generator=seeds, batch_size=prior.sizes["member"], latent_error="curve"
    )
    np.testing.assert_array_equal(analysis.h.values, direct[:, :, 0])


def test_the_hybrid_keeps_the_curve_unless_told(case):  # noqa: F811
    model, prior, _, obs = case
    options = dict(
        model=model,
        method="latent-ensf-letkf",
        obs_error=0.05,
        loc_radius=40.0,
        seed=2,
        device="cpu",
    )
    default = prior.ensf.assimilate(obs, **options)
    curve = prior.ensf.assimilate(obs, latent_error="curve", **options)
    ensemble = prior.ensf.assimilate(obs, latent_error="ensemble", **options)
    np.testing.assert_array_equal(default.h.values, curve.h.values)
    assert not np.array_equal(default.h.values, ensemble.h.values)


def _linear_gaussian(stated_over_true: float, prior_spread_ok: bool = True, seed: int = 0):
    """Latent members, pseudo-observations and a stated error for T = 200 times and
    L = 400 latent values: truth and members from N(m_t, 1), observations the truth plus
    N(0, 1) noise; the stated error variance is ``stated_over_true``. A prior that
    misjudges its spread has members tightly around a displaced mean instead."""
    g = torch.Generator().manual_seed(seed)
    n_times, n_members, size = 200, 20, 400
    centre = torch.randn(n_times, 1, size, generator=g, dtype=torch.float64)
    truth = centre[:, 0] + torch.randn(n_times, size, generator=g, dtype=torch.float64)
    if prior_spread_ok:
        members = centre + torch.randn(n_times, n_members, size, generator=g, dtype=torch.float64)
    else:
        members = (
            centre
            + 3.0
            + 0.01 * torch.randn(n_times, n_members, size, generator=g, dtype=torch.float64)
        )
    z_obs = truth + torch.randn(n_times, size, generator=g, dtype=torch.float64)
    return members, z_obs, torch.full((size,), stated_over_true**0.5, dtype=torch.float64)


def test_the_innovation_factor_recovers_an_overstated_error_and_never_raises_it():
    """Linear-Gaussian: the innovation variance is R + (1 + 1/N) B, so an error stated twice too
    large is found (factor ≈ 1/2); one stated too small, or a prior whose spread
    understates its error, leaves the error as stated (factor 1); a hundredfold
    overstatement is lowered by the bound alone."""
    from xensf.latent.calibration import MIN_INNOVATION_FACTOR, innovation_factor

    factor = innovation_factor(*_linear_gaussian(2.0))
    assert factor.shape == (200,)
    assert float(factor.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(factor.std()) < 0.1  # 400 latent values per time: a steady estimate
    assert torch.all(innovation_factor(*_linear_gaussian(0.5)) == 1.0)
    assert torch.all(innovation_factor(*_linear_gaussian(1.0, prior_spread_ok=False)) == 1.0)
    bounded = innovation_factor(*_linear_gaussian(100.0))
    assert torch.all(bounded == MIN_INNOVATION_FACTOR)
    # one stated error per time is read per time
    members, z_obs, std = _linear_gaussian(2.0)
    per_time = std.expand(200, -1).clone()
    per_time[:100] *= 2**-0.5  # the first half stated right
    split = innovation_factor(members, z_obs, per_time)
    assert float(split[:100].mean()) > 0.9 and float(split[100:].mean()) < 0.6
