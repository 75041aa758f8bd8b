"""``xensf demo-era5``: sparse observations assimilated into the real ERA5 ensemble sample.

Member 0 of the packaged sample is the truth, the other members the prior; synthetic
observations of the truth (every k-th grid point, or random stations) are assimilated
with EnSF and LETKF, and the error at, next to and away from the observations is
printed, written and drawn.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np

from .outputs import clear_previous, write_whole

__all__ = ["DEMO_OBS_ERROR", "DEMO_OPTIONS", "run", "synthetic_obs"]

#: Observation-error standard deviations of the demo, in the state's units: about
#: 0.7 and 0.3 of the prior ensemble's spread at 500/850 hPa for z and t.
DEMO_OBS_ERROR = {"z": 10.0, "t": 0.1}
# LETKF: one grid spacing (the best radius for these 9 members, docs/method.md) and each
# variable from its own observations (variable localisation: 9 members sample the
# covariances between z and t poorly)
DEMO_OPTIONS = {"ensf": {}, "letkf": {"loc_radius": 300.0, "cross_variable": False}}

#: The names the demo writes in its output folder, all replaced by a rerun there.
OUTPUTS = (
    *(f"analysis-{method}.nc" for method in DEMO_OPTIONS),
    "demo-z500.png",
    "demo-t850.png",
    "demo-skill.png",
)


def synthetic_obs(truth, rng, kind: str = "gridded", stride: int = 4, stations: int = 200):
    """Observations of ``truth`` plus Gaussian noise of :data:`DEMO_OBS_ERROR`: ``kind``
    ``"gridded"`` every ``stride``-th point, or ``"points"`` at ``stations`` random
    places; also the grid points observed (or nearest a station), for the scores."""
    import xarray as xr

    noisy = truth.copy(deep=True)
    for name, sigma in DEMO_OBS_ERROR.items():
        noisy[name] = truth[name] + rng.normal(0.0, sigma, truth[name].shape).astype(
            truth[name].dtype
        )
    if kind == "gridded":
        k = stride
        obs = noisy.isel(latitude=slice(1, None, k), longitude=slice(0, None, k)).reindex_like(
            truth
        )
        observed = obs["z"].isel(time=0, isobaricInhPa=0, drop=True).notnull()
        return obs, observed
    lats = rng.uniform(-88.0, 88.0, stations)
    lons = rng.uniform(-180.0, 180.0, stations)
    obs = noisy.interp(
        latitude=xr.DataArray(lats, dims="station"),
        longitude=xr.DataArray(np.mod(lons, 360.0), dims="station"),
    ).drop_vars(["latitude", "longitude"])
    obs = obs.assign_coords(lat=("station", lats), lon=("station", lons))
    # mark the grid point nearest each station, for the table and the maps
    lat_idx = np.abs(truth.latitude.values[:, None] - lats).argmin(0)
    lon_idx = np.abs(truth.longitude.values[:, None] - np.mod(lons, 360.0)).argmin(0)
    observed = xr.zeros_like(truth["z"].isel(time=0, isobaricInhPa=0, drop=True), dtype=bool)
    observed.values[lat_idx, lon_idx] = True
    return obs, observed


def _neighbourhood(observed):
    """Observed points and their 8 grid neighbours (longitude wraps)."""
    near = observed.values.copy()
    for dlat in (-1, 0, 1):
        for dlon in (-1, 0, 1):
            shifted = np.roll(observed.values, dlon, axis=1)
            shifted = np.roll(shifted, dlat, axis=0)
            if dlat == 1:
                shifted[0] = False
            if dlat == -1:
                shifted[-1] = False
            near |= shifted
    return observed.copy(data=near)


def run(args: argparse.Namespace) -> int:
    """Run the ERA5 demo with the options parsed by :mod:`xensf.cli`."""

    import xensf
    from xensf.metrics import area_weights, ensemble_rmse, mean_spread

    started = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    removed = clear_previous(out, OUTPUTS)
    if removed:
        print(f"replacing a previous run's outputs in {out}/ ({len(removed)} files)")
    ds = xensf.open_era5_sample().load()
    truth = ds.isel(number=0, drop=True)
    prior = ds.isel(number=slice(1, None))
    rng = np.random.default_rng(args.seed)
    obs, observed = synthetic_obs(truth, rng, args.obs, args.stride, args.stations)
    near = _neighbourhood(observed)
    n_obs = int(obs["z"].isel(time=0).count()) if args.obs == "gridded" else args.stations * 2
    print(
        f"xensf {xensf.__version__} demo: real ERA5 ensemble sample (Copernicus C3S), "
        f"{prior.sizes['number']} members as prior, member 0 as truth; "
        f"{prior.sizes['time']} analysis times; z and t at {prior.sizes['isobaricInhPa']} levels "
        f"on a {prior.sizes['latitude']}x{prior.sizes['longitude']} grid."
    )
    print(
        f"Observations: {args.obs}"
        + (
            f" every {args.stride}th point in each direction"
            if args.obs == "gridded"
            else f" at {args.stations} random stations"
        )
        + f", {n_obs} values per variable and time, error std z {DEMO_OBS_ERROR['z']} m2 s-2, "
        f"t {DEMO_OBS_ERROR['t']} K, seed {args.seed}."
    )
    analyses = {}
    for method in args.methods:
        t0 = time.perf_counter()
        print(f"  {method:6s} ...", end="", flush=True)
        analyses[method] = prior.ensf.assimilate(
            obs, method=method, obs_error=DEMO_OBS_ERROR, seed=args.seed, **DEMO_OPTIONS[method]
        ).compute()
        print(f" {time.perf_counter() - t0:5.1f} s")

    rows = []
    skill: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("z", "t"):
        units = prior[name].attrs.get("units", "")
        for label, ens in [("prior", prior), *analyses.items()]:
            skill.setdefault(name, {})[label] = {
                "at obs": ensemble_rmse(ens[name], truth[name], "number", observed),
                "next to obs": ensemble_rmse(ens[name], truth[name], "number", near & ~observed),
                "global": float(
                    ensemble_rmse(
                        ens[name],
                        truth[name],
                        "number",
                        dims=list(truth[name].dims),
                        weights=area_weights(truth["latitude"]),
                    )
                ),
            }
            rows.append(
                (
                    f"{name} [{units}]",
                    label,
                    *skill[name][label].values(),
                    mean_spread(ens[name], "number", observed),
                )
            )
    header = (
        "variable",
        "ensemble",
        "RMSE at obs",
        "RMSE next to obs",
        "RMSE global",
        "spread at obs",
    )
    widths = [14, 9, 12, 16, 12, 13]
    print()
    print(
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [f"{v:{w}.4g}" for v, w in zip(row[2:], widths[2:], strict=True)]
        print("  ".join(cells))
    print(
        "\nRMSE of the ensemble mean against the truth member: at obs and next to obs (the 8 "
        "grid neighbours of observed points) over those points, global weighted by "
        "cos(latitude), the area of each grid row."
    )

    for method, analysis in analyses.items():
        path = write_whole(out / f"analysis-{method}.nc", analysis.to_netcdf)
        print(f"wrote {path}")
    if not args.no_plot:
        try:
            from xensf.plot import plot_analysis_maps, plot_skill_bars
        except ImportError:  # pragma: no cover - matplotlib is an optional extra
            print("matplotlib not installed: no figures (pip install 'xensf[plots]')")
        else:
            for name, level in (("z", 500.0), ("t", 850.0)):
                sel = {
                    "time": 0,
                    "isobaricInhPa": prior.isobaricInhPa.values.tolist().index(level),
                }
                maps = partial(
                    plot_analysis_maps,
                    truth[name].isel(sel),
                    prior[name].isel(sel),
                    {m: a[name].isel(sel) for m, a in analyses.items()},
                    observed,
                    member_dim="number",
                    title=f"{name} at {level:g} hPa, {str(prior.time.values[0])[:16]}: "
                    "truth and ensemble-mean errors",
                )
                path = write_whole(
                    out / f"demo-{name}{level:g}.png", lambda tmp, maps=maps: maps(path=tmp)
                )
                print(f"wrote {path}")
            title = "Error of the ensemble mean relative to the prior (all levels and times)"
            path = write_whole(
                out / "demo-skill.png", lambda tmp: plot_skill_bars(skill, title=title, path=tmp)
            )
            print(f"wrote {path}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
