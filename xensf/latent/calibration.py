"""How a latent model's observation error grows with the observation noise.

Latent-EnSF uses the encoded observation ``μ_obs(y)`` as a pseudo-observation of the
latent state with a diagonal error whose standard deviation, per latent value, is the
RMS of ``μ_obs(y) − μ(x)`` over held-out states. That error has two parts: what the
observation encoder cannot recover from a sparse network even for exact observations,
and the observation noise carried through the encoder. The second grows with the noise
(close to linearly in its variance), so an error measured at the training noise is too
small for noisier observations (an overconfident analysis) and too large for more
accurate ones.

:func:`obs_error_curve` measures it at several multiples of the training noise, with
the same noise draws scaled (common random numbers, a smooth curve); the model stores
the curve (``config["latent"]["obs_error"]``) and
:meth:`~xensf.latent.LatentModel.latent_obs_std_at` reads the error at the noise the
user states, interpolating linearly in the noise variance.

Observations with gaps (a share of the training layout missing) are read less well
by the observation encoder, the more so when it was trained on whole layouts only
(``obs_dropout=0``). :func:`coverage_error_curve` measures the error at shares of the
layout from 0 to 1, at the training noise, with nested subsets of the same draws; the
model stores it (``config["latent"]["coverage_error"]``) and
:meth:`~xensf.latent.LatentModel.coverage_excess` adds what the gaps add to the
error variance, so that an analysis leans on the prior as much as the gaps deserve.

What the curves cannot know is how well the model represents the flow at hand:
latent-ensf measures the encoder's part on each analysis (``latent_error="ensemble"``),
and :func:`innovation_factor` then lowers the error where the latent innovations are
smaller than it says.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..checks import is_integer
from ..errors import OptionError

__all__ = [
    "COVERAGES",
    "NOISE_SCALES",
    "calibrate_obs_error",
    "coverage_error_curve",
    "innovation_factor",
    "layout_points",
    "leave_out",
    "obs_error_curve",
]

#: Smallest latent observation error stored: an encoder that matches the state encoder
#: exactly on the validation set must not give an infinitely precise pseudo-observation.
MIN_LATENT_OBS_STD = 1e-3

#: The multiples of the training noise at which the curve is measured.
NOISE_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)

#: The shares of the observation layout at which :func:`coverage_error_curve` measures
#: the error (0: nothing observed, the encoder's answer to an empty layout).
COVERAGES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)

#: The most :func:`innovation_factor` lowers the latent error variance (a factor of 4 in
#: variance, 2 in standard deviation).
MIN_INNOVATION_FACTOR = 0.25


def innovation_factor(
    z_prior: torch.Tensor, z_obs: torch.Tensor, obs_std: torch.Tensor
) -> torch.Tensor:
    """How much smaller the latent observation error variance is than stated, by time.

    In a linear-Gaussian setting the innovation ``d = z_obs − z̄_b`` of each latent
    value has variance ``R + (1 + 1/N) B`` (the observation error, the prior's, and the
    sampling error of the mean of ``N`` members), so
    ``mean(d² − (1 + 1/N) s_b²) / mean(R)`` over the latent values estimates how the
    actual error compares with the stated one (``s_b²`` the members' variance). The
    factor is that ratio, clipped to ``[MIN_INNOVATION_FACTOR, 1]``: **one-sided**,
    because a larger ratio also appears when the prior's spread understates its error
    (the hard twin's displaced prior), where raising ``R`` would keep the analysis from
    moving.

    Parameters
    ----------
    z_prior : torch.Tensor
        ``(T, N, L)`` latent members.
    z_obs : torch.Tensor
        ``(T, L)`` latent pseudo-observations.
    obs_std : torch.Tensor
        ``(L,)`` or ``(T, L)`` their stated error standard deviations.

    Returns
    -------
    torch.Tensor
        ``(T,)`` float64 factors for the error *variances*.
    """
    z = z_prior.double()
    n_members = z.shape[1]
    innovation = (z_obs.double() - z.mean(1)).square() - (1 + 1 / n_members) * z.var(1)
    stated = obs_std.double().square().reshape(-1, z.shape[-1]).mean(-1)  # (1,) or (T,)
    return (innovation.mean(-1) / stated).clamp(MIN_INNOVATION_FACTOR, 1.0)


@torch.no_grad()
def obs_error_curve(
    model,
    batches: Iterable[torch.Tensor],
    make_obs,
    *,
    seed: int,
    scales: tuple[float, ...] = NOISE_SCALES,
) -> dict[str, Any]:
    """The latent observation error of ``model`` at multiples of ``make_obs``'s noise.

    Parameters
    ----------
    model : LatentModel
        In eval mode.
    batches : iterable of torch.Tensor
        Held-out states ``(B, C, H, W)`` in physical units (NaN at masked points).
    make_obs : ObservationSampler
        The training observations; called with ``noise_scale`` = each of ``scales``,
        each time from a generator seeded with ``seed``, so every scale sees the same
        noise draws, scaled (at scale 1 the draws of the training's validation).
    seed : int
    scales : tuple of float
        Increasing, starting at 0.

    Returns
    -------
    dict or None
        None if ``make_obs`` makes noise-free observations; else
        ``{"noise": [K], "std": [K][L], "what": ...}``: the RMS observation noise in
        normalised units (each value divided by its channel's std) at each scale, and
        the RMS over the states of ``μ_obs(y) − μ(x)`` per latent value there.
    """
    std = model.std
    n = len(scales)
    r_sq = [0.0] * n
    noise_sq = [0.0] * n
    noise_count = [0] * n
    count = 0
    layout = model.config["obs_layout"]
    # one stream per scale, each from ``seed``: the same draws at every scale
    generators = [torch.Generator().manual_seed(seed) for _ in scales]
    for batch in batches:
        x = batch.to(device=model.device, dtype=model.dtype)
        mu = model.vae.encode(model.normalize(x))[0]
        clean = None
        for i, s in enumerate(scales):
            values, mask = make_obs(x, generators[i], noise_scale=s)
            if model.valid is not None:  # nothing is observed on the mask
                mask = mask & ~torch.isnan(values)
            mu_o = model.obs_encoder(*model.obs_inputs(values, mask))[0]
            r_sq[i] = r_sq[i] + (mu_o - mu).double().square().sum(0)
            if clean is None:
                clean = values
            diff = (values - clean).double()
            if layout["kind"] == "points":
                chan = torch.as_tensor(layout["slot_channels"], device=diff.device)
                diff = diff / std.double()[chan]
            else:
                diff = diff / std.double()[:, None, None]
            noise_sq[i] += float(torch.where(mask, diff, 0.0).square().sum())
            noise_count[i] += int(mask.sum())
        count += x.shape[0]
    noise = [(q / max(c, 1)) ** 0.5 for q, c in zip(noise_sq, noise_count, strict=True)]
    if not all(b > a for a, b in itertools.pairwise(noise)):
        return None  # noise-free training observations: nothing to scale
    return {
        "what": (
            "RMS of mu_obs(y) - mu(x) per latent value over the validation states, with "
            "the training observation noise scaled so that its RMS in normalised units "
            "(each value divided by its channel's std) is 'noise'"
        ),
        "noise": noise,
        "std": [(r / count).sqrt().clamp_min(MIN_LATENT_OBS_STD).float().tolist() for r in r_sq],
    }


def layout_points(make_obs, state: torch.Tensor) -> torch.Tensor | None:
    """``(C, H, W)`` bool: where ``make_obs`` observes ``state`` (one ``(C, H, W)``
    state, NaN on a mask), for a sampler of a fixed gridded layout (``stride`` or
    ``mask``: :func:`~xensf.latent.gridded_stride_obs`, :func:`~xensf.latent.mask_obs`);
    None for any other ``make_obs`` (its layout may change from sample to sample)."""
    layout = getattr(make_obs, "layout", None)
    if not isinstance(layout, Mapping) or layout.get("kind") != "gridded":
        return None
    if layout.get("sampler") not in ("stride", "mask"):
        return None
    values, mask = make_obs(state[None].to(torch.float32), torch.Generator().manual_seed(0))
    return (torch.as_tensor(mask)[0] & ~torch.isnan(torch.as_tensor(values)[0])).cpu()


def leave_out(mask: torch.Tensor, drawn: torch.Tensor, share) -> torch.Tensor:
    """``mask`` with the values whose uniform draw ``drawn`` (``mask``'s shape) is below
    ``share`` left out: a number, or one per sample ``(B,)`` (the first dim)."""
    share = torch.as_tensor(share, dtype=drawn.dtype, device=drawn.device)
    if share.dim():
        share = share.reshape(-1, *[1] * (mask.dim() - 1))
    return mask & (drawn >= share).to(mask.device)


@torch.no_grad()
def coverage_error_curve(
    model,
    batches: Iterable[torch.Tensor],
    make_obs,
    *,
    seed: int,
    coverages: tuple[float, ...] = COVERAGES,
) -> dict[str, Any]:
    """The latent observation error of ``model`` when its observations cover a share
    of the training layout.

    Parameters
    ----------
    model : LatentModel
        In eval mode.
    batches : iterable of torch.Tensor
        Held-out states ``(B, C, H, W)`` in physical units (NaN at masked points).
    make_obs : callable
        The training observations (layout and noise), called once per batch with a
        generator seeded with ``seed``; coverage ``c`` keeps the observed values whose
        one uniform draw is at least ``1 − c`` (nested subsets: a smooth curve).
    seed : int
    coverages : tuple of float
        Increasing, in ``[0, 1]``, the last 1 (the whole layout, what the others are
        compared with).

    Returns
    -------
    dict
        ``{"coverage": [K], "std": [K][L], "obs_relative_rmse": [K], "what": ...}``:
        the RMS over the states of ``μ_obs(y) − μ(x)`` per latent value, and the
        relative error of the decoded observation encoding ``decode(μ_obs(y))`` (RMS
        over the channels of each channel's RMSE in normalised units, as the model's
        ``quality["obs_relative_rmse"]``), at each coverage.
    """
    if (
        len(coverages) < 2
        or coverages[0] < 0
        or coverages[-1] != 1
        or any(b <= a for a, b in itertools.pairwise(coverages))
    ):
        raise OptionError(f"coverages must increase from >= 0 to 1, got {coverages!r}")
    n = len(coverages)
    r_sq = [0.0] * n
    sq = [0.0] * n
    count = 0
    keep = 1.0 if model.valid is None else model.valid.to(model.dtype)  # masked: no error
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        x = batch.to(device=model.device, dtype=model.dtype)
        xn = model.normalize(x)
        mu = model.vae.encode(xn)[0]
        values, mask = make_obs(x, generator)
        if model.valid is not None:  # nothing is observed on the mask
            mask = mask & ~torch.isnan(values)
        drawn = torch.rand(mask.shape, generator=generator)
        for i, c in enumerate(coverages):
            mu_o = model.obs_encoder(*model.obs_inputs(values, leave_out(mask, drawn, 1 - c)))[0]
            r_sq[i] = r_sq[i] + (mu_o - mu).double().square().sum(0)
            err = ((model.vae.decode(mu_o) - xn).square() * keep).sum((-2, -1)).double().sum(0)
            sq[i] = sq[i] + err
        count += x.shape[0]
    h, w = model.grid_shape
    points = keep.sum((-2, -1)).double() if model.valid is not None else h * w
    return {
        "what": (
            "RMS of mu_obs(y) - mu(x) per latent value over the validation states, and the "
            "relative error of decode(mu_obs(y)), with a share 'coverage' of the training "
            "observation layout observed, at the training noise"
        ),
        "coverage": [float(c) for c in coverages],
        "std": [(r / count).sqrt().clamp_min(MIN_LATENT_OBS_STD).float().tolist() for r in r_sq],
        "obs_relative_rmse": [
            float((q / (count * points)).sqrt().square().mean().sqrt()) for q in sq
        ],
    }


def calibrate_obs_error(model, states, make_obs, *, seed: int = 0, batch_size: int = 64):
    """Measure ``model``'s observation-error curves on held-out ``states``; store them.

    For a model trained before the curves were recorded, or to re-measure them on other
    data: sets ``model.config["latent"]["obs_error"]`` (see :func:`obs_error_curve`)
    and ``model.config["latent"]["coverage_error"]`` (see
    :func:`coverage_error_curve`) and returns the first; a gridded model that does not
    record its layout's points gets them from ``make_obs`` (:func:`layout_points`). ``latent_obs_std`` (the error
    at the training noise, used when no observation error is given) is left as
    training measured it.

    Parameters
    ----------
    model : LatentModel
    states : torch.Tensor
        ``(B, C, H, W)`` physical units, states the model was not trained on.
    make_obs : ObservationSampler
        The observations the model was trained with (layout and noise).
    seed : int
    batch_size : int
    """
    from ..filters.noise import check_seed
    from .model import LatentModel

    if not isinstance(model, LatentModel):
        raise OptionError(
            f"model must be a LatentModel (xensf.load(path)), got {type(model).__name__}"
        )
    model._state_batch(states, "states")  # checked where the model reads them
    if not callable(make_obs):
        raise OptionError(
            "make_obs must be the observation sampler the model was trained with (e.g. "
            f"xensf.latent.gridded_stride_obs(4, 0.1)), got {make_obs!r}"
        )
    check_seed(seed)
    if not is_integer(batch_size) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    model.vae.eval()
    model.obs_encoder.eval()
    states = torch.as_tensor(states)
    curve = obs_error_curve(model, torch.split(states, batch_size), make_obs, seed=seed)
    if curve is None:
        raise OptionError(
            "make_obs makes noise-free observations: there is no curve to measure; give "
            "the sampler the model was trained with"
        )
    latent = model.config.setdefault("latent", {})
    latent["obs_error"] = curve
    if model.obs_kind == "gridded" and model.obs_points is None:  # an older model
        points = layout_points(make_obs, states[0].to(torch.float32))
        if points is not None:
            model.obs_points = points
    latent["coverage_error"] = coverage_error_curve(
        model, torch.split(states, batch_size), make_obs, seed=seed
    )
    return curve
