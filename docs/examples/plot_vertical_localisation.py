"""
Stations at 500 hPa, with and without vertical localisation
===========================================================

Member 0 of the real ERA5 ensemble sample plays the truth; 150 stations observe its
temperature at 500 hPa (with 0.1 K of noise); the other nine members are the forecast.
The LETKF with a 600 km horizontal localisation moves the 500 hPa field towards the
stations. Without vertical localisation it moves 850 hPa with the same weights; with
``vertical_radius=0.2`` (in ln p: the weight is zero beyond 0.4, and
ln(850/500) = 0.53) the 850 hPa field keeps its forecast.
"""

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

import xensf
import xensf.era5

ds = xensf.era5.open("era5_sample", variables=["t"]).isel(time=[0]).load()
truth = ds.t.isel(member=0)
forecast = ds.isel(member=slice(1, None))

rng = np.random.default_rng(0)
lat = rng.uniform(-60, 60, 150)
lon = rng.uniform(0, 357, 150)
at_500 = truth.sel(level=[500.0]).interp(
    latitude=xr.DataArray(lat, dims="station"), longitude=xr.DataArray(lon, dims="station")
)
obs = xr.Dataset(
    {"t": at_500 + 0.1 * rng.standard_normal(at_500.shape)},
    coords={"lat": ("station", lat), "lon": ("station", lon)},
).drop_vars(["latitude", "longitude"])

options = dict(method="letkf", obs_error=0.1, loc_radius=600.0, obs_dim="station")
plain = forecast.ensf.assimilate(obs, **options)
vertical = forecast.ensf.assimilate(obs, vertical_radius=0.2, **options)

# %%
# The increments (analysis mean minus forecast mean) at both levels.
fig, axes = plt.subplots(2, 2, figsize=(10, 5.5), sharex=True, sharey=True)
limit = 0.5
for row, (label, analysis) in enumerate([("no vertical localisation", plain),
                                         ("vertical_radius=0.2", vertical)]):  # fmt: skip
    increment = (analysis.t - forecast.t).mean("member").isel(time=0)
    for col, level in enumerate([500.0, 850.0]):
        ax = axes[row, col]
        mesh = ax.pcolormesh(ds.longitude, ds.latitude, increment.sel(level=level),
                             cmap="RdBu_r", vmin=-limit, vmax=limit, shading="auto")  # fmt: skip
        ax.scatter(lon, lat, s=6, c="k")
        ax.set_title(f"{label}: {level:g} hPa", fontsize=10)
fig.colorbar(mesh, ax=axes, label="increment of t [K]")
plt.show()

# %%
# How much each level moved, and the error of the forecast and the analysis against
# the truth at 500 hPa.
for label, analysis in [("no vertical localisation", plain), ("vertical_radius=0.2", vertical)]:
    moved = abs(analysis.t - forecast.t).mean("member").max(["latitude", "longitude", "time"])
    print(f"{label:26} largest change: 500 hPa {float(moved.sel(level=500.0)):.2f} K, "
          f"850 hPa {float(moved.sel(level=850.0)):.2f} K")  # fmt: skip
stations = dict(latitude=xr.DataArray(lat, dims="station"),
                longitude=xr.DataArray(lon, dims="station"))  # fmt: skip
for name, ensemble in [("forecast", forecast), ("analysis", vertical)]:
    mean = ensemble.t.mean("member").sel(level=500.0).isel(time=0)
    at_stations = float(
        np.sqrt(((mean.interp(stations) - at_500.isel(level=0, time=0)) ** 2).mean())
    )
    everywhere = float(np.sqrt(((mean - truth.sel(level=500.0).isel(time=0)) ** 2).mean()))
    print(f"{name:8} RMSE at 500 hPa: {at_stations:.3f} K at the stations, "
          f"{everywhere:.3f} K over the globe")  # fmt: skip
