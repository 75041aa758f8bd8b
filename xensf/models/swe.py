"""The planar shallow-water model of the seed's twin experiment, batched, on torch tensors.

A closed square basin of side ``L`` (walls at ``x, y = ±L/2``), mean depth ``H``, on a
beta-plane ``f = f0 + β y``. Momentum is linear (pressure gradient and Coriolis, no
advection); continuity is nonlinear, in flux form, with upwind face depths:

    ∂u/∂t − f v = −g ∂η/∂x
    ∂v/∂t + f u = −g ∂η/∂y
    ∂η/∂t + ∂(h u)/∂x + ∂(h v)/∂y = 0,    h = H + η

It is the scheme of the solver the Latent-EnSF paper used, rewritten on tensors.

Grid (Arakawa C, finite volume)
-------------------------------
``n × n`` cells of side ``dx = L / n``; cell ``(j, i)`` (row ``j`` along ``y``, column
``i`` along ``x``) has its centre at ``x_i = −L/2 + (i + ½) dx``, ``y_j`` likewise
(see :func:`grid_coordinates`). ``η`` lives on the cell centres, ``u`` on the east
face of its cell and ``v`` on the north face:

- ``state[..., 0, j, i]`` is ``η`` at ``(x_i, y_j)``;
- ``state[..., 1, j, i]`` is ``u`` at ``(x_i + dx/2, y_j)``;
- ``state[..., 2, j, i]`` is ``v`` at ``(x_i, y_j + dx/2)``.

So all three variables are ``(ny, nx)`` arrays and stack as channels of one state
``(..., 3, ny, nx)`` with no interpolation (which would make a forecast lose
information at every step). The last column of ``u`` and the last row of ``v`` are the
east and north walls and are always zero; the west and south wall faces are implicit
zeros. Use :func:`velocities_at_centres` to get ``u`` and ``v`` averaged to the cell
centres, e.g. for plots. (The paper's solver indexes its arrays ``[x, y]``; here they
are ``[y, x]``, row-major like an xarray ``(y, x)`` field.)

Time stepping (forward–backward, Crank–Nicolson Coriolis)
----------------------------------------------------------
One step from ``(η, u, v)ⁿ``:

1. Pressure gradient, forward in time: ``u* = uⁿ − g dt ∂ₓηⁿ``, ``v* = vⁿ − g dt ∂ᵧηⁿ``.
2. Coriolis, semi-implicitly: ``(u, v)`` is rotated by the Crank–Nicolson solution of
   ``d(u, v)/dt = f (v, −u)``, the 2 × 2 solve
   ``uⁿ⁺¹ = ((1 − a²/4) u* + a v̄*) / (1 + a²/4)`` with ``a = f dt``, where ``v̄*`` is
   the four-point average of ``v*`` at the ``u`` face (and symmetrically for ``v``).
   It is neutral (no damping or growth of inertial oscillations) for any ``f dt``.
3. Continuity, backward: the mass fluxes ``h_face uⁿ⁺¹`` use the new velocities and
   the upwind depth ``h_face = H + ηⁿ`` of the cell the flow comes from; ``ηⁿ⁺¹`` is
   ``ηⁿ`` minus ``dt`` times their divergence. Wall fluxes are zero, so the basin's
   total ``Σ η · dx²`` is conserved to round-off.

The gravity-wave part is stable for ``√(gH) dt / dx < 1/√2``; the default
``dt = 0.1 dx / √(gH)`` leaves a wide margin. Upwind depths make the continuity
equation slightly diffusive, which keeps the nonlinear run smooth.

All functions are pure and batched over any leading dims (e.g. members): no Python
loops over members or grid points, the same code on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import OptionError
from ..filters.tensors import float_dtype

__all__ = [
    "CORIOLIS_SCHEMES",
    "ShallowWaterConfig",
    "grid_coordinates",
    "initial_state",
    "shallow_water_run",
    "shallow_water_step",
    "velocities_at_centres",
]


#: The Coriolis discretisations of :class:`ShallowWaterConfig` (``coriolis=``).
CORIOLIS_SCHEMES = ("c-grid", "co-located")


@dataclass(frozen=True)
class ShallowWaterConfig:
    """Parameters of the planar shallow-water basin.

    Parameters
    ----------
    n : int
        Cells along each side (the grid is ``n × n``); 150 in the paper's experiment.
    L : float
        Side of the square basin, metres; walls at ``±L/2``.
    H : float
        Mean depth, metres.
    g : float
        Gravity, m s⁻².
    f0 : float
        Coriolis parameter at the basin centre (``y = 0``), s⁻¹. Negative values put the
        basin in the southern hemisphere.
    beta : float
        ``df/dy``, m⁻¹ s⁻¹; ``f = f0 + beta * y``.
    dt_factor : float
        Time step as a fraction of the gravity-wave crossing time of one cell:
        ``dt = dt_factor * dx / sqrt(g H)``. Must be below ``1/√2`` for stability.
    dtype : torch.dtype
        Floating dtype of the states :func:`initial_state` makes (numpy's or a name,
        ``"float64"``, is stored as the torch dtype).
    device : str or torch.device
        Device of those states.
    coriolis : {"c-grid", "co-located"}
        How the Coriolis term is discretised. ``"c-grid"`` (the default): ``f`` at each
        velocity's own face, the other velocity averaged to it from its four
        neighbours, a Crank–Nicolson rotation of the velocities after the pressure
        step. ``"co-located"``: the scheme of the solver the Latent-EnSF paper used
        (jostbr/shallow-water): ``f`` at the cell centre, the other velocity taken at
        the same array index, and the previous step's velocities in the implicit part,
        ``uⁿ⁺¹ = (u* − (a²/4) uⁿ + a vⁿ) / (1 + a²/4)``; it reproduces that solver's
        trajectories to round-off (on its grid of ``n`` nodes spaced ``L/(n−1)``, take
        ``L`` here as ``n`` times that spacing), with the beta-plane too, where the two
        schemes differ by a few per cent of ``η`` after 2000 steps.

    Examples
    --------
    >>> cfg = ShallowWaterConfig(n=100)
    >>> cfg.dx, round(cfg.dt, 3)
    (10000.0, 31.928)
    """

    n: int = 150
    L: float = 1e6
    H: float = 100.0
    g: float = 9.81
    f0: float = 1e-4
    beta: float = 2e-11
    dt_factor: float = 0.1
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    coriolis: str = "c-grid"

    def __post_init__(self) -> None:
        if self.coriolis not in CORIOLIS_SCHEMES:
            raise OptionError(
                f"ShallowWaterConfig: coriolis must be one of {CORIOLIS_SCHEMES}, got "
                f"{self.coriolis!r}"
            )
        if int(self.n) != self.n or self.n < 2:
            raise OptionError(f"ShallowWaterConfig: n must be an integer >= 2, got {self.n}")
        for name in ("L", "H", "g"):
            if not getattr(self, name) > 0:
                raise OptionError(
                    f"ShallowWaterConfig: {name} must be positive, got {getattr(self, name)}"
                )
        if not 0 < self.dt_factor < 1 / math.sqrt(2):
            raise OptionError(
                f"ShallowWaterConfig: dt_factor={self.dt_factor} is outside (0, 1/√2), "
                "where the forward–backward scheme is stable"
            )
        # (frozen: the dtype given as text or numpy is stored as the torch dtype it names)
        object.__setattr__(self, "dtype", float_dtype(self.dtype, "ShallowWaterConfig"))

    @property
    def dx(self) -> float:
        """Cell side, metres (``L / n``; cells are square)."""
        return self.L / self.n

    @property
    def wave_speed(self) -> float:
        """Gravity-wave speed ``√(g H)``, m s⁻¹."""
        return math.sqrt(self.g * self.H)

    @property
    def dt(self) -> float:
        """Time step, seconds: ``dt_factor * dx / √(g H)``."""
        return self.dt_factor * self.dx / self.wave_speed

    @property
    def dt_ns(self) -> int:
        """The time step in whole nanoseconds: the tick of datetime time axes.

        The simulators label times ``start + k · dt_ns`` and the forecaster steps by it,
        so observation times taken from a simulated truth are model times exactly.
        """
        return round(self.dt * 1e9)


def grid_coordinates(config: ShallowWaterConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre coordinates of the grid.

    Parameters
    ----------
    config : ShallowWaterConfig
        The basin.

    Returns
    -------
    x, y : torch.Tensor
        ``(n,)`` each, metres from the basin centre, increasing; in ``config``'s dtype
        and on its device. ``η`` of the state sits at ``(y[j], x[i])``; ``u`` half a
        cell east of it and ``v`` half a cell north (see the module notes).
    """
    c = (torch.arange(config.n, dtype=torch.float64) + 0.5) * config.dx - config.L / 2
    c = c.to(dtype=config.dtype, device=config.device)
    return c, c.clone()


def initial_state(
    config: ShallowWaterConfig,
    x0: float | torch.Tensor,
    y0: float | torch.Tensor,
    *,
    height: float = 1.0,
    width: float = 50e3,
) -> torch.Tensor:
    """A basin at rest with a Gaussian bump of surface elevation.

    ``η = height · exp(−((x − x0)² + (y − y0)²) / (2 width²))``, ``u = v = 0``.

    Parameters
    ----------
    config : ShallowWaterConfig
        The basin; gives the grid, dtype and device.
    x0, y0 : float or torch.Tensor
        Centre of the bump, metres from the basin centre. Tensors broadcast together;
        their shape becomes the leading (batch, e.g. member) dims of the result. The
        paper's truth has ``x0 = L/2.7``, ``y0 = L/4``.
    height : float
        Peak elevation, metres.
    width : float
        Standard deviation of the Gaussian, metres.

    Returns
    -------
    torch.Tensor
        ``(*batch, 3, n, n)``: channels ``η, u, v``.

    Examples
    --------
    >>> import torch
    >>> cfg = ShallowWaterConfig(n=40)
    >>> initial_state(cfg, cfg.L / 2.7, cfg.L / 4).shape
    torch.Size([3, 40, 40])
    >>> initial_state(cfg, torch.zeros(5), torch.linspace(-1e5, 1e5, 5)).shape
    torch.Size([5, 3, 40, 40])
    """
    if not width > 0:
        raise OptionError(f"initial_state: width must be positive, got {width}")
    kw = {"dtype": config.dtype, "device": config.device}
    x0, y0 = torch.broadcast_tensors(torch.as_tensor(x0, **kw), torch.as_tensor(y0, **kw))
    half = config.L / 2
    if not bool((x0.isfinite() & y0.isfinite()).all()):
        raise OptionError(
            f"initial_state: the bump centre (x0, y0) must be finite, got {x0}, {y0}"
        )
    if bool(((x0.abs() > half) | (y0.abs() > half)).any()):
        raise OptionError(
            f"initial_state: the bump centre (x0, y0) must lie in the basin, |x0|, |y0| <= "
            f"L/2 = {half:g} m; got values up to {float(torch.maximum(x0.abs(), y0.abs()).max()):g}"
        )
    x, y = grid_coordinates(config)
    dx2 = (x - x0[..., None]) ** 2  # (*batch, nx)
    dy2 = (y - y0[..., None]) ** 2  # (*batch, ny)
    eta = height * torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * width**2))
    zeros = torch.zeros_like(eta)
    return torch.stack([eta, zeros, zeros], dim=-3)


def _check_state(state: torch.Tensor, config: ShallowWaterConfig, who: str) -> None:
    if not isinstance(state, torch.Tensor):
        raise OptionError(f"{who}: the state must be a torch.Tensor, got {type(state).__name__}")
    if state.ndim < 3 or tuple(state.shape[-3:]) != (3, config.n, config.n):
        raise OptionError(
            f"{who}: the state must have shape (..., 3, {config.n}, {config.n}) (channels "
            f"eta, u, v on config.n = {config.n} cells a side), got {tuple(state.shape)}"
        )
    if not state.is_floating_point():
        raise OptionError(f"{who}: the state must be floating point, got {state.dtype}")


def _coriolis(config: ShallowWaterConfig, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` at the ``u`` faces ``(n, 1)`` and at the ``v`` faces ``(n, 1)``."""
    y = (torch.arange(config.n, dtype=torch.float64) + 0.5) * config.dx - config.L / 2
    f_u = config.f0 + config.beta * y
    f_v = config.f0 + config.beta * (y + config.dx / 2)
    return (
        f_u.to(dtype=like.dtype, device=like.device)[:, None],
        f_v.to(dtype=like.dtype, device=like.device)[:, None],
    )


def _east(a: torch.Tensor) -> torch.Tensor:
    """``a`` of the cell to the east; zero beyond the east wall."""
    return F.pad(a[..., :, 1:], (0, 1))


def _west(a: torch.Tensor) -> torch.Tensor:
    """``a`` of the cell to the west; zero beyond the west wall."""
    return F.pad(a[..., :, :-1], (1, 0))


def _north(a: torch.Tensor) -> torch.Tensor:
    """``a`` of the cell to the north; zero beyond the north wall."""
    return F.pad(a[..., 1:, :], (0, 0, 0, 1))


def _south(a: torch.Tensor) -> torch.Tensor:
    """``a`` of the cell to the south; zero beyond the south wall."""
    return F.pad(a[..., :-1, :], (0, 0, 1, 0))


def _wall_masks(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask_u = torch.ones(n, n, dtype=like.dtype, device=like.device)
    mask_v = torch.ones_like(mask_u)
    mask_u[:, -1] = 0  # east wall
    mask_v[-1, :] = 0  # north wall
    return mask_u, mask_v


def shallow_water_step(state: torch.Tensor, config: ShallowWaterConfig) -> torch.Tensor:
    """Advance the state by one time step ``config.dt``.

    Forward–backward: pressure gradient from ``ηⁿ``, Crank–Nicolson Coriolis
    rotation, then flux-form continuity with the new velocities and upwind face depths
    (see the module notes for the grid and the scheme).

    Parameters
    ----------
    state : torch.Tensor
        ``(..., 3, n, n)``: channels ``η, u, v`` on the C-grid as stored here; any
        leading dims (members, batch) are advanced independently, in one call.
    config : ShallowWaterConfig
        The basin. The step runs in the state's dtype and on its device.

    Returns
    -------
    torch.Tensor
        The state after ``config.dt``, same shape, dtype and device. The wall faces
        (last column of ``u``, last row of ``v``) are zero.
    """
    _check_state(state, config, "shallow_water_step")
    dt, g, dx = config.dt, config.g, config.dx
    eta, u_old, v_old = state.unbind(dim=-3)
    mask_u, mask_v = _wall_masks(config.n, state)
    f_u, f_v = _coriolis(config, state)

    # 1. pressure gradient (forward)
    u = (u_old - (g * dt / dx) * (_east(eta) - eta)) * mask_u
    v = (v_old - (g * dt / dx) * (_north(eta) - eta)) * mask_v

    # 2. Coriolis
    if config.coriolis == "c-grid":
        # Crank–Nicolson rotation, the other component averaged to the face
        v_centre = 0.5 * (v + _south(v))
        u_centre = 0.5 * (u + _west(u))
        v_at_u = 0.5 * (v_centre + _east(v_centre))
        u_at_v = 0.5 * (u_centre + _north(u_centre))
        a_u, a_v = f_u * dt, f_v * dt
        u = ((1 - a_u**2 / 4) * u + a_u * v_at_u) / (1 + a_u**2 / 4) * mask_u
        v = ((1 - a_v**2 / 4) * v - a_v * u_at_v) / (1 + a_v**2 / 4) * mask_v
    else:
        # co-located: f at the cell centre, the other velocity at the same index, the
        # previous step's velocities in the implicit part (the paper's solver)
        a = f_u * dt  # f_u is f at the cell-centre rows
        b = a**2 / 4
        u, v = (
            (u - b * u_old + a * v_old) / (1 + b) * mask_u,
            (v - b * v_old - a * u_old) / (1 + b) * mask_v,
        )

    # 3. continuity (backward), flux form with upwind face depths; wall fluxes are zero
    depth = config.H + eta
    flux_x = u * torch.where(u > 0, depth, _east(depth))
    flux_y = v * torch.where(v > 0, depth, _north(depth))
    eta = eta - (dt / dx) * ((flux_x - _west(flux_x)) + (flux_y - _south(flux_y)))
    return torch.stack([eta, u, v], dim=-3)


def shallow_water_run(
    state: torch.Tensor, config: ShallowWaterConfig, n_steps: int, every: int = 1
) -> torch.Tensor:
    """Integrate ``n_steps`` steps and return the trajectory.

    Parameters
    ----------
    state : torch.Tensor
        Initial state ``(..., 3, n, n)``.
    config : ShallowWaterConfig
        The basin.
    n_steps : int
        Number of steps (``>= 0``); the run covers ``n_steps * config.dt`` seconds.
    every : int
        Keep every ``every``-th state (thinning); ``n_steps`` must be a multiple of it.

    Returns
    -------
    torch.Tensor
        ``(n_steps // every + 1, ..., 3, n, n)``: the initial state first, then the kept
        states; time is the leading dim.

    Examples
    --------
    >>> cfg = ShallowWaterConfig(n=30)
    >>> x0 = initial_state(cfg, 1e5, -2e5)
    >>> shallow_water_run(x0, cfg, 40, every=20).shape
    torch.Size([3, 3, 30, 30])
    """
    _check_state(state, config, "shallow_water_run")
    if int(n_steps) != n_steps or n_steps < 0:
        raise OptionError(
            f"shallow_water_run: n_steps must be a non-negative integer, got {n_steps}"
        )
    if int(every) != every or every < 1 or n_steps % every:
        raise OptionError(
            f"shallow_water_run: every={every} must be a positive integer dividing "
            f"n_steps={n_steps}"
        )
    out = torch.empty((n_steps // every + 1, *state.shape), dtype=state.dtype, device=state.device)
    out[0] = state
    for i in range(1, n_steps + 1):
        state = shallow_water_step(state, config)
        if i % every == 0:
            out[i // every] = state
    return out


def velocities_at_centres(state: torch.Tensor) -> torch.Tensor:
    """The state with ``u`` and ``v`` averaged from the faces to the cell centres.

    For plots and diagnostics only: the model steps the face values, and this
    averaging cannot be undone.

    Parameters
    ----------
    state : torch.Tensor
        ``(..., 3, ny, nx)`` as :func:`shallow_water_step` takes it.

    Returns
    -------
    torch.Tensor
        ``(..., 3, ny, nx)``: ``η`` unchanged, ``u = (u_west + u_east)/2`` and
        ``v = (v_south + v_north)/2`` at each centre (wall faces count as zero).
    """
    eta, u, v = state.unbind(dim=-3)
    return torch.stack([eta, 0.5 * (u + _west(u)), 0.5 * (v + _south(v))], dim=-3)
