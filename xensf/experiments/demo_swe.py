"""``xensf demo``: the shallow-water twin experiment with sparse observations.

The reduced setup (:data:`DEMO_SETUP`, a few minutes on two CPU cores) uses the small
latent model shipped in ``xensf/data/swe-demo.xensf`` (made by
``scripts/make_demo_model.py``); ``--full`` runs the paper-size setup
(:data:`FULL_SETUP`) and trains its latent model first unless ``--model`` is given.
Every method is cycled with :func:`xensf.cycle` into a zarr store; the free run
(no assimilation) is the reference. The table gives the relative RMSE of the ensemble
mean (see :mod:`xensf.twin` for the definitions) averaged over the second half of the
run, per method and observation-noise level.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import ObservationMismatchError, OptionError
from ..metrics import relative_rmse
from .outputs import clear_previous, write_whole
from .twin import (
    TwinSetup,
    field_scales,
    free_run,
    initial_ensemble,
    observations,
    observed_points,
    training_runs,
    truth_run,
)

__all__ = [
    "DEMO_SETUP",
    "FULL_SETUP",
    "TRAINING",
    "full_model",
    "method_options",
    "run",
    "run_twin",
    "shipped_model_path",
]

#: The names the demo writes in its output folder, all replaced by a rerun there (the
#: paper-size model, ``swe-full.xensf``, is kept and reused); ``METHOD`` stands for each
#: method's name.
OUTPUTS = (
    "truth.zarr",
    "free-run.zarr",
    "METHOD-noise*.zarr",
    "summary.json",
    "relative-rmse.png",
    "blend-weight.png",
    "maps-eta.png",
    "maps-u.png",
    "maps-v.png",
)

#: The reduced setup: the same 1000 km basin on 40 × 40 cells (25 km), observed by the
#: paper's network — 10 × 10 points 100 km apart (every 4th cell here, every 15th
#: there) — over the same 11.8 h (500 steps here, 2000 there), 50 cycles.
DEMO_SETUP = TwinSetup(n=40, steps=500, every=10, stride=4, members=20, ensf_steps=100)

#: The paper's setup: 150 × 150, every 15th point, 2000 steps, 100 cycles.
FULL_SETUP = TwinSetup(n=150, steps=2000, every=20, stride=15, members=20, ensf_steps=100)

#: How the latent models are trained (runs from random bump positions, none the truth's;
#: ``every`` thins the saved steps). Latent grids of 4 x 10 x 10 = 400 values, the
#: published model's size: 4 x 4 patches at 40 x 40; 4 x 4 patches and two stride-2
#: stages at 150 x 150. ``time_budget`` (seconds) ends the run and shapes its schedule.
TRAINING = {
    "demo": {
        "runs": 300,
        "every": 10,
        "latent_dim": 400,
        "width": 64,
        "blocks": 2,
        "lam": 1e-4,
        "epochs": 400,
        "time_budget": 28 * 60,
        "precision": "bfloat16",
    },
    "full": {
        "runs": 200,
        "every": 20,
        "latent_dim": 400,
        "width": 64,
        "blocks": 2,
        "lam": 1e-3,
        "epochs": 200,
        "time_budget": 60 * 60,
        "precision": "bfloat16",
    },
}


def shipped_model_path() -> Path:
    """The latent model bundle shipped for :data:`DEMO_SETUP`."""
    return Path(str(resources.files("xensf") / "data" / "swe-demo.xensf"))


def method_options(
    method: str, setup: TwinSetup, errors: dict[str, float], model
) -> dict[str, Any]:
    """The keyword arguments :func:`xensf.cycle` gets for ``method``.

    From what the method is (:data:`xensf.bridge.methods.METHODS`): a latent model if it
    needs one, the observation errors if it takes them, the twin's localisation and
    inflation (fixed, or adaptive with its damping) for a localised LETKF on the real
    observations, the hybrid's blend test on accumulated evidence if the setup asks for
    it, the twin's step count for full-space EnSF; every other option at the method's
    default.
    """
    from dataclasses import fields

    from ..bridge.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    cls = METHODS[method]
    names = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {"method": method}
    if cls.needs_model:
        kwargs["latent_model"] = model
    kwargs["obs_error"] = errors
    if "loc_radius" in names and setup.letkf_adaptive_damping is None:
        kwargs.update(loc_radius=setup.letkf_radius, inflation=setup.letkf_inflation)
    elif "loc_radius" in names:
        from ..filters.adaptive_inflation import AdaptiveInflation

        adaptive = AdaptiveInflation(damping=setup.letkf_adaptive_damping)
        kwargs.update(loc_radius=setup.letkf_radius, adaptive_inflation=adaptive)
    if "blend_evidence" in names and setup.blend_evidence:
        kwargs["blend_evidence"] = 0.0
    if "steps" in names and not cls.needs_model:
        kwargs["steps"] = setup.ensf_steps
    return kwargs


def obs_mask(setup: TwinSetup, like: xr.DataArray) -> xr.DataArray:
    """The observed points of :func:`xensf.twin.observations` as a boolean (y, x) mask."""
    return xr.DataArray(observed_points(setup), dims=("y", "x"), coords={"y": like.y, "x": like.x})


def train_model(
    setup: TwinSetup,
    out: Path,
    kind: str,
    *,
    seed: int = 0,
    device=None,
    progress=True,
    **changes,
):
    """Train the latent model of ``setup`` on runs from random bump positions; save it.

    ``changes`` override entries of :data:`TRAINING` (e.g. ``time_budget``).
    """
    import xensf

    spec = {**TRAINING[kind], **changes}
    runs = spec.pop("runs")
    data = training_runs(setup, runs, every=spec.pop("every"), device=device)
    model = xensf.train_latent(
        data,
        obs_mask(setup, data),
        noise="10%",
        batch_size=64,
        lr=1e-3,
        seed=seed,
        device=device,
        progress=progress,
        **spec,
    )
    model.save(out)
    return model


def _write_zarr(ds: xr.Dataset, path: Path) -> None:
    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # zarr 3 notes that consolidated metadata is not in its v3 spec; xarray reads it
            warnings.filterwarnings(
                "ignore", message="Consolidated metadata", category=UserWarning
            )
            ds.to_zarr(tmp, mode="w")

    write_whole(path, write)


def _mean_over_second_half(curve: xr.DataArray) -> float:
    return float(curve.isel(time=slice(curve.sizes["time"] // 2, None)).mean())


def full_model(
    setup: TwinSetup, path: Path, *, device=None, train_budget: float | None = None
) -> Path:
    """The latent model of the paper-size setup at ``path``, trained there first unless
    it is there already (its training runs keep away from ``setup``'s truth);
    ``train_budget`` seconds, if given, replace :data:`TRAINING`'s time budget."""
    if not path.exists():
        budget = {} if train_budget is None else {"time_budget": train_budget}
        print(f"training the latent model for the full setup into {path} ...")
        path.parent.mkdir(parents=True, exist_ok=True)
        train_model(setup, path, "full", seed=setup.seed, device=device, **budget)
    elif train_budget is not None:
        print(f"reusing the latent model at {path} (the training budget does not apply)")
    return path


def run(args: argparse.Namespace) -> int:
    """Run the demo with the options parsed by :mod:`xensf.cli`."""
    setup = (FULL_SETUP if args.full else DEMO_SETUP).with_(prior=args.prior, seed=args.seed)
    for name in ("truth_position", "prior_position"):
        if getattr(args, name, None) is not None:
            setup = setup.with_(**{name: tuple(getattr(args, name))})
    noises = args.noise if args.noise is not None else ([0.0, 10.0, 20.0] if args.full else [10.0])
    minutes = getattr(args, "train_minutes", None)
    run_twin(
        setup,
        args.methods,
        noises,
        args.output,
        model=args.model,
        kind="full" if args.full else "demo",
        device=args.device,
        plot=not args.no_plot,
        train_budget=None if minutes is None else minutes * 60,
    )
    return 0


def run_twin(
    setup: TwinSetup,
    methods: Sequence[str],
    noises: Sequence[float],
    output: str | Path,
    *,
    model: Any = None,
    kind: str = "demo",
    device: str | None = None,
    plot: bool = True,
    train_budget: float | None = None,
) -> dict[str, Any]:
    """The twin experiment: every method cycled at every noise level; returns the summary.

    ``noises`` in per cent of each variable's std; ``model`` the latent model (a
    ``LatentModel`` or a bundle path) of the latent methods, by default the shipped one
    for ``kind="demo"`` and, for ``kind="full"``, one trained into ``output`` (reused
    when it is there; ``train_budget`` seconds, if given, replace :data:`TRAINING`'s time
    budget). Writes the truth, the free run and one zarr run per method and noise level,
    ``summary.json`` (the returned dict: the setup, the noise levels, the relative RMSE
    over the second half per method and noise, the seconds each took) and, with
    ``plot``, the figures into ``output``; prints the table.
    """
    import xensf
    from xensf.cycling.forecast import ShallowWaterForecaster

    started = time.perf_counter()
    out = Path(output)
    methods = list(methods)
    noises = [float(p) for p in noises]
    cfg = setup.config
    print(
        f"xensf {xensf.__version__} demo: planar shallow-water basin {setup.n}x{setup.n} "
        f"(L = {cfg.L / 1e3:g} km, H = {cfg.H:g} m, beta-plane), {setup.steps} steps of "
        f"{cfg.dt:.1f} s, analysis every {setup.every} steps ({setup.cycles} cycles); truth "
        f"from a bump at ({setup.truth_position[0]:.3g} L, {setup.truth_position[1]:.3g} L); "
        f"{setup.members} members, {setup.prior} prior"
        + (
            f" (bump at ({setup.prior_position[0]:.3g} L, {setup.prior_position[1]:.3g} L))."
            if setup.prior == "hard"
            else "."
        )
    )
    print(
        f"Observations: eta, u, v at every {setup.stride}th point in each direction "
        f"({(len(range(setup.stride // 2, setup.n, setup.stride))) ** 2} points, 1/"
        f"{setup.stride**2} of the grid); noise {', '.join(f'{p:g}%' for p in noises)} of "
        "each variable's std."
    )

    if not any(m.startswith("latent") for m in methods):
        model = None
    elif model is not None:
        model = model if isinstance(model, xensf.LatentModel) else xensf.load(model)
    elif kind == "full":
        out.mkdir(parents=True, exist_ok=True)
        path = full_model(setup, out / "swe-full.xensf", device=device, train_budget=train_budget)
        model = xensf.load(path)
    else:
        model = xensf.load(shipped_model_path())

    initial = initial_ensemble(setup, device=device)
    if model is not None:  # a model for other data is refused before the runs
        try:
            initial.ensf.encode(model, device=device)
        except (ObservationMismatchError, OptionError) as err:
            raise ObservationMismatchError(
                f"the latent model does not fit the {setup.n}x{setup.n} twin's data: {err}. "
                "scripts/make_demo_model.py trains one that does"
            ) from None
    out.mkdir(parents=True, exist_ok=True)
    from ..bridge.methods import METHODS

    owned = {n.replace("METHOD", m) for n in OUTPUTS for m in METHODS}
    removed = clear_previous(out, sorted(owned))
    if removed:
        print(f"replacing a previous run's outputs in {out}/ ({len(removed)} files and stores)")
    truth = truth_run(setup, device=device)
    scales = field_scales(truth)
    reference = truth.isel(time=slice(1, None))
    free = free_run(initial, setup, device=device)
    free_curve = relative_rmse(free, reference, scales)
    _write_zarr(truth, out / "truth.zarr")
    _write_zarr(free, out / "free-run.zarr")

    forecaster = ShallowWaterForecaster(cfg, device=device)
    curves: dict[str, dict[str, xr.DataArray]] = {}
    table: dict[str, dict[str, float]] = {"free run": {}}
    timings: dict[str, float] = {}
    last: dict[str, xr.Dataset] = {}
    weights: dict[str, xr.DataArray] = {}  # latent-ensf-letkf's blend weight per cycle
    for p in noises:
        label = f"{p:g}%"
        obs, errors = observations(truth, setup, p / 100)
        curves[label] = {"free run": free_curve}
        table["free run"][label] = _mean_over_second_half(free_curve)
        for method in methods:
            store = out / f"{method}-noise{p:g}.zarr"
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", xensf.ModelQualityWarning)
                result = xensf.cycle(
                    forecaster,
                    initial,
                    obs,
                    every=setup.every,
                    store=store,
                    seed=setup.seed,
                    device=device,
                    progress=True,
                    overwrite=True,
                    **method_options(method, setup, errors, model),
                )
            _report_quality_warnings(method, label, caught)
            timings[f"{method} {label}"] = time.perf_counter() - t0
            means = xr.Dataset({v: result[f"{v}_analysis_mean"] for v in ("eta", "u", "v")})
            curve = relative_rmse(means, reference, scales).compute()
            curves[label][method] = curve
            table.setdefault(method, {})[label] = _mean_over_second_half(curve)
            if label == f"{noises[len(noises) // 2]:g}%":
                last[method] = means.isel(time=-1).compute()
            if "blend_weight" in result:
                weights[label] = result.blend_weight.compute()

    _print_table(table, noises, timings, methods)
    summary = {
        "setup": setup.settings(),
        "noise_percent": noises,
        "relative_rmse_second_half": table,
        "seconds": timings,
    }
    if weights:  # how often the hybrid leaned on the latent analysis
        summary["latent-ensf-letkf_blended_cycles"] = {
            label: int((w.values > 0).sum()) for label, w in weights.items()
        }
    text = json.dumps(summary, indent=2)
    write_whole(out / "summary.json", lambda tmp: tmp.write_text(text))
    summary = json.loads(text)  # as written: JSON's lists for the setup's tuples
    print(f"wrote {out / 'summary.json'} and the zarr stores in {out}/")
    if plot:
        _figures(out, setup, curves, truth, free, last, noises, weights)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return summary


def _report_quality_warnings(method: str, label: str, caught) -> None:
    """The run's ModelQualityWarnings as lines of the printout, named by method and
    noise (``xensf.cycle`` sums each up once, with the number of cycles it came in);
    other warnings are shown as they are. (The line once counted the caught warnings,
    which the summary makes one: "at 1 of 50 analyses" for a warning of 45 cycles.)"""
    import xensf

    for w in caught:
        if issubclass(w.category, xensf.ModelQualityWarning):
            print(f"{method} {label}: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _print_table(table, noises, timings, methods) -> None:
    labels = [f"{p:g}%" for p in noises]
    width = max(len(m) for m in ["method", *table]) + 2
    print()
    print("relative RMSE of the ensemble mean, mean over the second half of the run")
    print(
        f"{'method':<{width}}"
        + "".join(f"{'noise ' + lab:>13}" for lab in labels)
        + f"{'time s':>10}"
    )
    for method, row in table.items():
        secs = sum(v for k, v in timings.items() if k.startswith(method + " "))
        best = [min(table[m][lab] for m in table) for lab in labels]
        cells = "".join(
            f"{row[lab]:>12.3f}{'*' if row[lab] == b else ' '}"
            for lab, b in zip(labels, best, strict=True)
        )
        print(f"{method:<{width}}{cells}{secs if method in methods else 0.0:>10.1f}")
    print(
        "(* lowest in its column; relative RMSE = ||(mean - truth)/s|| / ||truth/s||, s = std of each variable over the truth run)"
    )


def _figures(out, setup, curves, truth, free, last, noises, weights) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # matplotlib is an optional extra
        print("matplotlib not installed: no figures (pip install 'xensf[plots]')")
        return
    from ..plot import plot_blend_weight, plot_relative_rmse, plot_twin_maps

    title = f"Shallow water {setup.n}x{setup.n}, 1/{setup.stride**2} observed, {setup.prior} prior"
    path = write_whole(
        out / "relative-rmse.png", lambda tmp: plot_relative_rmse(curves, title=title, path=tmp)
    )
    print(f"wrote {path}")
    if weights:
        title = (
            f"latent-ensf-letkf: how far each cycle moved the prior towards the "
            f"latent analysis ({setup.prior} prior)"
        )
        path = write_whole(
            out / "blend-weight.png", lambda tmp: plot_blend_weight(weights, title=title, path=tmp)
        )
        print(f"wrote {path}")
    if not last:
        return
    t = next(iter(last.values()))["time"].values
    mask = obs_mask(setup, truth)
    label = f"{noises[len(noises) // 2]:g}%"
    for v in ("eta", "u", "v"):
        maps = partial(
            plot_twin_maps,
            truth[v].sel(time=t),
            free[v].sel(time=t).mean("member"),
            {m: a[v] for m, a in last.items()},
            mask,
            title=f"{v} at the last cycle ({str(t)[:19]}), noise {label}: ensemble means and errors",
        )
        path = write_whole(out / f"maps-{v}.png", lambda tmp, maps=maps: maps(path=tmp))
        print(f"wrote {path}")
