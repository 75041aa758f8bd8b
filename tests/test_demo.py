"""``xensf demo`` (shallow water) and ``xensf demo-era5`` end to end, at reduced sizes."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import xarray as xr

import xensf
import xensf.experiments.demo_swe as demo_swe
from xensf.cli import main
from xensf.errors import OptionError
from xensf.experiments.twin import (
    TwinSetup,
    initial_ensemble,
    observations,
    observed_points,
    truth_run,
)
from xensf.metrics import relative_rmse


def test_shipped_demo_model_fits_the_demo_setup():
    model = xensf.load(demo_swe.shipped_model_path())
    data = model.config["data"]
    assert set(data["variables"]) == {"eta", "u", "v"}
    assert tuple(model.config["architecture"]["grid_shape"]) == (
        demo_swe.DEMO_SETUP.n,
        demo_swe.DEMO_SETUP.n,
    )
    # it knows its observation layout: every 4th point, in all three variables
    expected = np.broadcast_to(observed_points(demo_swe.DEMO_SETUP), (3, 40, 40))
    np.testing.assert_array_equal(model.obs_points.numpy(), expected)


def test_the_shipped_model_warns_when_half_its_observations_are_missing():
    """Trained on whole layouts (every 4th point, three variables: 300 values), it reads
    gaps badly (benchmarks.md, "Observations with gaps") and says so."""
    model = xensf.load(demo_swe.shipped_model_path())
    assert model.obs_layout_values == 300 and model.obs_dropout == 0.0
    setup = demo_swe.DEMO_SETUP.with_(steps=10, every=10)
    truth = truth_run(setup, device="cpu")
    prior = initial_ensemble(setup, device="cpu").expand_dims(time=truth.time[1:])
    for gaps, expected in ((0.0, 0), (0.5, 1)):
        obs, errors = observations(truth, setup.with_(obs_gaps=gaps), 0.1)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            prior.ensf.assimilate(obs, model=model, obs_error=errors, seed=0)
        coverage = [w for w in record if "observation layout" in str(w.message)]
        assert len(coverage) == expected
        if expected:
            assert coverage[0].category is xensf.ModelQualityWarning
            assert "of 300 values" in str(coverage[0].message)


def test_the_shipped_model_knows_how_much_gaps_cost_its_encoder():
    """Its coverage curve (measured on 30 fresh runs, make_demo_model.py
    --calibrate-only): half the layout missing costs the encoder most of what the
    whole layout gave, so the hybrid widens its latent error there many times."""
    model = xensf.load(demo_swe.shipped_model_path())
    curve = model.config["latent"]["coverage_error"]
    rms = [float(np.sqrt(np.mean(np.square(s)))) for s in curve["std"]]
    assert rms[curve["coverage"].index(0.5)] > 4 * rms[-1]
    assert rms[0] > rms[curve["coverage"].index(0.5)]
    latent, decoded = model.coverage_excess([1.0, 0.5])
    assert not latent[0].any() and float(decoded[0]) == 0
    assert float(decoded[1]) > 0.1  # squared relative error added: 0.07 -> above 0.3


def test_demo_runs_every_method_and_writes_table_stores_figures(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    small = demo_swe.DEMO_SETUP.with_(steps=40, members=6, ensf_steps=10)
    monkeypatch.setattr(demo_swe, "DEMO_SETUP", small)
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--noise", "0", "20", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    methods = {"free run", "latent-ensf", "latent-ensf-letkf", "ensf", "letkf", "latent-letkf"}
    for method in methods:
        assert method in printed
    summary = json.loads((out / "summary.json").read_text())
    table = summary["relative_rmse_second_half"]
    assert set(table) == methods
    assert all(np.isfinite(v) for row in table.values() for v in row.values())
    assert set(table["ensf"]) == {"0%", "20%"}
    store = xr.open_zarr(out / "ensf-noise20.zarr")
    assert store.sizes["time"] == small.cycles
    assert {"eta_analysis_mean", "u_forecast_spread"} <= set(store.data_vars)
    # the table's number is the mean over the second half of the store's own curve
    truth = truth_run(small, device="cpu")
    scales = {v: float(truth[v].std()) for v in ("eta", "u", "v")}
    means = xr.Dataset({v: store[f"{v}_analysis_mean"] for v in ("eta", "u", "v")})
    curve = relative_rmse(means, truth.isel(time=slice(1, None)), scales)
    expected = float(curve.isel(time=slice(small.cycles // 2, None)).mean())
    assert table["ensf"]["20%"] == pytest.approx(expected, rel=1e-6)
    for name in ("relative-rmse.png", "maps-eta.png", "maps-u.png", "maps-v.png"):
        assert (out / name).stat().st_size > 10_000
    hybrid = xr.open_zarr(out / "latent-ensf-letkf-noise20.zarr")
    blended = summary["latent-ensf-letkf_blended_cycles"]
    assert blended["20%"] == int((hybrid.blend_weight > 0).sum()) and set(blended) == {"0%", "20%"}
    assert (out / "blend-weight.png").stat().st_size > 10_000


def test_run_twin_returns_the_summary_it_writes(tmp_path, capsys):
    """The twin experiment as a function (what the demo and the benchmark call)."""
    setup = demo_swe.DEMO_SETUP.with_(steps=30, members=5, prior="easy", seed=3)
    summary = demo_swe.run_twin(setup, ["letkf"], [10], tmp_path, device="cpu", plot=False)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["relative_rmse_second_half"]) == {"free run", "letkf"}
    assert summary["setup"]["seed"] == 3 and summary["noise_percent"] == [10.0]
    run = xr.open_zarr(tmp_path / "letkf-noise10.zarr")
    assert run.attrs["xensf_seed"] == 3 and not list(tmp_path.glob("*.png"))


def test_a_rerun_replaces_the_previous_run_s_outputs_and_keeps_the_rest(tmp_path, capsys):
    """A folder holds one run: the stores, figures and summary of an earlier run with
    other methods and noise levels go (so does a half-written output), the paper-size
    model and the user's own files stay."""
    setup = demo_swe.DEMO_SETUP.with_(steps=30, members=5, prior="easy")
    demo_swe.run_twin(setup, ["letkf", "ensf"], [10, 20], tmp_path, device="cpu", plot=False)
    for name in ("relative-rmse.png", "blend-weight.png", "maps-eta.png", "notes.txt"):
        (tmp_path / name).write_text("from before")
    (tmp_path / "mine-noise5.zarr").mkdir()  # not a method's: the user's own
    (tmp_path / "draft.partial.txt").write_text("the user's own too")
    (tmp_path / "swe-full.xensf").mkdir()
    (tmp_path / "free-run.partial.zarr").mkdir()  # a run stopped while writing it
    demo_swe.run_twin(setup, ["letkf"], [10], tmp_path, device="cpu", plot=False)
    assert "replacing a previous run's outputs" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "draft.partial.txt",
        "free-run.zarr",
        "letkf-noise10.zarr",
        "mine-noise5.zarr",
        "notes.txt",
        "summary.json",
        "swe-full.xensf",
        "truth.zarr",
    ]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["relative_rmse_second_half"]) == {"free run", "letkf"}


@pytest.mark.parametrize("stop", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_output_is_written_whole_or_not_at_all(tmp_path, stop):
    """A write that stops halfway leaves the previous output as it was and no partial
    file; one that ends replaces it."""
    from xensf.experiments.outputs import write_whole

    target = tmp_path / "summary.json"
    target.write_text("old")

    def half(tmp):
        tmp.write_text("half of the new")
        raise stop

    with pytest.raises(type(stop)):
        write_whole(target, half)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]
    store = tmp_path / "run.zarr"
    xr.Dataset({"a": ("x", [1.0])}).to_zarr(store)
    write_whole(store, xr.Dataset({"b": ("x", [2.0, 3.0])}).to_zarr)
    assert list(xr.open_zarr(store).data_vars) == ["b"]
    write_whole(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 2


def test_the_twin_cycles_adaptive_inflation_and_blend_evidence_when_its_setup_asks(tmp_path):
    """Both LETKF methods with adaptive inflation given a damping, and the hybrid with
    its blend test on accumulated evidence."""
    setup = demo_swe.DEMO_SETUP.with_(
        steps=30, members=5, prior="easy", letkf_adaptive_damping=0.9, blend_evidence=True
    )
    options = demo_swe.method_options("letkf", setup, {"eta": 0.1}, None)
    assert "inflation" not in options and options["adaptive_inflation"].damping == 0.9
    assert "blend_evidence" not in options
    methods = ["letkf", "latent-ensf-letkf"]
    summary = demo_swe.run_twin(setup, methods, [10], tmp_path, device="cpu", plot=False)
    assert summary["setup"]["letkf_adaptive_damping"] == 0.9
    assert summary["setup"]["blend_evidence"] is True
    for method in methods:
        run = xr.open_zarr(tmp_path / f"{method}-noise10.zarr")
        assert run.inflation.sizes["time"] == 3 and float(run.inflation.min()) >= 1.0
        assert json.loads(run.attrs["xensf_adaptive_inflation"])["damping"] == 0.9
    hybrid = xr.open_zarr(tmp_path / "latent-ensf-letkf-noise10.zarr")
    assert hybrid.blend_evidence.dims == ("time",) and (hybrid.blend_evidence >= 0).all()
    fixed = demo_swe.method_options("letkf", setup.with_(letkf_adaptive_damping=None), {}, None)
    assert fixed["inflation"] == setup.letkf_inflation and "adaptive_inflation" not in fixed
    single = demo_swe.method_options(
        "latent-ensf-letkf", setup.with_(blend_evidence=False), {}, None
    )
    assert "blend_evidence" not in single


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"members": 1}, "members=1"),
        ({"stride": 0}, "stride=0"),
        ({"every": 0}, "every=0"),
        ({"stride": 40}, "stride=40 is larger than the grid"),
        ({"truth_position": (0.7, 0.0)}, "truth_position=(0.7, 0.0)"),
        ({"prior_position": (0.1, float("nan"))}, "prior_position=(0.1, nan)"),
        ({"eta_noise": -0.05}, "eta_noise=-0.05"),
        ({"noise_floor": 0.0}, "noise_floor=0.0"),
        ({"letkf_inflation": 0.0}, "letkf_inflation=0.0"),
        ({"ensf_steps": 0}, "ensf_steps=0"),
        ({"steps": 20.5}, "steps=20.5"),
    ],
)
def test_a_twin_setup_out_of_range_is_refused_naming_the_field(change, named):
    # Before, stride=0 and every=0 gave numpy's and Python's raw errors at the first
    # run, and one member or a negative noise were taken as given.
    with pytest.raises(OptionError, match=re.escape(named)):
        TwinSetup(**{"n": 20, "steps": 20, "every": 10, "stride": 5, **change})
    TwinSetup(n=20, steps=20, every=10, stride=5, truth_position=np.array([0.1, -0.2]))


def test_observations_follow_the_documented_noise_definition():
    setup = TwinSetup(n=20, steps=20, every=10, stride=5)
    truth = truth_run(setup, device="cpu")
    obs, errors = observations(truth, setup, 0.2)
    s = float(truth.eta.std())
    assert errors["eta"] == pytest.approx(0.2 * s)
    observed = obs.eta.isel(time=0).notnull()
    assert int(observed.sum()) == 16 and bool(observed.isel(y=2, x=2))
    noise = (obs.eta - truth.eta.isel(time=slice(1, None))).values
    noise = noise[np.isfinite(noise)]
    assert noise.std() == pytest.approx(0.2 * s, rel=0.3)
    clean, floor = observations(truth, setup, 0.0)
    assert floor["u"] == pytest.approx(setup.noise_floor * float(truth.u.std()))
    np.testing.assert_array_equal(
        clean.u.where(observed).values, truth.u.isel(time=slice(1, None)).where(observed).values
    )

    # a share of the points left out per time: the same points in every variable, and
    # the rest of the observations as without gaps
    gappy, _ = observations(truth, setup.with_(obs_gaps=0.5), 0.2)
    kept = gappy.eta.notnull()
    assert (gappy.u.notnull() == kept).all() and (gappy.v.notnull() == kept).all()
    assert 0 < int(kept.sum()) < int(obs.eta.notnull().sum())
    xr.testing.assert_equal(gappy.eta.where(kept), obs.eta.where(kept))
    assert not (kept.isel(time=0) == kept.isel(time=1)).all()
    with pytest.raises(OptionError, match="obs_gaps"):
        setup.with_(obs_gaps=1.0)


def test_hard_and_easy_priors():
    hard = initial_ensemble(TwinSetup(n=20, members=5, prior="hard"), device="cpu")
    easy = initial_ensemble(TwinSetup(n=20, members=5, prior="easy"), device="cpu")
    assert hard.eta.dims == ("member", "y", "x") and "time" in hard.coords
    # hard: one position plus noise on eta, velocities at rest
    assert float(hard.u.std()) == 0.0 and float(hard.eta.std("member").mean()) > 0.01
    # easy: different bump positions
    peaks = easy.eta.argmax(dim=("y", "x"))
    assert len({(int(a), int(b)) for a, b in zip(peaks["y"], peaks["x"], strict=True)}) > 1


def test_cli_rejects_bad_noise(capsys):
    assert main(["demo", "--noise", "150"]) == 2
    assert "percentages" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--seed", "-1"], "--seed takes a non-negative integer, got -1"),
        (["--truth-position", "2", "0"], "--truth-position takes fractions"),
        (["--prior-position", "0", "nan"], "--prior-position takes fractions"),
        # was ignored: the easy prior starts around the truth
        (["--prior", "easy", "--prior-position", "0", "0"], "places the hard prior's bump"),
        (["--device", "tpu"], "device='tpu' is not a torch device"),
        (["--model", "no-such.xensf"], "--model: No bundle at no-such.xensf"),
        # ran each twice, the second overwriting the first's stores, and printed a table
        # with two columns of one name
        (["--noise", "10", "20", "10"], "--noise lists 10 more than once"),
        (["--methods", "letkf", "ensf", "letkf"], "--methods lists letkf more than once"),
    ],
)
def test_demo_arguments_are_checked_before_any_work(tmp_path, capsys, extra, says):
    """Each once ended in a traceback (an XensfError, numpy's ValueError, torch's
    RuntimeError), some after the truth run was made."""
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), *extra]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_a_model_for_other_data_is_refused_before_the_runs(era5, tmp_path, capsys):
    """Once refused after the truth and free runs, with advice to pass variables=."""
    other = tmp_path / "t.xensf"
    xensf.train_latent(
        era5[["t"]], 8, latent_dim=8, width=4, blocks=1, epochs=1, batch_size=20, progress=False
    ).save(other)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(other), "--output", str(out), "--no-plot"]) == 1
    assert "does not fit the 40x40 twin's data" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["demo", "demo-era5"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    # once an OSError after the truth run: "[Errno 17] File exists", "[Errno 20] Not a
    # directory"
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert main([command, "--output", str(blocked), "--no-plot"]) == 2
    assert f"--output '{blocked}' is a file; give a folder" in capsys.readouterr().err
    assert main([command, "--output", str(blocked / "demo"), "--no-plot"]) == 2
    assert f"lies under '{blocked}', which is a file" in capsys.readouterr().err
    assert blocked.read_text() == ""


def test_an_error_during_the_demo_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xensf, "open_era5_sample", full)
    assert main(["demo-era5", "--output", str(tmp_path), "--no-plot"]) == 1
    assert capsys.readouterr().err == "xensf demo-era5: [Errno 28] No space left on device\n"
    assert main(["demo-era5", "--seed", "-1"]) == 2
    capsys.readouterr()
    assert main(["demo-era5", "--stations", "0"]) == 2
    assert (
        capsys.readouterr().err == "xensf demo-era5: --stations takes a positive integer, got 0\n"
    )
    # each was ignored: the stations of gridded observations, the stride of points
    assert main(["demo-era5", "--stations", "5"]) == 2
    assert "--stations does not apply to --obs gridded" in capsys.readouterr().err
    assert main(["demo-era5", "--obs", "points", "--stride", "3"]) == 2
    assert "--stride does not apply to --obs points" in capsys.readouterr().err


def test_era5_demo_still_runs(tmp_path, capsys):
    """It runs, and replaces what a previous run left in its folder (here: the analysis
    of a method and a figure this run does not make), not the user's own files."""
    for name in ("analysis-ensf.nc", "demo-z500.png", "notes.txt", "analysis-2024.nc"):
        (tmp_path / name).write_text("from before")
    assert main(["demo-era5", "--output", str(tmp_path), "--no-plot", "--methods", "letkf"]) == 0
    assert "RMSE at obs" in capsys.readouterr().out
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["analysis-2024.nc", "analysis-letkf.nc", "notes.txt"]
    assert xr.open_dataset(tmp_path / "analysis-letkf.nc").sizes["number"] > 1


def test_train_model_makes_a_bundle_the_demo_can_use(tmp_path, monkeypatch):
    tiny = {"runs": 4, "every": 10, "latent_dim": 16, "width": 2, "blocks": 1, "epochs": 1}
    monkeypatch.setitem(demo_swe.TRAINING, "demo", tiny)
    setup = TwinSetup(n=16, steps=20, every=10, stride=4)
    demo_swe.train_model(setup, tmp_path / "m.xensf", "demo", progress=False, device="cpu")
    model = xensf.load(tmp_path / "m.xensf")
    assert tuple(model.config["architecture"]["grid_shape"]) == (16, 16)
    assert model.config["training"]["n_train"] + model.config["training"]["n_val"] == 4 * 3


def test_the_old_twin_module_name_still_works_with_a_future_warning():
    import importlib
    import sys

    import xensf.experiments.twin as twin

    sys.modules.pop("xensf.twin", None)
    with pytest.warns(FutureWarning, match="xensf.experiments.twin"):
        old = importlib.import_module("xensf.twin")
    assert old.TwinSetup is twin.TwinSetup and old.truth_run is twin.truth_run


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--full", "--train-minutes", "0"], "positive number of minutes"),
        (["--full", "--train-minutes", "nan"], "positive number of minutes"),
        (["--train-minutes", "5"], "--full only"),
        (["--full", "--model", "m.xensf", "--train-minutes", "5"], "not with --model"),
    ],
)
def test_demo_train_minutes_is_checked_before_any_work(tmp_path, capsys, extra, says):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), *extra]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::xensf.TrainingDataWarning")  # 32 tiny training states
def test_full_demo_trains_its_model_within_the_given_minutes(tmp_path, monkeypatch, capsys):
    small = demo_swe.FULL_SETUP.with_(n=40, stride=4, steps=40, every=10, members=5, ensf_steps=10)
    monkeypatch.setattr(demo_swe, "FULL_SETUP", small)
    monkeypatch.setitem(demo_swe.TRAINING, "full", {**demo_swe.TRAINING["full"], "runs": 12})
    out = tmp_path / "full"
    args = ["demo", "--full", "--output", str(out), "--device", "cpu", "--no-plot"]
    args += ["--methods", "latent-ensf", "--noise", "10", "--train-minutes", "0.01"]
    assert main(args) == 0
    record = xensf.load(out / "swe-full.xensf").config["training"]
    assert record["time_budget"] == pytest.approx(0.6)
    assert record["epochs_run"] < demo_swe.TRAINING["full"]["epochs"]
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["relative_rmse_second_half"]["latent-ensf"]["10%"])
    # a second run reuses the bundle and says the budget does not apply to it
    assert main(args) == 0
    assert "training budget does not apply" in capsys.readouterr().out


def test_the_demo_table_keeps_its_columns_for_the_longest_method_name(capsys):
    # "latent-ensf-letkf" is longer than the 14 characters the name column had, so its
    # numbers stood three places right of the others'.
    table = {
        "free run": {"0%": 1.158, "10%": 1.156},
        "latent-ensf-letkf": {"0%": 0.013, "10%": 0.034},
        "ensf": {"0%": 0.273, "10%": 0.391},
    }
    demo_swe._print_table(table, [0, 10], {"ensf 0%": 1.0}, ["ensf", "latent-ensf-letkf"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()][1:]
    header, *body = rows
    assert header.startswith("method")
    starts = {tuple(m.start() for m in re.finditer(r"\d\.\d+", line)) for line in body}
    assert len(starts) == 1, body


def test_the_demo_prints_a_run_s_quality_warning_with_its_own_count(capsys):
    # xensf.cycle sums a warning of many cycles up in one; the demo counted the caught
    # warnings and printed "ModelQualityWarning at 1 of 50 analyses" for one of 45 cycles
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("ModelQualityWarning in 45 of the 50 cycles of this run; ...",
                      xensf.ModelQualityWarning, stacklevel=1)  # fmt: skip
    demo_swe._report_quality_warnings("latent-ensf", "0%", caught)
    out = capsys.readouterr().out
    assert out == "latent-ensf 0%: ModelQualityWarning in 45 of the 50 cycles of this run; ...\n"
