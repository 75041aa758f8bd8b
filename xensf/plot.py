"""Figures of an analysis: what the truth was, what the prior and the analysis made of it.

Needs matplotlib (``pip install "xensf[plots]"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_analysis_maps"]


def plot_analysis_maps(
    truth: xr.DataArray,
    prior: xr.DataArray,
    analyses: dict[str, xr.DataArray],
    observed: xr.DataArray,
    *,
    member_dim: str,
    title: str,
    path: str | Path,
) -> Path:
    """Truth, then the error of the prior mean and of each analysis mean, as maps.

    All arguments are 2-D (latitude × longitude) except ``prior`` and ``analyses``,
    which have the member dim too. Error maps share one symmetric colour scale, so
    a reader sees at a glance where each method reduced the error; observed points
    are marked on every error map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat_dim, lon_dim = truth.dims
    lat, lon = truth[lat_dim].values, truth[lon_dim].values
    errors = {"prior": prior.mean(member_dim) - truth}
    errors.update({name: a.mean(member_dim) - truth for name, a in analyses.items()})
    limit = float(max(np.nanpercentile(np.abs(e.values), 99) for e in errors.values()))
    obs_lat, obs_lon = np.nonzero(observed.values)

    panels = 1 + len(errors)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), constrained_layout=True)
    units = truth.attrs.get("units", "")
    mesh = axes[0].pcolormesh(lon, lat, truth.values, shading="nearest", cmap="viridis")
    axes[0].set_title("truth")
    fig.colorbar(mesh, ax=axes[0], orientation="horizontal", label=units, shrink=0.9)
    for ax, (name, err) in zip(axes[1:], errors.items(), strict=True):
        rmse = float(np.sqrt((err**2).mean()))
        mesh = ax.pcolormesh(
            lon, lat, err.values, shading="nearest", cmap="RdBu_r", vmin=-limit, vmax=limit
        )
        ax.scatter(
            lon[obs_lon], lat[obs_lat], s=14, facecolors="none", edgecolors="k", linewidths=0.6
        )
        ax.set_title(f"{name} mean − truth (RMSE {rmse:.3g})")
    fig.colorbar(
        mesh, ax=list(axes[1:]), orientation="horizontal", label=f"error [{units}]", shrink=0.6
    )
    for ax in axes:
        ax.set_xlabel(f"{lon_dim} [°]")
        ax.set_aspect("auto")
    axes[0].set_ylabel(f"{lat_dim} [°]")
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
