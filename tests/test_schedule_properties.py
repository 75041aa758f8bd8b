"""Property-based tests of the cycling schedule: which cycles a run has and which
observations each analyses.

Hypothesis draws a model time step (a ``numpy.timedelta64`` of whole minutes, or a
number, including steps such as 1/3 that floating point does not hold exactly), an
initial time, observation times on cycle boundaries (in any order, the initial time
among them or not), now and then one that is off the boundaries or before the start,
``every`` and ``until``. The property: a schedule whose cycles are multiples of
``every`` model steps, in which every observation time up to ``until`` is analysed at
its own cycle and no other, or an ``XensfError``; never another exception.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from xensf.cycling.schedule import make_schedule  # noqa: E402
from xensf.errors import XensfError  # noqa: E402


@st.composite
def schedules(draw):
    dates = draw(st.booleans())
    if dates:
        step = np.timedelta64(draw(st.integers(1, 720)), "m").astype("timedelta64[ns]")
        t0 = np.datetime64("2001-01-01", "ns") + draw(st.integers(0, 10**6)) * np.timedelta64(
            1, "s"
        )
    else:
        step = draw(st.sampled_from([1.0, 0.1, 0.25, 1 / 3, 3600.0, 86400.0]))
        t0 = draw(st.sampled_from([0.0, 0.1, 17.0, -5.5, 1e6]))
    spacing = draw(st.integers(1, 5))
    cycles = draw(st.lists(st.integers(0, 8), min_size=1, max_size=6, unique=True))
    ks = [spacing * c for c in cycles]
    stray = draw(st.sampled_from([None, None, None, "off", "before"]))
    if stray == "off":
        ks.append(spacing * 9 + (1 if spacing > 1 else 0))
    elif stray == "before":
        ks.append(-spacing)
    order = draw(st.permutations(range(len(ks))))
    ks = [ks[i] for i in order]
    times = np.array([t0 + k * step for k in ks])
    every = draw(st.sampled_from([None, "spacing", 1, "double"]))
    every = {"spacing": spacing, "double": 2 * spacing}.get(every, every)
    until_k = draw(st.sampled_from([None, None, 0, 3, 12, 40]))
    until = None if until_k is None else t0 + until_k * step
    return dict(step=step, t0=t0, ks=ks, times=times, every=every, until=until)


def check_schedule(case) -> None:
    obs = xr.Dataset(coords={"time": ("time", case["times"])})
    try:
        schedule = make_schedule(
            case["t0"], case["step"], obs, "time", case["every"], case["until"]
        )
    except XensfError:
        return
    steps = list(schedule.steps)
    assert steps and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert all(s % schedule.every == 0 and s >= 0 for s in steps)
    assert np.all(np.diff(steps) == schedule.every)
    ks = case["ks"]
    assert steps[0] == (0 if 0 in ks else schedule.every)
    if case["until"] is None:
        assert steps[-1] == max(ks)
    for j, k in enumerate(ks):
        assert k >= 0 and k % schedule.every == 0  # anything else was refused
        if k > steps[-1]:
            continue  # beyond until
        i = steps.index(k)
        assert schedule.obs_index[i] == j
        if isinstance(case["step"], np.timedelta64):
            assert schedule.time(i) == case["times"][j]
        else:
            assert schedule.time(i) == pytest.approx(case["times"][j], rel=1e-12, abs=1e-9)
    analysed = [j for j in schedule.obs_index if j is not None]
    assert len(analysed) == len(set(analysed))  # each observation time once
    assert all(ks[j] == s for j, s in zip(schedule.obs_index, steps, strict=True) if j is not None)


_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=200, **_COMMON)
@given(schedules())
def test_every_observation_is_analysed_at_its_own_cycle(case):
    check_schedule(case)


@pytest.mark.slow
@settings(max_examples=3000, **_COMMON)
@given(schedules())
def test_every_observation_is_analysed_at_its_own_cycle_many_examples(case):
    check_schedule(case)
