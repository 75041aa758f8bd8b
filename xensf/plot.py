"""Figures of an analysis: what the truth was, what the prior and the analysis made of it.

Needs matplotlib (``pip install "xensf[plots]"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = [
    "plot_analysis_maps",
    "plot_blend_weight",
    "plot_cross_validation",
    "plot_diagnostics",
    "plot_relative_rmse",
    "plot_skill_bars",
    "plot_twin_maps",
]


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
    which have the member dim too, each on the truth's grid (its points in any order:
    they are taken by their coordinates). Error maps share one symmetric colour scale, so
    a reader sees at a glance where each method reduced the error; observed points
    are marked on the truth map.
    """
    truth, observed, fields = _check_maps(
        "plot_analysis_maps", truth, observed, {"prior": prior, **analyses}, member_dim
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat_dim, lon_dim = truth.dims
    lat, lon = truth[lat_dim].values, truth[lon_dim].values
    errors = {name: a.mean(member_dim) - truth for name, a in fields.items()}
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
    fig.suptitle(_fit(title, fig))
    return _save(fig, path)


def plot_diagnostics(
    innovations: xr.Dataset,
    histograms: dict[str, xr.DataArray],
    *,
    title: str,
    path: str | Path,
) -> Path:
    """Per variable: O − B against O − A at each observation, and rank histograms.

    ``innovations`` is what ``prior.ensf.innovations(obs, analysis)`` returns (its
    ``omb``, ``oma`` and ``variable``); ``histograms`` maps a label (e.g. "prior",
    "analysis") to a ``ds.ensf.rank_histogram(truth)`` result; without a truth (real
    data) give ``{}`` for the O − B / O − A panels alone. Points inside the grey
    band, ``|O − A| < |O − B|``, are where the analysis came closer to the observation; a
    flat histogram (dashed: the count a calibrated ensemble gives) is a calibrated
    ensemble, a U shape an over-confident one.
    """
    from .errors import OptionError

    if not (
        isinstance(innovations, xr.Dataset)
        and {"omb", "oma", "variable"} <= set(innovations.variables)
    ):
        raise OptionError(
            "plot_diagnostics needs the Dataset that prior.ensf.innovations(obs, analysis) "
            "returns (with 'omb', 'oma' and 'variable'; the analysis gives 'oma')"
        )
    observed = [str(v) for v in dict.fromkeys(np.ravel(innovations["variable"].values).tolist())]
    if not observed:
        raise OptionError(
            "plot_diagnostics: the innovations hold no observation (every one was NaN or "
            "outside the grid): there is nothing to plot"
        )
    histograms = _histogram_datasets(histograms, observed)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if histograms:
        names = [str(v) for v in next(iter(histograms.values())).data_vars]
    else:
        names = observed
    rows = 2 if histograms else 1
    fig, axes = plt.subplots(
        rows, len(names), figsize=(4.4 * len(names), 3.5 * rows), constrained_layout=True,
        squeeze=False,
    )  # fmt: skip
    variable = innovations["variable"].values
    for col, name in enumerate(names):
        ax = axes[0, col]
        omb = innovations["omb"].values[..., variable == name].ravel()
        oma = innovations["oma"].values[..., variable == name].ravel()
        seen = np.isfinite(omb) & np.isfinite(oma)
        limit = 1.05 * float(np.abs(omb[seen]).max()) if seen.any() else 1.0
        # The band |O − A| < |O − B| is two triangles meeting at the origin.
        line = np.array([-limit, 0.0, limit])
        ax.fill_between(line, -np.abs(line), np.abs(line), color="0.9", label="|O−A| < |O−B|")
        ax.scatter(omb[seen], oma[seen], s=6, alpha=0.6)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        rms_b, rms_a = (float(np.sqrt(np.mean(d[seen] ** 2))) for d in (omb, oma))
        ax.set_title(f"{name}: RMS O−B {rms_b:.3g}, O−A {rms_a:.3g}")
        ax.set_xlabel("O − B (observation − prior mean)")
        ax.set_ylabel("O − A (observation − analysis mean)")
        ax.legend(loc="upper left", fontsize="small")
        if not histograms:
            continue
        ax = axes[1, col]
        width = 0.8 / len(histograms)
        for k, (label, hist) in enumerate(histograms.items()):
            counts = hist[name].sum([d for d in hist[name].dims if d != "rank"])
            ranks = counts["rank"].values
            ax.bar(ranks + (k - (len(histograms) - 1) / 2) * width, counts.values, width,
                   label=label)  # fmt: skip
            ax.axhline(float(counts.sum()) / ranks.size, color="k", ls="--", lw=0.8)
        ax.set_xlabel("rank of the truth among the members")
        ax.set_ylabel("count")
        ax.set_title(f"{name}: rank histogram")
        ax.legend(fontsize="small")
    fig.suptitle(_fit(title, fig))
    return _save(fig, path)


def _histogram_datasets(histograms, observed: list[str]) -> dict[str, xr.Dataset]:
    """``plot_diagnostics``' rank histograms as Datasets: a DataArray (of
    ``da.ensf.rank_histogram``) is its own variable's, or the observed one's where
    there is one."""
    from .errors import OptionError

    if histograms is None:
        return {}
    if not isinstance(histograms, Mapping):
        raise OptionError(
            "plot_diagnostics: histograms must be a mapping {label: rank histogram}, e.g. "
            "{'prior': prior.ensf.rank_histogram(truth)}, or {} without a truth; got "
            f"{type(histograms).__name__}"
        )
    out = {}
    for label, hist in histograms.items():
        if isinstance(hist, xr.DataArray):
            name = hist.name if hist.name is not None or len(observed) != 1 else observed[0]
            if name is None:
                raise OptionError(
                    f"plot_diagnostics: the rank histogram {label!r} is an unnamed "
                    f"DataArray and {observed} are observed: name it (hist.rename('t'))"
                )
            hist = hist.to_dataset(name=name)
        if not (isinstance(hist, xr.Dataset) and all("rank" in hist[v].dims for v in hist)):
            raise OptionError(
                f"plot_diagnostics: histograms[{label!r}] must be what "
                "ds.ensf.rank_histogram(truth) returns (along 'rank')"
            )
        out[label] = hist
    return out


def _check_path(path) -> None:
    """Refuse a figure path whose folder is missing or whose suffix is no format
    matplotlib writes (matplotlib's FileNotFoundError and ValueError)."""
    from .errors import OptionError

    path = Path(path)
    if not path.parent.is_dir():
        raise OptionError(
            f"cannot write the figure {str(path)!r}: {str(path.parent)!r} is no folder"
        )
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix and path.suffix[1:].lower() not in formats:
        raise OptionError(
            f"cannot write the figure {str(path)!r}: matplotlib writes {sorted(formats)}, "
            f"not {path.suffix!r}"
        )


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
    fig.suptitle(_fit(title, fig))
    return _save(fig, path)


def plot_cross_validation(cv: xr.Dataset, *, title: str, path: str | Path) -> Path:
    """The withheld-observation ratios of :meth:`~xensf.accessor.EnsfDatasetAccessor.cross_validate`.

    One line per variable and the ``score`` (their mean, with its standard error against
    the lowest) against the settings, a dashed line at 1 (the prior: below it, the
    analysis predicts unseen observations better), the one-standard-error choice marked
    (and the lowest score, where it differs). One numeric option: its values on the x
    axis; otherwise (several options, or values such as ``None``) one tick per setting,
    labelled.

    Raises
    ------
    xensf.errors.OptionError
        If ``cv`` is not a result of ``cross_validate``.
    """
    from .errors import OptionError

    if not (isinstance(cv, xr.Dataset) and {"ratio", "score"} <= set(cv.data_vars)):
        raise OptionError(
            "plot_cross_validation needs the Dataset that prior.ensf.cross_validate returns "
            "(with 'ratio' and 'score' along 'setting')"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    options = [c for c in cv.coords if cv[c].dims == ("setting",)]
    values = cv[options[0]].values if len(options) == 1 else None
    numeric = values is not None and values.dtype.kind in "if"
    x = values.astype(float) if numeric else np.arange(cv.sizes["setting"])
    fig, ax = plt.subplots(figsize=(5.6, 3.6), constrained_layout=True)
    for v in cv["variable"].values:
        ax.plot(x, cv.ratio.sel(variable=v).values, "o-", lw=1.2, ms=4, label=str(v))
    se = cv["score_se"].values if "score_se" in cv else None
    ax.errorbar(x, cv.score.values, yerr=se, fmt="s-", color="k", lw=2.0, ms=5, capsize=3,
                label="score (mean), ± its s.e. against the lowest")  # fmt: skip
    chosen, best = cv.attrs.get("one_se_setting"), cv.attrs.get("best_setting")
    if chosen is not None:
        ax.plot(x[chosen], cv.score.values[chosen], "*", color="tab:red", ms=14,
                label="chosen (one-SE rule)")  # fmt: skip
    if best is not None and best != chosen:
        ax.plot(x[best], cv.score.values[best], "x", color="tab:red", ms=10, mew=2,
                label="lowest")  # fmt: skip
    ax.axhline(1.0, color="0.4", lw=0.9, ls="--", label="prior")
    if numeric:
        ax.set_xlabel(options[0])
        if np.all(x > 0) and x.max() / x.min() >= 8:
            ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.minorticks_off()
    else:
        labels = [", ".join(f"{o}={cv[o].values[i]}" for o in options) for i in range(x.size)]
        ax.set_xticks(x, labels, rotation=30 if len(options) > 1 else 0, ha="right")
    ax.set_ylabel("RMS(O − A) / RMS(O − B), withheld")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_fit(title, fig))
    return _save(fig, path)


#: One colour and line style per method, the same in every twin figure.
METHOD_STYLE = {
    "free run": {"color": "0.45", "ls": "--"},
    "latent-ensf": {"color": "tab:red", "ls": "-"},
    "latent-ensf-letkf": {"color": "tab:orange", "ls": "-"},
    "ensf": {"color": "tab:blue", "ls": "-"},
    "letkf": {"color": "tab:green", "ls": "-"},
    "latent-letkf": {"color": "tab:purple", "ls": "-."},
}


def _cycle_hours(t: np.ndarray) -> tuple[np.ndarray, str]:
    """Cycle times since the first one's time minus one cycle (the start), and the axis
    label: hours for dates (numpy or cftime), the time's own units for numbers."""
    t = np.asarray(t)
    step = t[1] - t[0] if len(t) > 1 else None
    if t.dtype.kind in "iuf":
        return t - (t[0] - (step if step is not None else 1)), "model time"
    if step is None:
        step = np.timedelta64(1, "h")
    elapsed = t - (t[0] - step)
    if elapsed.dtype.kind == "m":
        return elapsed / np.timedelta64(1, "h"), "model time [h]"
    # cftime dates: their differences are datetime.timedelta
    return np.array([d.total_seconds() / 3600 for d in elapsed]), "model time [h]"


def plot_relative_rmse(
    curves: dict[str, dict[str, xr.DataArray]], *, title: str, path: str | Path
) -> Path:
    """Relative RMSE against time, one panel per observation-noise level.

    ``curves[noise_label][method]`` is a 1-D DataArray along ``time``; the time axis is
    shown in hours since the first value's time minus one cycle (dates: numpy or cftime),
    or in the time's own units (numeric times).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(curves)
    fig, axes = plt.subplots(
        1, len(labels), figsize=(4.8 * len(labels), 3.6), sharey=True, constrained_layout=True
    )
    axes = np.atleast_1d(axes)
    top = 0.0
    for ax, label in zip(axes, labels, strict=True):
        for method, curve in curves[label].items():
            hours, xlabel = _cycle_hours(curve["time"].values)
            style = METHOD_STYLE.get(method, {})
            ax.plot(hours, curve.values, label=method, lw=1.6, **style)
            top = max(top, float(np.nanmax(curve.values)))
        ax.set_title(f"observation noise {label}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative RMSE of the ensemble mean")
    axes[0].set_ylim(0, min(top * 1.05, 2.0))
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.suptitle(_fit(title, fig))
    return _save(fig, path)


def plot_blend_weight(weights: dict[str, xr.DataArray], *, title: str, path: str | Path) -> Path:
    """The weight of the latent analysis in ``latent-ensf-letkf``'s background at each
    cycle (its ``blend_weight``), one line per observation-noise level (the keys of
    ``weights``, 1-D DataArrays along ``time``); hours as in :func:`plot_relative_rmse`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), constrained_layout=True)
    for label, weight in weights.items():
        hours, xlabel = _cycle_hours(weight["time"].values)
        blended = int((weight.values > 0).sum())
        ax.plot(hours, weight.values, marker="o", ms=3, lw=1.2,
                label=f"noise {label}: {blended} of {hours.size} cycles")  # fmt: skip
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("weight of the latent analysis")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(_fit(title, fig, 10), fontsize=10)
    return _save(fig, path)


def plot_twin_maps(
    truth: xr.DataArray,
    free: xr.DataArray,
    analyses: dict[str, xr.DataArray],
    observed: xr.DataArray,
    *,
    title: str,
    path: str | Path,
) -> Path:
    """Row 1: truth, free-run mean and each analysis mean; row 2: their errors.

    All fields are 2-D ``(y, x)`` ensemble means (or the truth) on the truth's grid, in
    any order of its points (taken by their coordinates); the top row shares one
    colour scale, the bottom row one symmetric error scale. Observed points are marked
    on the truth.
    """
    truth, observed, fields = _check_maps(
        "plot_twin_maps", truth, observed, {"free run": free, **analyses}, None
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_dim, x_dim = truth.dims
    km = 1e-3
    x, y = truth[x_dim].values * km, truth[y_dim].values * km
    vmax = float(np.nanmax(np.abs(truth.values)))
    errors = {k: f - truth for k, f in fields.items()}
    emax = float(max(np.nanpercentile(np.abs(e.values), 99.5) for e in errors.values()))
    cols = 1 + len(fields)
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.2), constrained_layout=True)
    units = truth.attrs.get("units", "")
    kw = {"shading": "nearest", "cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}
    top = axes[0, 0].pcolormesh(x, y, truth.values, **kw)
    oy, ox = np.nonzero(observed.values)
    axes[0, 0].scatter(x[ox], y[oy], s=4, c="k", marker="o", linewidths=0)
    axes[0, 0].set_title("truth (dots: observed)")
    axes[1, 0].axis("off")
    for i, (name, f) in enumerate(fields.items(), start=1):
        axes[0, i].pcolormesh(x, y, f.values, **kw)
        axes[0, i].set_title(name)
        err = errors[name]
        rmse = float(np.sqrt((err**2).mean()))
        bottom = axes[1, i].pcolormesh(
            x, y, err.values, shading="nearest", cmap="PuOr_r", vmin=-emax, vmax=emax
        )
        axes[1, i].set_title(f"error, RMSE {rmse:.3g} {units}", fontsize=9)
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.colorbar(top, ax=list(axes[0]), shrink=0.7, label=f"{truth.name} [{units}]")
    fig.colorbar(bottom, ax=list(axes[1, 1:]), shrink=0.7, label=f"error [{units}]")
    axes[0, 0].set_ylabel("y [km]")
    axes[1, 1].set_xlabel("x [km]")
    fig.suptitle(_fit(title, fig))
    return _save(fig, path, dpi=100)


def _check_maps(
    caller: str,
    truth: xr.DataArray,
    observed: xr.DataArray,
    fields: dict[str, xr.DataArray],
    member_dim: str | None,
) -> tuple[xr.DataArray, xr.DataArray, dict[str, xr.DataArray]]:
    """Refuse maps that are not 2-D on the truth's grid, naming the argument and its dims;
    return ``truth``, ``observed`` and ``fields`` with their grid dims in one order, the
    latitude (or y) first where the names say which it is. (A field in the other order
    was drawn transposed on a square grid.)"""
    from .bridge.alignment import on_points_of
    from .bridge.dims import find_role
    from .errors import DimensionError

    def check(name: str, da, dims: set | None) -> None:
        if not isinstance(da, xr.DataArray):
            raise DimensionError(
                f"{caller}: {name} must be a DataArray, got a {type(da).__name__}; take one "
                "variable, e.g. ds['t']"
            )
        if dims is None:  # the truth: its two dims are the grid
            extra, missing = list(da.dims[:-2]), da.ndim < 2
        else:
            if member_dim is not None and member_dim in dims - set(da.dims):
                raise DimensionError(
                    f"{caller}: {name} has no dim member_dim={member_dim!r} (its dims: {da.dims})"
                )
            extra, missing = [d for d in da.dims if d not in dims], bool(dims - set(da.dims))
        if extra:
            raise DimensionError(
                f"{caller}: {name} has dims {da.dims}; select one value of {extra}, e.g. "
                f".isel({extra[0]}=0)"
            )
        if missing:
            raise DimensionError(
                f"{caller}: {name} has dims {da.dims}; it needs the grid's two dims"
                + (f" {tuple(truth.dims)}" if dims is not None else "")
            )

    check("truth", truth, None)
    grid = set(truth.dims)
    check("observed", observed, grid)
    for name, field in fields.items():
        check(repr(name), field, grid | ({member_dim} if member_dim else set()))
    lat, lon = (find_role(truth, role, required=False) for role in ("latitude", "longitude"))
    order = (lat, lon) if {lat, lon} == grid else truth.dims
    truth = truth.transpose(*order)

    reference = truth.to_dataset(name="__truth__")

    def on_truth_grid(name: str, da: xr.DataArray) -> xr.DataArray:
        """``da`` with its grid points in the truth's order, taken by their labels (the
        maps draw every array on the truth's coordinates: a field north to south was
        drawn upside down under a truth south to north)."""
        try:
            field = on_points_of(reference, da.to_dataset(name="__field__"), what="map")
        except DimensionError:
            raise DimensionError(
                f"{caller}: {name} is on another grid than the truth "
                f"({', '.join(f'{d} {da.sizes[d]}' for d in order)} against "
                f"{', '.join(f'{d} {truth.sizes[d]}' for d in order)} points, or other "
                "coordinates); give every map on the truth's grid"
            ) from None
        return field["__field__"].transpose(..., *order)

    return (
        truth,
        on_truth_grid("observed", observed),
        {name: on_truth_grid(repr(name), field) for name, field in fields.items()},
    )


def _fit(title: str, fig, points: float = 12.0) -> str:
    """``title`` broken into lines that fit the figure's width (not cut at its edge)."""
    import textwrap

    chars = int(fig.get_figwidth() * 72 / (0.55 * points))
    return "\n".join(textwrap.fill(line, max(chars, 20)) for line in title.splitlines())


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure to ``path`` and release it (figures are not kept open, also
    when writing fails)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        _check_path(path)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
