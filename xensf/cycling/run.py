"""Cycling data assimilation: forecast → analysis → forecast, into a resumable zarr store.

:func:`cycle` advances an ensemble with a :class:`~xensf.cycling.forecast.Forecaster`
from one observation time to the next, updates it there with
:func:`xensf.bridge.analysis.assimilate` (the ``ds.ensf.assimilate`` of every method),
and records each cycle: the forecast and analysis ensemble means and spreads, and
optionally the members.

With ``store=`` the record is a zarr v3 store, written by
:class:`xensf.cycling.store.CycleStore` one committed cycle at a time (see that module
for the crash-safety design: the root metadata file, replaced atomically, is the commit
point). The store also keeps the analysis members of the last cycle at full precision,
so a run that was killed at any moment continues, when started again with the same
call, from its last complete cycle and ends with the same store as a run that was never
interrupted: each analysis draws its random numbers from ``(seed, analysis time)``
alone, and the forecast starts from the very numbers the interrupted run would have
used. "The same" assumes the same software, device and number of torch threads before
and after the interruption (floating-point sums split across threads round
differently); with other ones the resumed cycles agree with an uninterrupted run to
rounding, not bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..checks import require_flag
from ..errors import (
    DimensionError,
    EnsembleError,
    OptionError,
    WarningTally,
    keyword_names,
)
from ..filters.noise import check_seed
from .context import CycleContext, land_masks, off_the_mask
from .forecast import check_forecaster, model_time_step
from .record import cycle_record, run_attrs
from .schedule import check_obs, initial_state, make_schedule
from .settings import run_settings
from .store import (
    TIME,
    CycleStore,
    encode_values,
    open_run,
    read_run,
    without_coordinate_fill,
)

__all__ = ["cycle"]


def cycle(
    model: Any,
    initial_ensemble: xr.Dataset,
    obs: xr.Dataset | xr.DataArray,
    *,
    method: str | None = None,
    latent_model: Any = None,
    obs_error: Any = None,
    every: int | None = None,
    until: Any = None,
    store: Any = None,
    members: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    overwrite: bool = False,
    member_dim: str | None = None,
    **options: Any,
) -> xr.Dataset:
    """Cycle an ensemble through forecasts and analyses, recording each cycle.

    From the initial ensemble at ``t0``, each cycle forecasts ``every`` model steps
    ahead with ``model`` and analyses the forecast with the observations of that
    time; the analysis is the start of the next forecast. Cycle times are
    ``t0 + i · every · model.time_step``; an observation at ``t0`` itself is analysed
    first, without a forecast.

    Parameters
    ----------
    model : Forecaster
        The forecast model: ``time_step`` and ``forecast(state, steps)`` (see
        :class:`xensf.cycling.Forecaster`), e.g.
        :class:`~xensf.cycling.ShallowWaterForecaster`. ``state`` is the ensemble
        without a time dim, with a scalar ``time`` coordinate giving its time.
    initial_ensemble : Dataset
        The ensemble to start from, at one time: a scalar ``time`` coordinate or a
        ``time`` dim of length 1 gives ``t0``. Its variables with the member dim are
        the state; other variables are handed to ``model`` unchanged each cycle.
    obs : Dataset or named DataArray
        Observations along a time dim, gridded (NaN where unobserved) or point, as
        :meth:`xarray.Dataset.ensf.assimilate` takes them. Every observation time must
        be a model time and on a cycle boundary, ``t0 + i · every · time_step``.
    method : {"ensf", "letkf", "latent-ensf", "latent-ensf-letkf", "latent-letkf"}, optional
        The analysis; default ``"latent-ensf"`` with ``latent_model``, else ``"ensf"``.
    latent_model : LatentModel or path, optional
        The trained latent model of the latent methods (``model=`` of
        ``ds.ensf.assimilate``; here ``model`` is the forecaster).
    obs_error : float, str or mapping, optional
        Observation-error standard deviation, as for ``ds.ensf.assimilate``.
    every : int, optional
        Model steps per cycle. Default: the spacing of the observation times, which
        must then be constant.
    until : datetime-like or number, optional
        Run cycles up to this time (inclusive); default the last observation time.
        Cycles with no observations (beyond the observations, or between them when
        ``every`` is shorter than their spacing) record the forecast as the analysis.
    store : str or path, optional
        A local directory to write the run to (zarr v3), or None to keep it in memory.
        If it holds a run of this call already, the run is resumed from its last
        complete cycle (a finished run, or one with more cycles than this call asks
        for, is returned as it is); settings that differ
        (method, options, observations, forecaster, seed, ...) are refused, naming
        each. A path that exists and is not an xensf run is refused and left alone.
    members : bool
        Also record the forecast and analysis members of every cycle.
    seed : int
        Seed of the analyses' random draws; each analysis time draws from
        ``(seed, time)``, so a resumed run repeats the draws exactly.
    progress : bool
        Show a progress bar over the cycles (tqdm) with the analysis spreads.
    device : str, optional
        Torch device of the analyses (the forecaster has its own).
    overwrite : bool
        Delete an existing xensf run at ``store`` and start afresh.
    member_dim : str, optional
        The member dim, when it cannot be told from CF metadata or its name.
    **options
        Options of the analysis method (``steps``, ``inflation``, ``loc_radius``, ...;
        see :meth:`xarray.Dataset.ensf.assimilate`).

    Returns
    -------
    Dataset
        Along ``time`` (the cycle times), for each state variable ``v``:
        ``v_forecast_mean``, ``v_forecast_spread``, ``v_analysis_mean``,
        ``v_analysis_spread`` (and with ``members``, ``v_forecast`` and ``v_analysis``
        with the member dim), and ``obs_count``, the number of observations each
        analysis used; per variable the fit to the observations, ``v_count`` (its
        observations), ``v_omb_mean``, ``v_omb_rms`` (O − B, the observations minus the
        forecast mean through the filter's operator) and ``v_oma_mean``, ``v_oma_rms``
        (O − A), NaN in a cycle without observations of ``v``. CF attributes (units and ``standard_name`` of the input,
        ``cell_methods`` of the statistic); the method, its options, the forecaster's
        settings, the observations and the seed in ``xensf_*`` global attributes.
        The opened store (lazy, dask-backed) with ``store=``, else in memory.

    Raises
    ------
    ObservationMismatchError
        An observation time that is not a model time, not on a cycle boundary, before
        ``t0``; observation variables the state does not have.
    ForecastError
        The model returned NaN/inf or a state of another shape; the message names the
        cycle and time. The store keeps the cycles before it and resumes after a fix.
    RunStoreError
        ``store`` exists and is not an xensf run, holds a run made with other
        settings, or is being written by another process.
    OptionError, DimensionError, EnsembleError, UnitsError
        Bad options, dims or data, before any work is done.

    Examples
    --------
    >>> import numpy as np, xensf
    >>> from xensf.cycling import ShallowWaterForecaster
    >>> from xensf.models.swe import ShallowWaterConfig
    >>> truth = xensf.models.shallow_water(n=16, steps=40, every=20, device="cpu")
    >>> start = xensf.models.shallow_water(
    ...     np.linspace(2e5, 3e5, 5), np.full(5, 2e5), n=16, steps=0, every=1, device="cpu"
    ... )
    >>> obs = truth[["eta"]].isel(time=slice(1, None))   # eta at every grid point
    >>> run = xensf.cycle(
    ...     ShallowWaterForecaster(ShallowWaterConfig(n=16), device="cpu"), start, obs,
    ...     method="letkf", loc_radius=2e5, obs_error=0.01, progress=False,
    ... )
    >>> run.sizes["time"], run.attrs["xensf_every"]
    (2, 20)
    """
    forecaster = check_forecaster(model)
    check_seed(seed)
    for name, flag in (("members", members), ("overwrite", overwrite), ("progress", progress)):
        require_flag(flag, name, OptionError)
    if not isinstance(initial_ensemble, xr.Dataset):
        raise OptionError(
            f"initial_ensemble must be an xarray Dataset, got a "
            f"{type(initial_ensemble).__name__}"
            + (
                " (da.to_dataset() makes one of a named DataArray)"
                if isinstance(initial_ensemble, xr.DataArray)
                else ""
            )
        )
    from ..bridge.dims import find_role
    from ..bridge.methods import resolve_method

    member = find_role(initial_ensemble, "member", override=member_dim)
    step = model_time_step(forecaster)  # in ns: timedelta64(6, 'h') counts hours
    t0, state0 = initial_state(initial_ensemble, step)
    names = [v for v in state0.data_vars if member in state0[v].dims]
    if not names:
        raise DimensionError(
            f"initial_ensemble has no variable with the member dim {member!r}; its "
            f"variables are {list(state0.data_vars)}"
        )
    for v, mask in land_masks(state0, names, member).items():
        if off_the_mask(state0[v].values, mask):
            raise EnsembleError(
                f"the initial ensemble variable {v!r} has NaN or infinite values that are "
                "not a land mask (NaN in every member at the same points); fill them "
                "before cycling"
            )
    obs, obs_time = check_obs(obs, names)
    spec = resolve_method(
        method,
        latent_model,
        options,
        model_arg="latent_model",
        parameters=keyword_names(cycle),
    )
    latent_digest = None
    if latent_model is not None:
        from ..bridge.model_cache import model_handle

        # Resolved once: each analysis then reads the bundle by its path, and an
        # in-memory model is not hashed again every cycle.
        handle = model_handle(latent_model)[0]
        latent_model, latent_digest = handle.path, handle.digest
    ctx = CycleContext(
        forecaster=forecaster, state0=state0, names=names, member=member, obs=obs,
        obs_time=obs_time, schedule=make_schedule(t0, step, obs, obs_time,
                                                  every, until),
        method=spec.name, latent_model=latent_model, obs_error=obs_error, seed=int(seed),
        device=device, member_dim=member_dim, members=bool(members), options=dict(options),
        spec=spec,
    )  # fmt: skip
    first = ctx.dry_run()
    # The method's outputs (the adaptive inflation's field on the grid, the hybrid's
    # blend evidence), NaN until an analysis makes them: the record's template of each.
    fields = {
        n: xr.DataArray(
            np.full(first[n].shape[1:], np.nan), dims=first[n].dims[1:], attrs=first[n].attrs
        )
        for n in ([] if first is None else ctx.outputs())
    }

    settings = run_settings(ctx, spec.options(), latent_digest)
    call = (
        f"xensf.cycle({forecaster!r}, <Dataset>, <{type(obs).__name__}>, method={spec.name!r}, "
        f"every={ctx.schedule.every}, store={None if store is None else str(store)!r}, "
        f"members={bool(members)}, seed={int(seed)})"
    )
    initial = {v: state0[v].values for v in names}
    template = cycle_record(ctx, t0, initial, initial, 0, fields=fields)
    template.attrs = run_attrs(initial_ensemble.attrs, settings, spec.name, call)

    run = open_run(store, overwrite, settings, template, {v: state0[v].variable for v in names})
    try:
        return _cycles(ctx, run, template, bool(progress), fields)
    finally:
        if run is not None:
            run.close()


def _cycles(
    ctx: CycleContext,
    run: CycleStore | None,
    template: xr.Dataset,
    progress: bool,
    fields: dict[str, xr.DataArray],
) -> xr.Dataset:
    """The cycles not yet in ``run`` (all of them without a store), then the whole run.

    ``fields`` are the method's outputs (NaN: none yet); each analysis starts from the
    last one's, read back from the store when the run resumes."""
    schedule = ctx.schedule
    done = 0 if run is None else run.committed
    if done >= len(schedule):
        return read_run(run.path)
    if done == 0:
        current = {v: np.array(ctx.state0[v].values, copy=True) for v in ctx.names}
    else:
        current = run.read_restart(ctx.names)
        fields = {n: f.copy(data=run.read_cycle(n, done - 1)) for n, f in fields.items()}
    rows = []
    bar = _progress(len(schedule), done, progress)
    tally = WarningTally("cycles of this run")
    try:
        for k in range(done, len(schedule)):
            forecast = ctx.forecast(current, k)
            if schedule.obs_index[k] is None:
                analysis, count, fit = forecast, 0, None
                fields = ctx.outputs_without_observations(fields)
            else:
                carried = {n: f for n, f in fields.items() if not np.isnan(f.values).all()}
                with tally.step(f"cycle {k + 1}"):
                    analysis, count, fit, fields = ctx.analyse(forecast, k, carried or None)
            row = cycle_record(ctx, schedule.time(k), forecast, analysis, count, fit, fields)
            if run is None:
                rows.append(row)
            else:
                run.write_cycle(
                    k, {n: encode_values(row[n].variable)[0] for n in run.cycle_arrays()},
                    analysis,
                )  # fmt: skip
                run.commit(k)
            current = analysis
            bar.set_postfix(
                {f"{v} spread": f"{float(row[f'{v}_analysis_spread'].mean()):.3g}"
                 for v in ctx.names[:3]},
                refresh=False,
            )  # fmt: skip
            bar.update(1)
    finally:
        bar.close()
        tally.report(len(schedule))
    if run is not None:
        return read_run(run.path)
    out = xr.concat(rows, TIME, coords="minimal", compat="override", combine_attrs="override")
    out.attrs = dict(template.attrs)
    return without_coordinate_fill(out)


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="xensf.cycle", unit="cycle", disable=not enabled)
