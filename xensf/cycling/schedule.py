"""When the cycles of a run are, and which observations go with each.

From the initial ensemble's time ``t0``, the model's time step and the observation
times: every cycle is ``every`` model steps long, every observation time must be a
model time on a cycle boundary, and a cycle without observations records its forecast
as the analysis.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..checks import is_real
from ..errors import DimensionError, ObservationMismatchError, OptionError
from .store import TIME

__all__ = ["Schedule", "check_obs", "initial_state", "make_schedule", "obs_at"]


@dataclass(frozen=True)
class Schedule:
    """When the cycles are: model step of each, and the observations that go with it."""

    t0: Any
    time_step: Any
    every: int
    steps: tuple[int, ...]
    obs_index: tuple[int | None, ...]

    def time(self, i: int) -> Any:
        offset = self.steps[i] * self.time_step
        if is_cftime(self.t0):  # cftime dates add datetime.timedelta, to the microsecond
            return self.t0 + offset.astype("timedelta64[us]").item()
        return self.t0 + offset

    def __len__(self) -> int:
        return len(self.steps)


def is_cftime(t: Any) -> bool:
    """Whether ``t`` is a cftime date (a climate calendar: noleap, 360_day, ...)."""
    return hasattr(t, "calendar")


def _nanoseconds(offset: Any) -> int:
    """A time span (numpy timedelta64, or the datetime.timedelta of two cftime dates)
    in nanoseconds."""
    if isinstance(offset, datetime.timedelta):
        return (offset // datetime.timedelta(microseconds=1)) * 1000
    return int(offset.astype("timedelta64[ns]").astype(np.int64))


def initial_state(ds: xr.Dataset, time_step: Any) -> tuple[Any, xr.Dataset]:
    """``t0`` and the initial ensemble without a time dim or coordinate."""
    from ..bridge.dims import (
        check_valid_times,
        find_role,
        flat_indexes,
        scalar_time,
        scalar_times,
    )

    ds = flat_indexes(ds)  # a stacked member dim: its levels, coordinates along it
    tdim = find_role(ds, "time", required=False)
    if tdim is not None:
        if ds.sizes[tdim] != 1:
            raise DimensionError(
                f"initial_ensemble has {ds.sizes[tdim]} times along {tdim!r}; give the "
                f"ensemble at one time, e.g. ds.isel({tdim}=0)"
            )
        if tdim not in ds.coords:
            raise DimensionError(f"initial_ensemble's {tdim!r} dim has no coordinate")
        check_valid_times(ds, tdim)  # a forecast's reference time is not its t0
        t0 = ds[tdim].values[0]
        state = ds.isel({tdim: 0}, drop=True)
    else:
        name = scalar_time(ds)  # of cfgrib's time and valid_time, the valid time
        if name is None:
            raise DimensionError(
                "initial_ensemble has no time: give it a scalar 'time' coordinate or a time "
                "dim of length 1 (the time the ensemble is valid at)"
            )
        t0 = ds[name].values[()]
        state = ds.drop_vars(scalar_times(ds))
    t0 = np.asarray(t0)
    if isinstance(time_step, np.timedelta64):
        if is_cftime(t0[()]):
            t0 = t0[()]
        elif t0.dtype.kind != "M":
            raise OptionError(
                f"the model's time_step is a timedelta ({time_step}) but the initial time "
                f"{t0} is not a date (numpy datetime64 or cftime); use a forecaster with a "
                "numeric time_step"
            )
        else:
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


def check_obs(obs: Any, names: list[str]) -> tuple[xr.Dataset, str]:
    from ..bridge.dims import find_role, flat_indexes
    from ..bridge.observations import rows_by_time

    obs = flat_indexes(obs)
    if isinstance(obs, xr.DataArray):
        if obs.name is None:
            raise ObservationMismatchError(
                f"the observation DataArray has no name; name it after a state variable "
                f"({names}), e.g. obs.rename({names[0]!r})"
            )
        obs = obs.to_dataset()
    if not isinstance(obs, xr.Dataset):
        raise ObservationMismatchError(
            f"obs must be an xarray Dataset or DataArray, got {type(obs).__name__}"
        )
    obs = rows_by_time(obs, TIME)  # a table of rows with a time each, laid out by time
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
        ns, step_ns = _nanoseconds(offset), int(step.astype(np.int64))
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


def make_schedule(t0, step, obs, obs_time, every, until) -> Schedule:
    times = obs[obs_time].values
    dates = isinstance(step, np.timedelta64)
    if is_cftime(t0):
        from ..bridge.observations import check_time_kinds

        check_time_kinds(times, np.asarray([t0]), obs_time)  # the same calendar
        bad = np.array([t is None for t in times], dtype=bool)
    elif dates:
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
    elif not (is_real(every) and math.isfinite(every) and every == int(every) and every >= 1):
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
        try:
            if is_cftime(t0):
                u = until if is_cftime(until) else _cftime_date(until, t0.calendar)
                if u.calendar != t0.calendar:
                    raise TypeError(f"until is in the {u.calendar!r} calendar")
            else:
                u = np.datetime64(until, "ns") if dates else float(until)
        except (TypeError, ValueError):
            kind = "a date ('2000-01-01T10') or numpy.datetime64" if dates else "a number"
            if is_cftime(t0):
                kind = f"a date ('2000-01-01T10') or a cftime date of the {t0.calendar!r} calendar"
            raise OptionError(
                f"until={until!r} is not a time: give {kind}, like the model's times"
            ) from None
        if u < t0:
            raise OptionError(f"until={until!r} is before the initial time {t0}")
        offset = u - t0
        last = (
            _nanoseconds(offset) // int(step.astype(np.int64))
            if dates
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


def _cftime_date(text: Any, calendar: str) -> Any:
    """``text`` ('2001-03-01T06') as a cftime date of ``calendar``."""
    if not isinstance(text, str):
        raise TypeError(f"not a date: {text!r}")
    return xr.date_range(text, periods=1, calendar=calendar, use_cftime=True)[0]


def obs_at(obs: xr.Dataset, obs_time: str, j: int, t: Any) -> xr.Dataset:
    """The observations of one cycle with a length-1 ``time`` dim holding ``t``."""
    one = obs.isel({obs_time: [j]})
    # other labels of the time alone (valid_time, step) go: the cycle's time replaces
    # them; positions that move with time (lat(time, station)) stay
    along = [c for c in one.coords if c != obs_time and one[c].dims == (obs_time,)]
    one = one.drop_vars(along)
    if obs_time != TIME:
        one = one.rename({obs_time: TIME})
    return one.assign_coords({TIME: (TIME, np.asarray([t]), one[TIME].attrs)})
