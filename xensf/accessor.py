"""The ``.ensf`` accessor on xarray Datasets and DataArrays.

Thin methods forwarding to :mod:`xensf.bridge`; the accessor keeps no state (xarray
caches it per object and drops it after any operation). Heavy imports (torch) wait
until a method is called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .errors import DimensionError, EnsembleError, ObservationMismatchError, OptionError

__all__ = ["EnsfDataArrayAccessor", "EnsfDatasetAccessor"]

#: The name an unnamed DataArray's variable takes inside the Dataset methods.
_UNNAMED = "state"


def _describe_call(args: dict[str, Any]) -> str:
    shown = []
    for key, value in args.items():
        if isinstance(value, xr.Dataset | xr.DataArray):
            shown.append(f"<{type(value).__name__}>")
        else:
            shown.append(f"{key}={_short_repr(value)}")
    return "ds.ensf.assimilate(" + ", ".join(shown) + ")"


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for the history line, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an int past Python's 4300-digit str limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_model(model: Any) -> str | None:
    """How a model appears in the history line: its bundle path, or its kind."""
    if model is None:
        return None
    if isinstance(model, str | os.PathLike):
        return os.fspath(model)
    return f"<{type(model).__name__}>"


@xr.register_dataset_accessor("ensf")
class EnsfDatasetAccessor:
    """Data assimilation for a forecast ensemble held in a Dataset: ``ds.ensf``."""

    def __init__(self, ds: xr.Dataset):
        self._obj = ds

    def assimilate(
        self,
        obs: xr.Dataset | xr.DataArray,
        *,
        method: str | None = None,
        model: Any = None,
        obs_error: Any = None,
        seed: int = 0,
        device: str | None = None,
        member_dim: str | None = None,
        lat_dim: str | None = None,
        lon_dim: str | None = None,
        time_dim: str | None = None,
        obs_dim: str | None = None,
        variables: str | list[str] | None = None,
        obs_time_tolerance: Any = None,
        **options: Any,
    ) -> xr.Dataset:
        """Update this forecast ensemble with observations; return the analysis ensemble.

        Parameters
        ----------
        obs : Dataset or named DataArray
            The observations, with variable names of the state. Either **gridded**: on
            the state's latitude/longitude grid (same dims and coordinates), NaN where
            nothing is observed; or **point** observations along one dim (``obs``,
            ``station``, ...) with latitude and longitude coordinates along it, which
            are bilinearly interpolated from the grid (longitude wraps on global
            grids; latitude may run either way). An observation variable must have the
            state variable's level dims (their values a subset of the state's), or, for
            reports with a level each, a level coordinate along its points, or for
            one level a scalar level coordinate (a level dim of length 1 may be left
            out: the observations are of it); a time
            dim must hold times of the state (missing times: no observations then).
            Units are converted to the state's with pint; observations without a units
            attribute are taken to be in the state's units.
        method : {"ensf", "letkf", "latent-ensf", "latent-ensf-letkf", "latent-letkf"}, optional
            ``"ensf"`` (default without a model): the ensemble score filter on
            standardised variables; ``"letkf"``: the local ensemble transform Kalman
            filter; ``"latent-ensf"`` (default with a model): Latent-EnSF, the score
            filter in the latent space of ``model``; ``"latent-ensf-letkf"``:
            Latent-EnSF, then a localised LETKF with the real observations, from the
            prior members moved towards the latent analysis members as far as the
            prior's error exceeds its spread (else from the prior; needs
            ``obs_error``); ``"latent-letkf"``:
            the LETKF in latent space, localised on the latent grid. Latent methods warn
            :class:`~xensf.errors.ModelQualityWarning` when the model cannot represent
            the data as well as the observations pin it down.
        model : LatentModel or path, optional
            A trained latent model (``xensf.load(path)``, ``xensf.train_latent(...)``) or
            the path of its bundle, for the latent methods. It must have been trained on
            this grid, these variables, levels and units (checked, with an error naming
            the difference); the observations must be gridded for a gridded model, or
            the model's own stations (any subset) for a station model. Workers receive
            the bundle's path and load it once each.
        obs_error : float, str, mapping, optional
            Optional for ``latent-ensf`` and ``latent-letkf``: without it their error
            is the model's latent observation error at its training noise; with it,
            the model's latent error at that noise (docs/method.md). Required by the
            other methods (``latent-ensf-letkf`` also for its LETKF step).
            Observation-error standard deviation: a number in the state's units, a
            mapping ``{variable: number}`` (or ``{variable: {level: number}}``; an entry
            for every observed variable, and it may name state variables not observed
            this time), any of these numbers with its units (``"0.5 K"``, a pint
            quantity; converted to the variable's units as a difference: ``"0.5
            degC"`` is 0.5 K), or a
            relative error such as ``"10%"``: that fraction of the standard deviation
            of the variable's observations (per level, over space and time). Omitted:
            taken from a variable ``<name>_error`` (or one listed in the variable's
            ``ancillary_variables``) or an attribute ``obs_error`` on the observations
            (a number in their units, or text with its own, ``"0.5 K"``).
            Given in more than one of these places, the first in this order is used
            (``obs_error=``, the variable, the attribute), with an
            :class:`~xensf.errors.ObservationErrorWarning` naming the ones left unused.
        seed : int
            Seed of every random draw; each analysis time draws from a stream derived
            from ``(seed, time value)``, so results do not depend on chunking.
        device : str, optional
            Torch device for the computation; default CUDA when available, else CPU.
            Chosen inside each task, so building the graph touches no GPU: a name torch
            does not know is refused at once, a device this process lacks when the task
            that would use it runs (an :class:`~xensf.errors.OptionError` either way).
        member_dim, lat_dim, lon_dim, time_dim : str, optional
            Override the dimension detection (CF attributes, then usual names).
        obs_dim : str, optional
            The dim of point observations, when it cannot be told from the coordinates.
        variables : str or list of str, optional
            The state variables to update (default: every data variable with member,
            latitude and longitude dims). Others are returned unchanged.
        obs_time_tolerance : timedelta-like or number, optional
            Assimilate each observation time at the nearest state time within this
            span ("30min", ``numpy.timedelta64``; a number for numeric times). Several
            observation times at one state time: point observations are merged, gridded
            ones refused. Default: observation times must be state times.
        **options
            Method options. ``ensf``: ``steps`` (100), ``eps_alpha`` (0.05),
            ``eps_beta`` (0.025), ``prior_score`` ("mixture" or "paired"), ``likelihood`` ("damped", the
            published EnSF, or "gaussian", exact for linear-Gaussian problems), ``scale``
            (a number or {variable: number} in state units; default the prior
            ensemble's spread per variable and level at each time; one whose
            ``√eps_beta · scale`` exceeds the prior spread gets a
            :class:`~xensf.errors.SpreadWarning`). ``letkf``:
            ``inflation`` (1.0, multiplicative), ``rtps`` (0.0, relaxation to prior
            spread), ``loc_radius`` (required: Gaspari–Cohn half-width c, in km on
            lat/lon grids, in coordinate units on planar grids, or a length with its
            units such as ``"500 km"``; weights vanish beyond
            2c; None: no localisation, a global ETKF), ``vertical_radius`` (None: all
            levels of a point alike; else the half-width along the level dim, in ln p on
            pressure levels, in metres on height or depth levels), ``cross_variable``
            (True; False: each variable updated by its own observations only, variable
            localisation), ``weight_stride`` (1;
            n: transforms on every n-th row and column, interpolated between, Yang et
            al. 2009), ``adaptive_inflation`` (True or an
            :class:`xensf.AdaptiveInflation`: Miyoshi 2011 inflation estimated at every
            grid point instead of ``inflation``; the result then has an ``inflation``
            variable to start the next analysis from). ``latent-ensf``: ``steps``, ``eps_alpha``, ``eps_beta``,
            ``prior_score``, ``likelihood`` (as for ``ensf``, default "gaussian"; the
            latent values are standardised by their spread over the training data) and
            ``update`` ("decode", the published method: members are
            decoded posterior latents; or "increment": each member plus the decoded
            latent increment, which keeps what the VAE cannot represent).
            ``latent-ensf-letkf``: those of ``latent-ensf`` and of ``letkf``.
            ``latent-letkf``: ``latent_radius`` (Gaspari–Cohn half-width in latent grid
            cells; None: the global ETKF; "auto", the default: 1 cell where the latent
            has at least as many values as there are members, else global),
            ``inflation`` (1.2), ``rtps`` (1.0),
            ``update``.

        Returns
        -------
        Dataset
            The input's dims, coords and variable names with the analysis ensemble as
            data; lazy if the input was dask-backed. CF metadata: ``Conventions``, a
            ``history`` line, ``realization`` on the member coordinate, the method and
            its parameters in ``xensf_*`` attributes.

        Raises
        ------
        xensf.errors.XensfError
            A subclass naming what is wrong, before any work is done: dims missing or
            ambiguous (:class:`~xensf.errors.DimensionError`), observations that do not
            fit (:class:`~xensf.errors.ObservationMismatchError`,
            :class:`~xensf.errors.ObservationDomainError`), units
            (:class:`~xensf.errors.UnitsError`), the ensemble
            (:class:`~xensf.errors.EnsembleError`; NaN in a dask-backed prior is found
            when the chunk is computed), chunking (:class:`~xensf.errors.ChunkingError`)
            or options (:class:`~xensf.errors.OptionError`).

        Examples
        --------
        >>> import xensf
        >>> ds = xensf.open_era5_sample()
        >>> prior, truth = ds.isel(number=slice(1, None)), ds.isel(number=0)
        >>> obs = truth.isel(latitude=slice(None, None, 8), longitude=slice(None, None, 8))
        >>> obs = obs.reindex_like(truth)                  # gridded, NaN elsewhere
        >>> analysis = prior.ensf.assimilate(obs, obs_error={"z": 50.0, "t": 0.5})
        """
        from .bridge.analysis import assimilate

        args = {
            "obs": obs, "method": method, "model": _describe_model(model),
            "obs_error": obs_error, "seed": seed, "device": device,
            "obs_time_tolerance": obs_time_tolerance, **options,
        }  # fmt: skip
        return assimilate(
            self._obj,
            obs,
            method=method,
            model=model,
            obs_error=obs_error,
            seed=seed,
            device=device,
            member_dim=member_dim,
            lat_dim=lat_dim,
            lon_dim=lon_dim,
            time_dim=time_dim,
            obs_dim=obs_dim,
            variables=variables,
            obs_time_tolerance=obs_time_tolerance,
            call=_describe_call({k: v for k, v in args.items() if v is not None}),
            **options,
        )

    def encode(
        self, model: Any, *, variables=None, lat_dim=None, lon_dim=None, device=None
    ) -> xr.Dataset:
        """Encode every state (each time, member, ...) to the model's latent Gaussian.

        Parameters
        ----------
        model : LatentModel or path
            A latent model trained on this grid, these variables, levels and units.
        variables : list of str, optional
            Default: the model's variables.
        lat_dim, lon_dim : str, optional
            Override the grid dims' detection.
        device : str, optional
            Torch device; default CUDA when available.

        Returns
        -------
        Dataset
            ``latent_mean`` and ``latent_log_variance`` with the state's sample dims
            (time, member, ...) and a ``latent`` dim; lazy if the input was. The states
            go through the encoder 16 at a time whatever the chunks hold, so the bits do
            not depend on the chunking.
        """
        from .bridge.encoding import encode

        return encode(
            self._obj, model, variables=variables, lat_dim=lat_dim, lon_dim=lon_dim, device=device
        )

    def decode(self, model: Any, *, device=None) -> xr.Dataset:
        """Decode a latent Dataset (``latent_mean`` along ``latent``) to states.

        The result is on the grid, with the variables, levels and units, that the model
        was trained on; the latent data's other dims (time, member) are kept. As for
        :meth:`encode`, the bits do not depend on the chunking.
        """
        from .bridge.encoding import decode

        return decode(self._obj, model, device=device)

    def innovations(
        self,
        obs: xr.Dataset | xr.DataArray,
        analysis: xr.Dataset | None = None,
        *,
        obs_error: Any = None,
        member_dim: str | None = None,
        lat_dim: str | None = None,
        lon_dim: str | None = None,
        time_dim: str | None = None,
        obs_dim: str | None = None,
        variables: str | list[str] | None = None,
        obs_time_tolerance: Any = None,
    ) -> xr.Dataset:
        """The observations beside this (prior) ensemble, and ``analysis``, at their points.

        Each observation is compared with the ensemble through the observation
        operator the analysis uses (the grid point, or the bilinear interpolation to a
        station), in the state's units.

        Parameters
        ----------
        obs, obs_error, member_dim, lat_dim, lon_dim, time_dim, obs_dim, variables, obs_time_tolerance
            As for :meth:`assimilate` (the observation errors are needed).
        analysis : Dataset, optional
            The analysis ensemble made from this prior and ``obs``.

        Returns
        -------
        Dataset
            Along ``obs`` (and ``time``, if the prior has it), with coordinates
            ``variable``, ``latitude`` and ``longitude`` (x and y on a planar grid)
            and each of the state's levels (NaN for a variable without it; group by it
            for profiles of O − B): ``observation``, ``obs_error``, ``prior_mean``, ``prior_spread``, ``omb``
            (O − B) and, with ``analysis``, ``analysis_mean``, ``analysis_spread``,
            ``oma`` (O − A); NaN where there is no observation. Attributes per variable
            ``v``: ``v_count``, ``v_mean_omb``, ``v_mean_omb_squared`` against
            ``v_mean_prior_plus_obs_variance`` (E[(O−B)²] = σ_b² + σ_o² in a consistent
            system), and with ``analysis`` ``v_mean_omb_times_oma`` against
            ``v_mean_obs_variance`` (Desroziers et al. 2005: E[(O−B)(O−A)] = σ_o²).
            Computed eagerly, reading only the chunks that hold observed points (the
            prior may be chunked along latitude and longitude).

        Examples
        --------
        >>> analysis = prior.ensf.assimilate(  # doctest: +SKIP
        ...     obs, method="letkf", obs_error=0.5, loc_radius=500.0
        ... )
        >>> diag = prior.ensf.innovations(obs, analysis, obs_error=0.5)  # doctest: +SKIP
        >>> float(abs(diag.oma).mean()) < float(abs(diag.omb).mean())  # doctest: +SKIP
        True
        """
        from .bridge.innovations import innovations

        return innovations(
            self._obj, obs, analysis, obs_error=obs_error, member_dim=member_dim,
            lat_dim=lat_dim, lon_dim=lon_dim, time_dim=time_dim, obs_dim=obs_dim,
            variables=variables, obs_time_tolerance=obs_time_tolerance,
        )  # fmt: skip

    def cross_validate(
        self,
        obs: xr.Dataset | xr.DataArray,
        settings: dict[str, list[Any]],
        *,
        folds: int = 4,
        seed: int = 0,
        progress: bool = True,
        **kwargs: Any,
    ) -> xr.Dataset:
        """How well the analysis predicts withheld observations, for each setting.

        The observed locations are split at random into ``folds`` groups (all
        variables and levels of a location together, the rows of a table at one
        place too). For every combination of the
        values in ``settings`` and every group, this (prior) ensemble is analysed
        with the other groups' observations (``assimilate(..., **kwargs, **setting)``)
        and the analysis mean is compared with the withheld ones. No truth is needed:
        this is how to choose ``loc_radius`` (or an inflation) on one's own data, and
        whether assimilating helps at all.

        Parameters
        ----------
        obs : Dataset or named DataArray
            The observations, as for :meth:`assimilate` (gridded or point).
        settings : dict
            ``{option: [values]}``, e.g. ``{"loc_radius": [300.0, 600.0, 1200.0]}``
            (a 1-D array, such as ``np.geomspace(300, 1200, 3)``, is taken as its list);
            several options give every combination.
        folds : int
            Number of groups (at least 2; each location is withheld once).
        seed : int
            Seed of the split and of every analysis.
        progress : bool
            Show a progress bar over the ``len(combinations) × folds`` analyses.
        **kwargs
            Fixed arguments of :meth:`assimilate` (``method``, ``obs_error``, ...). A
            relative ``obs_error`` (``"10%"``) is taken from the observations used in
            each analysis, so it varies a little between groups.

        Returns
        -------
        Dataset
            Along ``setting`` (one per combination, with a coordinate per option; read
            one named like a Dataset method, such as ``update``, as ``cv["update"]``;
            values of mixed kinds, such as ``["10%", 0.5]``, or mappings are held as
            their text, so that the result writes to netCDF and zarr) and
            ``variable``: ``ratio``, RMS(O − A) / RMS(O − B) over the withheld
            observations of each variable (below 1: the analysis predicts unseen
            observations better than the prior); ``score``, its mean over variables;
            ``score_se``, the standard error of each score's difference from the lowest
            (from the folds, which every setting shares); ``count``, the withheld
            observations per variable. Attributes ``folds``, ``seed``,
            ``best_setting`` (the index of the lowest score), ``best_score`` and
            ``one_se_setting``: the first setting, in the order given, whose score is
            within one ``score_se`` of the lowest (the one-standard-error rule: list
            the values from the most cautious, e.g. the smallest radius, on). Computed
            eagerly.

        Raises
        ------
        xensf.errors.OptionError
            Settings that are not a mapping of non-empty lists, an option given both as
            a setting and as a fixed argument, fewer observed locations than folds;
            and whatever :meth:`assimilate` raises for the first setting.

        Examples
        --------
        >>> cv = prior.ensf.cross_validate(  # doctest: +SKIP
        ...     obs, {"loc_radius": [300.0, 600.0, 1200.0]}, method="letkf", obs_error=0.5
        ... )
        >>> cv.loc_radius[cv.attrs["one_se_setting"]].item()  # doctest: +SKIP
        300.0
        """
        from .bridge.validation import cross_validate

        return cross_validate(
            self._obj, obs, settings, folds=folds, seed=seed, progress=progress, **kwargs
        )

    def _member_dim(self, member_dim: str | None) -> str:
        from .bridge.dims import find_role

        return find_role(self._obj, "member", override=member_dim)

    def mean(self, member_dim: str | None = None) -> xr.Dataset:
        """Ensemble mean over the member dim (found as in :meth:`assimilate`); the
        variables keep their attributes, with ``cell_methods`` saying so. Variables
        without the member dim (bounds, static fields) come back as given."""
        member = self._member_dim(member_dim)
        stat = _over_members(self._obj, member, lambda e: e.mean(member, keep_attrs=True))
        return _cf(_with_cell_method(self._obj, stat, member, "mean"))

    def spread(self, member_dim: str | None = None) -> xr.Dataset:
        """Ensemble standard deviation (``ddof=1``) over the member dim; attributes as
        :meth:`mean`'s."""
        member = self._member_dim(member_dim)
        if self._obj.sizes[member] < 2:
            raise EnsembleError(
                f"a spread needs at least 2 members along {member!r}, got "
                f"{self._obj.sizes[member]}"
            )
        spread = _over_members(self._obj, member, lambda e: e.std(member, ddof=1, keep_attrs=True))
        return _cf(_with_cell_method(self._obj, spread, member, "standard_deviation"))

    def rmse(
        self, truth: xr.Dataset, dims: list[str] | None = None, member_dim: str | None = None
    ) -> xr.Dataset:
        """Root-mean-square error of the ensemble mean against ``truth``.

        ``dims``: the dims to average over (default: all dims of the scored variables,
        those ``truth`` has, except time and members). Scored at the times both have; a
        truth at one time or level (a scalar coordinate, as ``truth.isel(time=0)``
        leaves it) scores the ensemble there.
        On a latitude/longitude grid (latitude in degrees), grid points are weighted
        by cos(latitude), their share of the sphere's area, so that the many points
        near the poles do not count as much as the tropics; on a curvilinear grid (2-D
        latitude/longitude coordinates) by the area of each point's cell.
        """
        from .metrics import ensemble_rmse

        ens, truth, member, dims, weights = self._scoring(truth, dims, member_dim)
        return _described(ens, ensemble_rmse(ens, truth, member, dims=dims, weights=weights),
                          "RMSE of the ensemble mean")  # fmt: skip

    def crps(
        self,
        truth: xr.Dataset,
        dims: list[str] | None = None,
        member_dim: str | None = None,
        fair: bool = False,
    ) -> xr.Dataset:
        """Continuous ranked probability score against ``truth`` (lower is better).

        In each variable's units; averaged over ``dims`` as :meth:`rmse` (cos(latitude)
        weights on a latitude/longitude grid). ``fair=True``: the fair CRPS, which does
        not depend on the ensemble size in expectation. See :func:`xensf.metrics.crps`.
        """
        from .metrics import crps

        ens, truth, member, dims, weights = self._scoring(truth, dims, member_dim)
        score = crps(ens, truth, member, dims=dims, weights=weights, fair=fair)
        return _described(ens, score, "fair CRPS" if fair else "CRPS")

    def spread_skill(
        self, truth: xr.Dataset, dims: list[str] | None = None, member_dim: str | None = None
    ) -> xr.Dataset:
        """Spread–skill ratio against ``truth``: 1 calibrated, < 1 over-confident.

        Averaged over ``dims`` as :meth:`rmse`. See :func:`xensf.metrics.spread_skill`.
        """
        from .metrics import spread_skill

        ens, truth, member, dims, weights = self._scoring(truth, dims, member_dim)
        score = spread_skill(ens, truth, member, dims=dims, weights=weights)
        return _described(ens, score, "spread-skill ratio", units="1")

    def rank_histogram(
        self,
        truth: xr.Dataset,
        dims: list[str] | None = None,
        member_dim: str | None = None,
        seed: int = 0,
    ) -> xr.Dataset:
        """How often the truth falls below 0, 1, …, N members (a ``rank`` dim of N + 1).

        Counted over ``dims`` (default: all dims of ``truth`` except time, unweighted;
        a global grid's closing column, its first column again, is counted once);
        flat for a calibrated ensemble. See :func:`xensf.metrics.rank_histogram`.
        """
        from .filters.noise import check_seed
        from .metrics import rank_histogram

        check_seed(seed, non_negative=True)
        ens, truth, member, dims, _ = self._scoring(truth, dims, member_dim, seam_once=True)
        counts = rank_histogram(ens, truth, member, dims=dims, seed=seed)
        counts["rank"].attrs.update(
            long_name="rank of the truth among the members (0: below them all)", units="1"
        )
        return _described(ens, counts, "count of the truth's rank among the members", units="1")

    def _scoring(self, truth, dims, member_dim, seam_once: bool = False):
        """The ensemble and the truth to score (their shared variables, the truth in
        the ensemble's units), the member dim, the dims to average over, and the area
        weights (or None); an XensfError for a truth that does not fit. ``seam_once``:
        a closing column averaged over is left out of the ensemble and the truth (for
        unweighted counts; the weights give it none)."""
        from .bridge.dims import find_dims, find_role
        from .bridge.grid import grid_coords
        from .bridge.seam import closing_column
        from .errors import XensfError
        from .metrics import area_weights

        member = self._member_dim(member_dim)
        ens, truth = _comparable(self._obj, truth, member)
        if dims is None:
            time = find_role(truth, "time", required=False)
            dims = [d for d in ens.dims if d not in (time, member)]
        else:
            dims = [dims] if isinstance(dims, str) else list(dims)
            unknown = [d for d in dims if d not in ens.dims or d == member]
            if unknown:
                raise DimensionError(
                    f"dims {unknown} are not dims of the ensemble to average over; it has "
                    f"{[d for d in ens.dims if d != member]}"
                )
        weights = None
        try:
            found = find_dims(self._obj, member_dim=member_dim)
        except XensfError:  # no grid to weight
            found = None
        grid = grid_coords(self._obj, found) if found is not None else None
        if grid is not None and grid.known and grid.geographic:
            if grid.curvilinear:
                weights = grid.cell_area_weights(found.grid)
            else:
                # in degrees whatever the coordinate's angle units
                weights = area_weights(self._obj[found.lat].copy(data=grid.lat))
                seam = closing_column(self._obj, found)
                if seam is not None:  # its first column again: one place, weighed once
                    once = np.r_[np.ones(seam.size - 1), 0.0]
                    weights = weights * xr.DataArray(once, dims=found.lon)
                    if seam_once and seam.lon in dims:
                        ens = seam.fold(ens)
                        truth = seam.fold(truth) if seam.lon in truth.dims else truth
            if not set(weights.dims) <= set(dims):
                weights = None
        return ens, truth, member, dims, weights


def _comparable(ensemble: xr.Dataset, truth, member: str) -> tuple[xr.Dataset, xr.Dataset]:
    """The ensemble's variables that ``truth`` has, and ``truth`` in their units, on the
    same points: a :class:`~xensf.errors.XensfError` where it cannot be."""
    from .bridge.alignment import aligned_like
    from .bridge.dims import find_role
    from .bridge.observations import time_text
    from .bridge.units import coordinate_in_units

    if isinstance(truth, xr.DataArray):
        if truth.name not in ensemble.data_vars:
            raise OptionError(
                f"a truth DataArray must be named after the ensemble variable it is the "
                f"truth of ({list(ensemble.data_vars)}), got {truth.name!r}"
            )
        truth = truth.to_dataset()
    if not isinstance(truth, xr.Dataset):
        raise OptionError(f"truth must be an xarray Dataset, got {type(truth).__name__}")
    if member in truth.dims:
        raise DimensionError(
            f"the truth has the member dim {member!r}: give one state (e.g. one run, or "
            f"ds.isel({member}=0)), not an ensemble"
        )
    # Only variables along the members are scored: a static orography or a CMIP file's
    # time_bnds in both would score 0 (or be refused as dates), not the ensemble.
    scored = [v for v in ensemble.data_vars if member in ensemble[v].dims]
    names = [v for v in scored if v in truth.data_vars]
    if not names:
        raise OptionError(
            f"the truth has none of the ensemble's variables {scored}; "
            f"it has {list(truth.data_vars)}"
        )
    ensemble = ensemble[names]
    # A truth at one time or level (truth.isel(time=0) keeps the time as a scalar
    # coordinate) is the truth there, not at every time: score the ensemble there.
    for d in [d for d in ensemble.dims if d != member and d not in truth.dims]:
        if d in truth.coords and truth[d].ndim == 0 and d in ensemble.indexes:
            truth = coordinate_in_units(ensemble, truth.expand_dims(d), d, whose="the truth's")
            value = truth[d].values[0]
            if value not in ensemble.indexes[d]:
                raise DimensionError(
                    f"the truth is at {d}={time_text(value)} (a scalar coordinate), which the "
                    f"ensemble's {d!r} does not have; select a truth the ensemble has, or "
                    f"drop that coordinate (truth.drop_vars({d!r})) to score every {d}"
                )
            ensemble = ensemble.sel({d: [value]})
    time = find_role(ensemble, "time", required=False)
    partial = () if time is None else (time,)  # scored at the times both have
    return ensemble, aligned_like(ensemble, truth, names, what="truth", partial=partial)


def _over_members(ensemble: xr.Dataset, member: str, reduce) -> xr.Dataset:
    """``reduce`` applied to the variables along ``member``; the others (a CMIP file's
    ``time_bnds``, a static orography) come back as given, not "averaged" over members
    they do not have (a standard deviation of dates fails, one of bounds is 0)."""
    along = [v for v in ensemble.data_vars if member in ensemble[v].dims]
    stat = reduce(ensemble[along])
    return ensemble.drop_dims(member).assign(stat.data_vars)[list(ensemble.data_vars)]


def _with_cell_method(ensemble: xr.Dataset, stat: xr.Dataset, member: str, method: str):
    """``stat`` (reduced over ``member``) with ``cell_methods`` naming the reduction on
    each variable that had the member dim (appended to any the variable had)."""
    out = stat.copy()
    for v in out.data_vars:
        if v in ensemble and member in ensemble[v].dims:
            earlier = out[v].attrs.get("cell_methods")
            entry = f"{member}: {method}"
            out[v].attrs["cell_methods"] = f"{earlier} {entry}" if earlier else entry
    return out


def _described(ensemble: xr.Dataset, score: xr.Dataset, what: str, units: str | None = None):
    """``score`` with attributes of a score, not of the state: a ``long_name`` that
    says which, and ``units`` (the variable's, or ``units`` for a ratio or a count); the
    state's ``standard_name`` and the rest are dropped."""
    out = score.copy()
    for v in out.data_vars:
        base = ensemble[v].attrs if v in ensemble else {}
        attrs = {"long_name": f"{base.get('long_name', v)}: {what}"}
        if units is not None or "units" in base:
            attrs["units"] = units if units is not None else base["units"]
        out[v].attrs = attrs
    return _cf(out)


def _cf(product: xr.Dataset) -> xr.Dataset:
    """A derived product (a mean, a spread, a score) with its coordinates mended for CF
    (:func:`xensf.bridge.metadata.cf_coordinates`)."""
    from .bridge.metadata import cf_coordinates

    return cf_coordinates(product)


@xr.register_dataarray_accessor("ensf")
class EnsfDataArrayAccessor:
    """The ``.ensf`` accessor on a DataArray: the Dataset methods for one variable."""

    def __init__(self, da: xr.DataArray):
        self._obj = da

    def _as_dataset(self, model: Any = None) -> xr.Dataset:
        """This DataArray as a Dataset of one variable: under its name; unnamed, under
        the variable of a ``model`` trained on one (what else could it hold?)."""
        name = self._obj.name
        if name is None and model is not None:
            from .bridge.model_cache import model_handle

            names = model_handle(model)[1].get("data", {}).get("variables", [])
            name = names[0] if len(names) == 1 else None
        name = _UNNAMED if name is None else name
        if name in self._obj.coords:
            raise OptionError(
                f"the DataArray is named {name!r}, as one of its coordinates: rename it "
                "after the variable it holds (da.rename('t'))"
            )
        return self._obj.to_dataset(name=name)

    def _mine(self, result: xr.Dataset) -> xr.DataArray:
        """This variable of a result Dataset, under this DataArray's own name (None
        stays None)."""
        return result[next(iter(result.data_vars))].rename(self._obj.name)

    def assimilate(self, obs: xr.DataArray | xr.Dataset, **kwargs: Any) -> xr.DataArray:
        """As :meth:`EnsfDatasetAccessor.assimilate`; ``obs`` may be a DataArray."""
        ds = self._as_dataset(kwargs.get("model"))
        result = ds.ensf.assimilate(self._named(obs, "observations", ds, kwargs), **kwargs)
        out = self._mine(result[list(ds.data_vars)])
        out.attrs.update(
            {
                k: v
                for k, v in result.attrs.items()
                if k.startswith("xensf_") or k in ("history", "Conventions")
            }
        )
        return out

    def encode(self, model: Any, **kwargs: Any) -> xr.Dataset:
        """As :meth:`EnsfDatasetAccessor.encode`: this variable's states (the model's
        only variable) to the latent Dataset."""
        return self._as_dataset(model).ensf.encode(model, **kwargs)

    def decode(self, model: Any, *, device=None) -> xr.Dataset:
        """As :meth:`EnsfDatasetAccessor.decode`, for the latent means as a DataArray
        (``z.latent_mean``): the Dataset of the model's variables."""
        from .bridge.encoding import decode

        return decode(self._obj, model, device=device)

    def mean(self, member_dim: str | None = None) -> xr.DataArray:
        """Ensemble mean over the member dim."""
        return self._mine(self._as_dataset().ensf.mean(member_dim))

    def spread(self, member_dim: str | None = None) -> xr.DataArray:
        """Ensemble standard deviation (``ddof=1``) over the member dim."""
        return self._mine(self._as_dataset().ensf.spread(member_dim))

    def rmse(self, truth: xr.DataArray | xr.Dataset, **kwargs: Any) -> xr.DataArray:
        """As :meth:`EnsfDatasetAccessor.rmse`; ``truth`` may be a DataArray."""
        return self._score("rmse", truth, kwargs)

    def crps(self, truth: xr.DataArray | xr.Dataset, **kwargs: Any) -> xr.DataArray:
        """As :meth:`EnsfDatasetAccessor.crps`; ``truth`` may be a DataArray."""
        return self._score("crps", truth, kwargs)

    def spread_skill(self, truth: xr.DataArray | xr.Dataset, **kwargs: Any) -> xr.DataArray:
        """As :meth:`EnsfDatasetAccessor.spread_skill`; ``truth`` may be a DataArray."""
        return self._score("spread_skill", truth, kwargs)

    def rank_histogram(self, truth: xr.DataArray | xr.Dataset, **kwargs: Any) -> xr.DataArray:
        """As :meth:`EnsfDatasetAccessor.rank_histogram`; ``truth`` may be a DataArray."""
        return self._score("rank_histogram", truth, kwargs)

    def innovations(
        self,
        obs: xr.DataArray | xr.Dataset,
        analysis: xr.DataArray | xr.Dataset | None = None,
        **kwargs: Any,
    ) -> xr.Dataset:
        """As :meth:`EnsfDatasetAccessor.innovations`; ``obs`` and ``analysis`` may be
        DataArrays (of this variable)."""
        ds = self._as_dataset(kwargs.get("model"))
        return ds.ensf.innovations(
            self._named(obs, "observations", ds, kwargs),
            self._named(analysis, "analysis", ds),
            **kwargs,
        )

    def cross_validate(
        self, obs: xr.DataArray | xr.Dataset, settings: dict[str, list[Any]], **kwargs: Any
    ) -> xr.Dataset:
        """As :meth:`EnsfDatasetAccessor.cross_validate`; ``obs`` may be a DataArray."""
        ds = self._as_dataset(kwargs.get("model"))
        return ds.ensf.cross_validate(
            self._named(obs, "observations", ds, kwargs), settings, **kwargs
        )

    def _named(self, other, what: str, ds: xr.Dataset, kwargs: dict[str, Any] | None = None):
        """A DataArray given for this variable, as a Dataset under its name in ``ds``
        (:meth:`_as_dataset`); a Dataset (``what``) as it is, where this variable has a
        name to match its variables with (and an ``obs_error`` mapping in ``kwargs``)."""
        (name,) = ds.data_vars
        unnamed = name == _UNNAMED and self._obj.name is None
        spec = (kwargs or {}).get("obs_error")
        if unnamed and isinstance(spec, Mapping):
            raise OptionError(
                f"obs_error is a mapping of variables ({list(spec)}) but the ensemble is an "
                "unnamed DataArray: name it after the variable it holds (e.g. "
                "da.rename('t')), or give obs_error as a number or a relative error"
            )
        if isinstance(other, xr.DataArray):
            return other.to_dataset(name=name)
        if isinstance(other, xr.Dataset) and unnamed:
            names = [str(v) for v in other.data_vars]
            error = ObservationMismatchError if what == "observations" else OptionError
            raise error(
                f"the ensemble is an unnamed DataArray, so the variables {names} of the {what} "
                "cannot be matched with it: name it after the variable it holds (e.g. "
                f"da.rename({names[0] if names else 't'!r})), or give the {what} as a "
                "DataArray (taken as this variable's)"
            )
        return other

    def _score(self, score: str, truth, kwargs: dict[str, Any]) -> xr.DataArray:
        ds = self._as_dataset()
        return self._mine(getattr(ds.ensf, score)(self._named(truth, "truth", ds), **kwargs))
