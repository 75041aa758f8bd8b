"""
The shallow-water demo, shortened
=================================

What ``xensf demo`` runs, on a fifth of its length: a 1 m bump in a 1000 km basin
(40 × 40 cells), η, u and v observed at every 4th point with 10 % noise, a 20-member
forecast started from a bump in the wrong place ("hard" prior: the ensemble does not
contain the displacement). Latent-EnSF with the shipped latent model, full-space EnSF
and LETKF each cycle it 20 times; ``run_twin`` writes the zarr runs, the table and the
figures shown below. The full demo (50 cycles, three noise levels, both priors) and
its numbers are in docs/benchmarks.md.
"""

import dataclasses
import tempfile
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt

from xensf.experiments.demo_swe import DEMO_SETUP, run_twin

out = Path(tempfile.mkdtemp(prefix="xensf-demo-"))
summary = run_twin(
    dataclasses.replace(DEMO_SETUP, steps=200), ["latent-ensf", "ensf", "letkf"], [10], out
)

# %%
# The relative error of each ensemble mean along the run, and the maps of η at the end.
for name in ("relative-rmse.png", "maps-eta.png"):
    image = mpimg.imread(out / name)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 110, image.shape[0] / 110))
    ax.imshow(image)
    ax.axis("off")
plt.show()
