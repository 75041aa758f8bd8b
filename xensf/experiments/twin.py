"""The shallow-water twin experiment of the Latent-EnSF paper, as reusable pieces.

A truth run of the planar basin from one bump position is observed at every
``stride``-th grid point in each direction (all three variables, 1/stride² of the
grid) with noise; an ensemble started from wrong bump positions is cycled with each
method; the skill is the relative RMSE of the ensemble mean per cycle.

Definitions (also in ``docs/benchmarks.md``):

- **observation noise p %**: Gaussian, standard deviation ``p/100 · s_v`` for variable
  ``v``, where ``s_v`` is the standard deviation of the truth's field ``v`` over all
  grid points and all times of the run. The filters are told this error; at 0 % they
  are told a floor of ``noise_floor`` (1 %) so that the likelihood stays finite;
- **relative RMSE** at a time: ``‖(mean − truth)/s‖ / ‖truth/s‖`` over the whole
  state, each variable divided by its ``s_v`` so that η (metres) does not drown u and
  v (metres per second);
- **hard prior** (the paper's headline): members start from a bump at
  ``prior_position`` plus small Gaussian noise on η; the ensemble spread does not
  contain the displacement. **easy prior**: members start from bumps jittered by a few
  cells around the truth's position.

Used by ``xensf demo`` (a reduced setup) and ``benchmarks/bench_swe_twin.py`` (the
paper-size one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import xarray as xr

from ..checks import is_integer, is_real
from ..errors import OptionError

__all__ = [
    "TwinSetup",
    "free_run",
    "initial_ensemble",
    "observations",
    "observed_points",
    "training_runs",
    "truth_run",
]


def _is_position(v) -> bool:
    return (
        isinstance(v, tuple | list | np.ndarray)
        and np.ndim(v) == 1
        and len(v) == 2
        and all(is_real(f) and -0.5 <= f <= 0.5 for f in v)
    )


# What each field of a TwinSetup must be: (the rule in words, the test).
_RULES: dict[str, tuple[str, Any]] = {
    "n": ("an integer >= 2", lambda v: is_integer(v) and v >= 2),
    "steps": ("a positive integer", lambda v: is_integer(v) and v >= 1),
    "every": ("a positive integer", lambda v: is_integer(v) and v >= 1),
    "stride": ("a positive integer", lambda v: is_integer(v) and v >= 1),
    "members": ("an integer >= 2 (an ensemble)", lambda v: is_integer(v) and v >= 2),
    "truth_position": (
        "two fractions of the basin side from its centre, each in [-0.5, 0.5]",
        _is_position,
    ),
    "prior_position": (
        "two fractions of the basin side from its centre, each in [-0.5, 0.5]",
        _is_position,
    ),
    "eta_noise": ("a finite number >= 0 (metres)", lambda v: is_real(v) and 0 <= v < np.inf),
    "jitter_cells": ("a finite number >= 0 (cells)", lambda v: is_real(v) and 0 <= v < np.inf),
    "noise_floor": ("a finite number > 0", lambda v: is_real(v) and 0 < v < np.inf),
    "letkf_radius": ("a finite number > 0 (metres)", lambda v: is_real(v) and 0 < v < np.inf),
    "letkf_inflation": ("a finite number >= 1", lambda v: is_real(v) and 1 <= v < np.inf),
    "letkf_adaptive_damping": (
        "None or a number in [0, 1]",
        lambda v: v is None or (is_real(v) and 0 <= v <= 1),
    ),
    "obs_gaps": ("a share in [0, 1)", lambda v: is_real(v) and 0 <= v < 1),
    "ensf_steps": ("a positive integer", lambda v: is_integer(v) and v >= 1),
    "seed": ("an integer", is_integer),
}


@dataclass(frozen=True)
class TwinSetup:
    """Everything that defines one twin experiment.

    Lengths are metres from the basin centre; ``L`` is the basin side.
    """

    n: int = 150
    steps: int = 2000
    every: int = 20
    stride: int = 15
    members: int = 20
    truth_position: tuple[float, float] = (1 / 2.7, 1 / 4)  # fractions of L
    prior_position: tuple[float, float] = (1 / 2, 1 / 3)  # fractions of L (hard prior)
    prior: str = "hard"
    eta_noise: float = 0.05  # m, std of the η noise of the hard prior's members
    jitter_cells: float = 3.0  # std of the easy prior's bump positions, in cells
    noise_floor: float = 0.01  # fraction of s_v told to the filters at 0 % noise
    letkf_radius: float = 150e3  # m, Gaspari–Cohn half-width c (weight 0 at 2c)
    letkf_inflation: float = 1.1
    # None: the fixed letkf_inflation; a number: adaptive inflation (Miyoshi 2011) started
    # from none, with this damping (1 = persistence), instead
    letkf_adaptive_damping: float | None = None
    # latent-ensf-letkf blends on the evidence accumulated over cycles (blend_evidence,
    # started from 0) instead of each analysis's alone
    blend_evidence: bool = False
    # share of the observed points left out at random at each cycle (all variables of
    # a point together: a station out)
    obs_gaps: float = 0.0
    ensf_steps: int = 100
    seed: int = 0
    start: str = "2000-01-01"

    def __post_init__(self) -> None:
        for name, (must_be, holds) in _RULES.items():
            value = getattr(self, name)
            if not holds(value):
                raise OptionError(f"TwinSetup: {name}={value!r}; it must be {must_be}")
        if self.steps % self.every:
            raise OptionError(f"TwinSetup: every={self.every} must divide steps={self.steps}")
        if self.stride > self.n:
            raise OptionError(
                f"TwinSetup: stride={self.stride} is larger than the grid (n={self.n}); "
                "observe every stride-th cell with a stride of at most n"
            )
        if self.prior not in ("hard", "easy"):
            raise OptionError(f"TwinSetup: prior must be 'hard' or 'easy', got {self.prior!r}")

    @property
    def config(self):
        from ..models.swe import ShallowWaterConfig

        return ShallowWaterConfig(n=self.n)

    @property
    def cycles(self) -> int:
        return self.steps // self.every

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes) -> TwinSetup:
        return replace(self, **changes)


def truth_run(setup: TwinSetup, device=None) -> xr.Dataset:
    """The true run: ``eta, u, v`` on ``(time, y, x)`` at every cycle time, t0 included."""
    from ..models.simulate import shallow_water

    L = setup.config.L
    x0, y0 = (f * L for f in setup.truth_position)
    return shallow_water(
        x0, y0, n=setup.n, steps=setup.steps, every=setup.every, start=setup.start, device=device
    )


def field_scales(truth: xr.Dataset) -> dict[str, float]:
    """``s_v``: the std of each truth variable over all grid points and times."""
    return {v: float(truth[v].std()) for v in ("eta", "u", "v")}


def initial_ensemble(setup: TwinSetup, device=None) -> xr.Dataset:
    """The members at t0, ``(member, y, x)``, with a scalar ``time`` coordinate."""
    import torch

    from ..filters.device import compute_device
    from ..models.simulate import shallow_water_state
    from ..models.swe import initial_state

    cfg = setup.config
    rng = np.random.default_rng([setup.seed, 1])
    L = cfg.L
    if setup.prior == "hard":
        x0 = np.full(setup.members, setup.prior_position[0] * L)
        y0 = np.full(setup.members, setup.prior_position[1] * L)
    else:
        x0 = setup.truth_position[0] * L + setup.jitter_cells * cfg.dx * rng.standard_normal(
            setup.members
        )
        y0 = setup.truth_position[1] * L + setup.jitter_cells * cfg.dx * rng.standard_normal(
            setup.members
        )
        x0, y0 = (np.clip(a, -L / 2, L / 2) for a in (x0, y0))
    dev = compute_device(device)
    state = initial_state(
        cfg,
        torch.as_tensor(x0, dtype=cfg.dtype, device=dev),
        torch.as_tensor(y0, dtype=cfg.dtype, device=dev),
    ).cpu()
    if setup.prior == "hard" and setup.eta_noise > 0:
        noise = rng.standard_normal((setup.members, cfg.n, cfg.n)) * setup.eta_noise
        state[:, 0] += torch.as_tensor(noise, dtype=state.dtype)
    ds = shallow_water_state(state.numpy(), cfg)
    ds = ds.assign_coords(
        time=xr.Variable((), np.datetime64(setup.start, "ns"), {"standard_name": "time"})
    )
    ds.attrs["xensf_prior"] = setup.prior
    return ds


def observations(
    truth: xr.Dataset, setup: TwinSetup, noise: float, *, seed: int | None = None
) -> tuple[xr.Dataset, dict[str, float]]:
    """Noisy observations of every ``stride``-th point at each cycle time after t0, less
    a share ``setup.obs_gaps`` of those points left out at random per time.

    Returns the gridded observations (NaN where unobserved) and the observation error
    per variable the filters are told (``max(noise, noise_floor) · s_v``).
    """
    if not 0 <= noise < 1:
        raise OptionError(f"observations: noise is a fraction in [0, 1), got {noise}")
    scales = field_scales(truth)
    rng = np.random.default_rng([setup.seed if seed is None else seed, 2, int(noise * 1000)])
    obs = truth.isel(time=slice(1, None)).copy(deep=True)
    mask = observed_points(setup)
    missing = np.zeros((obs.sizes["time"], *mask.shape), bool)  # (time, n, n)
    if setup.obs_gaps:  # the same points left out at every noise level
        gaps = np.random.default_rng([setup.seed, 3]).random(missing.shape)
        missing = gaps < setup.obs_gaps
    for v in ("eta", "u", "v"):
        values = obs[v].values
        values = values + noise * scales[v] * rng.standard_normal(values.shape).astype(
            values.dtype
        )
        values[:, ~mask] = np.nan
        values[missing] = np.nan
        obs[v].values = values
    obs.attrs = {
        "title": "synthetic observations of the shallow-water truth",
        "observation_noise": f"{noise:.0%} of each variable's std over the truth run",
        "observation_stride": setup.stride,
    }
    if setup.obs_gaps:
        obs.attrs["observation_gaps"] = f"{setup.obs_gaps:.0%} of the points left out per time"
    errors = {v: max(noise, setup.noise_floor) * s for v, s in scales.items()}
    return obs, errors


def observed_points(setup: TwinSetup) -> np.ndarray:
    """The observed cells, ``(n, n)`` bool: every ``stride``-th, from ``stride // 2``."""
    mask = np.zeros((setup.n, setup.n), bool)
    off = setup.stride // 2
    mask[off :: setup.stride, off :: setup.stride] = True
    return mask


def training_runs(
    setup: TwinSetup, runs: int, *, every: int | None = None, seed: int = 7, device=None
) -> xr.Dataset:
    """Runs from ``runs`` random bump positions (none the truth's), ``(time, member, y, x)``.

    Positions are uniform in the basin, at least two bump widths from the truth's
    position; ``every`` thins the saved times (default the cycle length).
    """
    from ..models.simulate import shallow_water

    cfg = setup.config
    L = cfg.L
    rng = np.random.default_rng(seed)
    tx, ty = (f * L for f in setup.truth_position)
    xs, ys = [], []
    while len(xs) < runs:
        x, y = rng.uniform(-0.45 * L, 0.45 * L, 2)
        if np.hypot(x - tx, y - ty) > 100e3:
            xs.append(x)
            ys.append(y)
    return shallow_water(
        np.array(xs),
        np.array(ys),
        n=setup.n,
        steps=setup.steps,
        every=every or setup.every,
        start=setup.start,
        device=device,
    )


def free_run(initial: xr.Dataset, setup: TwinSetup, device=None) -> xr.Dataset:
    """The ensemble run without assimilation, at every cycle time after t0."""
    from ..cycling.forecast import ShallowWaterForecaster

    model = ShallowWaterForecaster(setup.config, device=device)
    state = initial.drop_vars("time")
    out = []
    for _ in range(setup.cycles):
        state = model.forecast(state, setup.every)
        out.append(state)
    t0 = np.datetime64(setup.start, "ns")
    times = t0 + np.arange(1, setup.cycles + 1) * setup.every * model.time_step
    return xr.concat(out, dim="time").assign_coords(time=times)
