"""Tests of the planar shallow-water model (conservation, walls, waves, rotation, batching)."""

from __future__ import annotations

import math

import pytest
import torch

from xensf.errors import OptionError
from xensf.models.swe import (
    ShallowWaterConfig,
    grid_coordinates,
    initial_state,
    shallow_water_run,
    shallow_water_step,
    velocities_at_centres,
)

F64 = torch.float64


def _energy(state: torch.Tensor, cfg: ShallowWaterConfig) -> torch.Tensor:
    """Linear total energy ``Σ (g η² + H (u² + v²)) / 2 · dx²`` per member."""
    eta, u, v = state.unbind(-3)
    density = 0.5 * (cfg.g * eta**2 + cfg.H * (u**2 + v**2))
    return density.sum((-1, -2)) * cfg.dx**2


def _corner_vorticity(state: torch.Tensor) -> torch.Tensor:
    """``∂v/∂x − ∂u/∂y`` (times dx) at the interior cell corners."""
    _, u, v = state.unbind(-3)
    return (v[..., :-1, 1:] - v[..., :-1, :-1]) - (u[..., 1:, :-1] - u[..., :-1, :-1])


# ---------------------------------------------------------------------------------------
# Configuration and initial state
# ---------------------------------------------------------------------------------------


def test_config_defaults_are_the_papers():
    cfg = ShallowWaterConfig()
    assert (cfg.n, cfg.L, cfg.H, cfg.g, cfg.f0, cfg.beta) == (150, 1e6, 100.0, 9.81, 1e-4, 2e-11)
    assert cfg.dx == pytest.approx(1e6 / 150)
    assert cfg.dt == pytest.approx(0.1 * cfg.dx / math.sqrt(9.81 * 100))


@pytest.mark.parametrize(
    "kwargs", [{"n": 1}, {"H": 0.0}, {"dt_factor": 0.8}, {"dtype": torch.int64}]
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(OptionError):
        ShallowWaterConfig(**kwargs)


def test_initial_state_places_the_bump_and_batches():
    cfg = ShallowWaterConfig(n=50, dtype=F64)
    x, y = grid_coordinates(cfg)
    assert x[0] == pytest.approx(-cfg.L / 2 + cfg.dx / 2) and x[-1] == pytest.approx(
        cfg.L / 2 - cfg.dx / 2
    )
    s = initial_state(cfg, x[30], y[10])
    assert s.shape == (3, 50, 50) and s.dtype == F64
    j, i = divmod(int(s[0].argmax()), 50)
    assert (j, i) == (10, 30)  # rows are y, columns x
    assert float(s[0].max()) == pytest.approx(1.0)
    assert torch.equal(s[1:], torch.zeros(2, 50, 50, dtype=F64))
    # volume of a 2D Gaussian: 2π σ² · height
    assert float(s[0].sum()) * cfg.dx**2 == pytest.approx(2 * math.pi * 50e3**2, rel=1e-4)

    batch = initial_state(cfg, torch.tensor([x[30], x[5]]), torch.tensor([[y[10]], [y[40]]]))
    assert batch.shape == (2, 2, 3, 50, 50)
    torch.testing.assert_close(batch[0, 0], s, rtol=0, atol=0)


def test_initial_state_rejects_a_bump_outside_the_basin():
    cfg = ShallowWaterConfig(n=20)
    with pytest.raises(OptionError, match="basin"):
        initial_state(cfg, 0.6e6, 0.0)


def test_step_rejects_a_state_of_the_wrong_shape():
    cfg = ShallowWaterConfig(n=20)
    with pytest.raises(OptionError, match=r"\(\.\.\., 3, 20, 20\)"):
        shallow_water_step(torch.zeros(3, 20, 21), cfg)
    with pytest.raises(OptionError, match="every"):
        shallow_water_run(torch.zeros(3, 20, 20), cfg, 10, every=3)


# ---------------------------------------------------------------------------------------
# Physics
# ---------------------------------------------------------------------------------------


def test_mass_is_conserved_to_round_off():
    cfg = ShallowWaterConfig(n=60, dtype=F64)
    # a bump near the north-east corner, so waves hit the walls within the run
    traj = shallow_water_run(initial_state(cfg, 3.5e5, 3.5e5), cfg, 200)
    mass = traj[:, 0].sum((-1, -2)) * cfg.dx**2
    assert float(traj[-1, 0].abs().max()) < 0.9  # the fields did change
    assert float((mass - mass[0]).abs().max()) < 1e-12 * float(mass[0])


def test_no_flow_through_the_walls():
    cfg = ShallowWaterConfig(n=30, dtype=F64)
    s = initial_state(cfg, 4.5e5, -4.5e5)  # next to the east and south walls
    s[1:] = 0.3  # even a state with flow on the wall faces ...
    traj = shallow_water_run(s, cfg, 100)
    u, v = traj[1:, 1], traj[1:, 2]
    assert torch.all(u[..., :, -1] == 0)  # ... has none after a step: east wall
    assert torch.all(v[..., -1, :] == 0)  # north wall
    assert float(u[..., :, :-1].abs().max()) > 0 and float(v[..., :-1, :].abs().max()) > 0
    mass = traj[:, 0].sum((-1, -2))
    assert float((mass[1:] - mass[1]).abs().max()) < 1e-12 * float(mass[1].abs())


def test_gravity_waves_travel_at_sqrt_gh():
    """With f = 0 the bump collapses into a ring whose crest moves at √(gH)."""
    cfg = ShallowWaterConfig(n=100, f0=0.0, beta=0.0, dtype=F64)
    every = 50
    traj = shallow_water_run(initial_state(cfg, 0.0, 0.0), cfg, 8 * every, every=every)
    x, _ = grid_coordinates(cfg)
    centre = cfg.n // 2

    def crest_radius(k):
        row = traj[k, 0, centre, centre:]  # along +x from the centre
        return float(x[centre + int(row.argmax())])

    t = [k * every * cfg.dt for k in (2, 8)]
    r = [crest_radius(k) for k in (2, 8)]
    speed = (r[1] - r[0]) / (t[1] - t[0])
    assert speed == pytest.approx(cfg.wave_speed, abs=2 * cfg.dx / (t[1] - t[0]))
    # the crest sits within a Gaussian width of c·t (the 2D ring's profile is skewed)
    assert abs(r[1] - cfg.wave_speed * t[1]) < 50e3
    assert float(traj[-1, 0].max()) < 0.2  # the bump has radiated away


def test_coriolis_deflects_to_the_right_in_the_north():
    """A uniform eastward flow turns south at the rate f u (one step, away from walls)."""
    u0 = 0.1
    for f0 in (1e-4, -1e-4):
        cfg = ShallowWaterConfig(n=40, f0=f0, beta=0.0, dtype=F64)
        s = torch.zeros(3, 40, 40, dtype=F64)
        s[1, :, :-1] = u0
        v = shallow_water_step(s, cfg)[2, 10:30, 10:30]
        torch.testing.assert_close(v, torch.full_like(v, -f0 * cfg.dt * u0), rtol=1e-3, atol=0)
    cfg = ShallowWaterConfig(n=40, f0=0.0, beta=0.0, dtype=F64)
    assert torch.all(shallow_water_step(s, cfg)[2] == 0)


def test_geostrophic_adjustment_leaves_an_anticyclone():
    """A high adjusts to clockwise flow with f > 0, counter-clockwise with f < 0."""
    circulation, peak = {}, {}
    for f0 in (1e-3, -1e-3, 0.0):  # strong f: deformation radius ≈ 31 km < bump width
        cfg = ShallowWaterConfig(n=60, f0=f0, beta=0.0, dtype=F64)
        end = shallow_water_run(initial_state(cfg, 0.0, 0.0), cfg, 300, every=300)[-1]
        circulation[f0] = float(_corner_vorticity(end)[20:39, 20:39].sum())
        peak[f0] = float(end[0].max())
    assert circulation[1e-3] < -0.05 and circulation[-1e-3] == pytest.approx(-circulation[1e-3])
    assert abs(circulation[0.0]) < 1e-12
    # rotation holds part of the bump in place; without it the bump radiates away
    assert peak[1e-3] > 0.5 > 0.3 > peak[0.0]


def test_beta_makes_f_vary_with_y():
    """On the beta-plane the one-step deflection grows northward as f0 + β y."""
    cfg = ShallowWaterConfig(n=40, f0=1e-4, beta=2e-10, dtype=F64)
    s = torch.zeros(3, 40, 40, dtype=F64)
    s[1, :, :-1] = 0.1
    v = shallow_water_step(s, cfg)[2, 5:35, 20]
    _, y = grid_coordinates(cfg)
    expected = -(cfg.f0 + cfg.beta * (y[5:35] + cfg.dx / 2)) * cfg.dt * 0.1
    torch.testing.assert_close(v, expected, rtol=1e-3, atol=0)


# ---------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------


def test_batched_equals_looped_over_members():
    cfg = ShallowWaterConfig(n=30, dtype=F64)
    x0 = torch.tensor([[1e5, -2e5, 3e5], [0.0, 2.5e5, -1e5]], dtype=F64)
    y0 = torch.tensor([[-1e5, 2e5, 0.0], [3e5, -3e5, 1e5]], dtype=F64)
    batched = shallow_water_run(initial_state(cfg, x0, y0), cfg, 40, every=20)
    assert batched.shape == (3, 2, 3, 3, 30, 30)
    for a in range(2):
        for b in range(3):
            looped = shallow_water_run(initial_state(cfg, x0[a, b], y0[a, b]), cfg, 40, every=20)
            torch.testing.assert_close(batched[:, a, b], looped, rtol=1e-14, atol=1e-16)


def test_stable_over_2000_steps():
    cfg = ShallowWaterConfig(n=40, dtype=F64)
    s = initial_state(cfg, cfg.L / 2.7, cfg.L / 4)
    traj = shallow_water_run(s, cfg, 2000, every=100)
    assert torch.isfinite(traj).all()
    assert float(traj[:, 0].abs().max()) <= float(s[0].max())
    assert float(traj[:, 1:].abs().max()) < 0.5
    energy = _energy(traj, cfg)
    assert float(energy.max()) <= 1.01 * float(energy[0])  # no growth
    assert float(energy[-1]) > 0.5 * float(energy[0])  # nor heavy damping


def test_float32_matches_float64():
    runs = {}
    for dtype in (torch.float32, F64):
        cfg = ShallowWaterConfig(n=40, dtype=dtype)
        s = initial_state(cfg, cfg.L / 2.7, cfg.L / 4)
        runs[dtype] = shallow_water_run(s, cfg, 200, every=200)[-1]
        assert runs[dtype].dtype == dtype
    torch.testing.assert_close(runs[torch.float32].double(), runs[F64], rtol=0, atol=1e-4)


def test_velocities_at_centres_average_the_faces():
    s = torch.zeros(3, 4, 4, dtype=F64)
    s[1, 2, 1] = 1.0  # u on the east face of cell (2, 1)
    s[2, 0, 3] = 2.0  # v on the north face of cell (0, 3)
    c = velocities_at_centres(s)
    assert c[1, 2, 1] == 0.5 and c[1, 2, 2] == 0.5 and c[1].sum() == 1.0
    assert c[2, 0, 3] == 1.0 and c[2, 1, 3] == 1.0 and c[2].sum() == 2.0


# ---------------------------------------------------------------------------------------
# The paper's solver, re-stated: the co-located Coriolis option reproduces it
# ---------------------------------------------------------------------------------------


def _paper_scheme(eta0, steps, dx, dt, g, H, f):
    """The planar solver of the Latent-EnSF paper (jostbr/shallow-water), re-stated in
    numpy on its own layout: arrays ``[x, y]`` on ``n`` nodes, ``u`` between node ``i``
    and ``i + 1`` along x, ``v`` likewise along y, walls at the last ``u`` row and the
    last ``v`` column; ``f`` per node along y; velocities corrected for Coriolis with
    the previous step's co-located values; upwind depths in the flux-form continuity."""
    import numpy as np

    eta, u, v = eta0.copy(), np.zeros_like(eta0), np.zeros_like(eta0)
    a = (dt * f)[None, :]
    b = a**2 / 4
    for _ in range(steps):
        us, vs = np.zeros_like(u), np.zeros_like(v)
        us[:-1] = u[:-1] - g * dt / dx * (eta[1:] - eta[:-1])
        vs[:, :-1] = v[:, :-1] - g * dt / dx * (eta[:, 1:] - eta[:, :-1])
        u_new = (us - b * u + a * v) / (1 + b)
        v_new = (vs - b * v - a * u) / (1 + b)
        u_new[-1], v_new[:, -1] = 0.0, 0.0
        depth = H + eta
        fx = np.zeros_like(eta)  # flux through the face east of node i (0 at the wall)
        fx[:-1] = u_new[:-1] * np.where(u_new[:-1] > 0, depth[:-1], depth[1:])
        fy = np.zeros_like(eta)
        fy[:, :-1] = v_new[:, :-1] * np.where(v_new[:, :-1] > 0, depth[:, :-1], depth[:, 1:])
        div = fx - np.concatenate([np.zeros_like(fx[:1]), fx[:-1]])
        div += fy - np.concatenate([np.zeros_like(fy[:, :1]), fy[:, :-1]], axis=1)
        eta, u, v = eta - dt / dx * div, u_new, v_new
    return eta, u, v


def test_the_co_located_coriolis_option_reproduces_the_papers_solver_to_round_off():
    import numpy as np

    n, spacing = 30, 1e6 / 29  # the paper's grid: n nodes over L = 1000 km
    steps = 500
    cfg = ShallowWaterConfig(n=n, L=n * spacing, dtype=F64, coriolis="co-located")
    start = initial_state(cfg, 0.1 * cfg.L, 0.2 * cfg.L, width=80e3)
    _, y = grid_coordinates(cfg)
    f = cfg.f0 + cfg.beta * y.double().numpy().ravel()  # node positions along y
    expected = _paper_scheme(
        start[0].numpy().T, steps, cfg.dx, cfg.dt, cfg.g, cfg.H, f
    )  # fmt: skip
    got = shallow_water_run(start, cfg, steps, every=steps)[-1]
    for field, ref in zip(got.unbind(0), expected, strict=True):
        np.testing.assert_allclose(field.numpy().T, ref, rtol=0, atol=1e-12)
    # the C-grid default is another discretisation of the same equations
    c_grid = shallow_water_run(start, ShallowWaterConfig(**{**cfg.__dict__, "coriolis": "c-grid"}),
                               steps, every=steps)[-1]  # fmt: skip
    assert float((c_grid[0] - got[0]).abs().max()) > 1e-4
    with pytest.raises(OptionError, match="coriolis must be one of"):
        ShallowWaterConfig(coriolis="centred")
