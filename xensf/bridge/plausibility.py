"""The observations against the prior, before an analysis: are their errors and values
plausible for this ensemble?

One check for every way an analysis runs (time chunks, LETKF or EnSF on latitude ×
longitude blocks): each is handed the prior at every observation, ``(T, N, M)``, and
all the observations, so it judges the same numbers however the prior is chunked.
An error no filter can compute with is refused (:class:`~xensf.errors.OptionError`);
errors that dwarf the spread (:class:`~xensf.errors.ObservationErrorWarning`) and
observations far beyond spread and error together
(:class:`~xensf.errors.InnovationWarning`) are told, once per analysis, through the
plan's ``warn``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InnovationWarning, ObservationErrorWarning, OptionError, SpreadWarning

__all__ = ["check_against_the_prior", "observed_members"]

#: Observation errors this many times the prior spread at the observed points (RMS
#: over them, per variable and time) get an :class:`~xensf.errors.ObservationErrorWarning`.
_ERROR_SPREAD_RATIO = 10.0
#: Observations whose median distance from the prior mean (per variable and time) is over
#: this many expected standard deviations get an :class:`~xensf.errors.InnovationWarning`.
_GROSS_INNOVATION = 100.0
#: Observation errors below this fraction of the prior spread at their point are refused:
#: LETKF's analysis goes wrong below about 1e-11 of it in float32 and 1e-14 in float64
#: (its N × N algebra squares the ratio), EnSF's turns NaN further down.
_TINY_ERROR_RATIO = 1e-9


def observed_members(x: np.ndarray, obs: Any) -> np.ndarray:
    """The prior members seen through the observation operator ``(T, N, M)``, from the
    stacked state ``x`` ``(T, N, d)`` and the plan's interpolation rows."""
    return (x[:, :, obs.indices] * obs.weights).sum(-1)


def _rms_per_time(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The times (rows) where ``mask`` ``(T, m)`` holds anything, and the RMS of
    ``values`` ``(T, m)`` over the masked entries of each."""
    count = mask.sum(axis=1)
    times = np.flatnonzero(count)
    return times, np.sqrt(np.where(mask, values**2, 0.0).sum(1)[times] / count[times])


def check_against_the_prior(
    members: np.ndarray, y, err, observed, plan: Any, sizes: bool = True
) -> None:
    """Per variable: an :class:`~xensf.errors.OptionError` where an observation's error
    is a vanishing fraction of the prior spread at its point (no filter computes the
    analysis in floating point there), a warning where the errors dwarf the spread
    (those two with ``sizes``: the full-space filters' concerns), and one where the
    observations lie far beyond what the spread and the errors allow.

    ``members``: the prior at every observation row ``(T, N, M)``; ``y``, ``err``,
    ``observed``: ``(T, M)``; ``plan``: its ``obs``, ``layout`` and ``warn``.
    """
    rows = np.flatnonzero(observed.any(axis=0))
    if rows.size == 0:
        return
    obs = plan.obs
    members = np.asarray(members[:, :, rows], np.float64)
    spread = members.std(axis=1, ddof=1)  # (T, m)
    seen = observed[:, rows]
    field = obs.indices[rows, 0] // plan.layout.grid_size
    variable = plan.layout.field_of_variable()[field]
    errors = np.asarray(err[:, rows], np.float64)
    for v in np.unique(variable) if sizes else ():
        mask = seen & (variable == v)[None, :]
        name = plan.layout.variables[v]
        tiny = mask & (errors < _TINY_ERROR_RATIO * spread)
        if tiny.any():
            ratio = float(np.min(errors[tiny] / spread[tiny]))
            raise OptionError(
                f"the observation errors of {name!r} are as small as {ratio:.3g} times the "
                f"prior ensemble spread at their points ({int(tiny.sum())} observation(s) "
                f"below {_TINY_ERROR_RATIO:g} of it): the analysis cannot be computed in "
                "floating point there, and an observation that exact pins the analysis "
                f"anyway. Give errors of at least {_TINY_ERROR_RATIO:g} of the spread (a "
                f"millionth of it here is {float(np.max(spread[tiny])) * 1e-6:.3g} in the "
                "state's units), or check their units"
            )
        # RMS over each time's observations: judged time by time, so that whether it
        # warns does not depend on how the times are chunked
        times, rms_err = _rms_per_time(errors, mask)
        rms_spread = _rms_per_time(spread, mask)[1]
        large = rms_err > _ERROR_SPREAD_RATIO * rms_spread
        if large.any():
            t = int(np.flatnonzero(large)[0])
            if rms_spread[t] == 0:
                plan.warn(
                    (ObservationErrorWarning, name),
                    f"the prior members of {name!r} are all the same at the observed points "
                    f"at {int((rms_spread[large] == 0).sum())} of {times.size} analysed "
                    "times with observations of it: an ensemble without spread there "
                    "trusts itself fully, and no observation will move it. An ensemble of "
                    "copies of one forecast needs perturbing (e.g. with noise of the "
                    "forecast's expected error) before it can be assimilated into.",
                    ObservationErrorWarning,
                )
                continue
            ratio = rms_err[t] / rms_spread[t]
            plan.warn(
                (ObservationErrorWarning, name),
                f"the observation errors of {name!r} are over {_ERROR_SPREAD_RATIO:g} times "
                f"the prior ensemble spread at the observed points at {int(large.sum())} of "
                f"{times.size} analysed times with observations of it; at the first (RMS "
                f"{rms_err[t]:.3g}) they are {ratio:.3g} times the spread (RMS "
                f"{rms_spread[t]:.3g}): the analysis will hardly move from the prior. If that "
                "is not meant, give smaller errors (obs_error='P%' is P % of the "
                "observations' spatial standard deviation, not of the prior spread).",
                ObservationErrorWarning,
            )
    _check_gross_innovations(
        y[:, rows], members.mean(axis=1), spread, errors, seen, variable, plan
    )
    _check_ensf_noise(spread, seen, variable, plan)


def _check_ensf_noise(spread, seen, variable, plan: Any) -> None:
    """A :class:`~xensf.errors.SpreadWarning` per variable where the user's EnSF
    ``scale`` makes the filter's terminal noise, ``√eps_beta · scale`` (what it adds
    to every member), larger than the prior spread at the observed points (RMS over
    them) at some analysed time: the analysis is then wider than the prior, whatever
    the observations say. (The default scale, the prior spread, adds √eps_beta of it.)
    Judged time by time at the observed points, as the other checks."""
    method = plan.method
    scale = getattr(method, "scale", None)
    if method.name != "ensf" or not isinstance(scale, dict):
        return
    for v in np.unique(variable):
        name = plan.layout.variables[v]
        noise = float(np.sqrt(method.eps_beta) * scale[name])
        mask = seen & (variable == v)[None, :]
        times, rms = _rms_per_time(spread, mask)
        wide = noise > rms
        if wide.any():
            t = int(np.flatnonzero(wide)[0])
            plan.warn(
                (SpreadWarning, name),
                f"ensf adds noise of standard deviation sqrt(eps_beta) * scale = {noise:.3g} "
                f"to every analysis member of {name!r} (scale={scale[name]:g}, "
                f"eps_beta={method.eps_beta:g}); that is more than the prior ensemble "
                f"spread at the observed points at {int(wide.sum())} of {times.size} "
                f"analysed times with observations of it, {noise / rms[t]:.3g} times it at "
                f"the first (RMS {rms[t]:.3g}): the analysis will be wider than the prior "
                "whatever the observations say. Give a scale near the prior spread (leave "
                "scale= out: it is the default) or a smaller eps_beta.",
                SpreadWarning,
            )


def _check_gross_innovations(y, mean, spread, errors, seen, variable, plan: Any) -> None:
    """An :class:`~xensf.errors.InnovationWarning` per variable where, at some analysed
    time, the observations' median distance from the prior mean is over
    :data:`_GROSS_INNOVATION` expected standard deviations, √(spread² + error²): a whole
    variable that far off is nearly always in other units than the state (degC read as
    K, hPa as Pa, height as geopotential). Judged time by time, as the other checks."""
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(y - mean) / np.sqrt(spread**2 + errors**2)
    for v in np.unique(variable):
        mask = seen & (variable == v)[None, :]
        times = np.flatnonzero(mask.any(axis=1))
        typical = np.array([np.median(distance[t][mask[t]]) for t in times])
        gross = typical > _GROSS_INNOVATION
        if not gross.any():
            continue
        t = times[int(np.flatnonzero(gross)[0])]
        name = plan.layout.variables[v]
        plan.warn(
            (InnovationWarning, name),
            f"the observations of {name!r} lie a median of {typical[gross][0]:.3g} expected "
            f"standard deviations (the prior spread and the observation error together) "
            f"from the prior mean, at {int(gross.sum())} of {times.size} analysed times "
            f"with observations of it; at the first, the observations' median is "
            f"{np.median(y[t][mask[t]]):.6g} and the prior mean's there "
            f"{np.median(mean[t][mask[t]]):.6g}. Are they in other units than the state "
            "(observations without a units attribute are read in the state's)? If not, the "
            "prior is far off and far too sure of itself, and the analysis will move a "
            "long way from it.",
            InnovationWarning,
        )
