"""Twin-experiment simulators that return xarray Datasets with CF-style metadata.

The models themselves are tensor code (:mod:`xensf.models.swe`, :mod:`xensf.models.l96`:
torch, no xarray); these functions run them and label the result, so a twin experiment starts from data
that looks like any other: ``truth = xensf.models.shallow_water(steps=2000, every=20)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import OptionError

__all__ = ["lorenz96", "shallow_water", "shallow_water_state"]

_SW_ATTRS = {
    "eta": {
        "standard_name": "sea_surface_height_above_mean_sea_level",
        "long_name": "surface elevation above the mean depth",
        "units": "m",
    },
    "u": {
        "standard_name": "sea_water_x_velocity",
        "long_name": "depth-mean velocity along x, on the east face of each cell",
        "units": "m s-1",
        "comment": "Arakawa C grid: located half a cell east of the (y, x) coordinates",
    },
    "v": {
        "standard_name": "sea_water_y_velocity",
        "long_name": "depth-mean velocity along y, on the north face of each cell",
        "units": "m s-1",
        "comment": "Arakawa C grid: located half a cell north of the (y, x) coordinates",
    },
}


def _grid_coords(config) -> dict[str, xr.Variable]:
    c = (np.arange(config.n) + 0.5) * config.dx - config.L / 2
    coords = {}
    for name, axis in (("y", "Y"), ("x", "X")):
        coords[name] = xr.Variable(
            name,
            c.copy(),
            {
                "standard_name": f"projection_{name}_coordinate",
                "long_name": f"{name} of the cell centre from the basin centre",
                "units": "m",
                "axis": axis,
            },
        )
    return coords


def _member_coord(n: int) -> xr.Variable:
    return xr.Variable(
        "member", np.arange(n), {"standard_name": "realization", "long_name": "ensemble member"}
    )


def shallow_water_state(
    state: np.ndarray,
    config,
    *,
    time: Any = None,
    members: bool = True,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Label a shallow-water state array ``(..., 3, n, n)`` as a Dataset.

    Parameters
    ----------
    state : array
        ``([time,] [member,] 3, n, n)`` (numpy or torch), channels ``eta, u, v``.
    config : ShallowWaterConfig
        The basin the state belongs to.
    time : array-like, optional
        The time coordinate when ``state`` has a leading time dim.
    members : bool
        Whether the dim before the channels is the member dim.
    attrs : dict, optional
        Global attributes to add.
    """
    arr = np.asarray(state.detach().cpu() if hasattr(state, "detach") else state)
    lead = []
    if time is not None:
        lead.append("time")
    if members:
        lead.append("member")
    if arr.ndim != len(lead) + 3 or arr.shape[-3:] != (3, config.n, config.n):
        raise OptionError(
            f"shallow_water_state: expected an array of shape ({', '.join([*lead, '3', 'n', 'n'])}) "
            f"with n = {config.n}, got {arr.shape}"
        )
    dims = (*lead, "y", "x")
    coords: dict[str, Any] = dict(_grid_coords(config))
    if members:
        coords["member"] = _member_coord(arr.shape[len(lead) - 1])
    if time is not None:
        coords["time"] = xr.Variable(
            "time", np.asarray(time), {"standard_name": "time", "axis": "T"}
        )
    data = {
        name: xr.Variable(dims, arr[..., c, :, :], dict(_SW_ATTRS[name]))
        for c, name in enumerate(("eta", "u", "v"))
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(
        {
            "Conventions": "CF-1.11",
            "title": "planar shallow-water basin (xensf twin experiment)",
            "source": "xensf.models.shallow_water",
            "basin_side_m": config.L,
            "mean_depth_m": config.H,
            "gravity_m_s-2": config.g,
            "coriolis_f0_s-1": config.f0,
            "coriolis_beta_m-1_s-1": config.beta,
            "time_step_s": config.dt,
        }
    )
    ds.attrs.update(attrs or {})
    return ds


def shallow_water(
    x0: Any = None,
    y0: Any = None,
    *,
    n: int = 150,
    steps: int = 2000,
    every: int = 20,
    height: float = 1.0,
    width: float = 50e3,
    start: str | np.datetime64 = "2000-01-01",
    config=None,
    device=None,
    dtype=None,
) -> xr.Dataset:
    """Run the planar shallow-water basin from a Gaussian bump and return a Dataset.

    Parameters
    ----------
    x0, y0 : float or 1-D array-like, optional
        Centre(s) of the initial bump, metres from the basin centre. Arrays give one
        ensemble member per entry (a ``member`` dim). Default: the paper's truth,
        ``(L/2.7, L/4)``.
    n : int
        Cells along each side (ignored when ``config`` is given).
    steps : int
        Model steps to run.
    every : int
        Keep every ``every``-th state; ``steps`` must be a multiple of it.
    height, width : float
        Peak (m) and standard deviation (m) of the bump.
    start : str or numpy.datetime64
        The time of the initial state; later times are ``start + k · dt`` (to the
        nanosecond).
    config : ShallowWaterConfig, optional
        The basin; default ``ShallowWaterConfig(n=n)``.
    device, dtype : optional
        Where and in what precision to run (default: CUDA when available; float32). The
        dtype is a floating torch dtype, numpy's or its name (``"float64"``).

    Returns
    -------
    xarray.Dataset
        ``eta``, ``u``, ``v`` on ``(time, [member,] y, x)``; CF attributes; the basin's
        parameters in the global attributes.

    Examples
    --------
    >>> ds = shallow_water(n=30, steps=40, every=20)
    >>> dict(ds.sizes)
    {'time': 3, 'y': 30, 'x': 30}
    """
    import torch

    from ..filters.device import compute_device
    from .swe import ShallowWaterConfig, initial_state, shallow_water_run

    try:
        t0 = np.datetime64(start, "ns")
    except (TypeError, ValueError):
        raise OptionError(
            f"shallow_water: start={start!r} is not a time; give a date such as "
            "'2000-01-01' or a numpy.datetime64"
        ) from None
    dev = compute_device(device)
    if config is None:
        config = ShallowWaterConfig(
            n=n, dtype=torch.float32 if dtype is None else dtype, device=dev
        )
    else:
        from dataclasses import replace

        config = replace(config, device=dev, dtype=config.dtype if dtype is None else dtype)
    if x0 is None:
        x0 = config.L / 2.7
    if y0 is None:
        y0 = config.L / 4
    try:
        x0a, y0a = np.asarray(x0, float), np.asarray(y0, float)
    except (TypeError, ValueError):
        raise OptionError(
            f"shallow_water: x0 and y0 must be numbers or 1-D arrays of numbers (metres "
            f"from the basin centre), got {x0!r}, {y0!r}"
        ) from None
    if x0a.ndim > 1 or y0a.ndim > 1:
        raise OptionError(
            f"shallow_water: x0 and y0 must be numbers or 1-D, got shapes {x0a.shape}, {y0a.shape}"
        )
    if (x0a.ndim == y0a.ndim == 1 and x0a.size != y0a.size) or 0 in (x0a.size, y0a.size):
        raise OptionError(
            "shallow_water: x0 and y0 give one member per entry and must have one length "
            f"(at least 1), got {x0a.size} and {y0a.size}"
        )
    x0a, y0a = np.broadcast_arrays(x0a, y0a)
    members = x0a.ndim == 1
    state = initial_state(
        config,
        torch.as_tensor(x0a, dtype=config.dtype, device=dev),
        torch.as_tensor(y0a, dtype=config.dtype, device=dev),
        height=height,
        width=width,
    )
    traj = shallow_water_run(state, config, steps, every)
    if not torch.isfinite(traj).all():
        raise OptionError(
            "shallow_water: the run produced NaN or inf; lower the bump height or dt_factor"
        )
    step_ns = np.timedelta64(config.dt_ns, "ns")
    times = t0 + np.arange(0, steps + 1, every) * step_ns
    ds = shallow_water_state(
        traj.cpu().numpy(),
        config,
        time=times,
        members=members,
        attrs={"bump_height_m": height, "bump_width_m": width},
    )
    if members:
        ds = ds.assign_coords(
            bump_x=("member", x0a, {"units": "m", "long_name": "x of the initial bump"}),
            bump_y=("member", y0a, {"units": "m", "long_name": "y of the initial bump"}),
        )
    else:
        ds.attrs.update({"bump_x_m": float(x0a), "bump_y_m": float(y0a)})
    return ds


def lorenz96(
    x0: Any = None,
    *,
    d: int | None = None,
    members: int | None = None,
    steps: int = 1000,
    every: int = 1,
    dt: float = 0.05,
    forcing: float = 8.0,
    spinup: int = 1000,
    spread: float = 1.0,
    seed: int = 0,
    device=None,
    dtype=None,
) -> xr.Dataset:
    """Run Lorenz-96 and return a Dataset ``x`` on ``(time, [member,] site)``.

    Parameters
    ----------
    x0 : array-like, optional
        Initial state ``(d,)`` or ``(members, d)``. Default: ``F`` everywhere with a
        small perturbation of site 0, integrated for ``spinup`` steps onto the attractor;
        with ``members`` the ensemble is that state plus Gaussian noise of std
        ``spread`` drawn from ``seed``.
    d : int, optional
        Number of sites (any size; 10⁶ works). Default: 40, or the last dim of ``x0``
        (a ``d`` that differs from it is an error).
    members : int, optional
        Ensemble size (adds a ``member`` dim).
    steps, every : int
        Steps to run; keep every ``every``-th state.
    dt, forcing : float
        RK4 step (0.05 is "6 hours") and forcing ``F``.
    spinup : int
        Steps run before time 0 when ``x0`` is not given.
    spread : float
        Std of the members' initial perturbation.
    seed : int
        Seed of the perturbations.
    device, dtype : optional
        Where and in what precision to run (default CUDA when available; float64). The
        dtype is a floating torch dtype, numpy's or its name (``"float32"``).

    Returns
    -------
    xarray.Dataset
        ``time`` in model time units (numeric), ``site`` 0..d−1.

    Examples
    --------
    >>> ds = lorenz96(d=8, steps=10, spinup=10)
    >>> dict(ds.sizes)
    {'time': 11, 'site': 8}
    """
    import torch

    from ..filters.device import compute_device
    from ..filters.tensors import float_dtype
    from .l96 import lorenz96_run

    if x0 is not None:
        x0 = np.asarray(x0)
        if x0.ndim not in (1, 2) or (d is not None and x0.shape[-1] != d):
            raise OptionError(
                f"lorenz96: x0 has shape {x0.shape}; give ({d or 'd'},) or (members, "
                f"{d or 'd'}): one state or one per member"
            )
        d = x0.shape[-1]
    d = 40 if d is None else d
    for name, value, ok in (
        ("d", d, isinstance(d, int | np.integer) and d >= 4),
        ("seed", seed, isinstance(seed, int | np.integer)),
        ("every", every, isinstance(every, int | np.integer) and every >= 1),
        ("steps", steps, isinstance(steps, int | np.integer) and steps >= 0),
        ("spinup", spinup, isinstance(spinup, int | np.integer) and spinup >= 0),
        ("members", members, members is None or (isinstance(members, int | np.integer) and members >= 1)),
        ("dt", dt, np.isfinite(dt) and dt > 0),
        ("forcing", forcing, np.isfinite(forcing)),
        ("spread", spread, np.isfinite(spread) and spread >= 0),
    ):  # fmt: skip
        if not ok:
            raise OptionError(
                f"lorenz96: {name}={value!r} is out of range (d: an integer >= 4, seed and "
                "every: integers, every >= 1, steps and spinup: integers >= 0, members: None "
                "or >= 1, dt: > 0, forcing: finite, spread: >= 0)"
            )
    dev = compute_device(device)
    dtype = torch.float64 if dtype is None else float_dtype(dtype, "lorenz96")
    g = torch.Generator(device="cpu").manual_seed(seed)
    if x0 is None:
        x = torch.full((d,), float(forcing), dtype=dtype)
        x[0] += 0.01
        x = x.to(dev)
        if spinup:
            x = lorenz96_run(x, spinup, dt=dt, forcing=forcing)[-1]
        if members is not None:
            noise = torch.randn((members, d), generator=g, dtype=dtype).to(dev)
            x = x + spread * noise
    else:
        x = torch.as_tensor(x0, dtype=dtype, device=dev)
        if not bool(torch.isfinite(x).all()):
            raise OptionError("lorenz96: x0 holds NaN or inf; give a finite initial state")
        if members is not None and (x.ndim != 2 or x.shape[0] != members):
            raise OptionError(
                f"lorenz96: x0 has shape {tuple(x.shape)}; with members={members} it must be "
                f"({members}, d)"
            )
    if steps % every:
        raise OptionError(
            f"lorenz96: every={every} must be a positive integer dividing steps={steps}"
        )
    traj = lorenz96_run(x, steps, dt=dt, forcing=forcing, every=every)
    if not bool(torch.isfinite(traj).all()):
        raise OptionError(
            f"lorenz96: the run produced NaN or inf (dt={dt:g}, forcing={forcing:g}); a "
            "smaller dt keeps the integration stable (0.05 is the usual step at F = 8)"
        )
    dims = ("time", "member", "site") if traj.ndim == 3 else ("time", "site")
    coords = {
        "time": (
            "time",
            np.arange(0, steps + 1, every) * dt,
            {"long_name": "model time", "units": "1", "axis": "T"},
        ),
        "site": ("site", np.arange(traj.shape[-1]), {"long_name": "Lorenz-96 site"}),
    }
    if traj.ndim == 3:
        coords["member"] = _member_coord(traj.shape[1])
    return xr.Dataset(
        {"x": (dims, traj.cpu().numpy(), {"long_name": "Lorenz-96 variable", "units": "1"})},
        coords=coords,
        attrs={
            "Conventions": "CF-1.11",
            "source": "xensf.models.lorenz96",
            "forcing": forcing,
            "time_step": dt,
        },
    )
