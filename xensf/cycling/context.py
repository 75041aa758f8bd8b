"""One cycle: the forecast to its time and the analysis there, around a run's context.

:class:`CycleContext` holds what stays fixed over a run (the forecaster, the initial
ensemble as the template of every state, the observations, the schedule, the method
and its options); :meth:`CycleContext.forecast` and :meth:`CycleContext.analyse` take a
cycle's number and arrays and check what comes back, naming the cycle when it is bad.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import xarray as xr

from ..bridge.alignment import aligned_like
from ..errors import EnsembleError, ForecastError, XensfError, XensfWarning
from .schedule import Schedule, obs_at
from .store import TIME

__all__ = ["OBSERVATION_STATISTICS", "CycleContext", "land_masks", "off_the_mask"]


def land_masks(state: xr.Dataset, names: list[str], member: str) -> dict[str, np.ndarray]:
    """Each variable's land mask: the points where ``state`` is NaN in every member (the
    member axis kept, of length 1)."""
    return {
        v: np.isnan(state[v].values).all(axis=state[v].dims.index(member), keepdims=True)
        for v in names
    }


def off_the_mask(values: np.ndarray, mask: np.ndarray) -> bool:
    """Whether ``values`` hold an infinite value, or NaN off the land ``mask`` (which
    broadcasts against them)."""
    return bool((np.isinf(values) | (np.isnan(values) & ~mask)).any())


@dataclass(frozen=True)
class CycleContext:
    """What every cycle of a run needs besides the ensemble it starts from."""

    forecaster: Any
    #: the initial ensemble without a time: the template of every state and record
    state0: xr.Dataset
    #: the state variables (those with the member dim)
    names: list[str]
    member: str
    obs: xr.Dataset
    obs_time: str
    schedule: Schedule
    method: str
    latent_model: Any
    obs_error: Any
    seed: int
    device: str | None
    member_dim: str | None
    #: whether the record holds the members too
    members: bool
    options: dict[str, Any] = field(default_factory=dict)
    #: the resolved method (:class:`xensf.bridge.methods.Method`): what it carries on
    spec: Any = None

    @property
    def dims(self) -> dict[str, tuple]:
        return {v: self.state0[v].dims for v in self.names}

    @cached_property
    def masks(self) -> dict[str, np.ndarray]:
        """Each variable's land mask (:func:`land_masks`): forecasts and analyses are
        NaN there, and finite everywhere else."""
        return land_masks(self.state0, self.names, self.member)

    def forecast(self, current: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
        """The ensemble ``current`` (at cycle ``k - 1``) forecast to cycle ``k``'s time."""
        schedule = self.schedule
        steps = schedule.steps[k] - (schedule.steps[k - 1] if k else 0)
        if steps == 0:
            return current
        t = schedule.time(k)
        state0 = self.state0
        state = state0.copy(deep=False)
        for v in self.names:
            state[v] = state0[v].copy(data=np.array(current[v], copy=True))
        state = state.assign_coords({TIME: schedule.time(k - 1) if k else schedule.t0})
        result = self.forecaster.forecast(state, steps)
        where = f"cycle {k + 1} of {len(schedule)} (the forecast to {t})"
        if not isinstance(result, xr.Dataset):
            raise ForecastError(
                f"{where}: the model returned a {type(result).__name__}, not a Dataset"
            )
        dims = self.dims
        for v in self.names:
            if v not in result.data_vars:
                raise ForecastError(f"{where}: the model's result has no variable {v!r}")
            da = result[v]
            if set(da.dims) != set(dims[v]) or da.transpose(*dims[v]).shape != state0[v].shape:
                raise ForecastError(
                    f"{where}: the model returned {v!r} with dims {dict(da.sizes)}; the state "
                    f"has {dict(state0[v].sizes)}"
                )
        try:  # read by its labels and in the state's units
            result = aligned_like(state0, result, list(self.names), what="forecast")
        except XensfError as err:
            raise ForecastError(f"{where}: {err}") from None
        out = {}
        for v in self.names:
            da = result[v]
            values = np.asarray(da.transpose(*dims[v]).values).astype(state0[v].dtype, copy=False)
            if off_the_mask(values, self.masks[v]):
                raise ForecastError(
                    f"{where}: the model returned NaN or infinite values in {v!r}"
                    + (" off the initial ensemble's land mask" if self.masks[v].any() else "")
                    + f". The store keeps the {k} cycle(s) before it; fix the model (e.g. a "
                    "shorter time step) and run the same call again to resume"
                )
            # the mask stays the run's, whatever the model writes on land
            out[v] = np.where(self.masks[v], np.nan, values) if self.masks[v].any() else values
        return out

    def observations(self, k: int) -> xr.Dataset | None:
        """Cycle ``k``'s observations (a length-1 ``time`` dim), or None if it has none."""
        j = self.schedule.obs_index[k]
        return None if j is None else obs_at(self.obs, self.obs_time, j, self.schedule.time(k))

    def prior(self, values: dict[str, np.ndarray], k: int) -> xr.Dataset:
        """The ensemble ``values`` as a Dataset at cycle ``k``'s time (a length-1 dim)."""
        prior = self.state0[self.names].copy(deep=False)
        for v in self.names:
            prior[v] = self.state0[v].copy(data=values[v])
        return prior.expand_dims({TIME: [self.schedule.time(k)]})

    def assimilate(
        self, prior: xr.Dataset, at: xr.Dataset, call: str | None = None, **overrides: Any
    ) -> xr.Dataset:
        """``assimilate`` with the run's method, model, errors, seed and options (those in
        ``overrides`` replacing the run's)."""
        from ..bridge.analysis import assimilate

        return assimilate(
            prior, at, method=self.method, model=self.latent_model, obs_error=self.obs_error,
            seed=self.seed, device=self.device, member_dim=self.member_dim, call=call,
            **{**self.options, **overrides},
        )  # fmt: skip

    def outputs(self) -> dict[str, dict[str, str]]:
        """What the method gives besides the ensemble (fields on the grid, numbers), which
        the run carries on."""
        return {} if self.spec is None else self.spec.outputs()

    def outputs_without_observations(self, fields: dict[str, xr.DataArray]) -> dict:
        """The method's :meth:`outputs` at a cycle without observations, given the last."""
        return fields if self.spec is None else self.spec.outputs_without_observations(fields)

    def dry_run(self) -> xr.Dataset | None:
        """Build (not compute) the first analysis, so that bad input fails before any work;
        the lazy analysis (None if no cycle has observations)."""
        first = next((i for i, j in enumerate(self.schedule.obs_index) if j is not None), None)
        if first is None:
            return None
        state = {v: self.state0[v].data for v in self.names}
        with warnings.catch_warnings():
            # what the analysis warns while it is set up, the cycles report through the
            # run's tally: once, with their count (shown here too, it came twice)
            warnings.simplefilter("ignore", XensfWarning)
            return self.assimilate(self.prior(state, first).chunk(), self.observations(first))

    def analyse(
        self, forecast: dict[str, np.ndarray], k: int, carried: dict[str, xr.DataArray] | None
    ) -> tuple[dict[str, np.ndarray], int, dict[str, dict[str, float]], dict[str, xr.DataArray]]:
        """Cycle ``k``'s analysis of ``forecast``, the number of observations it used, per
        variable the observation-space statistics of :func:`fit_to_observations`, and the
        method's :meth:`outputs` (``carried``: the previous analysis's, or None)."""
        at = self.observations(k)
        prior = self.prior(forecast, k)
        overrides = self.spec.carry(carried) if carried else {}
        result = self.assimilate(prior, at, call="xensf.cycle", **overrides)
        out = {}
        for v in self.names:
            values = np.asarray(result[v].isel({TIME: 0}).transpose(*self.dims[v]).values)
            if off_the_mask(values, self.masks[v]):
                raise EnsembleError(
                    f"cycle {k + 1} of {len(self.schedule)} (analysis at "
                    f"{self.schedule.time(k)}): the analysis of {v!r} has NaN or infinite "
                    "values; the store keeps the cycles before it. Check obs_error and the "
                    "method's options"
                )
            out[v] = values.astype(self.state0[v].dtype, copy=False)
        fields = {n: result[n].isel({TIME: 0}).load() for n in self.outputs()}
        fit = self.fit_to_observations(prior, at, result)
        # those the analysis used: not those on a land mask, a closing column's once
        count = sum(stats["count"] for stats in fit.values())
        return out, count, fit, fields

    def fit_to_observations(
        self, prior: xr.Dataset, at: xr.Dataset, analysis: xr.Dataset
    ) -> dict[str, dict[str, float]]:
        """Per state variable: its observations' count, mean and RMS of O − B and O − A.

        B and A are the forecast and analysis ensemble means seen through the filter's
        own observation operator (:func:`xensf.bridge.innovations.innovations`); NaN
        where a variable has no observations.
        """
        from ..bridge.innovations import innovations

        diag = innovations(
            prior, at, analysis, obs_error=self.obs_error, member_dim=self.member_dim,
            with_errors=False,
        )  # fmt: skip
        variable = diag["variable"].values
        out = {}
        for v in self.names:
            omb = diag["omb"].values[..., variable == v].ravel()
            oma = diag["oma"].values[..., variable == v].ravel()
            seen = np.isfinite(omb)
            omb, oma = omb[seen], oma[seen]
            out[v] = {"count": int(seen.sum())} | (
                {stat: np.nan for stat in OBSERVATION_STATISTICS if stat != "count"}
                if not seen.any()
                else {
                    "omb_mean": float(omb.mean()),
                    "omb_rms": float(np.sqrt(np.mean(omb**2))),
                    "oma_mean": float(oma.mean()),
                    "oma_rms": float(np.sqrt(np.mean(oma**2))),
                }
            )
        return out


#: The per-cycle observation-space statistics of each state variable ``v``, stored as
#: ``v_<name>``: their long names (units: the variable's, except the count's).
OBSERVATION_STATISTICS = {
    "count": "number of its observations assimilated",
    "omb_mean": "mean innovation, observation minus forecast mean (O - B)",
    "omb_rms": "RMS innovation, observation minus forecast mean (O - B)",
    "oma_mean": "mean residual, observation minus analysis mean (O - A)",
    "oma_rms": "RMS residual, observation minus analysis mean (O - A)",
}
