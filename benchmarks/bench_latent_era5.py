"""Latent-EnSF on the real ERA5 ensemble sample, one held-out analysis time at a time.

The sample (``xensf.open_era5_sample()``) holds 10 members × 4 times of z and t at 850
and 500 hPa on a 3° grid (61 × 120). For each held-out time ``k`` a latent model is
trained with ``train_latent`` on *all members of the other three times* (30 states;
training never sees time ``k``, so neither its truth nor its prior); at time ``k``
member 0 is the truth and members 1–9 are the prior. The truth is observed at every
8th point in each direction (8 × 15 points per field, about 1/64) with noise (10 % of
each field's spatial standard deviation by default), and the prior is updated by
EnSF, LETKF, Latent-EnSF, latent LETKF (each latent one also with the
``"increment"`` update) and the Latent-EnSF + LETKF hybrid through
``prior.ensf.assimilate``.

The table gives, per method, the RMSE of the ensemble mean against the truth for each
field, divided by the prior's RMSE (< 1: the analysis is closer to the truth than the
prior), averaged over the four held-out times, plus the raw prior RMSE.

This is a smoke test of the pipeline on real data, not a skill assessment: 30
training states cannot teach a VAE the atmosphere's variability, and the ERA5
ensemble spread is far smaller than a 10 % observation error, so the prior is already
closer to the truth than the observations are.

LETKF and the hybrid use ``--loc-radius`` (default 300 km, one grid spacing: the best
radius for these 9 members in ``bench_loc_radius.py``) and variable localisation
(``cross_variable=False``: with 9 members, t's precise observations would otherwise
move z through sampled covariances; ``--cross-variable`` turns it off). Before the table, the
withheld-observation scores of ``prior.ensf.cross_validate`` for the LETKF's radius among
``--cv-radii`` are printed per held-out time: what a user without the truth would see.

    python benchmarks/bench_latent_era5.py [--noise 10%] [--loc-radius 300] [--cross-variable]
        [--cv-radii 300 600 1200 3000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr

import xensf
from xensf.bridge.training import train_latent

STRIDE = 8


def observe(truth: xr.Dataset, fraction: float, rng: np.random.Generator) -> xr.Dataset:
    """Every STRIDE-th point of each field with noise ``fraction`` × its spatial std."""
    mask = xr.zeros_like(truth["z"].isel(isobaricInhPa=0, drop=True), dtype=bool)
    mask[..., ::STRIDE, ::STRIDE] = True
    obs = xr.Dataset(coords=truth.coords)
    for name in ("z", "t"):
        da = truth[name]
        std = fraction * da.std(("latitude", "longitude"))
        noisy = da + std * xr.DataArray(rng.standard_normal(da.shape), dims=da.dims)
        obs[name] = noisy.where(mask).astype(np.float32).assign_attrs(units=da.attrs["units"])
    return obs


def field_rmse(state: xr.Dataset, truth: xr.Dataset) -> dict[str, float]:
    """RMSE of the ensemble mean per (variable, level), latitude-weighted."""
    weights = np.cos(np.deg2rad(truth.latitude))
    out = {}
    for name in ("z", "t"):
        mean = state[name].mean("number") if "number" in state[name].dims else state[name]
        sq = ((mean - truth[name]) ** 2).weighted(weights).mean(("latitude", "longitude", "time"))
        for level, value in zip(truth.isobaricInhPa.values, np.sqrt(sq.values), strict=True):
            out[f"{name}{int(level)}"] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", default="10%", help="observation noise, 'P%%' (default 10%%)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loc-radius", type=float, default=300.0, help="LETKF radius, km")
    parser.add_argument(
        "--cross-variable", action="store_true",
        help="let observations of one variable update the others (no variable localisation)",
    )  # fmt: skip
    parser.add_argument(
        "--cv-radii", nargs="*", type=float, default=[300.0, 600.0, 1200.0, 3000.0],
        help="radii (km) to cross-validate on withheld observations; none: skip",
    )  # fmt: skip
    args = parser.parse_args()
    fraction = float(args.noise.rstrip("%")) / 100

    ds = xensf.open_era5_sample().load()
    localisation = dict(loc_radius=args.loc_radius, cross_variable=args.cross_variable)
    methods = {
        "ensf": dict(method="ensf", obs_error=args.noise),
        "letkf": dict(method="letkf", obs_error=args.noise, **localisation),
        "latent-ensf": dict(),
        "latent-letkf": dict(method="latent-letkf"),
        "latent-ensf (increment)": dict(update="increment"),
        "latent-letkf (increment)": dict(method="latent-letkf", update="increment"),
        "latent-ensf-letkf": dict(
            method="latent-ensf-letkf", obs_error=args.noise, **localisation
        ),
    }
    ratios: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    prior_rmse, spread, train_s, obs_std, cv_scores = [], [], [], [], []
    for k in range(ds.sizes["time"]):
        others = [i for i in range(ds.sizes["time"]) if i != k]
        start = time.perf_counter()
        model = train_latent(
            ds.isel(time=others),
            STRIDE,
            noise=args.noise,
            latent_dim=16,  # 2 x 2 x 4 on the 61 x 120 grid (patch 4, 3 stride-2 stages)
            width=8,
            blocks=1,
            epochs=args.epochs,
            batch_size=8,
            lr=2e-3,
            val_fraction=0.1,
            patience=15,
            seed=args.seed,
            device=args.device,
            progress=False,
        )
        train_s.append(time.perf_counter() - start)
        at_k = ds.isel(time=[k])
        truth = at_k.isel(number=0, drop=True)
        prior = at_k.isel(number=slice(1, None))
        obs = observe(truth, fraction, np.random.default_rng(args.seed + k))
        if args.cv_radii:
            cv = prior.ensf.cross_validate(
                obs, {"loc_radius": args.cv_radii}, method="letkf", obs_error=args.noise,
                cross_variable=args.cross_variable, seed=args.seed, progress=False,
            )  # fmt: skip
            picks = (cv.attrs["best_setting"], cv.attrs["one_se_setting"])
            cv_scores.append((cv.score.values, [args.cv_radii[i] for i in picks]))
        base = field_rmse(prior, truth)
        prior_rmse.append(base)
        spread.append(
            {
                f"{n}{int(lev)}": float(prior[n].sel(isobaricInhPa=lev).std("number").mean())
                for n in ("z", "t")
                for lev in ds.isobaricInhPa.values
            }
        )
        obs_std.append(
            {
                f"{n}{int(lev)}": fraction
                * float(truth[n].sel(isobaricInhPa=lev).std(("latitude", "longitude")).mean())
                for n in ("z", "t")
                for lev in ds.isobaricInhPa.values
            }
        )
        # the autoencoder's own floor: prior members encoded and decoded, no observations
        order = ("time", "number", "isobaricInhPa", "latitude", "longitude")
        members = np.stack([prior[n].transpose(*order).values for n in ("z", "t")], axis=2)
        flat = members.reshape(-1, 4, *members.shape[-2:])  # channels z850 z500 t850 t500
        round_trip = model.decode(model.encode(flat)[0]).cpu().numpy().reshape(members.shape)
        rt = prior.copy()
        for i, n in enumerate(("z", "t")):
            rt[n] = (order, round_trip[:, :, i])
        err = field_rmse(rt, truth)
        ratios.setdefault("VAE round trip", []).append({f: err[f] / base[f] for f in base})
        for name, kwargs in methods.items():
            if name.startswith("latent"):
                kwargs = {**kwargs, "model": model}
            post = prior.ensf.assimilate(obs, seed=args.seed, device=args.device, **kwargs)
            err = field_rmse(post, truth)
            ratios[name].append({f: err[f] / base[f] for f in base})

    fields = list(prior_rmse[0])

    def avg(rows, f):
        return float(np.mean([r[f] for r in rows]))

    print(
        f"ERA5 sample, leave-one-time-out: 30 training states per model "
        f"({np.mean(train_s):.1f} s each), 9-member prior, observations every "
        f"{STRIDE}th point with {args.noise} noise; LETKF radius {args.loc_radius:g} km, "
        f"cross_variable={args.cross_variable}"
    )
    if cv_scores:
        print(
            "\nLETKF cross-validation (prior.ensf.cross_validate, 4 folds): RMS(O - A) / "
            "RMS(O - B) at withheld observations, mean over z and t"
        )
        print(
            f"{'loc_radius [km]':<22}" + "".join(f"{r:>10g}" for r in args.cv_radii)
            + f"{'best':>8}{'1-SE':>8}"
        )  # fmt: skip
        for k, (scores, picks) in enumerate(cv_scores):
            print(
                f"{f'held-out time {k}':<22}" + "".join(f"{v:>10.3f}" for v in scores)
                + "".join(f"{r:>8g}" for r in picks)
            )  # fmt: skip
    print(f"\n{'':<22}" + "".join(f"{f:>10}" for f in fields))
    print(f"{'prior RMSE':<22}" + "".join(f"{avg(prior_rmse, f):>10.3g}" for f in fields))
    print(f"{'prior spread':<22}" + "".join(f"{avg(spread, f):>10.3g}" for f in fields))
    print(f"{'observation error':<22}" + "".join(f"{avg(obs_std, f):>10.3g}" for f in fields))
    print("\nRMSE of the ensemble mean / prior RMSE (mean over the 4 held-out times):")
    print(f"{'method':<22}" + "".join(f"{f:>10}" for f in fields))
    for name, rows in ratios.items():
        print(f"{name:<22}" + "".join(f"{avg(rows, f):>10.3f}" for f in fields))


if __name__ == "__main__":
    main()
