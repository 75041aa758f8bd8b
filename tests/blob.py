"""A small twin experiment: an advected Gaussian blob on a doubly periodic planar grid.

The state is a layer thickness ``h`` (metres): a flat background plus one Gaussian
bump that moves at constant velocity across a periodic square basin. The fields live
on a planar grid with coordinates ``y``/``x`` in km (CF ``projection_y_coordinate`` /
``projection_x_coordinate``), so xensf treats the grid as planar, not as degrees.

* :func:`blob_training` — many runs from random positions and velocities, dims
  ``(time, member, y, x)`` (``member`` = run): the latent model's training data;
* :func:`blob_truth` — one held-out run, dims ``(time, y, x)``, from a position no
  training run starts at;
* :func:`blob_prior` — a forecast ensemble started from a *wrong* position (plus a
  little jitter), dims ``(time, member, y, x)``: the hard case where the ensemble
  spread does not contain the displacement, so ensemble-space methods cannot move the
  bump;
* :func:`blob_observations` — every ``stride``-th point of the truth with Gaussian
  noise, NaN elsewhere, on the state grid.

Used by ``tests/test_train_latent.py`` and ``benchmarks/bench_latent_twin.py``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = [
    "PRIOR_START",
    "TRUTH_START",
    "BlobGrid",
    "blob_field",
    "blob_observations",
    "blob_prior",
    "blob_training",
    "blob_truth",
    "relative_rmse",
]

DEPTH = 10.0  # m, the flat background
AMPLITUDE = 1.0  # m, the bump's height
TIME0 = np.datetime64("2024-01-01T00:00", "ns")
STEP = np.timedelta64(1, "h")


class BlobGrid:
    """An ``n × n`` periodic planar grid with spacing ``dx_km``; the bump's width ``sigma`` in cells."""

    def __init__(self, n: int = 40, dx_km: float = 25.0, sigma: float = 5.0):
        self.n = n
        self.dx_km = dx_km
        self.sigma = sigma

    @property
    def length(self) -> float:
        """Side of the basin in grid cells."""
        return float(self.n)

    def coords(self) -> dict[str, xr.DataArray]:
        centres = (np.arange(self.n) + 0.5) * self.dx_km
        return {
            "y": xr.DataArray(
                centres,
                dims="y",
                attrs={"standard_name": "projection_y_coordinate", "units": "km", "axis": "Y"},
            ),
            "x": xr.DataArray(
                centres,
                dims="x",
                attrs={"standard_name": "projection_x_coordinate", "units": "km", "axis": "X"},
            ),
        }


def blob_field(grid: BlobGrid, centres: np.ndarray, amplitude=AMPLITUDE) -> np.ndarray:
    """``h`` for bumps centred at ``centres`` ``(..., 2)`` (y, x in cells): ``(..., n, n)``."""
    centres = np.asarray(centres, dtype=np.float64)
    cells = np.arange(grid.n) + 0.5
    half = grid.length / 2
    # the periodic distance to the nearest image of the centre
    dy = np.mod(cells - centres[..., 0:1] + half, grid.length) - half  # (..., n)
    dx = np.mod(cells - centres[..., 1:2] + half, grid.length) - half
    bump = np.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * grid.sigma**2))
    return DEPTH + np.asarray(amplitude)[..., None, None] * bump


def _dataset(h: np.ndarray, dims: tuple[str, ...], grid: BlobGrid, title: str) -> xr.Dataset:
    coords = grid.coords()
    coords["time"] = xr.DataArray(
        TIME0 + np.arange(h.shape[0]) * STEP, dims="time", attrs={"standard_name": "time"}
    )
    if "member" in dims:
        coords["member"] = xr.DataArray(
            np.arange(h.shape[dims.index("member")]),
            dims="member",
            attrs={"standard_name": "realization"},
        )
    h_attrs = {"units": "m", "long_name": "layer thickness"}
    return xr.Dataset(
        {"h": (dims, h.astype(np.float32), h_attrs)}, coords=coords, attrs={"title": title}
    )


def _trajectory(grid: BlobGrid, start, velocity, n_times: int) -> np.ndarray:
    """Centres ``(n_times, ..., 2)`` of bumps moving from ``start`` at ``velocity`` cells/step."""
    t = np.arange(n_times).reshape(-1, *([1] * (np.ndim(start))))
    return np.mod(np.asarray(start) + t * np.asarray(velocity), grid.length)


def blob_training(
    n_runs: int = 100, n_times: int = 20, *, grid: BlobGrid | None = None, seed: int = 1
) -> xr.Dataset:
    """Training runs from random positions and velocities: ``h(time, member, y, x)``.

    Starts are uniform over the basin, velocities uniform in ``[-1, 1]`` cells per
    step in each direction, amplitudes uniform in ``[0.8, 1.2]`` m.
    """
    grid = grid or BlobGrid()
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, grid.length, (n_runs, 2))
    velocity = rng.uniform(-1, 1, (n_runs, 2))
    amplitude = rng.uniform(0.8, 1.2, n_runs)
    centres = _trajectory(grid, start, velocity, n_times)  # (T, R, 2)
    h = blob_field(grid, centres, np.broadcast_to(amplitude, (n_times, n_runs)))
    return _dataset(h, ("time", "member", "y", "x"), grid, "blob training runs")


#: The truth's start and velocity (cells, cells/step) and the prior's wrong start.
TRUTH_START = (0.25, 0.37)  # fractions of the basin
PRIOR_START = (0.6, 0.65)
VELOCITY = (0.4, 0.3)


def blob_truth(n_times: int = 4, *, grid: BlobGrid | None = None) -> xr.Dataset:
    """The held-out true run ``h(time, y, x)``."""
    grid = grid or BlobGrid()
    start = np.array(TRUTH_START) * grid.length
    h = blob_field(grid, _trajectory(grid, start, VELOCITY, n_times))
    return _dataset(h, ("time", "y", "x"), grid, "blob truth")


def blob_prior(
    n_members: int = 10,
    n_times: int = 4,
    *,
    grid: BlobGrid | None = None,
    jitter: float = 0.5,
    start: tuple[float, float] = PRIOR_START,
    seed: int = 2,
) -> xr.Dataset:
    """A forecast ensemble from the wrong start: ``h(time, member, y, x)``.

    Every member starts about ``jitter`` cells (standard deviation) from ``start``
    (fractions of the basin; default :data:`PRIOR_START`, far from the truth's
    start), with the truth's velocity and amplitude jittered by 10 %. With
    ``start=TRUTH_START`` and a jitter of a few cells it is the easy setting, where
    the ensemble spread covers the truth's position.
    """
    grid = grid or BlobGrid()
    rng = np.random.default_rng(seed)
    start = np.array(start) * grid.length + rng.normal(0, jitter, (n_members, 2))
    velocity = np.array(VELOCITY) * (1 + 0.1 * rng.normal(size=(n_members, 2)))
    amplitude = AMPLITUDE * (1 + 0.1 * rng.normal(size=n_members))
    centres = _trajectory(grid, start, velocity, n_times)  # (T, N, 2)
    h = blob_field(grid, centres, np.broadcast_to(amplitude, (n_times, n_members)))
    return _dataset(h, ("time", "member", "y", "x"), grid, "blob forecast ensemble")


def blob_observations(
    truth: xr.Dataset, stride: int = 10, noise: float = 0.1, *, seed: int = 3
) -> tuple[xr.Dataset, xr.DataArray]:
    """Every ``stride``-th point of ``truth`` (from index 0), with noise; NaN elsewhere.

    The noise standard deviation is ``noise`` times the spatial standard deviation of
    each time's true field (the convention of ``train_latent(noise="10%")``).

    Returns
    -------
    obs : Dataset
        ``h(time, y, x)``, NaN where unobserved.
    obs_std : DataArray
        ``(time,)``, the noise standard deviation used at each time.
    """
    rng = np.random.default_rng(seed)
    h = truth["h"]
    std = noise * h.std(("y", "x"))
    noisy = h + std * xr.DataArray(rng.standard_normal(h.shape), dims=h.dims)
    mask = xr.zeros_like(h, dtype=bool)
    mask[..., ::stride, ::stride] = True
    obs = truth.copy()
    obs["h"] = noisy.where(mask).astype(np.float32).assign_attrs(h.attrs)
    return obs, std


def relative_rmse(state: xr.Dataset, truth: xr.Dataset, member_dim: str = "member") -> float:
    """RMSE of the ensemble mean against the truth over all times and points, divided
    by the truth's spatial standard deviation (RMS over times)."""
    mean = state["h"].mean(member_dim) if member_dim in state["h"].dims else state["h"]
    err = float(np.sqrt(((mean - truth["h"]) ** 2).mean()))
    scale = float(np.sqrt((truth["h"].var(("y", "x"))).mean()))
    return err / scale
