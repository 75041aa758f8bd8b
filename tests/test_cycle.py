"""Tests of xensf.cycle: forecast → analysis → forecast into a resumable zarr store."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_ensemble
from cycle_run import EVERY, experiment, run

import xensf
from xensf.cycling.forecast import Persistence, forecaster_settings
from xensf.cycling.store import KILL_ENV, CycleStore
from xensf.errors import (
    DimensionError,
    EnsembleError,
    ForecastError,
    MaskedObservationWarning,
    ObservationMismatchError,
    OptionError,
    RunStoreError,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _without_history(ds: xr.Dataset) -> xr.Dataset:
    out = ds.load().copy()
    out.attrs = {k: v for k, v in ds.attrs.items() if k != "history"}
    return out


def assert_same_run(a: xr.Dataset, b: xr.Dataset) -> None:
    """Data, coords and attributes bit for bit; only the history line (a timestamp) may differ."""
    xr.testing.assert_identical(_without_history(a), _without_history(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> xr.Dataset:
    """The uninterrupted run of the experiment (4 cycles, members recorded)."""
    path = tmp_path_factory.mktemp("reference") / "run.zarr"
    return run(path, 4, members=True).load()


# ---------------------------------------------------------------------------------------
# What a cycle computes
# ---------------------------------------------------------------------------------------


def test_cycle_is_the_manual_forecast_analysis_loop():
    e = experiment(3)
    model, start, obs = e["model"], e["initial_ensemble"], e["obs"]
    out = xensf.cycle(model, start, obs, members=True, progress=False, **e["options"])

    options = dict(e["options"])
    state = start.isel(time=0, drop=True)
    for k, t in enumerate(obs.time.values):
        forecast = model.forecast(state, EVERY)
        prior = forecast[["eta", "u", "v"]].expand_dims(time=[t])
        analysis = prior.ensf.assimilate(obs.sel(time=[t]), **options).isel(time=0, drop=True)
        for v in ("eta", "u", "v"):
            got = out.isel(time=k)
            np.testing.assert_array_equal(got[f"{v}_forecast"], forecast[v])
            np.testing.assert_array_equal(got[f"{v}_analysis"], analysis[v])
            np.testing.assert_array_equal(
                got[f"{v}_analysis_mean"],
                analysis[v].mean("member", dtype=np.float64).astype(np.float32),
            )
            spread = np.std(forecast[v].values, axis=0, ddof=1, dtype=np.float64)
            np.testing.assert_array_equal(got[f"{v}_forecast_spread"], spread.astype(np.float32))
        state = analysis
    np.testing.assert_array_equal(out.time, obs.time)


def test_store_contents_and_cf_metadata(tmp_path, reference):
    e = experiment(4)
    assert set(reference.data_vars) == {
        f"{v}_{kind}{stat}"
        for v in ("eta", "u", "v")
        for kind in ("forecast", "analysis")
        for stat in ("", "_mean", "_spread")
    } | {"obs_count"} | {
        f"{v}_{stat}"
        for v in ("eta", "u", "v")
        for stat in ("count", "omb_mean", "omb_rms", "oma_mean", "oma_rms")
    }
    assert reference.eta_analysis.dims == ("time", "member", "y", "x")
    assert reference.eta_analysis_mean.dims == ("time", "y", "x")
    np.testing.assert_array_equal(reference.time, e["obs"].time)
    np.testing.assert_array_equal(reference.obs_count, [3 * 16] * 4)  # 4 x 4 points, 3 vars

    # the fit to the observations, by hand from the recorded members: every 4th point
    for v in ("eta", "u", "v"):
        np.testing.assert_array_equal(reference[f"{v}_count"], [16] * 4)
        for kind, letter in (("forecast", "b"), ("analysis", "a")):
            mean = reference[f"{v}_{kind}"].astype(np.float64).mean("member")
            d = (e["obs"][v].astype(np.float64) - mean.values).values.reshape(4, -1)
            d = d[:, np.isfinite(d[0])]
            np.testing.assert_allclose(reference[f"{v}_om{letter}_mean"], d.mean(1), rtol=1e-5)
            rms = np.sqrt((d**2).mean(1))
            np.testing.assert_allclose(reference[f"{v}_om{letter}_rms"], rms, rtol=1e-5)
        assert reference[f"{v}_omb_rms"].attrs["units"] == e["initial_ensemble"][v].attrs["units"]
    # the analysis fits the observations better than the forecast did
    assert (reference.eta_oma_rms < reference.eta_omb_rms).all()

    source = e["initial_ensemble"]
    for v in ("eta", "u", "v"):
        mean, spread = reference[f"{v}_analysis_mean"], reference[f"{v}_forecast_spread"]
        for da in (mean, spread, reference[f"{v}_analysis"]):
            assert da.attrs["units"] == source[v].attrs["units"]
            assert da.attrs["standard_name"] == source[v].attrs["standard_name"]
        assert mean.attrs["cell_methods"] == "realization: mean"
        assert spread.attrs["cell_methods"] == "realization: standard_deviation"
        assert "spread" in spread.attrs["long_name"]
    assert reference.member.attrs["standard_name"] == "realization"
    assert reference.time.attrs["standard_name"] == "time"
    a = reference.attrs
    assert a["Conventions"] == "CF-1.11"
    assert a["xensf_run"] == "cycle"
    assert a["xensf_method"] == "ensf" and a["xensf_steps"] == 5
    assert a["xensf_seed"] == 3 and a["xensf_every"] == EVERY
    assert a["xensf_version"] == xensf.__version__
    assert "xensf.cycle(" in a["history"].splitlines()[0]
    assert json.loads(a["xensf_forecaster"]) == forecaster_settings(e["model"])
    assert json.loads(a["xensf_obs"])["variables"] == ["eta", "u", "v"]

    # without members: the same statistics, no member dim; in memory: the same Dataset
    path = tmp_path / "means.zarr"
    stored = run(path, 4)
    assert "member" not in stored.dims and "eta_analysis" not in stored
    in_memory = run(None, 4)
    assert_same_run(stored, in_memory)
    xr.testing.assert_equal(stored, reference.drop_dims("member"))  # attrs: members differs
    # every reader sees the same store once it is finished, consolidated or not
    assert_same_run(xr.open_zarr(path, consolidated=False), stored)


@pytest.mark.filterwarnings("ignore:The ioos_sos checker is deprecated:DeprecationWarning")
def test_the_run_written_to_netcdf_passes_the_cf_checker(tmp_path, reference):
    pytest.importorskip("compliance_checker.runner")
    from test_metadata import cf_errors

    path = tmp_path / "run.nc"
    reference.to_netcdf(path)
    assert cf_errors(path) == []


# ---------------------------------------------------------------------------------------
# Resume after a kill
# ---------------------------------------------------------------------------------------


def _python(*args: str) -> subprocess.Popen:
    import torch

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop(KILL_ENV, None)
    # Bit-identical results need the same number of intra-op threads on both sides of
    # the kill (float sums are split across threads). Set it: a dask Nanny started by
    # an earlier test leaves OMP_NUM_THREADS=1 in os.environ.
    threads = str(torch.get_num_threads())
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return subprocess.Popen(
        [sys.executable, str(HERE / "cycle_run.py"), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_complete_cycles(path: Path, reference: xr.Dataset) -> int:
    """What a reader sees between the kill and the resume: whole cycles of the run only."""
    seen = xr.open_zarr(path).load()
    k = seen.sizes["time"]
    assert all(seen[v].sizes["time"] == k for v in seen.data_vars)
    assert_same_run(seen, reference.isel(time=slice(0, k)))
    return k


# "point@cycle" of the kill: the cycles a reader sees afterwards (None: no store yet)
KILLS = {"create@0": None, "data@1": 1, "chunks@2": 2, "restart@0": 0, "committed@2": 3}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill runs are forked")
def test_resume_after_sigkill_inside_a_cycle_write(tmp_path, reference):
    args = [a for kill in KILLS for a in (kill, str(tmp_path / f"{kill}.zarr"))]
    child = _python("--kill", *args)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    statuses = dict(line.split() for line in out.splitlines())
    assert statuses == {kill: str(-signal.SIGKILL) for kill in KILLS}, err[-3000:]
    for kill, visible in KILLS.items():
        path = tmp_path / f"{kill}.zarr"
        if visible is None:  # killed while creating: a half-built store is never in place
            assert not path.exists() and path.with_name(f".{path.name}.xensf-creating").exists()
        else:
            assert assert_complete_cycles(path, reference) == visible, kill
        resumed = run(path, 4, members=True)
        assert_same_run(resumed, reference)
        assert not list(path.rglob("*.partial")) and not list(path.rglob(".*.tmp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}.zarr" for k in KILLS)


def test_resume_after_sigkill_at_a_random_moment(tmp_path, reference):
    path = tmp_path / "run.zarr"
    child = _python(str(path))
    rng = np.random.default_rng()
    deadline = time.monotonic() + 120
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.6))  # a few cycles take about that long
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=120)
    if path.exists():
        assert_complete_cycles(path, reference)
    assert_same_run(run(path, 4, members=True), reference)


def test_opening_a_run_to_resume_reads_no_committed_chunk_files(tmp_path, monkeypatch):
    """Recovery looks only where a killed writer can have left something (the next
    cycle's chunks, temporary files beside the metadata, the restart slots): what it
    reads of the file system does not grow with the committed cycles (it walked every
    chunk file: seconds per resume at ten thousand cycles)."""
    e = experiment(8)
    seen = []
    real = os.scandir

    class counting:  # os.scandir, counting the entries it lists
        def __init__(self, path="."):
            with real(path) as listed:
                self.entries = list(listed)
            seen.extend(self.entries)

        def __iter__(self):
            return iter(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def close(self):
            return None

    visited = {}
    for cycles in (2, 8):
        path = tmp_path / f"run{cycles}.zarr"
        run(path, 8, until=e["obs"].time.values[cycles - 1])
        (path / "eta_analysis_mean" / "c" / str(cycles)).mkdir()  # an interrupted cycle's
        (path / "eta_analysis_mean" / "zarr.json.1234.partial").write_text("")
        seen.clear()
        monkeypatch.setattr(os, "scandir", counting)
        with CycleStore.open(path) as store:
            assert store.committed == cycles
        monkeypatch.undo()
        visited[cycles] = len(seen)
        assert not (path / "eta_analysis_mean" / "c" / str(cycles)).exists()
        assert not list(path.rglob("*.partial"))
        assert xr.open_zarr(path).sizes["time"] == cycles
    assert visited[8] == visited[2]


def test_a_finished_run_started_again_is_a_noop(tmp_path):
    path = tmp_path / "run.zarr"
    first = run(path, 2)
    root = path / "zarr.json"
    before = (root.stat().st_mtime_ns, root.read_bytes())
    again = run(path, 2)
    assert (root.stat().st_mtime_ns, root.read_bytes()) == before
    assert_same_run(again, first)


def test_a_longer_run_continues_a_shorter_one(tmp_path, reference):
    e = experiment(4)
    path = tmp_path / "run.zarr"
    short = run(path, 4, members=True, until=e["obs"].time.values[1])
    assert short.sizes["time"] == 2
    assert_same_run(run(path, 4, members=True), reference)


def test_the_run_is_read_back_in_dask_chunks_of_many_cycles(tmp_path):
    """One chunk file per cycle on disk; one dask chunk for a short run (not one per cycle)."""
    path = tmp_path / "run.zarr"
    out = run(path, 4)
    assert out.eta_analysis_mean.chunks[0] == (4,)
    assert out.obs_count.chunks == ((4,),)
    assert out.eta_analysis_mean.encoding["chunks"][0] == 1  # the store's own layout
    assert out.eta_analysis_mean.chunks[1:] == tuple((s,) for s in out.eta_analysis_mean.shape[1:])


def test_input_attributes_are_stored_as_an_analysis_stores_them(tmp_path):
    """One serialiser: a numeric list stays numbers, a mapping is sorted JSON, True is 1."""
    from xensf.bridge.metadata import netcdf_attr_value

    e = experiment(1)
    attrs = {"levels": [850, 500], "config": {"b": 1, "a": [1, 2]}, "flag": True}
    start = e["initial_ensemble"].assign_attrs(attrs)
    out = xensf.cycle(
        e["model"], start, e["obs"], store=tmp_path / "run.zarr", progress=False, **e["options"]
    )
    for key, value in attrs.items():
        np.testing.assert_array_equal(out.attrs[key], netcdf_attr_value(value))
    assert out.attrs["config"] == '{"a": [1, 2], "b": 1}'


def test_resume_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "run.zarr"
    run(path, 2)
    files = sorted((p, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())
    with pytest.raises(RunStoreError, match="other settings") as info:
        run(path, 2, seed=4, obs_error=0.02)
    message = str(info.value)
    assert "seed (the store: 3; this call: 4)" in message
    assert "obs_error" in message and "method" not in message
    with pytest.raises(RunStoreError, match=r"obs\.sha256"):
        e = experiment(2)
        xensf.cycle(
            e["model"], e["initial_ensemble"], e["obs"] + 0.1, store=path, progress=False,
            **e["options"],
        )  # fmt: skip
    assert sorted((p, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()) == files
    # overwrite=True starts afresh
    assert run(path, 2, seed=4, overwrite=True).attrs["xensf_seed"] == 4


def test_a_path_that_is_not_a_run_is_refused_and_left_alone(tmp_path):
    e = experiment(2)
    args = (e["model"], e["initial_ensemble"], e["obs"])
    other = tmp_path / "data.zarr"
    e["truth"].to_zarr(other, zarr_format=3, consolidated=False)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (other, a_file, empty):
        before = sorted((p, p.read_bytes()) for p in [path, *path.rglob("*")] if p.is_file())
        for overwrite in (False, True):
            with pytest.raises(RunStoreError, match="not an xensf cycling run"):
                xensf.cycle(*args, store=path, overwrite=overwrite, progress=False, **e["options"])
        assert (
            sorted((p, p.read_bytes()) for p in [path, *path.rglob("*")] if p.is_file()) == before
        )
    with pytest.raises(RunStoreError, match="local"):
        xensf.cycle(*args, store="s3://bucket/run.zarr", progress=False, **e["options"])


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "run.zarr"
    run(path, 2, until=experiment(2)["obs"].time.values[0])
    with CycleStore.open(path), pytest.raises(RunStoreError, match="another process"):
        run(path, 2)


def test_two_creators_of_one_run_one_wins(tmp_path):
    """A second process creating the same new run is refused before it writes."""
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "run.zarr"
    building = path.with_name(f".{path.name}.xensf-creating")
    building.mkdir()
    (building / "partial").write_text("the other creator's work")
    fd = os.open(building, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other creator holds it
    try:
        with pytest.raises(RunStoreError, match="being created by another process"):
            run(path, 2)
        assert (building / "partial").read_text() == "the other creator's work"
        assert not path.exists()
    finally:
        os.close(fd)
    # once nobody holds it, it is what a killed creation left: emptied and reused
    reference_run = run(path, 2)
    assert path.exists() and not building.exists()
    assert reference_run.sizes["time"] == 2


def test_a_run_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(RunStoreError, match="is a file, not a directory"):
        run(tmp_path / "a_file" / "run.zarr", 2)
    assert (tmp_path / "a_file").read_text() == "keep me"


class Flaky:
    """The shallow-water forecaster, broken (NaN) from its ``fail_at``-th call on."""

    def __init__(self, inner, fail_at: int | None):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.time_step = inner.time_step

    def settings(self):
        return forecaster_settings(self.inner)

    def forecast(self, state, steps):
        self.calls += 1
        out = self.inner.forecast(state, steps)
        if self.fail_at is not None and self.calls >= self.fail_at:
            out["u"] = out["u"].where(out["u"].x < 0)  # NaN over half the basin
        return out


def test_a_nan_forecast_stops_with_the_cycle_and_the_store_resumes(tmp_path, reference):
    e = experiment(4)
    path = tmp_path / "run.zarr"
    args = (e["initial_ensemble"], e["obs"])
    kwargs = dict(store=path, members=True, progress=False, **e["options"])
    t = str(e["obs"].time.values[2])[:19]
    with pytest.raises(ForecastError, match=rf"cycle 3 of 4 \(the forecast to {t}.*'u'"):
        xensf.cycle(Flaky(e["model"], fail_at=3), *args, **kwargs)
    assert assert_complete_cycles(path, reference) == 2
    resumed = xensf.cycle(Flaky(e["model"], fail_at=None), *args, **kwargs)
    assert_same_run(resumed, reference)


class OnLand:
    """Persistence that writes ``value`` on the land (where the state is NaN), and NaN
    at one sea point from call ``blow_up_at`` on."""

    def __init__(self, value, blow_up_at=None):
        self.inner, self.value, self.blow_up_at = (
            Persistence(np.timedelta64(1, "D")),
            value,
            blow_up_at,
        )
        self.time_step, self.calls = self.inner.time_step, 0

    def forecast(self, state, steps):
        self.calls += 1
        out = self.inner.forecast(state, steps).fillna(self.value)
        if self.blow_up_at is not None and self.calls >= self.blow_up_at:
            out["sst"][0, 0, 0] = np.nan
        return out


def _ocean_run():
    """An 'ocean' ensemble with a land block at one time, and three days of gridded
    observations (some on land)."""
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-30, 30, 9), np.arange(12) * 10.0
    land = np.zeros((9, 12), bool)
    land[2:5, 3:7] = True
    x = np.where(land, np.nan, 15 + rng.standard_normal((8, 9, 12)))
    start = xr.Dataset(
        {"sst": (("member", "lat", "lon"), x, {"units": "degC"})},
        coords={"lat": lat, "lon": lon, "time": np.datetime64("2000-01-01", "ns")},
    )
    times = np.datetime64("2000-01-01", "ns") + np.arange(1, 4) * np.timedelta64(1, "D")
    every = (np.arange(9)[:, None] % 2 == 0) & (np.arange(12)[None, :] % 2 == 0)
    truth = np.where(every, 15 + rng.standard_normal((3, 9, 12)), np.nan)
    obs = xr.Dataset(
        {"sst": (("time", "lat", "lon"), truth, {"units": "degC"})},
        coords={"time": times, "lat": lat, "lon": lon},
    )
    return start, obs, xr.DataArray(land, dims=("lat", "lon"))


def test_an_ocean_with_land_cycles_as_its_analyses_by_hand(tmp_path):
    """assimilate takes a land mask; cycling refused it: NaN in the initial ensemble,
    in a forecast or in an analysis stopped the run."""
    start, obs, land = _ocean_run()
    options = dict(method="letkf", obs_error=0.3, loc_radius=1500.0)
    with pytest.warns(MaskedObservationWarning, match="in 3 of the 3 cycles"):
        run = xensf.cycle(
            OnLand(0.0), start, obs, members=True, progress=False, store=tmp_path / "r.zarr",
            **options,
        )  # fmt: skip
    current = start.drop_vars("time")
    for k in range(3):  # persistence: each cycle analyses the last analysis
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MaskedObservationWarning)
            analysis = current.expand_dims(time=obs.time[[k]].values).ensf.assimilate(
                obs.isel(time=[k]), **options
            )
        current = analysis.isel(time=0, drop=True)
        np.testing.assert_array_equal(run.sst_analysis.isel(time=k), current.sst)
    # the land stays the run's, whatever the model writes there
    assert bool(run.sst_forecast.where(land).isnull().all())
    assert bool(run.sst_analysis_mean.notnull().where(~land, True).all())
    assert list(run.sst_count.values) == [26, 26, 26]  # 30 observed, 4 of them on land
    with (
        pytest.raises(ForecastError, match=r"cycle 2 of 3 .*'sst' off the initial ensemble's"),
        pytest.warns(MaskedObservationWarning, match="in 1 of the 3 cycles"),  # before it
    ):
        xensf.cycle(OnLand(0.0, blow_up_at=2), start, obs, progress=False, **options)
    holey = start.copy(deep=True)
    holey.sst[0, 0, 0] = np.nan  # one member only: not a mask
    with pytest.raises(EnsembleError, match="not a land mask"):
        xensf.cycle(OnLand(0.0), holey, obs, progress=False, **options)


class Reshuffled:
    """The shallow-water forecaster, its result changed by ``change`` before it returns."""

    def __init__(self, inner, change):
        self.inner, self.change, self.time_step = inner, change, inner.time_step

    def settings(self):
        return forecaster_settings(self.inner)

    def forecast(self, state, steps):
        return self.change(self.inner.forecast(state, steps))


def test_a_forecast_is_read_by_its_labels_and_units(reference):
    # The forecast was read by position and its numbers taken in the state's units: a
    # model that returned its members in another order, its rows flipped, or eta in
    # centimetres gave another run (an analysis mean of 12 697 m for the last), and
    # one on other grid points or members went through without a word.
    e = experiment(4)
    args = (e["initial_ensemble"], e["obs"])
    kwargs = dict(members=True, progress=False, **e["options"])

    def flipped(out):
        out = out.isel(member=slice(None, None, -1), y=slice(None, None, -1))
        return out.assign(eta=(out.eta * 100).assign_attrs(units="cm"))

    run = xensf.cycle(Reshuffled(e["model"], flipped), *args, **kwargs)
    xr.testing.assert_allclose(
        _without_history(run), _without_history(reference), rtol=1e-5, atol=1e-6
    )
    for change, says in [
        (lambda out: out.assign_coords(x=out.x + 1.0), "'x' coordinate differs"),
        (lambda out: out.assign_coords(member=out.member + 10), "'member' coordinate differs"),
        (lambda out: out.assign(eta=out.eta.assign_attrs(units="kg")), "'eta'.*'kg'"),
    ]:
        with pytest.raises(ForecastError, match=rf"cycle 1 of 4 .*{says}"):
            xensf.cycle(Reshuffled(e["model"], change), *args, **kwargs)


def test_a_table_of_station_rows_cycles_like_the_grid_it_came_from():
    # A table (rows with a time and a position each) was refused ("need a time dim");
    # laid out by time, its moving-observer positions (y(time, row)) were then dropped
    # with the time's other labels, and the cycle found no positions at all.
    e = experiment(2)
    table = e["obs"].stack(row=("time", "y", "x")).dropna("row").reset_index("row")
    assert table["y"].dims == ("row",) and table["time"].dims == ("row",)
    kwargs = dict(progress=False, **e["options"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.ObservationErrorWarning)
        rows = xensf.cycle(e["model"], e["initial_ensemble"], table, **kwargs)
        grid = xensf.cycle(e["model"], e["initial_ensemble"], e["obs"], **kwargs)
    assert int(rows.obs_count.sum()) == int(grid.obs_count.sum()) > 0
    for v in ("eta_analysis_mean", "u_analysis_spread"):
        np.testing.assert_allclose(rows[v].values, grid[v].values, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_observation_times_must_be_model_times_on_cycle_boundaries(tmp_path):
    e = experiment(2)
    model, start, obs = e["model"], e["initial_ensemble"], e["obs"]
    path = tmp_path / "run.zarr"
    kw = dict(store=path, progress=False, **e["options"])
    late = obs.assign_coords(time=obs.time + np.timedelta64(1, "s"))
    bad = str(late.time.values[0])[:19]
    with pytest.raises(ObservationMismatchError, match=rf"{bad}.* is not a model time"):
        xensf.cycle(model, start, late, **kw)
    with pytest.raises(ObservationMismatchError, match="not on a cycle boundary"):
        xensf.cycle(model, start, obs, every=20, **kw)
    early = obs.assign_coords(time=obs.time - 2 * EVERY * model.time_step)
    with pytest.raises(ObservationMismatchError, match="before the initial"):
        xensf.cycle(model, start, early, **kw)
    uneven = xr.concat(
        [obs, obs.isel(time=[1]).assign_coords(time=obs.time[1:] + 3 * EVERY * model.time_step)],
        "time",
    )
    with pytest.raises(OptionError, match="not evenly spaced"):
        xensf.cycle(model, start, uneven, **kw)
    with pytest.raises(DimensionError, match="no time"):
        xensf.cycle(model, start.isel(time=0, drop=True), obs, **kw)
    with pytest.raises(OptionError, match="forecaster"):
        xensf.cycle(lambda x: x, start, obs, **kw)
    with pytest.raises(OptionError, match="unknown option"):
        xensf.cycle(model, start, obs, **{**kw, "inflation": 1.1})
    with pytest.raises(OptionError, match="'untill': did you mean 'until'"):
        xensf.cycle(model, start, obs, **kw, untill=3)
    with pytest.raises(ObservationMismatchError, match="no observation variable"):
        xensf.cycle(model, start, obs.rename(eta="h", u="uu", v="vv"), **kw)
    # once numpy's ValueError, a truthy string taken as True, a message naming model=
    with pytest.raises(OptionError, match="until='banana' is not a time"):
        xensf.cycle(model, start, obs, until="banana", **kw)
    with pytest.raises(OptionError, match="members must be True or False, got 'yes'"):
        xensf.cycle(model, start, obs, members="yes", **kw)
    with pytest.raises(OptionError, match="progress must be True or False, got 'no'"):
        xensf.cycle(model, start, obs, **{**kw, "progress": "no"})  # (showed the bar)
    with pytest.raises(OptionError, match="drop latent_model= or"):
        xensf.cycle(model, start, obs, latent_model="some.xensf", **kw)
    # once a raw OverflowError and ValueError
    for every in (np.inf, "abc", "20", 0, 2.5, True):
        with pytest.raises(OptionError, match="every must be a positive whole number"):
            xensf.cycle(model, start, obs, every=every, **kw)
    assert not path.exists()  # all refused before any work


def test_inputs_are_not_modified():
    e = experiment(2)
    start, obs = copy.deepcopy(e["initial_ensemble"]), copy.deepcopy(e["obs"])
    xensf.cycle(e["model"], e["initial_ensemble"], e["obs"], members=True, progress=False,
                **e["options"])  # fmt: skip
    xr.testing.assert_identical(e["initial_ensemble"], start)
    xr.testing.assert_identical(e["obs"], obs)


# ---------------------------------------------------------------------------------------
# Persistence on a tiny dataset; cycles without observations
# ---------------------------------------------------------------------------------------


def test_a_noleap_run_cycles_resumes_and_matches_its_datetime64_twin(tmp_path):
    """Climate runs on cftime calendars cycle as datetime64 ones do: LETKF on the
    noleap dates of a January gives the datetime64 run's bits; the store holds the
    dates in their calendar and resumes from them; '6h' is a time span, as xarray
    reads one; observations on datetime64 against a noleap start are named."""
    import cftime

    ens = make_ensemble(n_members=5, n_times=5, nlat=6, nlon=8)
    truth = ens.isel(member=0, drop=True) + 1.0
    obs = truth.isel(time=[1, 2, 3, 4]).where(truth.lat > 0)
    kw = dict(method="letkf", loc_radius=None, obs_error=0.5, progress=False, members=True)
    dates = xensf.cycle(Persistence(np.timedelta64(6, "h")), ens.isel(time=[0]), obs, **kw)

    def noleap(ds):
        return ds.convert_calendar("noleap", use_cftime=True)

    start, later = noleap(ens.isel(time=[0])), noleap(obs)
    assert Persistence("6h").time_step == np.timedelta64(6, "h")
    path = tmp_path / "noleap.zarr"
    first = xensf.cycle(Persistence("6h"), start, later, store=path, until="2020-01-01T12", **kw)
    assert first.sizes["time"] == 2
    run = xensf.cycle(Persistence("6h"), start, later, store=path, **kw)  # resumed
    assert run.time.values[0].calendar == "noleap"
    np.testing.assert_array_equal(run.time.values, later.time.values)
    for name in ("t_analysis", "t_forecast_mean", "t_analysis_spread"):
        np.testing.assert_array_equal(run[name].values, dates[name].values, err_msg=name)
    in_memory = xensf.cycle(Persistence("6h"), start, later, **kw)
    xr.testing.assert_identical(in_memory.t_analysis, run.t_analysis.load())
    with pytest.raises(OptionError, match="cannot read time_step='soon'"):
        Persistence("soon")
    with pytest.raises(ObservationMismatchError, match="numpy datetime64 and the state's cftime"):
        xensf.cycle(Persistence("6h"), start, obs, **kw)
    with pytest.raises(OptionError, match="a cftime date of the 'noleap' calendar"):
        xensf.cycle(Persistence("6h"), start, later, until=cftime.Datetime360Day(2020, 1, 1), **kw)


@pytest.mark.parametrize("numeric_time", [False, True], ids=["datetime", "numeric"])
def test_persistence_with_cycles_without_observations(tmp_path, numeric_time, capsys):
    ens = make_ensemble(n_members=5, n_times=5, nlat=6, nlon=8)
    truth = ens.isel(member=0, drop=True) + 1.0
    start = ens.isel(time=[0])
    step = np.timedelta64(6, "h")
    if numeric_time:
        hours = (ens.time - ens.time[0]) / np.timedelta64(1, "h")
        start = start.assign_coords(time=hours[:1].values)
        truth = truth.assign_coords(time=hours.values)
        step = 6.0
    obs = truth.isel(time=[2, 4]).where(truth.lat > 0)  # every 2nd step, northern half
    out = xensf.cycle(
        Persistence(step), start, obs, method="letkf", loc_radius=None, obs_error=0.5, every=1,
        store=tmp_path / "run.zarr", members=True, progress=True,
    )  # fmt: skip
    bar = capsys.readouterr().err
    assert "xensf.cycle" in bar and "4/4" in bar and "t spread=" in bar
    np.testing.assert_array_equal(out.time, truth.time[1:])
    np.testing.assert_array_equal(out.obs_count, [0, 24, 0, 24])
    # no observations: the forecast is recorded as the analysis
    for k in (0, 2):
        np.testing.assert_array_equal(out.t_analysis[k], out.t_forecast[k])
    # persistence: each forecast is the previous analysis
    np.testing.assert_array_equal(out.t_forecast_mean[1:], out.t_analysis_mean[:-1])
    np.testing.assert_array_equal(
        out.t_forecast_mean[0],
        ens.t.isel(time=0).mean("member", dtype=np.float64).astype(np.float32),
    )
    # the analysis pulled the observed half towards the observations
    north = out.t_analysis_mean.isel(time=1).where(out.lat > 0)
    prior = out.t_forecast_mean.isel(time=1).where(out.lat > 0)
    target = obs.t.isel(time=0)
    assert float(abs(north - target).mean()) < float(abs(prior - target).mean())


def test_latent_ensf_with_persistence(tmp_path):
    import torch
    from test_latent import GRID, blobs, random_positions

    from xensf.latent import gridded_stride_obs, train_latent_model

    pos = random_positions(32, torch.Generator().manual_seed(0))
    model = train_latent_model(
        blobs(pos[:, 0], pos[:, 1]), gridded_stride_obs(4, 0.1), latent_dim=16, width=8,
        blocks=1, epochs=1, batch_size=32, lr=3e-3, seed=0, device="cpu", progress=False,
        variables=["h"], units=["m"],
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    members = blobs(*random_positions(6, gen).T)[:, 0].numpy()
    coords = {
        "y": ("y", np.arange(GRID) * 10.0, {"units": "km"}),
        "x": ("x", np.arange(GRID) * 10.0, {"units": "km"}),
    }
    t0 = np.datetime64("2020-01-01", "ns")
    start = xr.Dataset(
        {"h": (("member", "y", "x"), members, {"units": "m"})}, coords
    ).assign_coords(time=t0)
    times = t0 + np.arange(1, 3) * np.timedelta64(1, "h")
    truth = blobs(*random_positions(2, gen).T)[:, 0].numpy()
    obs = xr.Dataset({"h": (("time", "y", "x"), truth, {"units": "m"})}, {**coords, "time": times})
    obs = obs.where((obs.y % 40 == 0) & (obs.x % 40 == 0))

    out = xensf.cycle(
        Persistence(np.timedelta64(1, "h")), start, obs, latent_model=model, steps=10,
        store=tmp_path / "run.zarr", members=True, progress=False, device="cpu",
    )  # fmt: skip
    assert out.attrs["xensf_method"] == "latent-ensf"
    assert len(out.attrs["xensf_latent_model_sha256"]) == 64
    prior = start.drop_vars("time").expand_dims(time=times[:1])
    first = prior.ensf.assimilate(obs.isel(time=[0]), model=model, steps=10, device="cpu")
    np.testing.assert_array_equal(out.h_analysis.isel(time=0), first.h.isel(time=0))
    # persistence: the second forecast is the first analysis
    np.testing.assert_array_equal(out.h_forecast.isel(time=1), out.h_analysis.isel(time=0))


def test_dask_backed_inputs_give_the_same_run():
    ens = make_ensemble(n_members=5, n_times=3, nlat=6, nlon=8)
    start, obs = ens.isel(time=[0]), (ens.isel(member=0, drop=True) + 1.0).isel(time=[1, 2])
    kwargs = dict(method="letkf", loc_radius=None, obs_error=0.5, progress=False)
    eager = xensf.cycle(Persistence(np.timedelta64(6, "h")), start, obs, **kwargs)
    lazy_start, lazy_obs = start.chunk(), obs.chunk({"time": 1})
    lazy = xensf.cycle(Persistence(np.timedelta64(6, "h")), lazy_start, lazy_obs, **kwargs)
    assert_same_run(lazy, eager)
    assert lazy_start.t.chunks is not None and lazy_obs.t.chunks is not None  # still lazy


def test_a_lagged_ensemble_stacked_into_one_member_dim_cycles(tmp_path):
    """Two start times' members stacked into one dim (a multi-index) are an ensemble;
    cycle's digest of its labels raised numpy's "setting an array element with a
    sequence", and zarr cannot store the index: the run holds the levels as
    coordinates along the dim, in memory and in a store, and resumes."""
    ens = make_ensemble(n_members=8, n_times=3, nlat=6, nlon=8)
    halves = [ens.isel(member=slice(0, 4)), ens.isel(member=slice(4, 8))]
    lagged = xr.concat([h.assign_coords(member=np.arange(4)) for h in halves], "init")
    stacked = lagged.assign_coords(init=[0, 1]).stack(ensemble=("init", "member"))
    start, obs = stacked.isel(time=[0]), (ens.isel(member=0, drop=True) + 1.0).isel(time=[1, 2])
    kwargs = dict(method="letkf", loc_radius=3000.0, obs_error=0.5, members=True, progress=False)
    step = Persistence(np.timedelta64(6, "h"))
    plain = xensf.cycle(step, start.reset_index("ensemble"), obs, **kwargs)
    in_memory = xensf.cycle(step, start, obs, **kwargs)
    assert_same_run(in_memory, plain)
    stored = xensf.cycle(step, start, obs, store=tmp_path / "run.zarr", **kwargs)
    assert list(stored.init.values) == [0, 0, 0, 0, 1, 1, 1, 1]  # the levels, as coordinates
    np.testing.assert_array_equal(stored.t_analysis, plain.t_analysis)
    assert_same_run(xensf.cycle(step, start, obs, store=tmp_path / "run.zarr", **kwargs), stored)
    assert isinstance(start.indexes["ensemble"], pd.MultiIndex)  # the input as given


def test_warnings_of_a_run_are_summarised_once(tmp_path):
    """A warning that fires every cycle (its text carries numbers) is reported once per
    run, with the count, not printed and kept in the registry every cycle."""
    e = experiment(4)
    with pytest.warns(xensf.ObservationErrorWarning) as record:
        xensf.cycle(
            e["model"], e["initial_ensemble"], e["obs"], method="letkf", loc_radius=None, obs_error=50.0,
            progress=False,
        )  # fmt: skip
    ours = [w for w in record if w.category is xensf.ObservationErrorWarning]
    assert len(ours) == 1
    assert "ObservationErrorWarning in 4 of the 4 cycles of this run" in str(ours[0].message)
    # a warning the analysis gives while it is set up came twice: from the run's dry
    # run, which checks the input before any work, and in the summary
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        xensf.cycle(
            e["model"], e["initial_ensemble"], e["obs"], method="letkf", loc_radius=1.0,
            obs_error=0.05, progress=False,
        )  # fmt: skip
    shown = [str(w.message) for w in record if w.category is xensf.LocalisationWarning]
    assert len(shown) == 1, shown
    assert shown[0].startswith("LocalisationWarning in 4 of the 4 cycles of this run")


def test_the_old_forecast_module_name_still_works_with_a_future_warning():
    import importlib
    import sys

    import xensf.cycling

    sys.modules.pop("xensf.forecast", None)
    with pytest.warns(FutureWarning, match="xensf.cycling.forecast"):
        old = importlib.import_module("xensf.forecast")
    assert old.ShallowWaterForecaster is xensf.cycling.ShallowWaterForecaster
    assert old.Persistence is Persistence


def test_an_era5_ensemble_at_one_time_starts_a_run_at_its_valid_time(tmp_path):
    # cfgrib's ERA5 keeps two scalar time coordinates after isel(time=0), the forecast
    # reference time 'time' and 'valid_time': the run said the ensemble had no time.
    ds = xensf.open_era5_sample().isel(latitude=slice(0, None, 6), longitude=slice(0, None, 6))
    start = ds.isel(number=slice(1, None), time=0).load()
    truth = ds.isel(number=0, drop=True).load()
    out = xensf.cycle(
        Persistence(np.timedelta64(12, "h")), start, truth.isel(time=[1]), method="letkf",
        obs_error={"z": 10.0, "t": 0.1}, loc_radius=1000.0, store=tmp_path / "run.zarr",
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(out.time, truth.time[1:2])
    assert int(out.obs_count[0]) > 0
    # a forecast's valid time, not its reference time, is the time it is at
    forecast = start.assign_coords(valid_time=start.valid_time + np.timedelta64(12, "h"))
    at_valid = truth[["z"]].isel(time=[1])
    analysis = forecast.ensf.assimilate(at_valid, method="letkf", obs_error=10.0,
                                        loc_radius=1000.0)  # fmt: skip
    assert float(abs(analysis.z - forecast.z).max()) > 0
    other = forecast.assign_coords(
        other_time=((), start.valid_time.values, {"standard_name": "time"})
    )
    with pytest.raises(DimensionError, match=r"drop_vars\('other_time'\)"):
        other.ensf.assimilate(at_valid, method="letkf", obs_error=10.0, loc_radius=1000.0)
    # a run started from forecasts labelled by their reference time would begin there
    forecasts = ds.isel(number=slice(1, None), time=[0]).assign_coords(
        step=ds.step.copy(data=12.0), valid_time=ds.valid_time[:1] + np.timedelta64(12, "h")
    )
    with pytest.raises(DimensionError, match=r"swap_dims\(\{'time': 'valid_time'\}\)"):
        xensf.cycle(Persistence(np.timedelta64(12, "h")), forecasts, truth.isel(time=[1]),
                    method="letkf", obs_error=10.0, loc_radius=1000.0,
                    store=tmp_path / "other.zarr", progress=False)  # fmt: skip


class _Counted:
    """Persistence with a time step in hours, recording the steps it is asked for."""

    def __init__(self, time_step):
        self.time_step, self.asked = time_step, []

    def forecast(self, state, steps):
        self.asked.append(steps)
        return state


def test_a_time_step_in_hours_is_read_as_hours():
    # The schedule took timedelta64(6, "h") as 6 ns: the model was asked for 3.6e12
    # steps per cycle, and the error messages put the cycle in 2028.
    rng = np.random.default_rng(0)
    start = xr.Dataset(
        {"t": (("member", "lat", "lon"), 280 + rng.standard_normal((6, 6, 8)), {"units": "K"})},
        coords={"lat": np.linspace(-60, 60, 6), "lon": np.arange(8) * 45.0,
                "time": np.datetime64("2001-01-01", "ns")},
    )  # fmt: skip
    times = np.array(["2001-01-01T06", "2001-01-01T12"], "datetime64[ns]")
    obs = xr.Dataset(
        {"t": (("time", "station"), [[290.0], [289.0]])},
        coords={"time": times, "lat": ("station", [0.0]), "lon": ("station", [90.0])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 3000.0, "progress": False}
    hours = _Counted(np.timedelta64(6, "h"))
    run = xensf.cycle(hours, start, obs, **options)
    assert hours.asked == [1, 1]
    np.testing.assert_array_equal(run.time.values, times)
    reference = xensf.cycle(Persistence("6h"), start, obs, **options)
    xr.testing.assert_equal(run, reference)  # the same numbers; the attributes name each model
    with pytest.raises(OptionError, match="positive and finite"):
        xensf.cycle(_Counted(float("inf")), start.assign_coords(time=0.0), obs, **options)
