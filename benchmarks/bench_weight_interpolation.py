"""Weight interpolation (Yang et al. 2009): the LETKF error it costs against the time it saves.

A synthetic global prior on a regular latitude/longitude grid (smooth random members,
``--members``), a smooth truth, ``--stations`` stations with unit-variance noise, LETKF
with Gaspari–Cohn half-width ``--radius`` km. For each ``weight_stride`` the analysis is
timed (best of ``--repeat``, after a warm-up) and compared with the full one (stride 1):
the RMS difference of the analysis means relative to the RMS increment, and the RMSE of
the analysis mean against the truth.

    python benchmarks/bench_weight_interpolation.py             # 1° grid, a minute or two
    python benchmarks/bench_weight_interpolation.py --quick     # 4° grid, seconds
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter

import xensf  # noqa: F401  (the .ensf accessor)


def _case(resolution: float, members: int, stations: int, seed: int = 0):
    r = np.random.default_rng(seed)
    lat = np.arange(-90 + resolution / 2, 90, resolution)
    lon = np.arange(0, 360, resolution)
    sigma = 4.0 / resolution  # a correlation length of about 4 degrees

    def smooth(n):
        return gaussian_filter(r.standard_normal((n, lat.size, lon.size)), sigma, mode="wrap")

    fields = smooth(members + 1)
    fields /= fields.std()
    prior = xr.Dataset(
        {"t": (("member", "lat", "lon"), (280 + 2 * fields[1:]).astype("float32"), {"units": "K"})},
        coords={"lat": lat, "lon": lon},
    )  # fmt: skip
    truth = xr.DataArray(280 + 2 * fields[0], dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    slat, slon = r.uniform(-85, 85, stations), r.uniform(0, 359, stations)
    at = truth.interp(lat=xr.DataArray(slat, dims="s"), lon=xr.DataArray(slon, dims="s"))
    obs = xr.Dataset(
        {"t": ("s", at.values + 0.5 * r.standard_normal(stations), {"units": "K"})},
        coords={"lat": ("s", slat), "lon": ("s", slon)},
    )
    return prior, obs, truth


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.0, help="degrees")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--stations", type=int, default=3000)
    parser.add_argument("--radius", type=float, default=500.0, help="km (Gaspari-Cohn c)")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.stations, args.strides, args.repeat = 4.0, 300, [1, 2, 3], 1
    warnings.simplefilter("ignore")
    prior, obs, truth = _case(args.resolution, args.members, args.stations)
    options = dict(method="letkf", obs_error=0.5, loc_radius=args.radius, obs_dim="s")
    prior.ensf.assimilate(obs, **options)  # warm-up: imports, first-call costs

    print(f"LETKF, {prior.sizes['lat']} x {prior.sizes['lon']} grid ({args.resolution:g} deg), "
          f"{args.members} members, {args.stations} stations, c = {args.radius:g} km; "
          f"best of {args.repeat}")  # fmt: skip
    print(
        "| weight_stride | anchors | time [s] | speed-up | difference / increment | RMSE vs truth |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    reference = base = increment = None
    for stride in args.strides:
        best = np.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            analysis = prior.ensf.assimilate(obs, weight_stride=stride, **options)
            best = min(best, time.perf_counter() - start)
        mean = analysis.t.mean("member")
        if reference is None:
            reference, base = mean, best
            increment = float(np.sqrt(((mean - prior.t.mean("member")) ** 2).mean()))
        difference = float(np.sqrt(((mean - reference) ** 2).mean())) / increment
        rmse = float(np.sqrt(((mean - truth) ** 2).mean()))
        nlat, nlon = prior.sizes["lat"], prior.sizes["lon"]
        anchors = len(set(range(0, nlat, stride)) | {nlat - 1}) * len(
            set(range(0, nlon, stride)) | {nlon - 1}
        )
        print(f"| {stride} | {anchors} | {best:.2f} | {base / best:.1f} | {difference:.3f} | "
              f"{rmse:.3f} |", flush=True)  # fmt: skip
    prior_rmse = float(np.sqrt(((prior.t.mean("member") - truth) ** 2).mean()))
    print(f"prior mean RMSE vs truth: {prior_rmse:.3f}")


if __name__ == "__main__":
    main()
