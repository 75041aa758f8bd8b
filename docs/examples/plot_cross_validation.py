"""
Choosing the LETKF's localisation radius from withheld observations
====================================================================

Member 0 of the real ERA5 ensemble sample plays the truth; 200 stations observe its
geopotential and temperature at both levels (with the ERA5 demo's errors); the other
nine members are the forecast. Which localisation radius? ``cross_validate`` answers
without the truth: it withholds a quarter of the stations at a time, analyses the
forecast with the rest for each radius, and scores how well the analysis predicts the
withheld ones (below 1: better than the forecast), and takes the smallest radius whose
score is within one standard error of the lowest. Then the truth checks the choice.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np

import xensf
from xensf.experiments.demo_era5 import DEMO_OBS_ERROR, synthetic_obs
from xensf.plot import plot_cross_validation

warnings.simplefilter("ignore", xensf.XensfWarning)
ds = xensf.open_era5_sample().isel(time=[0]).load()
truth = ds.isel(number=0, drop=True)
forecast = ds.isel(number=slice(1, None))
obs, _ = synthetic_obs(truth, np.random.default_rng(0), "points", 4, 200)

radii = [150.0, 300.0, 600.0, 1200.0]
cv = forecast.ensf.cross_validate(
    obs, {"loc_radius": radii}, method="letkf", obs_error=DEMO_OBS_ERROR, progress=False
)
chosen = cv.loc_radius.values[cv.attrs["one_se_setting"]]
print(f"withheld-observation scores {np.round(cv.score.values, 3)}: chosen {chosen:g} km")

# %%
# The scores per variable, and their mean.
path = plot_cross_validation(cv, title="200 stations, 9 members", path="cross_validation.png")
plt.imshow(plt.imread(path))
plt.axis("off")
plt.show()

# %%
# The truth's verdict: the analysis error over the whole grid, relative to the
# forecast's, for each radius (cos-latitude weighted, z and t averaged).
before = forecast.ensf.rmse(truth)
for radius in radii:
    analysis = forecast.ensf.assimilate(
        obs, method="letkf", obs_error=DEMO_OBS_ERROR, loc_radius=radius
    )
    after = analysis.ensf.rmse(truth)
    ratio = np.mean([float((after[v] / before[v]).mean()) for v in truth.data_vars])
    print(f"loc_radius {radius:6g} km: analysis / forecast RMSE {ratio:.3f}")
