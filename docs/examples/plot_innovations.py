"""
Checking an analysis in observation space
=========================================

The same setting as the vertical-localisation example (ERA5 sample, member 0 as the
truth, 150 stations at 500 hPa with 0.1 K of noise, a 9-member LETKF). ``innovations``
puts the observations beside the forecast and the analysis at their points: O − B
(observation minus forecast mean) and O − A. A healthy analysis has O − A smaller than
O − B; the Desroziers et al. (2005) figures compare what the filter assumed with what
the data show: E[(O − B)²] against σ_b² + σ_o², and E[(O − B)(O − A)] against σ_o².
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
lat, lon = rng.uniform(-60, 60, 150), rng.uniform(0, 357, 150)
at_500 = truth.sel(level=[500.0]).interp(
    latitude=xr.DataArray(lat, dims="station"), longitude=xr.DataArray(lon, dims="station")
)
obs = xr.Dataset(
    {"t": at_500 + 0.1 * rng.standard_normal(at_500.shape)},
    coords={"lat": ("station", lat), "lon": ("station", lon)},
).drop_vars(["latitude", "longitude"])

options = dict(obs_error=0.1, obs_dim="station")
analysis = forecast.ensf.assimilate(
    obs, method="letkf", loc_radius=600.0, vertical_radius=0.2, **options
)
diag = forecast.ensf.innovations(obs, analysis, **options)

# %%
# O − B against O − A at every station: the analysis pulls towards the observations.
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
omb, oma = diag.omb.values.ravel(), diag.oma.values.ravel()
left.scatter(omb, oma, s=10)
edge = 1.1 * np.abs(omb).max()
left.plot([-edge, edge], [-edge, edge], "k:", lw=0.8)
left.set_xlabel("O − B [K]")
left.set_ylabel("O − A [K]")
bins = np.linspace(-edge, edge, 25)
right.hist(omb, bins=bins, alpha=0.6, label="O − B")
right.hist(oma, bins=bins, alpha=0.6, label="O − A")
right.set_xlabel("K")
right.legend()
fig.tight_layout()
plt.show()

# %%
# The Desroziers consistency figures, from the attributes of ``diag``.
a = diag.attrs
print(f"RMS O - B {np.sqrt(a['t_mean_omb_squared']):.3f} K, RMS O - A "
      f"{np.sqrt(np.mean(oma**2)):.3f} K over {a['t_count']} stations")  # fmt: skip
print(f"E[(O-B)^2] = {a['t_mean_omb_squared']:.4f} against the assumed "
      f"sigma_b^2 + sigma_o^2 = {a['t_mean_prior_plus_obs_variance']:.4f}")  # fmt: skip
print(f"E[(O-B)(O-A)] = {a['t_mean_omb_times_oma']:.4f} against the assumed "
      f"sigma_o^2 = {a['t_mean_obs_variance']:.4f}")  # fmt: skip
