"""Cycling data assimilation: forecast → analysis → forecast, into a resumable zarr store.

:func:`cycle` advances an ensemble with a :class:`~xensf.forecast.Forecaster` from one
observation time to the next, updates it there with :func:`xensf.bridge.analysis.assimilate`
(the ``ds.ensf.assimilate`` of every method), and records each cycle: the forecast and
analysis ensemble means and spreads, and optionally the members.

With ``store=`` the record is a zarr v3 store, written by :class:`xensf.store.CycleStore`
one committed cycle at a time (see that module for the crash-safety design: the root
metadata file, replaced atomically, is the commit point). The store also keeps the
analysis members of the last cycle at full precision, so a run that was killed
at any moment continues, when started again with the same call, from its last complete
cycle and ends with the same store as a run that was never interrupted: each analysis
draws its random numbers from ``(seed, analysis time)`` alone, and the forecast starts
from the very numbers the interrupted run would have used. "The same" assumes the same
software, device and number of torch threads before and after the interruption
(floating-point sums split across threads round differently); with other ones the
resumed cycles agree with an uninterrupted run to rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .bridge.metadata import (
    CF_CONVENTIONS,
    json_text,
    mark_realization,
    netcdf_attr_value,
    with_history,
    without_fill_value,
    xensf_version,
)
from .errors import (
    DimensionError,
    EnsembleError,
    ForecastError,
    ObservationMismatchError,
    OptionError,
    RunStoreError,
    XensfWarning,
)
from .forecast import forecaster_settings
from .store import (
    DATETIME_UNITS,
    FORMAT,
    FORMAT_ATTR,
    RUN_KIND,
    RUN_MARKER,
    TIME,
    CycleStore,
    encode_values,
    local_path,
    remove_run,
)

__all__ = ["cycle"]

# Attributes of the inputs that describe their own encoding or point at variables the
# store does not have; copying them would make the store wrong or not CF-conformant.
_DROPPED_ATTRS = (
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "dtype",
    "coordinates",
    "grid_mapping",
    "ancillary_variables",
    "cell_measures",
    "bounds",
)

_STATISTICS = {
    "forecast_mean": ("forecast ensemble mean", "realization: mean"),
    "forecast_spread": ("forecast ensemble spread", "realization: standard_deviation"),
    "analysis_mean": ("analysis ensemble mean", "realization: mean"),
    "analysis_spread": ("analysis ensemble spread", "realization: standard_deviation"),
}


@dataclass(frozen=True)
class Schedule:
    """When the cycles are: model step of each, and the observations that go with it."""

    t0: Any
    time_step: Any
    every: int
    steps: tuple[int, ...]
    obs_index: tuple[int | None, ...]

    def time(self, i: int) -> Any:
        return self.t0 + self.steps[i] * self.time_step

    def __len__(self) -> int:
        return len(self.steps)


def cycle(
    model: Any,
    initial_ensemble: xr.Dataset,
    obs: xr.Dataset | xr.DataArray,
    *,
    method: str | None = None,
    latent_model: Any = None,
    obs_error: Any = None,
    every: int | None = None,
    until: Any = None,
    store: Any = None,
    members: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    overwrite: bool = False,
    member_dim: str | None = None,
    **options: Any,
) -> xr.Dataset:
    """Cycle an ensemble through forecasts and analyses, recording each cycle.

    From the initial ensemble at ``t0``, each cycle forecasts ``every`` model steps
    ahead with ``model`` and analyses the forecast with the observations of that
    time; the analysis is the start of the next forecast. Cycle times are
    ``t0 + i · every · model.time_step``; an observation at ``t0`` itself is analysed
    first, without a forecast.

    Parameters
    ----------
    model : Forecaster
        The forecast model: ``time_step`` and ``forecast(state, steps)`` (see
        :class:`xensf.forecast.Forecaster`), e.g.
        :class:`~xensf.forecast.ShallowWaterForecaster`. ``state`` is the ensemble
        without a time dim, with a scalar ``time`` coordinate giving its time.
    initial_ensemble : Dataset
        The ensemble to start from, at one time: a scalar ``time`` coordinate or a
        ``time`` dim of length 1 gives ``t0``. Its variables with the member dim are
        the state; other variables are handed to ``model`` unchanged each cycle.
    obs : Dataset or named DataArray
        Observations along a time dim, gridded (NaN where unobserved) or point, as
        :meth:`xarray.Dataset.ensf.assimilate` takes them. Every observation time must
        be a model time and on a cycle boundary, ``t0 + i · every · time_step``.
    method : {"ensf", "letkf", "latent-ensf", "latent-ensf-letkf", "latent-letkf"}, optional
        The analysis; default ``"latent-ensf"`` with ``latent_model``, else ``"ensf"``.
    latent_model : LatentModel or path, optional
        The trained latent model of the latent methods (``model=`` of
        ``ds.ensf.assimilate``; here ``model`` is the forecaster).
    obs_error : float, str or mapping, optional
        Observation-error standard deviation, as for ``ds.ensf.assimilate``.
    every : int, optional
        Model steps per cycle. Default: the spacing of the observation times, which
        must then be constant.
    until : datetime-like or number, optional
        Run cycles up to this time (inclusive); default the last observation time.
        Cycles with no observations (beyond the observations, or between them when
        ``every`` is shorter than their spacing) record the forecast as the analysis.
    store : str or path, optional
        A local directory to write the run to (zarr v3), or None to keep it in memory.
        If it holds a run of this call already, the run is resumed from its last
        complete cycle (a finished run, or one with more cycles than this call asks
        for, is returned as it is); settings that differ
        (method, options, observations, forecaster, seed, ...) are refused, naming
        each. A path that exists and is not an xensf run is refused and left alone.
    members : bool
        Also record the forecast and analysis members of every cycle.
    seed : int
        Seed of the analyses' random draws; each analysis time draws from
        ``(seed, time)``, so a resumed run repeats the draws exactly.
    progress : bool
        Show a progress bar over the cycles (tqdm) with the analysis spreads.
    device : str, optional
        Torch device of the analyses (the forecaster has its own).
    overwrite : bool
        Delete an existing xensf run at ``store`` and start afresh.
    member_dim : str, optional
        The member dim, when it cannot be told from CF metadata or its name.
    **options
        Options of the analysis method (``steps``, ``inflation``, ``loc_radius``, ...;
        see :meth:`xarray.Dataset.ensf.assimilate`).

    Returns
    -------
    Dataset
        Along ``time`` (the cycle times), for each state variable ``v``:
        ``v_forecast_mean``, ``v_forecast_spread``, ``v_analysis_mean``,
        ``v_analysis_spread`` (and with ``members``, ``v_forecast`` and ``v_analysis``
        with the member dim), and ``obs_count``, the number of observations each
        analysis used. CF attributes (units and ``standard_name`` of the input,
        ``cell_methods`` of the statistic); the method, its options, the forecaster's
        settings, the observations and the seed in ``xensf_*`` global attributes.
        The opened store (lazy, dask-backed) with ``store=``, else in memory.

    Raises
    ------
    ObservationMismatchError
        An observation time that is not a model time, not on a cycle boundary, before
        ``t0``; observation variables the state does not have.
    ForecastError
        The model returned NaN/inf or a state of another shape; the message names the
        cycle and time. The store keeps the cycles before it and resumes after a fix.
    RunStoreError
        ``store`` exists and is not an xensf run, holds a run made with other
        settings, or is being written by another process.
    OptionError, DimensionError, EnsembleError, UnitsError
        Bad options, dims or data, before any work is done.

    Examples
    --------
    >>> import numpy as np, xensf
    >>> from xensf.forecast import ShallowWaterForecaster
    >>> from xensf.models.swe import ShallowWaterConfig
    >>> truth = xensf.models.shallow_water(n=16, steps=40, every=20, device="cpu")
    >>> start = xensf.models.shallow_water(
    ...     np.linspace(2e5, 3e5, 5), np.full(5, 2e5), n=16, steps=0, every=1, device="cpu"
    ... )
    >>> obs = truth.isel(time=slice(1, None))            # every grid point observed
    >>> run = xensf.cycle(
    ...     ShallowWaterForecaster(ShallowWaterConfig(n=16), device="cpu"), start, obs,
    ...     method="letkf", obs_error=0.01, progress=False,
    ... )
    >>> run.sizes["time"], run.attrs["xensf_every"]
    (2, 20)
    """
    forecaster = _check_forecaster(model)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    if not isinstance(initial_ensemble, xr.Dataset):
        raise TypeError(
            f"initial_ensemble must be an xarray Dataset, got {type(initial_ensemble).__name__}"
        )
    from .bridge.dims import find_role
    from .bridge.methods import resolve_method

    member = find_role(initial_ensemble, "member", override=member_dim)
    t0, state0 = _initial_state(initial_ensemble, forecaster.time_step)
    names = [v for v in state0.data_vars if member in state0[v].dims]
    if not names:
        raise DimensionError(
            f"initial_ensemble has no variable with the member dim {member!r}; its "
            f"variables are {list(state0.data_vars)}"
        )
    for v in names:
        if not np.all(np.isfinite(state0[v].values)):
            raise EnsembleError(
                f"the initial ensemble variable {v!r} has NaN or infinite values; fill them "
                "before cycling"
            )
    obs, obs_time = _check_obs(obs, names)
    spec = resolve_method(method, latent_model, options)
    latent_digest = None
    if latent_model is not None:
        from .bridge.models import model_handle

        # Resolved once: each analysis then reads the bundle by its path, and an
        # in-memory model is not hashed again every cycle.
        handle = model_handle(latent_model)[0]
        latent_model, latent_digest = handle.path, handle.digest
    schedule = _schedule(t0, forecaster.time_step, obs, obs_time, every, until)
    _dry_run(state0, names, obs, obs_time, schedule, spec.name, latent_model, obs_error,
             seed, device, member_dim, options)  # fmt: skip

    settings = _settings(
        forecaster, state0, names, obs, obs_time, spec.name, spec.options(), latent_digest,
        obs_error, seed, schedule, members,
    )  # fmt: skip
    call = (
        f"xensf.cycle({forecaster!r}, <Dataset>, <{type(obs).__name__}>, method={spec.name!r}, "
        f"every={schedule.every}, store={None if store is None else str(store)!r}, "
        f"members={bool(members)}, seed={int(seed)})"
    )
    dims = {v: state0[v].dims for v in names}
    template = _row(state0, names, member, bool(members), t0,
                    {v: state0[v].values for v in names}, {v: state0[v].values for v in names},
                    0)  # fmt: skip
    template.attrs = _global_attrs(initial_ensemble.attrs, settings, spec.name, call)

    run = _open_run(store, overwrite, settings, template, state0, names)
    done = 0 if run is None else run.committed
    try:
        if done >= len(schedule):
            return _opened(run.path)
        if done == 0:
            current = {v: np.array(state0[v].values, copy=True) for v in names}
        else:
            current = run.read_restart(names)
        rows = []
        bar = _progress(len(schedule), done, progress)
        tally = _WarningTally()
        try:
            for k in range(done, len(schedule)):
                t = schedule.time(k)
                steps = schedule.steps[k] - (schedule.steps[k - 1] if k else 0)
                forecast = _forecast(forecaster, state0, names, dims, current, t, steps, k,
                                     len(schedule))  # fmt: skip
                j = schedule.obs_index[k]
                if j is None:
                    analysis, count = forecast, 0
                else:
                    with tally.cycle(k):
                        analysis, count = _analyse(
                            state0, names, dims, forecast, obs, obs_time, j, t, k,
                            len(schedule), spec.name, latent_model, obs_error, seed, device,
                            member_dim, options,
                        )  # fmt: skip
                row = _row(state0, names, member, bool(members), t, forecast, analysis, count)
                if run is None:
                    rows.append(row)
                else:
                    run.write_cycle(
                        k, {n: encode_values(row[n].variable)[0] for n in run.cycle_arrays()},
                        analysis,
                    )  # fmt: skip
                    run.commit(k)
                current = analysis
                bar.set_postfix(
                    {f"{v} spread": f"{float(row[f'{v}_analysis_spread'].mean()):.3g}"
                     for v in names[:3]},
                    refresh=False,
                )  # fmt: skip
                bar.update(1)
        finally:
            bar.close()
            tally.report(len(schedule))
    finally:
        if run is not None:
            run.close()
    if run is not None:
        return _opened(run.path)
    out = xr.concat(rows, TIME, coords="minimal", compat="override", combine_attrs="override")
    out.attrs = dict(template.attrs)
    return _without_coordinate_fill(out)


# -- checks and the schedule -------------------------------------------------------------


def _check_forecaster(model: Any) -> Any:
    if not callable(getattr(model, "forecast", None)) or not hasattr(model, "time_step"):
        raise OptionError(
            f"model must be a forecaster with a time_step and a forecast(state, steps) method "
            f"(see xensf.forecast.Forecaster), got {type(model).__name__}"
        )
    step = model.time_step
    if isinstance(step, np.timedelta64):
        if not step > np.timedelta64(0, "ns"):
            raise OptionError(f"the model's time_step must be positive, got {step}")
    elif not (isinstance(step, int | float | np.number) and not isinstance(step, bool)):
        raise OptionError(
            f"the model's time_step must be a numpy.timedelta64 or a number, got {step!r}"
        )
    elif not step > 0:
        raise OptionError(f"the model's time_step must be positive, got {step!r}")
    return model


def _initial_state(ds: xr.Dataset, time_step: Any) -> tuple[Any, xr.Dataset]:
    """``t0`` and the initial ensemble without a time dim or coordinate."""
    from .bridge.dims import find_role

    tdim = find_role(ds, "time", required=False)
    if tdim is not None:
        if ds.sizes[tdim] != 1:
            raise DimensionError(
                f"initial_ensemble has {ds.sizes[tdim]} times along {tdim!r}; give the "
                f"ensemble at one time, e.g. ds.isel({tdim}=0)"
            )
        if tdim not in ds.coords:
            raise DimensionError(f"initial_ensemble's {tdim!r} dim has no coordinate")
        t0 = ds[tdim].values[0]
        state = ds.isel({tdim: 0}, drop=True)
    else:
        scalar = [
            c
            for c in ds.coords
            if ds[c].ndim == 0
            and (ds[c].attrs.get("standard_name") == "time" or str(c) in ("time", "valid_time"))
        ]
        if len(scalar) != 1:
            raise DimensionError(
                "initial_ensemble has no time: give it a scalar 'time' coordinate or a time "
                "dim of length 1 (the time the ensemble is valid at)"
            )
        t0 = ds[scalar[0]].values[()]
        state = ds.drop_vars(scalar[0])
    t0 = np.asarray(t0)
    if isinstance(time_step, np.timedelta64):
        if t0.dtype.kind != "M":
            raise OptionError(
                f"the model's time_step is a timedelta ({time_step}) but the initial time "
                f"{t0} is not a datetime; use a forecaster with a numeric time_step"
            )
        t0 = t0.astype("datetime64[ns]")[()]
    else:
        if t0.dtype.kind not in "iuf":
            raise OptionError(
                f"the model's time_step is a number ({time_step}) but the initial time {t0} "
                "is not; use a forecaster with a numpy.timedelta64 time_step"
            )
        t0 = float(t0)
    # Loaded once (a dask-backed ensemble would be computed at every use); on a shallow
    # copy, so that the caller's Dataset stays as it was.
    return t0, state.copy(deep=False).load()


def _check_obs(obs: Any, names: list[str]) -> tuple[xr.Dataset, str]:
    from .bridge.dims import find_role

    if isinstance(obs, xr.DataArray):
        if obs.name is None:
            raise ObservationMismatchError(
                f"the observation DataArray has no name; name it after a state variable "
                f"({names}), e.g. obs.rename({names[0]!r})"
            )
        obs = obs.to_dataset()
    if not isinstance(obs, xr.Dataset):
        raise TypeError(f"obs must be an xarray Dataset or DataArray, got {type(obs).__name__}")
    tdim = find_role(obs, "time", required=False)
    if tdim is None or tdim not in obs.coords:
        raise ObservationMismatchError(
            f"the observations need a time dim with a coordinate to cycle over; their dims "
            f"are {list(obs.dims)}"
        )
    observed = [v for v in obs.data_vars if v in names]
    if not observed:
        raise ObservationMismatchError(
            f"no observation variable is a state variable: the observations have "
            f"{list(obs.data_vars)}, the state {names}"
        )
    return obs, tdim


def _steps_of(offset: Any, step: Any, what: str) -> int:
    """``offset / step`` as an integer, or an error naming ``what``."""
    if isinstance(step, np.timedelta64):
        ns, step_ns = (
            int(offset.astype("timedelta64[ns]").astype(np.int64)),
            int(step.astype(np.int64)),
        )
        k, rest = divmod(ns, step_ns)
        if rest:
            raise ObservationMismatchError(
                f"{what} is not a model time: it is {ns / step_ns:.6g} model steps "
                f"({step}) after the initial time, not a whole number"
            )
        return k
    ratio = float(offset) / float(step)
    k = round(ratio)
    if abs(ratio - k) > 1e-9 * max(1.0, abs(ratio)):
        raise ObservationMismatchError(
            f"{what} is not a model time: it is {ratio:.9g} model steps ({step}) after the "
            "initial time, not a whole number"
        )
    return int(k)


def _schedule(t0, step, obs, obs_time, every, until) -> Schedule:
    times = obs[obs_time].values
    datetime = isinstance(step, np.timedelta64)
    if datetime:
        if times.dtype.kind != "M":
            raise ObservationMismatchError(
                f"the observation times ({times.dtype}) are not datetimes like the initial "
                f"time {t0}"
            )
        times = times.astype("datetime64[ns]")
        bad = np.isnat(times)
    else:
        if times.dtype.kind not in "iuf":
            raise ObservationMismatchError(
                f"the observation times ({times.dtype}) are not numbers like the initial time"
            )
        times = times.astype(np.float64)
        bad = ~np.isfinite(times)
    if bad.any():
        raise ObservationMismatchError(
            f"the observation time coordinate {obs_time!r} has missing values"
        )
    ks = []
    for t in times:
        if t < t0:
            raise ObservationMismatchError(
                f"observation time {t} is before the initial ensemble's time {t0}; select "
                "the observations from the initial time on"
            )
        ks.append(_steps_of(t - t0, step, f"observation time {t}"))
    ks = np.asarray(ks, dtype=np.int64)
    if len(np.unique(ks)) != len(ks):
        raise ObservationMismatchError(
            f"the observation times along {obs_time!r} repeat; give each time once"
        )
    if every is None:
        positive = np.unique(ks[ks > 0])
        gaps = np.diff(np.concatenate([[0] if (ks == 0).any() else [], positive]))
        if positive.size == 0:
            raise OptionError(
                "cannot tell the cycle length from observations at the initial time only; "
                "give every= (model steps per cycle)"
            )
        if positive.size == 1 and gaps.size == 0:
            every = int(positive[0])
        elif np.all(gaps == gaps[0]):
            every = int(gaps[0])
        else:
            raise OptionError(
                f"the observation times are not evenly spaced (gaps of {sorted(set(gaps))} "
                "model steps); give every= (model steps per cycle)"
            )
    elif isinstance(every, bool) or int(every) != every or every < 1:
        raise OptionError(f"every must be a positive whole number of model steps, got {every!r}")
    every = int(every)
    for t, k in zip(times, ks, strict=True):
        if k % every:
            raise ObservationMismatchError(
                f"observation time {t} is {k} model steps after the initial time, not on a "
                f"cycle boundary (a multiple of every={every})"
            )
    if until is None:
        last = int(ks.max())
    else:
        u = np.datetime64(until, "ns") if datetime else float(until)
        if u < t0:
            raise OptionError(f"until={until!r} is before the initial time {t0}")
        offset = u - t0
        last = (
            int(offset.astype(np.int64)) // int(step.astype(np.int64))
            if datetime
            else int(np.floor(float(offset) / float(step) + 1e-9))
        )
        last -= last % every
    first = 0 if (ks == 0).any() else every
    steps = tuple(range(first, last + 1, every))
    if not steps:
        raise OptionError(
            f"no cycle to run: the first cycle would be {first} model steps after the "
            f"initial time, beyond until={until!r}"
        )
    position = {int(k): i for i, k in enumerate(ks)}
    return Schedule(
        t0=t0,
        time_step=step,
        every=every,
        steps=steps,
        obs_index=tuple(position.get(s) for s in steps),
    )


def _obs_at(obs: xr.Dataset, obs_time: str, j: int, t: Any) -> xr.Dataset:
    """The observations of one cycle with a length-1 ``time`` dim holding ``t``."""
    one = obs.isel({obs_time: [j]})
    along = [c for c in one.coords if c != obs_time and obs_time in one[c].dims]
    one = one.drop_vars(along)
    if obs_time != TIME:
        one = one.rename({obs_time: TIME})
    return one.assign_coords({TIME: (TIME, np.asarray([t]), one[TIME].attrs)})


def _dry_run(state, names, obs, obs_time, schedule, method, latent_model, obs_error, seed,
             device, member_dim, options) -> None:  # fmt: skip
    """Build (not compute) the first analysis, so that bad input fails before any work."""
    from .bridge.analysis import assimilate

    first = next((i for i, j in enumerate(schedule.obs_index) if j is not None), None)
    if first is None:
        return
    t = schedule.time(first)
    prior = state[names].expand_dims({TIME: [t]}).chunk()
    assimilate(
        prior, _obs_at(obs, obs_time, schedule.obs_index[first], t), method=method,
        model=latent_model, obs_error=obs_error, seed=seed, device=device,
        member_dim=member_dim, **options,
    )  # fmt: skip


# -- one cycle ---------------------------------------------------------------------------


def _forecast(forecaster, state0, names, dims, current, t, steps, k, n) -> dict[str, np.ndarray]:
    if steps == 0:
        return current
    state = state0.copy(deep=False)
    for v in names:
        state[v] = state0[v].copy(data=np.array(current[v], copy=True))
    state = state.assign_coords({TIME: t - steps * forecaster.time_step})
    result = forecaster.forecast(state, steps)
    where = f"cycle {k + 1} of {n} (the forecast to {t})"
    if not isinstance(result, xr.Dataset):
        raise ForecastError(
            f"{where}: the model returned a {type(result).__name__}, not a Dataset"
        )
    out = {}
    for v in names:
        if v not in result.data_vars:
            raise ForecastError(f"{where}: the model's result has no variable {v!r}")
        da = result[v]
        if set(da.dims) != set(dims[v]) or da.transpose(*dims[v]).shape != state0[v].shape:
            raise ForecastError(
                f"{where}: the model returned {v!r} with dims {dict(da.sizes)}; the state "
                f"has {dict(state0[v].sizes)}"
            )
        values = np.asarray(da.transpose(*dims[v]).values).astype(state0[v].dtype, copy=False)
        if not np.all(np.isfinite(values)):
            raise ForecastError(
                f"{where}: the model returned NaN or infinite values in {v!r}. The store keeps "
                f"the {k} cycle(s) before it; fix the model (e.g. a shorter time step) and run "
                "the same call again to resume"
            )
        out[v] = values
    return out


def _analyse(state0, names, dims, forecast, obs, obs_time, j, t, k, n, method, latent_model,
             obs_error, seed, device, member_dim, options):  # fmt: skip
    from .bridge.analysis import assimilate

    prior = state0[names].copy(deep=False)
    for v in names:
        prior[v] = state0[v].copy(data=forecast[v])
    prior = prior.expand_dims({TIME: [t]})
    at = _obs_at(obs, obs_time, j, t)
    count = int(sum(np.isfinite(at[v].values).sum() for v in at.data_vars if v in names))
    result = assimilate(
        prior, at, method=method, model=latent_model, obs_error=obs_error, seed=seed,
        device=device, member_dim=member_dim, call="xensf.cycle", **options,
    )  # fmt: skip
    out = {}
    for v in names:
        values = np.asarray(result[v].isel({TIME: 0}).transpose(*dims[v]).values)
        if not np.all(np.isfinite(values)):
            raise EnsembleError(
                f"cycle {k + 1} of {n} (analysis at {t}): the analysis of {v!r} has NaN or "
                "infinite values; the store keeps the cycles before it. Check obs_error and "
                "the method's options"
            )
        out[v] = values.astype(state0[v].dtype, copy=False)
    return out, count


class _WarningTally:
    """xensf's warnings of a run: one summary each at its end, not one per cycle.

    A warning whose text changes every cycle (it carries numbers) would otherwise be
    printed every cycle and kept in the warnings registry, which then grows with the
    run. Other warnings pass through as they are.
    """

    def __init__(self) -> None:
        self.seen: dict[type, tuple[set[int], str]] = {}

    @contextlib.contextmanager
    def cycle(self, k: int):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            if issubclass(w.category, XensfWarning):
                cycles, _ = self.seen.setdefault(
                    w.category, (set(), f"cycle {k + 1}: {w.message}")
                )
                cycles.add(k)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def report(self, total: int) -> None:
        for category, (cycles, first) in self.seen.items():
            warnings.warn(
                f"{category.__name__} in {len(cycles)} of the {total} cycles of this run; the "
                f"first, at {first}",
                category,
                stacklevel=4,
            )


# -- what is recorded --------------------------------------------------------------------


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: netcdf_attr_value(v) for k, v in attrs.items() if k not in _DROPPED_ATTRS}


def _row(state0, names, member, members, t, forecast, analysis, count) -> xr.Dataset:
    """One cycle as a Dataset with a length-1 ``time`` dim."""
    data = {}
    for v in names:
        da = state0[v]
        axis = da.dims.index(member)
        reduced = tuple(d for d in da.dims if d != member)
        base = _clean_attrs(da.attrs)
        label = base.get("long_name", v)
        for kind, values in (("forecast", forecast[v]), ("analysis", analysis[v])):
            for stat, reduce in (("mean", _mean), ("spread", _spread)):
                description, method = _STATISTICS[f"{kind}_{stat}"]
                attrs = dict(base)
                attrs["long_name"] = f"{label}, {description}"
                earlier = attrs.get("cell_methods")
                attrs["cell_methods"] = f"{earlier} {method}" if earlier else method
                data[f"{v}_{kind}_{stat}"] = xr.Variable(
                    (TIME, *reduced), reduce(values, axis).astype(da.dtype)[None], attrs
                )
            if members:
                attrs = dict(base)
                attrs["long_name"] = f"{label}, {kind} ensemble"
                data[f"{v}_{kind}"] = xr.Variable((TIME, *da.dims), values[None], attrs)
    data["obs_count"] = xr.Variable(
        (TIME,),
        np.array([count], dtype=np.int64),
        {"long_name": "number of observations assimilated", "units": "1"},
    )
    keep = {d for v in names for d in state0[v].dims if members or d != member}
    coords = {}
    for name, coord in state0.coords.items():
        if name != TIME and set(coord.dims) <= keep and coord.ndim > 0:
            coords[name] = xr.Variable(coord.dims, coord.values, _clean_attrs(coord.attrs))
    if members:
        if member not in coords:
            coords[member] = xr.Variable(member, np.arange(state0.sizes[member]))
        mark_realization(coords[member])
        coords[member].attrs.setdefault("units", "1")
    time_attrs = {"standard_name": "time", "axis": "T", "long_name": "analysis time"}
    if not isinstance(t, np.datetime64):
        time_attrs.update(
            {
                k: v
                for k, v in _clean_attrs(dict(getattr(state0.get(TIME), "attrs", {}))).items()
                if k == "units"
            }
        )
    coords[TIME] = xr.Variable((TIME,), np.asarray([t]), time_attrs)
    return xr.Dataset(data, coords=coords)


def _mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis, dtype=np.float64)


def _spread(x: np.ndarray, axis: int) -> np.ndarray:
    return x.std(axis=axis, ddof=1, dtype=np.float64)


def _without_coordinate_fill(ds: xr.Dataset) -> xr.Dataset:
    """No ``_FillValue`` on coordinates when the result is written on (CF 2.5.1)."""
    for name in ds.coords:
        without_fill_value(ds.variables[name])
    return ds


def _opened(path) -> xr.Dataset:
    """The run store, lazily: dask chunks of many cycles along time (dask's size target).

    The store holds one cycle per chunk file (so a commit never rewrites a committed
    chunk); its dask view groups them, so a long run is not a graph of one task per
    cycle and dask's chunk caches, which hold the chunk tuples, stay small.
    """
    ds = xr.open_zarr(path, consolidated=True, chunks={TIME: "auto"})
    return _without_coordinate_fill(ds)


def _encoding(template: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Chunks of one cycle along time, whole otherwise; no fill value on coordinates."""
    encoding = {}
    for name, var in template.variables.items():
        if TIME in var.dims:
            enc: dict[str, Any] = {"chunks": (1, *var.shape[1:])}
        else:
            enc = {"chunks": var.shape}
        if name in template.coords:
            enc["_FillValue"] = None
        if name == TIME and var.dtype.kind == "M":
            enc.update(units=DATETIME_UNITS, calendar="proleptic_gregorian", dtype="int64")
        encoding[str(name)] = enc
    return encoding


# -- settings, attributes, the store -----------------------------------------------------


def _digest(ds: xr.Dataset) -> str:
    """SHA-256 of the data of every variable and coordinate (names, dims, dtypes, values)."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        values = np.asarray(var.values)
        if values.dtype.kind == "O":
            values = values.astype(str)
        h.update(f"{name}|{var.dims}|{values.dtype.str}|{values.shape}|".encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def _settings(forecaster, state0, names, obs, obs_time, method, resolved, latent_digest,
              obs_error, seed, schedule, members) -> dict[str, Any]:  # fmt: skip
    """What makes two runs the same run: a resume compares these, key by key."""
    latent = None if latent_digest is None else {"weights_sha256": latent_digest}
    times = obs[obs_time].values
    settings = {
        "method": method,
        "options": resolved,
        "latent_model": latent,
        "obs_error": obs_error,
        "forecaster": forecaster_settings(forecaster),
        "initial_ensemble": {
            "time": str(schedule.t0),
            "variables": names,
            "sizes": {str(d): int(s) for d, s in state0.sizes.items()},
            "sha256": _digest(state0),
        },
        "obs": {
            "variables": sorted(map(str, obs.data_vars)),
            "sizes": {str(d): int(s) for d, s in obs.sizes.items()},
            "first_time": str(times.min()),
            "last_time": str(times.max()),
            "sha256": _digest(obs),
        },
        "seed": int(seed),
        "every": schedule.every,
        "members": bool(members),
    }
    return json.loads(json_text(settings))


def _global_attrs(input_attrs, settings, method, call) -> dict[str, Any]:
    attrs = {k: netcdf_attr_value(v) for k, v in input_attrs.items() if not k.startswith("xensf_")}
    attrs = with_history(attrs, call)
    attrs.update(
        {
            "Conventions": CF_CONVENTIONS,
            "title": f"Cycling data assimilation ({method}) made with xensf",
            RUN_MARKER: RUN_KIND,
            FORMAT_ATTR: FORMAT,
            "xensf_version": xensf_version(),
            "xensf_method": method,
            "xensf_seed": settings["seed"],
            "xensf_every": settings["every"],
            "xensf_members": int(settings["members"]),
            "xensf_obs_error": netcdf_attr_value(settings["obs_error"]),
            "xensf_forecaster": json_text(settings["forecaster"]),
            "xensf_obs": json_text(settings["obs"]),
            "xensf_initial_ensemble": json_text(settings["initial_ensemble"]),
            "xensf_settings": json_text(settings),
        }
    )
    for key, value in settings["options"].items():
        attrs[f"xensf_{key}"] = netcdf_attr_value(value)
    if settings["latent_model"] is not None:
        attrs["xensf_latent_model_sha256"] = settings["latent_model"]["weights_sha256"]
    return attrs


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in stored:
                out.append(f"{name} (not in the store; this call: {current[key]!r})")
            elif key not in current:
                out.append(f"{name} (the store: {stored[key]!r}; not in this call)")
            else:
                out.extend(_differences(stored[key], current[key], name))
        return out
    if stored != current:
        return [f"{prefix} (the store: {stored!r}; this call: {current!r})"]
    return []


def _open_run(store, overwrite, settings, template, state0, names) -> CycleStore | None:
    if store is None:
        return None
    path = local_path(store)
    if path.exists() or path.is_symlink():
        attrs = CycleStore.read_attrs(path)  # refuses anything that is not a run
        if overwrite:
            remove_run(path)
        else:
            try:
                stored = json.loads(attrs.get("xensf_settings", "null"))
            except ValueError:
                stored = None
            if not isinstance(stored, dict):
                raise RunStoreError(f"{str(path)!r}: the run's settings are unreadable")
            diffs = _differences(stored, settings)
            if diffs:
                raise RunStoreError(
                    f"{str(path)!r} holds a run made with other settings, so it cannot be "
                    f"resumed: {'; '.join(diffs)}. Use another store, or overwrite=True to "
                    "start it afresh"
                )
            return CycleStore.open(path)
    restart = {v: state0[v].variable for v in names}
    return CycleStore.create(path, template.isel({TIME: slice(0, 0)}), _encoding(template),
                             restart)  # fmt: skip


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="xensf.cycle", unit="cycle", disable=not enabled)


class _CallableModule(types.ModuleType):
    """Calling the module ``xensf.cycle`` calls the function :func:`cycle`.

    The package exposes the function as ``xensf.cycle``, but once this module has been
    imported (``import xensf.cycle``) Python binds that name to the module; this keeps
    ``xensf.cycle(...)`` working either way.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        return cycle(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
