"""LETKF localisation on the real ERA5 ensemble sample: which radius, and none at all.

Member 0 of the packaged sample (``xensf.open_era5_sample``) is the truth, the other
members the prior; observations of the truth with the ERA5 demo's errors
(``xensf.experiments.demo_era5.synthetic_obs``), gridded every ``--stride``-th point or at
``--stations`` random stations, are assimilated with ``method="letkf"`` for each
``loc_radius``: ``None`` (a global ETKF) and the radii in km of ``--radii``.
Prints, per setting, the RMSE of the analysis mean over the prior mean's, at the
observed grid points and everywhere (cos-latitude weighted), and the spread-skill ratio
of the analysis everywhere. With ``--cross-validate``, also the score
``prior.ensf.cross_validate`` gives each radius without the truth (RMS(O − A) / RMS(O − B)
at withheld observations, 4 folds): does it pick the radius the truth picks?

    python benchmarks/bench_loc_radius.py [--radii 150 300 600 1200 2400] [--seeds 0 1]
        [--stride 4] [--cross-validate]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

import xensf
from xensf.experiments.demo_era5 import DEMO_OBS_ERROR, synthetic_obs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--radii", nargs="+", type=float, default=[150.0, 300.0, 600.0, 1200.0, 2400.0]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--cross-validate", action="store_true")
    args = parser.parse_args()

    ds = xensf.open_era5_sample().load()
    truth = ds.isel(number=0, drop=True)
    prior = ds.isel(number=slice(1, None))
    settings = [None, *args.radii]
    print(
        f"ERA5 sample: {prior.sizes['number']} members, grid {truth.sizes['latitude']} x "
        f"{truth.sizes['longitude']}, variables {list(truth.data_vars)}; ratios are "
        "analysis RMSE / prior RMSE (mean over variables and seeds)"
    )
    print(
        f"{'observations':<14}{'loc_radius':>12}{'at obs':>10}{'everywhere':>12}"
        f"{'spread/skill':>14}" + (f"{'withheld':>10}" if args.cross_validate else "")
    )
    for kind in ("gridded", "points"):
        rows: dict[str, list[tuple[float, ...]]] = {}
        for seed in args.seeds:
            obs, observed = synthetic_obs(
                truth, np.random.default_rng(seed), kind, args.stride, args.stations
            )
            before = prior.ensf.rmse(truth)
            before_obs = prior.where(observed).ensf.rmse(truth.where(observed))
            withheld = np.full(len(settings), np.nan)
            if args.cross_validate:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", xensf.XensfWarning)
                    withheld = prior.ensf.cross_validate(
                        obs, {"loc_radius": settings}, method="letkf", obs_error=DEMO_OBS_ERROR,
                        seed=seed, progress=False,
                    ).score.values  # fmt: skip
            for radius, cv_score in zip(settings, withheld, strict=True):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", xensf.XensfWarning)
                    post = prior.ensf.assimilate(
                        obs, method="letkf", obs_error=DEMO_OBS_ERROR, loc_radius=radius
                    )
                after = post.ensf.rmse(truth)
                after_obs = post.where(observed).ensf.rmse(truth.where(observed))
                ratio = np.mean([float((after[v] / before[v]).mean()) for v in truth.data_vars])
                ratio_obs = np.mean(
                    [float((after_obs[v] / before_obs[v]).mean()) for v in truth.data_vars]
                )
                ss = post.ensf.spread_skill(truth)
                skill = np.mean([float(ss[v].mean()) for v in truth.data_vars])
                label = (
                    "auto" if radius == "auto" else "none" if radius is None else f"{radius:g} km"
                )
                rows.setdefault(label, []).append((ratio_obs, ratio, skill, cv_score))
        for label, values in rows.items():
            at_obs, everywhere, skill, cv_score = np.mean(values, axis=0)
            cv = f"{cv_score:>10.3f}" if args.cross_validate else ""
            print(f"{kind:<14}{label:>12}{at_obs:>10.3f}{everywhere:>12.3f}{skill:>14.2f}{cv}")


if __name__ == "__main__":
    main()
