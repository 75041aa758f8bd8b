"""The Lorenz-96 model, batched over any leading dims, on torch tensors.

``dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F`` on a ring of ``d ≥ 4`` variables
(Lorenz 1996). With ``F = 8`` and ``d = 40`` it is chaotic, with a leading Lyapunov
exponent of about 1.7 per time unit; ``dt = 0.05`` is "6 hours" in Lorenz's analogy.

All functions are pure: they take a state ``(..., d)`` (any leading dims, e.g. batch
and members) and return new tensors, on the input's device and in its dtype. Neighbours
are views of the ring padded with its halo (one copy per tendency), so ``d`` can be
large (10⁶ works) without index tensors.
"""

from __future__ import annotations

import torch

from ..errors import OptionError

__all__ = ["lorenz96_run", "lorenz96_step", "lorenz96_tendency"]


def _check_state(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise OptionError(f"Lorenz-96: the state must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] < 4:
        raise OptionError(
            f"Lorenz-96: the state's last dim is the ring of variables and needs at least 4 "
            f"of them, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise OptionError(f"Lorenz-96: the state must be floating point, got {x.dtype}")


def lorenz96_tendency(x: torch.Tensor, forcing: float | torch.Tensor = 8.0) -> torch.Tensor:
    """Time derivative ``dx/dt`` of the Lorenz-96 model.

    Parameters
    ----------
    x : torch.Tensor
        State ``(..., d)``, ``d >= 4``; the last dim is the periodic ring.
    forcing : float or torch.Tensor
        The forcing ``F``; a tensor broadcasts against ``x`` (per-member forcing, say).

    Returns
    -------
    torch.Tensor
        ``(..., d)``, same dtype and device as ``x``.

    Examples
    --------
    >>> import torch
    >>> lorenz96_tendency(torch.full((5,), 8.0))  # the fixed point x = F
    tensor([0., 0., 0., 0., 0.])
    """
    _check_state(x)
    # The ring with its halo, one copy: xp[..., j] = x[..., j − 2], for j = 0 … d + 2;
    # the three neighbours are then views (three torch.roll calls were three copies).
    xp = torch.cat((x[..., -2:], x, x[..., :1]), dim=-1)
    d = x.shape[-1]
    return (xp[..., 3:] - xp[..., :d]) * xp[..., 1 : d + 1] - x + forcing


def lorenz96_step(
    x: torch.Tensor, dt: float = 0.05, forcing: float | torch.Tensor = 8.0
) -> torch.Tensor:
    """Advance the state by one classical fourth-order Runge–Kutta step.

    Parameters
    ----------
    x : torch.Tensor
        State ``(..., d)``.
    dt : float
        Time step (0.05 is the customary value, stable with RK4).
    forcing : float or torch.Tensor
        The forcing ``F``.

    Returns
    -------
    torch.Tensor
        The state after ``dt``, ``(..., d)``.
    """
    k1 = lorenz96_tendency(x, forcing)
    k2 = lorenz96_tendency(x + 0.5 * dt * k1, forcing)
    k3 = lorenz96_tendency(x + 0.5 * dt * k2, forcing)
    k4 = lorenz96_tendency(x + dt * k3, forcing)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def lorenz96_run(
    x0: torch.Tensor,
    n_steps: int,
    dt: float = 0.05,
    forcing: float | torch.Tensor = 8.0,
    *,
    every: int = 1,
) -> torch.Tensor:
    """Integrate ``n_steps`` RK4 steps and return the trajectory.

    Parameters
    ----------
    x0 : torch.Tensor
        Initial state ``(..., d)``.
    n_steps : int
        Number of steps (``>= 0``).
    dt : float
        Time step.
    forcing : float or torch.Tensor
        The forcing ``F``.
    every : int
        Keep every ``every``-th state (thinning); ``n_steps`` must be a multiple of it.

    Returns
    -------
    torch.Tensor
        ``(n_steps // every + 1, ..., d)``: the initial state first, then the kept
        states; time is the leading dim.

    Examples
    --------
    >>> import torch
    >>> x0 = 8.0 + 0.01 * torch.arange(40.0)
    >>> lorenz96_run(x0, 100).shape
    torch.Size([101, 40])
    """
    _check_state(x0)
    if int(n_steps) != n_steps or n_steps < 0:
        raise OptionError(f"lorenz96_run: n_steps must be a non-negative integer, got {n_steps}")
    if int(every) != every or every < 1 or n_steps % every:
        raise OptionError(
            f"lorenz96_run: every={every} must be a positive integer dividing n_steps={n_steps}"
        )
    out = torch.empty((n_steps // every + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    out[0] = x0
    x = x0
    for i in range(1, n_steps + 1):
        x = lorenz96_step(x, dt, forcing)
        if i % every == 0:
            out[i // every] = x
    return out
