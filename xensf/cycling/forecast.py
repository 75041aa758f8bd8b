"""Forecast models for cycling: the :class:`Forecaster` protocol and the built-in ones.

A forecaster advances an ensemble, held in an xarray Dataset at one time, by a number
of its own time steps. :func:`xensf.cycle` calls it between analyses; anything with a
``time_step`` and a ``forecast(state, steps)`` method plugs in, e.g. a user's PyTorch
network wrapped in :class:`TorchForecaster`.

Built in:

- :class:`ShallowWaterForecaster`: the planar shallow-water basin of
  :mod:`xensf.models.swe` (variables ``eta, u, v`` on ``(member, y, x)``);
- :class:`TorchForecaster`: any tensor step ``(N, C, *grid) -> (N, C, *grid)``, a
  ``torch.nn.Module`` or a function, applied under ``torch.no_grad``;
- :class:`Persistence`: tomorrow equals today, the reference every forecast must beat.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import OptionError

__all__ = [
    "Forecaster",
    "Persistence",
    "ShallowWaterForecaster",
    "TorchForecaster",
    "check_forecaster",
    "forecaster_settings",
    "model_time_step",
]


@runtime_checkable
class Forecaster(Protocol):
    """What :func:`xensf.cycle` needs from a forecast model.

    Attributes
    ----------
    time_step : numpy.timedelta64 or float
        The model's time step, in the type of the time coordinate it is cycled on: a
        ``numpy.timedelta64`` for datetime coordinates, a number for numeric ones.

    Methods
    -------
    forecast(state, steps) -> xarray.Dataset
        Advance ``state`` by ``steps`` time steps. ``state`` is the ensemble at one
        time: a Dataset whose variables have the member dim and the grid dims and no
        time dim. The result has the same variables, dims, shapes and coords; its data
        are the forecast. It must not modify ``state``.

    A forecaster may also define ``settings() -> dict`` (JSON-able): the parameters
    that make two runs comparable. :func:`xensf.cycle` stores them and refuses to
    resume a store made with different settings.
    """

    time_step: Any

    def forecast(self, state: xr.Dataset, steps: int) -> xr.Dataset: ...


def forecaster_settings(model: Any) -> dict[str, Any]:
    """The settings that identify ``model`` in a cycling store (see :class:`Forecaster`)."""
    base = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    step = model.time_step
    base["time_step"] = (
        f"{int(step.astype('timedelta64[ns]').astype(np.int64))} ns"
        if isinstance(step, np.timedelta64)
        else float(step)
    )
    settings = getattr(model, "settings", None)
    if callable(settings):
        extra = settings()
        _check_json(extra, f"{type(model).__name__}.settings()")
        base.update(extra)
    return base


def _check_json(settings: Any, where: str) -> None:
    """Refuse settings that a cycling store cannot record as JSON and compare on resume:
    keys other than text, values other than numbers, text, lists and mappings of them
    (numpy's are fine). Such an object was recorded by its repr, whose address changes
    with every process, so that the run could not be resumed."""
    if not isinstance(settings, Mapping) or any(not isinstance(k, str) for k in settings):
        raise OptionError(
            f"{where} must be a mapping with text keys (JSON-able), got {settings!r}"
        )

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic | np.ndarray):
            return value.tolist()
        raise TypeError(type(value).__name__)

    try:
        json.dumps(dict(settings), default=plain)
    except (TypeError, ValueError) as err:
        raise OptionError(
            f"{where} holds a value that is not JSON-able (a {err}): give numbers, text, "
            "lists or mappings of them, which the run store records and compares on resume"
        ) from None


def _check_steps(steps: Any, who: str) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise OptionError(f"{who}: steps must be a non-negative integer, got {steps!r}")
    return int(steps)


def _check_time_step(time_step: Any, who: str) -> Any:
    if isinstance(time_step, str | datetime.timedelta | pd.Timedelta):
        try:  # "6h", "1D", as xarray and pandas read time spans
            time_step = pd.to_timedelta(time_step).to_timedelta64()
        except ValueError:
            raise OptionError(
                f"{who}: cannot read time_step={time_step!r} as a time span ('6h', '1D')"
            ) from None
    if isinstance(time_step, np.timedelta64):
        if not time_step > np.timedelta64(0, "ns"):
            raise OptionError(f"{who}: time_step must be positive, got {time_step}")
        return time_step.astype("timedelta64[ns]")
    if isinstance(time_step, int | float | np.number) and not isinstance(time_step, bool):
        if not time_step > 0:
            raise OptionError(f"{who}: time_step must be positive, got {time_step}")
        return float(time_step)
    raise OptionError(
        f"{who}: time_step must be a numpy.timedelta64 (datetime time coordinates) or a "
        f"positive number (numeric ones), got {time_step!r}"
    )


class Persistence:
    """The persistence forecast: the state does not change.

    Parameters
    ----------
    time_step : numpy.timedelta64, str or float
        The nominal time step (e.g. ``np.timedelta64(6, "h")`` or ``"6h"``), so that
        cycling knows which times are model times.
    """

    def __init__(self, time_step: Any) -> None:
        self.time_step = _check_time_step(time_step, "Persistence")

    def forecast(self, state: xr.Dataset, steps: int) -> xr.Dataset:
        _check_steps(steps, "Persistence.forecast")
        return state.copy(deep=True)

    def settings(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"Persistence(time_step={self.time_step!r})"


class TorchForecaster:
    """A tensor step function (e.g. a PyTorch network) as a :class:`Forecaster`.

    The Dataset's ``variables`` are stacked, in the given order, into the channel dim
    of a tensor ``(N, C, *grid)`` (members first, then the grid dims in the order of
    the first variable), ``step`` is applied ``steps`` times under ``torch.no_grad``,
    and the result is unstacked into a copy of the state.

    Parameters
    ----------
    step : callable
        ``(N, C, *grid) -> (N, C, *grid)`` on torch tensors: one model time step. A
        ``torch.nn.Module`` is put in eval mode and moved to ``device``.
    variables : list of str
        The state variables, in the channel order ``step`` expects.
    time_step : numpy.timedelta64, str or float
        What one call of ``step`` advances (a string such as ``"6h"`` is read as a
        ``numpy.timedelta64``).
    member_dim : str
        The member dimension of the states.
    device : str or torch.device, optional
        Where to compute; default CUDA when available, else CPU.
    dtype : torch.dtype, optional
        The dtype of the tensors handed to ``step`` (default float32); numpy's and
        names (``"float64"``) are read as the torch dtype.
    name : str, optional
        A name for the settings a cycling store records (default: the class of ``step``).
    settings : dict, optional
        More parameters to record (JSON-able), e.g. the network's training run.
    """

    def __init__(
        self,
        step,
        variables: list[str],
        time_step: Any,
        *,
        member_dim: str = "member",
        device=None,
        dtype=None,
        name: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if not callable(step):
            raise OptionError(f"TorchForecaster: step must be callable, got {type(step).__name__}")
        if isinstance(variables, str) or not variables:
            raise OptionError(
                f"TorchForecaster: variables must be a non-empty list of names, got {variables!r}"
            )
        twice = sorted({str(v) for v in variables if list(variables).count(v) > 1})
        if twice:
            raise OptionError(
                f"TorchForecaster: variables lists {twice} more than once; list each once "
                "(the step gets them stacked in this order)"
            )
        self.step = step
        self.variables = list(variables)
        self.time_step = _check_time_step(time_step, "TorchForecaster")
        self.member_dim = member_dim
        self.device = device
        if dtype is not None:
            from ..filters.tensors import float_dtype

            dtype = float_dtype(dtype, "TorchForecaster")
        self.dtype = dtype
        self.name = name or f"{type(step).__module__}.{type(step).__qualname__}"
        _check_json({} if settings is None else settings, "TorchForecaster: settings")
        self._settings = dict(settings or {})
        self._module_ready = False

    def settings(self) -> dict[str, Any]:
        return {"step": self.name, "variables": self.variables, **self._settings}

    def _tensor_step(self, x):
        return self.step(x)

    def forecast(self, state: xr.Dataset, steps: int) -> xr.Dataset:
        import torch

        from ..filters.device import compute_device

        steps = _check_steps(steps, f"{type(self).__name__}.forecast")
        missing = [v for v in self.variables if v not in state.data_vars]
        if missing:
            raise OptionError(
                f"{type(self).__name__}: the state has no variable(s) {missing}; it has "
                f"{list(state.data_vars)}"
            )
        first = state[self.variables[0]]
        if self.member_dim not in first.dims:
            raise OptionError(
                f"{type(self).__name__}: {self.variables[0]!r} has no member dim "
                f"{self.member_dim!r}; its dims are {first.dims} (set member_dim=)"
            )
        order = (self.member_dim, *(d for d in first.dims if d != self.member_dim))
        for v in self.variables:
            if set(state[v].dims) != set(order):
                raise OptionError(
                    f"{type(self).__name__}: {v!r} has dims {state[v].dims}, the others "
                    f"{order}; all variables must share one grid"
                )
        device = compute_device(self.device)
        dtype = self.dtype or torch.float32
        if isinstance(self.step, torch.nn.Module) and not self._module_ready:
            self.step.to(device).eval()
            self._module_ready = True
        x = np.stack([state[v].transpose(*order).values for v in self.variables], axis=1)
        t = torch.as_tensor(x, dtype=dtype, device=device)
        with torch.no_grad():
            for _ in range(steps):
                t = self._tensor_step(t)
        if tuple(t.shape) != x.shape:
            raise OptionError(
                f"{type(self).__name__}: the step returned shape {tuple(t.shape)} for a "
                f"state of shape {x.shape}; it must keep the shape"
            )
        out = t.cpu().numpy()
        result = state.copy(deep=False)
        for c, v in enumerate(self.variables):
            da = state[v].transpose(*order)
            new = da.copy(data=out[:, c].astype(da.dtype, copy=False))
            result[v] = new.transpose(*state[v].dims)
        return result

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(step={self.name}, variables={self.variables}, "
            f"time_step={self.time_step!r})"
        )


class ShallowWaterForecaster(TorchForecaster):
    """The planar shallow-water basin as a :class:`Forecaster`.

    States are Datasets with ``eta``, ``u``, ``v`` on ``(member, y, x)`` as
    :func:`xensf.models.shallow_water` makes them.

    Parameters
    ----------
    config : ShallowWaterConfig, optional
        The basin (default: the paper's 150 × 150 one). Its dtype is the computing
        dtype; its device is ignored in favour of ``device``.
    time_coordinate : {"datetime", "seconds"}
        ``"datetime"``: ``time_step`` is a ``numpy.timedelta64`` (the simulator's
        default time axis); ``"seconds"``: a float number of seconds.
    device : str or torch.device, optional
        Where to compute; default CUDA when available.
    member_dim : str
        The member dimension.
    """

    def __init__(
        self,
        config=None,
        *,
        time_coordinate: str = "datetime",
        device=None,
        member_dim: str = "member",
    ) -> None:
        from ..models.swe import ShallowWaterConfig

        self.config = ShallowWaterConfig() if config is None else config
        if not isinstance(self.config, ShallowWaterConfig):
            raise OptionError(
                "ShallowWaterForecaster: config must be a "
                f"xensf.models.swe.ShallowWaterConfig, got {type(config).__name__}"
            )
        if time_coordinate == "datetime":
            time_step = np.timedelta64(self.config.dt_ns, "ns")
        elif time_coordinate == "seconds":
            time_step = float(self.config.dt)
        else:
            raise OptionError(
                f"ShallowWaterForecaster: time_coordinate must be 'datetime' or 'seconds', "
                f"got {time_coordinate!r}"
            )
        super().__init__(
            self._shallow_water_step,
            ["eta", "u", "v"],
            time_step,
            member_dim=member_dim,
            device=device,
            dtype=self.config.dtype,
            name="xensf.models.swe.shallow_water_step",
        )

    def _shallow_water_step(self, x):
        from ..models.swe import shallow_water_step

        return shallow_water_step(x, self.config)

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "step": self.name,
            "n": c.n,
            "L": c.L,
            "H": c.H,
            "g": c.g,
            "f0": c.f0,
            "beta": c.beta,
            "dt_factor": c.dt_factor,
            "dtype": str(c.dtype),
            # only when not the default, so that runs made before the option resume
            **({"coriolis": c.coriolis} if c.coriolis != "c-grid" else {}),
        }

    def __repr__(self) -> str:
        return f"ShallowWaterForecaster(n={self.config.n}, dt={self.config.dt:.4g} s)"


def check_forecaster(model: Any) -> Any:
    """``model`` if it is a usable :class:`Forecaster` (a positive time step), else an error."""
    model_time_step(model)
    return model


def model_time_step(model: Any) -> Any:
    """The forecaster's ``time_step``, checked: a ``timedelta64[ns]`` (a step of
    ``timedelta64(6, "h")`` counts hours, which the schedule's arithmetic in
    nanoseconds read as 6 ns) or a float."""
    if not callable(getattr(model, "forecast", None)) or not hasattr(model, "time_step"):
        raise OptionError(
            f"model must be a forecaster with a time_step and a forecast(state, steps) method "
            f"(see xensf.cycling.Forecaster), got {type(model).__name__}"
        )
    step = model.time_step
    if isinstance(step, np.timedelta64):
        if np.isnat(step) or not step > np.timedelta64(0, "ns"):
            raise OptionError(f"the model's time_step must be positive, got {step}")
        return step.astype("timedelta64[ns]")
    if not (isinstance(step, int | float | np.number) and not isinstance(step, bool)):
        raise OptionError(
            f"the model's time_step must be a numpy.timedelta64 or a number, got {step!r}"
        )
    if not (step > 0 and np.isfinite(step)):
        raise OptionError(f"the model's time_step must be positive and finite, got {step!r}")
    return float(step)
