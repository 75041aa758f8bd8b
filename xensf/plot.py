"""Figures of an analysis: what the truth was, what the prior and the analysis made of it.

Needs matplotlib (``pip install "xensf[plots]"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_analysis_maps", "plot_skill_bars"]


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
    are marked on the truth map.
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
    axes[0].scatter(lon[obs_lon], lat[obs_lat], s=3, c="w", marker="o", linewidths=0)
    axes[0].set_title("truth (white: observed points)")
    fig.colorbar(mesh, ax=axes[0], orientation="horizontal", label=units, shrink=0.9)
    for ax, (name, err) in zip(axes[1:], errors.items(), strict=True):
        rmse = float(np.sqrt((err**2).mean()))
        mesh = ax.pcolormesh(
            lon, lat, err.values, shading="nearest", cmap="RdBu_r", vmin=-limit, vmax=limit
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


def plot_skill_bars(
    table: dict[str, dict[str, dict[str, float]]], *, title: str, path: str | Path
) -> Path:
    """Bars of each method's error relative to the prior's, per region and variable.

    ``table[variable][method][region]`` is an RMSE; the entry ``"prior"`` of each
    variable is the reference (1.0). Bars below 1 mean the analysis improved on the
    prior there.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables = list(table)
    fig, axes = plt.subplots(
        1, len(variables), figsize=(4.6 * len(variables), 3.4), constrained_layout=True
    )
    axes = np.atleast_1d(axes)
    for ax, var in zip(axes, variables, strict=True):
        prior = table[var]["prior"]
        regions = list(prior)
        methods = [m for m in table[var] if m != "prior"]
        width = 0.8 / max(len(methods), 1)
        x = np.arange(len(regions))
        for i, method in enumerate(methods):
            ratios = [table[var][method][r] / prior[r] for r in regions]
            bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, ratios, width, label=method)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, regions)
        ax.set_ylabel("RMSE / prior RMSE")
        ax.set_title(var)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
