"""The local ensemble transform Kalman filter (LETKF, Hunt, Kostelich & Szunyogh 2007).

The analysis is done in ensemble space: for every state *location* a weight matrix
``T`` (``N × N``) is found from the observations around it, and the analysis members
there are ``x̄ + X'ᵀ T``. Without localisation there is one location and this is the
global ETKF (symmetric square root).

Localisation is by observation-error inflation ("R-localisation"): the precision of
observation ``i`` in the analysis at location ``p`` is multiplied by
``gaspari_cohn(dist(p, i), loc_radius)``, so observations beyond ``2 · loc_radius``
drop out (see :mod:`xensf.filters.localization` for the radius convention).

The per-location analyses are computed once per distinct location, batched over
locations and over the leading (analysis-time) dims, in chunks of locations that bound
the memory; there is no Python loop over grid points apart from the chunks. For large
problems with one of the provided distances, each chunk first finds the observations
that can reach it (from its first location and its radius, by the triangle
inequality), and each location's algebra uses only the observations that reach it, so
the work grows like ``P k N²`` (``k`` observations within the cut-off) rather than
``P m N²``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ..checks import as_number, is_real
from ..errors import EnsembleError, ObservationMismatchError, OptionError
from .adaptive_inflation import AdaptiveInflation
from .localization import (
    EARTH_RADIUS_KM,
    cyclic_distance,
    euclidean_distance,
    gaspari_cohn,
    great_circle_distance,
    resolve_distance,
    with_vertical,
    within_variable,
)
from .operators import LinearObservationOperator, as_observation_operator
from .tensors import (
    as_float_tensor,
    check_observed_values,
    compute_dtype,
    restore_array_type,
)

__all__ = ["letkf_analysis"]

# Elements of the largest temporary a chunk may create (about 256 MiB in float32).
_CHUNK_BUDGET = 1 << 26
# Location-observation pairs from which the observations near each chunk are searched
# for first, instead of evaluating every pair (below it the search costs more).
_SEARCH_FROM = 1 << 20


def letkf_analysis(
    prior,
    y,
    obs_op,
    obs_std,
    *,
    inflation: float = 1.0,
    rtps: float = 0.0,
    loc_radius: float | None = None,
    state_coords=None,
    obs_coords=None,
    distance: str | Callable = "great_circle",
    state_location=None,
    chunk_size: int | None = None,
    prior_obs=None,
    adaptive_inflation: AdaptiveInflation | None = None,
    interpolate_from=None,
):
    """LETKF analysis (Hunt et al. 2007) with Gaspari–Cohn R-localisation.

    Parameters
    ----------
    prior : torch.Tensor or numpy.ndarray
        Forecast ensemble ``(..., N, d)``: leading dims are independent analyses (e.g.
        analysis times), done in one vectorised call; ``N >= 2`` members; ``d`` state
        components. float64 input is kept in float64, anything else runs in float32.
    y : array_like
        Observations ``(..., m)``, broadcasting against the batch dims. NaN marks a
        missing observation (zero weight), which is how ragged observation sets are
        padded to a common ``m``.
    obs_op : index tensor, LinearObservationOperator or callable
        Observation operator (see :func:`xensf.filters.operators.as_observation_operator`).
        Nonlinear operators are handled the standard LETKF way: the observation-space
        perturbations are those of ``H(x_n)`` about their mean.
    obs_std : float or array_like
        Observation-error standard deviation, a scalar or ``(..., m)``; must be
        positive. ``inf`` marks a missing observation, like NaN in ``y``.
    inflation : float
        Multiplicative inflation of the prior perturbations (``1.02`` inflates the
        spread by 2 %, the covariance by ``1.02²``). Applied to the state and the
        observation-space perturbations before the update.
    rtps : float
        Relaxation to prior spread (Whitaker & Hamill 2012), a fraction in ``[0, 1]``:
        posterior perturbations at each component are rescaled by
        ``1 + rtps · (σ_b − σ_a) / σ_a``, with ``σ_b`` the spread of the prior as given
        (before ``inflation``) and ``σ_a`` the analysis spread. 0 turns it off.
    loc_radius : float, optional
        Gaspari–Cohn half-width ``c`` in the units of ``distance`` (km for
        ``"great_circle"``): an observation's weight is 1 at the analysed location,
        about 0.21 at distance ``c`` and 0 from ``2 c`` on. So a "cut-off radius" ``L``
        corresponds to ``loc_radius = L / 2``, and DAPPER's ``loc_rad`` ``r`` to
        ``loc_radius ≈ 1.82 r``. ``None`` (default) means no localisation: the global
        ETKF.
    state_coords : array_like, optional
        Coordinates of the state, required with ``loc_radius``. Either ``(d, k)``, one
        row per state component (repeated rows, such as several variables or levels at
        one grid point, are found and analysed once), or ``(P, k)`` for ``P`` distinct
        locations together with ``state_location``. A 1-D array is read as ``k = 1``.
    obs_coords : array_like, optional
        ``(..., m, k)`` coordinates of the observations; leading dims, if any, follow
        the batch dims (observation sites may move between analysis times). May be
        omitted when ``obs_op`` is an index tensor: the observed components' coordinates
        are used.
    distance : {"great_circle", "euclidean"} or callable
        How far apart two locations are: ``"great_circle"`` takes (latitude, longitude)
        in degrees and gives km on a sphere of radius 6371 km; ``"euclidean"`` is plain;
        ``cyclic_distance(period)`` is for periodic domains (Lorenz-96); any callable
        ``(a (P, k), b (..., m, k)) -> (..., P, m)`` works.
    state_location : array_like of int, optional
        ``(d,)``: the row of ``state_coords`` (of shape ``(P, k)``) at which each state
        component sits.
    chunk_size : int, optional
        Locations analysed together, runs of consecutive ones. The default keeps the
        largest temporary near ``2**26`` elements; for large problems with a provided
        distance it cuts the locations into compact patches of about ``2 √P`` instead,
        each of which reads only the observations near it.
    prior_obs : array_like, optional
        ``(..., N, m)``: the prior seen through the observation operator, computed
        elsewhere (e.g. from a state split into spatial blocks, of which ``prior`` is
        one: a block's local analyses need the observations near it, which may read the
        state outside it). ``obs_op`` is then not applied and may be None; with
        ``loc_radius``, ``obs_coords`` is required.
    adaptive_inflation : AdaptiveInflation, optional
        Estimate the inflation at every location from this cycle's innovations
        (Miyoshi 2011; :mod:`xensf.filters.adaptive_inflation`), starting from the
        field it holds, instead of a fixed ``inflation`` (which must then stay 1).
    interpolate_from : tuple of three arrays, optional
        Weight interpolation (Yang et al. 2009): ``(anchors, neighbours, weights)``, the
        rows of ``state_coords`` (given with ``state_location``) at which the transform
        is computed ``(Pc,)``, and for every row its anchors ``(P, K)`` (indices into
        ``anchors``) with interpolation weights ``(P, K)`` summing to 1. Every other
        location gets the weighted mean of its anchors' transforms; the analysis costs
        ``Pc`` instead of ``P`` local solves. Needs ``loc_radius``; not with
        ``adaptive_inflation``.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        The analysis ensemble, of the broadcast batch shape, then ``(N, d)``; the same
        array type as ``prior`` (numpy in, numpy out), float64 if ``prior`` was float64,
        otherwise float32.
    AdaptiveInflation
        Only with ``adaptive_inflation``: the updated field (``mean`` float64 of the
        batch shape, then ``(d,)``, the array type of ``prior``), the next cycle's
        ``adaptive_inflation``; returned as ``(analysis, inflation)``.

    Raises
    ------
    EnsembleError
        Fewer than two members, or non-finite values in the prior.
    ObservationMismatchError
        ``y``, ``obs_std`` or ``obs_coords`` that do not fit ``obs_op(prior)``.
    OptionError
        Bad ``inflation``, ``rtps``, ``loc_radius``, ``distance`` or missing
        coordinates when localising.

    Notes
    -----
    For each location, with ``R̃⁻¹`` the localised observation precision,
    ``Ã = (N − 1) I + Y'ᵀ R̃⁻¹ Y'``, the mean weights ``w̄ = Ã⁻¹ Y'ᵀ R̃⁻¹ (y − ȳ)`` and the
    perturbation weights ``W = [(N − 1) Ã⁻¹]^{1/2}`` (symmetric square root, from one
    eigendecomposition of ``Ã``); ``x_a = x̄ + X' (w̄ 1ᵀ + W)``.

    Examples
    --------
    Global ETKF, every second of 40 variables observed:

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> prior = torch.randn(20, 40, generator=g)
    >>> idx = torch.arange(0, 40, 2)
    >>> post = letkf_analysis(prior, torch.zeros(20), idx, 0.5)
    >>> post.shape
    torch.Size([20, 40])

    Localised, on a ring of 40 points:

    >>> from xensf.filters.localization import cyclic_distance
    >>> post = letkf_analysis(prior, torch.zeros(20), idx, 0.5, loc_radius=4.0,
    ...                       state_coords=torch.arange(40.0), distance=cyclic_distance(40))
    """
    dtype = compute_dtype(prior, "prior")
    x = as_float_tensor(prior, "prior", dtype=dtype)
    device = x.device

    # ---- validation -------------------------------------------------------------
    if x.ndim < 2:
        raise EnsembleError(
            f"prior must have shape (..., N, d) (members, then state), got {tuple(x.shape)}"
        )
    n_mem, d = x.shape[-2:]
    if n_mem < 2:
        raise EnsembleError(
            f"prior has {n_mem} member(s) along dim -2; the LETKF needs at least 2 "
            "(shape must be (..., N, d))"
        )
    if not bool(torch.isfinite(x).all()):
        raise EnsembleError(
            "prior contains NaN or infinite values; mask or fill them before the analysis "
            "(missing data belongs in y, not in the prior)"
        )
    inflation, rtps = as_number(inflation), as_number(rtps)
    if not (is_real(inflation) and math.isfinite(inflation) and inflation > 0):
        raise OptionError(
            f"inflation must be a positive finite factor (e.g. 1.02), got {inflation!r}"
        )
    if not (is_real(rtps) and 0.0 <= rtps <= 1.0):
        raise OptionError(f"rtps must be a fraction in [0, 1], got {rtps!r}")
    if interpolate_from is not None and loc_radius is None:
        raise OptionError("interpolate_from needs loc_radius (a global ETKF has one location)")
    if adaptive_inflation is not None:
        if not isinstance(adaptive_inflation, AdaptiveInflation):
            raise OptionError(
                "adaptive_inflation must be an xensf.filters.AdaptiveInflation, got "
                f"{type(adaptive_inflation).__name__}"
            )
        if float(inflation) != 1.0:
            raise OptionError(
                f"inflation={inflation} and adaptive_inflation were both given: the adaptive "
                "field replaces the fixed factor (start it from a value with "
                "AdaptiveInflation(mean=...))"
            )
    if loc_radius is not None:
        loc_radius = as_number(loc_radius)
        if not (is_real(loc_radius) and math.isfinite(loc_radius) and loc_radius > 0):
            raise OptionError(
                f"loc_radius must be a positive finite distance (Gaspari–Cohn half-width), "
                f"got {loc_radius!r}; use loc_radius=None for no localisation"
            )
        dist_fn = resolve_distance(distance)
        if interpolate_from is not None and (state_location is None or adaptive_inflation):
            raise OptionError(
                "interpolate_from needs state_coords of distinct locations with "
                "state_location, and does not combine with adaptive_inflation"
            )
        if state_coords is None:
            raise OptionError(
                "loc_radius is given but state_coords is missing: pass the coordinates of "
                "the state components (d, k), or of P locations with state_location (d,)"
            )

    if prior_obs is not None:
        op = None
        hx = as_float_tensor(prior_obs, "prior_obs", dtype=dtype, device=device)
    else:
        op = as_observation_operator(obs_op, d=x.shape[-1])
        if isinstance(op, LinearObservationOperator):
            op = op.to(device=device, dtype=dtype)
        with torch.no_grad():
            hx = op(x)
    if hx.ndim < 2 or hx.shape[-2] != n_mem:
        raise ObservationMismatchError(
            f"obs_op(prior) must have shape (..., N={n_mem}, m), got {tuple(hx.shape)}"
        )
    hx = hx.to(dtype)
    m = hx.shape[-1]
    yv = as_float_tensor(y, "y", dtype=dtype, device=device)
    check_observed_values(yv)
    if yv.ndim == 0 or yv.shape[-1] != m:
        raise ObservationMismatchError(
            f"y has shape {tuple(yv.shape)} but obs_op gives {m} observations: y must be "
            f"(..., {m}) (pad missing observations with NaN)"
        )
    std = as_float_tensor(obs_std, "obs_std", dtype=dtype, device=device)
    if std.ndim > 0 and std.shape[-1] not in (1, m):
        raise ObservationMismatchError(
            f"obs_std has shape {tuple(std.shape)}; it must be a scalar or (..., {m})"
        )
    if bool(torch.isnan(std).any()) or bool((std <= 0).any()):
        raise OptionError(
            "obs_std must be positive (inf marks a missing observation); found zero, "
            "negative or NaN values"
        )
    try:
        batch = torch.broadcast_shapes(
            x.shape[:-2], hx.shape[:-2], yv.shape[:-1], std.shape[:-1] if std.ndim else ()
        )
    except RuntimeError as err:
        raise ObservationMismatchError(
            f"batch dims do not broadcast: prior {tuple(x.shape[:-2])}, obs_op(prior) "
            f"{tuple(hx.shape[:-2])}, y {tuple(yv.shape[:-1])}, obs_std {tuple(std.shape)}"
        ) from err
    bsz = math.prod(batch)

    # ---- ensemble-space quantities, batch flattened to B ------------------------
    x = x.expand(*batch, n_mem, d).reshape(bsz, n_mem, d)
    hx = hx.expand(*batch, n_mem, m).reshape(bsz, n_mem, m)
    yv = yv.expand(*batch, m).reshape(bsz, m)
    std = std.expand(*batch, m).reshape(bsz, m)

    delta = None
    if adaptive_inflation is not None:
        try:
            delta = (
                torch.as_tensor(adaptive_inflation.mean, dtype=torch.float64, device=device)
                .expand(*batch, d)
                .reshape(bsz, d)
            )
        except RuntimeError as err:
            raise OptionError(
                f"adaptive_inflation.mean of shape {tuple(np.shape(adaptive_inflation.mean))} "
                f"does not broadcast to the batch and state shape {(*batch, d)}"
            ) from err

    xm = x.mean(-2)
    xp0 = x - xm[:, None, :]
    xp = xp0 * inflation
    ym = hx.mean(-2)
    yp = (hx - ym[:, None, :]) * inflation
    valid = torch.isfinite(yv) & torch.isfinite(std)
    if not bool(torch.isfinite(torch.where(valid[:, None, :], yp, 0.0)).all()):
        raise ObservationMismatchError(
            "obs_op(prior) is not finite at some observed positions; check the operator"
        )
    # Whitened by the observation error (in float64, where neither a state of 1e-30
    # nor an error of 1e-31 under- or overflows): the ensemble-space algebra then sees
    # numbers of order (spread / error), and unit precision where observed.
    sigma = torch.where(valid, std, 1.0).double()
    yp = torch.where(valid[:, None, :], yp.double() / sigma[:, None, :], 0.0)
    innov = torch.where(valid, (yv - ym).double() / sigma, 0.0)
    rinv = valid.double()
    # Back to the working dtype unless Y'ᵀR⁻¹Y' dwarfs N − 1 (errors tiny against the
    # spread): summed in float32 its rounding alone would then exceed N − 1.
    if dtype != torch.float64 and bool(
        yp.square().sum(-1).amax() <= _FLOAT32_SAFE_RATIO * (n_mem - 1)
    ):
        yp, innov, rinv = yp.to(dtype), innov.to(dtype), rinv.to(dtype)

    if loc_radius is None:
        scale = None
        if delta is not None:  # one location: the field's value at the first component
            delta = adaptive_inflation.update(delta[:, :1], yp, innov, rinv[:, None, :])
            scale = delta.sqrt()
            delta = delta.expand(bsz, d)
        incr = _increment_transforms(yp, innov, rinv[:, None, :], inflation, scale)  # (B,1,N,N)
        xa = x + incr[:, 0].transpose(-1, -2).to(dtype) @ xp
    else:
        xa, delta = _local_analysis(
            x,
            xp,
            yp,
            innov,
            rinv,
            float(loc_radius),
            dist_fn,
            state_coords,
            state_location,
            obs_coords,
            op,
            batch,
            chunk_size,
            float(inflation),
            delta,
            adaptive_inflation,
            _coarse(interpolate_from, device),
        )

    if rtps > 0:
        sb = xp0.std(-2, correction=1)
        xpa = xa - xa.mean(-2, keepdim=True)
        sa = xpa.std(-2, correction=1)
        safe = sa > 0
        factor = torch.where(safe, 1.0 + rtps * (sb - sa) / torch.where(safe, sa, 1.0), 1.0)
        xa = xa.mean(-2, keepdim=True) + xpa * factor[:, None, :]

    analysis = restore_array_type(xa.reshape(*batch, n_mem, d), prior)
    if adaptive_inflation is None:
        return analysis
    adaptive_inflation.warn_if_saturated(delta)
    field = restore_array_type(delta.reshape(*batch, d), prior)
    return analysis, replace(adaptive_inflation, mean=field)


#: Largest ratio of ``Y'ᵀR⁻¹Y'`` to ``N − 1`` formed in float32 (above it: float64).
_FLOAT32_SAFE_RATIO = 1e3


def _increment_transforms(
    yp: torch.Tensor,
    innov: torch.Tensor,
    w: torch.Tensor,
    inflation: float,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ensemble-space increment matrices ``D = w̄ 1ᵀ + W − I / inflation``, one per location.

    ``yp`` ``(B, N, m)``, ``innov`` ``(B, m)``, ``w`` ``(B or 1, P, m)`` the (localised)
    observation precisions. Returns ``(B, P, N, N)``; analysis member ``n`` is
    ``x_n + Σ_k X'_k D[k, n]`` with ``X'`` the inflated perturbations, which equals
    ``x̄ + Σ_k X'_k T[k, n]``. Written as an increment, a location that no observation
    reaches keeps its prior exactly (``D = 0`` without inflation), not up to round-off.
    ``scale`` ``(B, P)``: a further inflation factor of the perturbations at each location
    (the adaptive one), see :func:`_transforms`.
    """
    n_mem = yp.shape[-2]
    n_loc = w.shape[-2]
    if n_loc <= n_mem:
        # (B, P, N, m) scaled copies: cheaper while there are fewer locations than members.
        a = (yp[:, None, :, :] * w[:, :, None, :]) @ yp[:, None, :, :].transpose(-1, -2)
    else:
        # One GEMM over all locations: (B, P, m) @ (B, m, N·N).
        outer = (yp[:, :, None, :] * yp[:, None, :, :]).reshape(yp.shape[0], n_mem * n_mem, -1)
        a = (w @ outer.transpose(-1, -2)).reshape(*w.shape[:-1], n_mem, n_mem)
        a = a.expand(yp.shape[0], n_loc, n_mem, n_mem)
    b = (w * innov[:, None, :]) @ yp.transpose(-1, -2)  # (B, P, N)
    seen = (w > 0).any(-1).expand(yp.shape[0], n_loc)
    return _transforms(a, b, seen, inflation, scale)


def _increment_transforms_sparse(
    yp: torch.Tensor,
    innov: torch.Tensor,
    w: torch.Tensor,
    inflation: float,
    k: int,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`_increment_transforms` from the ``k`` largest weights of each location.

    For a localisation radius much smaller than the domain, few observations reach a
    location: gathering those ``k`` makes the work ``P k N²`` instead of ``P m N²``.
    Exact when no location is reached by more than ``k`` observations.
    """
    n_b, n_mem, _ = yp.shape
    vals, idx = torch.topk(w, k, dim=-1, sorted=False)  # (B or 1, P, k)
    n_loc = w.shape[-2]
    vals = vals.expand(n_b, n_loc, k)
    idx = idx.expand(n_b, n_loc, k)
    # yp at the selected observations: (B, P, N, k)
    ypk = torch.gather(
        yp[:, None, :, :].expand(n_b, n_loc, n_mem, yp.shape[-1]),
        -1,
        idx[:, :, None, :].expand(n_b, n_loc, n_mem, k),
    )
    innk = torch.gather(innov[:, None, :].expand(n_b, n_loc, innov.shape[-1]), -1, idx)
    a = (ypk * vals[:, :, None, :]) @ ypk.transpose(-1, -2)  # (B, P, N, N)
    b = (ypk @ (vals * innk)[..., None]).squeeze(-1)  # (B, P, N)
    return _transforms(a, b, vals.amax(-1) > 0, inflation, scale)


def _transforms(a, b, seen, inflation: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``D`` from ``a = Y'ᵀ R̃⁻¹ Y'`` ``(B, P, N, N)`` and ``b = Y'ᵀ R̃⁻¹ (y − ȳ)``.

    The ``N × N`` algebra is done in float64 whatever the input's dtype: with small
    observation errors ``a`` is large against ``N − 1`` and a float32 eigensolver
    returns eigenvalues of ``Ã = (N − 1) I + a`` below ``N − 1`` (even negative), which
    the square root turns into NaN. The eigenvalues are also clamped to ``N − 1``, their
    exact lower bound (``a`` is positive semi-definite), against the rounding of ``a``.

    With ``scale`` ``s`` ``(B, P)`` the perturbations (given un-scaled) are inflated by
    ``s`` at each location: ``a`` becomes ``s² a``, ``b`` becomes ``s b``, and the matrix
    returned applies to the un-scaled perturbations (``s D``), so that a location no
    observation reaches gets perturbations ``s · inflation`` times the prior's.
    """
    dtype = a.dtype
    n_mem = a.shape[-1]
    a, b = a.double(), b.double()
    if scale is not None:
        s = scale.double()
        a = a * s.square()[..., None, None]
        b = b * s[..., None]
    eye = torch.eye(n_mem, dtype=a.dtype, device=a.device)
    a = a + (n_mem - 1) * eye
    a = 0.5 * (a + a.transpose(-1, -2))
    lam, q = torch.linalg.eigh(a)
    lam = lam.clamp_min(n_mem - 1)
    wbar = q @ ((q.transpose(-1, -2) @ b[..., None]) / lam[..., None])  # (B, P, N, 1)
    wsq = (q * ((n_mem - 1) / lam).sqrt()[..., None, :]) @ q.transpose(-1, -2)
    no_update = (1.0 - 1.0 / inflation) * eye
    d = torch.where(seen[..., None, None], wsq + wbar - eye / inflation, no_update)
    if scale is not None:  # from the inflated perturbations s X' to the given X'
        d = s[..., None, None] * (d + eye / inflation) - eye / inflation
    return d.to(dtype)


def _state_locations(state_coords, state_location, d: int, dtype, device):
    """Distinct locations ``(P, k)`` and the location index ``(d,)`` of each component."""
    coords = as_float_tensor(state_coords, "state_coords", dtype=dtype, device=device)
    if coords.ndim == 1:
        coords = coords[:, None]
    if coords.ndim != 2:
        raise OptionError(
            f"state_coords must be (d, k) or (P, k), got shape {tuple(coords.shape)}"
        )
    if state_location is not None:
        loc = torch.as_tensor(state_location, device=device)
        if loc.is_floating_point() or loc.shape != (d,):
            raise OptionError(
                f"state_location must be an integer array of shape ({d},), one location row "
                f"per state component; got {loc.dtype} {tuple(loc.shape)}"
            )
        loc = loc.long()
        if d and (int(loc.min()) < 0 or int(loc.max()) >= coords.shape[0]):
            raise OptionError(
                f"state_location has values outside [0, {coords.shape[0]}) (rows of state_coords)"
            )
        return coords, loc
    if coords.shape[0] != d:
        raise OptionError(
            f"state_coords has {coords.shape[0]} rows but the state has {d} components: "
            "pass one row per component (d, k), or P distinct locations (P, k) together "
            "with state_location (d,)"
        )
    return _distinct_rows(coords)


def _distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``x`` ``(m, k)`` and the index of each row among them, as
    ``torch.unique(x, dim=0, return_inverse=True)`` gives (but for their order), by
    ``k`` stable sorts of one column each: several times faster. Rows holding NaN stay
    apart (NaN equals nothing)."""
    if x.shape[1] == 1:  # one coordinate: the unique of a vector, cheaper still
        distinct, inverse = torch.unique(x[:, 0], return_inverse=True)
        return distinct[:, None], inverse
    order = torch.arange(x.shape[0], device=x.device)
    for j in reversed(range(x.shape[1])):  # the last column first: lexicographic order
        order = order[torch.argsort(x[order, j], stable=True)]
    rows = x[order]
    first = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    first[1:] = (rows[1:] != rows[:-1]).any(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.cumsum(first, 0) - 1
    return rows[first], inverse


def _check_positions(locs, obs_c, used, dist_fn) -> None:
    """Refuse state locations and observations that count (``used``, ``(B, m)``)
    without a finite horizontal position, and, for great-circle distances, latitudes
    off the sphere: the distances would give them a weight all the same. (A vertical
    coordinate may be NaN: a field without levels, see :class:`with_vertical`.)"""
    horizontal, extra = _horizontal(dist_fn)
    k = locs.shape[-1] - extra
    unknown = int((~torch.isfinite(locs[:, :k]).all(-1)).sum())
    if unknown:
        raise OptionError(
            f"state_coords has {unknown} rows with NaN or infinite coordinates: every "
            "state location needs its position"
        )
    unknown = ~torch.isfinite(obs_c[..., :k]).all(-1) & used
    if bool(unknown.any()):
        raise ObservationMismatchError(
            f"obs_coords is NaN or infinite for {int(unknown.sum())} observations that count "
            "(a value in y, a finite obs_std): give their positions, or mark them missing "
            "(NaN in y)"
        )
    if horizontal is not great_circle_distance:
        return
    for name, lat in (
        ("state_coords", locs[:, 0]),
        ("obs_coords", obs_c[..., 0].expand_as(used)[used]),
    ):
        off = lat.abs() > 90.0 + 1e-9
        if bool(off.any()):
            raise OptionError(
                f"{name} has latitudes beyond ±90 degrees (e.g. {float(lat[off][0]):g}); "
                'distance="great_circle" takes (latitude, longitude) in degrees, in that '
                "order"
            )


def _horizontal(dist_fn) -> tuple[Callable, int]:
    """The distance on the horizontal that ``dist_fn`` is built on, and how many last
    columns of a location it reads besides (a vertical coordinate, a variable id)."""
    if isinstance(dist_fn, with_vertical):
        inner, extra = _horizontal(dist_fn.horizontal)
        return inner, extra + 1
    if isinstance(dist_fn, within_variable):
        inner, extra = _horizontal(dist_fn.inner)
        return inner, extra + 1
    return dist_fn, 0


def _coarse(interpolate_from, device):
    """``interpolate_from`` as tensors on ``device``, checked; None stays None."""
    if interpolate_from is None:
        return None
    try:
        anchors, neighbours, weights = interpolate_from
    except (TypeError, ValueError):
        raise OptionError(
            "interpolate_from must be (anchors, neighbours, weights), three arrays"
        ) from None
    anchors = torch.as_tensor(anchors, device=device).long()
    neighbours = torch.as_tensor(neighbours, device=device).long()
    weights = torch.as_tensor(weights, device=device, dtype=torch.float64)
    if anchors.ndim != 1 or neighbours.ndim != 2 or weights.shape != neighbours.shape:
        raise OptionError(
            "interpolate_from: anchors must be (Pc,), neighbours and weights (P, K); got "
            f"{tuple(anchors.shape)}, {tuple(neighbours.shape)}, {tuple(weights.shape)}"
        )
    if neighbours.numel() and (
        int(neighbours.min()) < 0 or int(neighbours.max()) >= anchors.numel()
    ):
        raise OptionError("interpolate_from: neighbours must index into anchors")
    if not torch.allclose(weights.sum(-1), torch.ones((), dtype=weights.dtype, device=device)):
        raise OptionError("interpolate_from: each location's weights must sum to 1")
    return anchors, neighbours, weights


def _is_metric(dist_fn) -> bool:
    """Whether ``dist_fn`` is one of the provided distances (the triangle inequality holds)."""
    dist_fn, _ = _horizontal(dist_fn)
    return dist_fn in (great_circle_distance, euclidean_distance) or isinstance(
        dist_fn, cyclic_distance
    )


def _search_space(locs: torch.Tensor, dist_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the locations ``locs`` ``(P, k)`` lie for cutting them into compact
    chunks: points ``(P, q)`` whose Euclidean distances follow ``dist_fn`` (on the
    sphere, the chord in km, so that the seam of longitude and the poles split
    nothing; a vertical coordinate times its ratio), and a group per location (the
    variable of :class:`within_variable`, which no chunk may mix: another variable is
    infinitely far)."""
    if isinstance(dist_fn, within_variable):
        points, groups = _search_space(locs[:, :-1], dist_fn.inner)
        ids = torch.unique(locs[:, -1].detach().cpu(), return_inverse=True)[1]
        return points, groups * (int(ids.max()) + 1 if ids.numel() else 1) + ids
    if isinstance(dist_fn, with_vertical):
        points, groups = _search_space(locs[:, :-1], dist_fn.horizontal)
        z = torch.nan_to_num(locs[:, -1:].detach().to("cpu", torch.float64)) * dist_fn.ratio
        return torch.cat([points, z], 1), groups
    points = locs.detach().to("cpu", torch.float64)
    if dist_fn is great_circle_distance:
        lat, lon = torch.deg2rad(points[:, 0]), torch.deg2rad(points[:, 1])
        points = EARTH_RADIUS_KM * torch.stack(
            [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], 1
        )
    return points, torch.zeros(points.shape[0], dtype=torch.long)


def _compact_chunks(locs: torch.Tensor, dist_fn, size: int) -> list[torch.Tensor]:
    """The locations ``locs`` ``(P, k)`` in chunks of at most ``size``, each a compact
    patch: the leaves of a k-d bisection (at the median of the coordinate that spreads
    most, in :func:`_search_space`) of each group. Each chunk's observations are then
    searched within a small radius of its first location, the one nearest its centre.
    Index tensors (the central location, then the others in ascending order), every
    location in one; the same for the same locations."""
    points, groups = _search_space(locs, dist_fn)
    todo = [torch.nonzero(groups == g).flatten() for g in torch.unique(groups).flip(0)]
    leaves = []
    while todo:
        idx = todo.pop()
        if idx.numel() <= size:
            leaves.append(idx)
            continue
        p = points[idx]
        axis = int((p.max(0).values - p.min(0).values).argmax())
        order = torch.argsort(p[:, axis], stable=True)
        half = idx.numel() // 2
        todo += [idx[order[half:]], idx[order[:half]]]  # the lower half first
    chunks = []
    for leaf in leaves:
        leaf = leaf.sort().values
        p = points[leaf]
        centre = int(((p - p.mean(0)) ** 2).sum(1).argmin())
        rest = torch.cat([leaf[:centre], leaf[centre + 1 :]])
        chunks.append(torch.cat([leaf[centre : centre + 1], rest]).to(locs.device))
    return chunks


def _local_analysis(
    x, xp, yp, innov, rinv, radius, dist_fn, state_coords, state_location, obs_coords, op,
    batch, chunk_size, inflation, delta=None, adaptive=None, coarse=None,
):  # fmt: skip
    """The analyses at every location, chunk by chunk; with ``delta`` ``(B, d)`` (the
    adaptive inflation field, see :class:`AdaptiveInflation`) also its update ``(B, d)``.
    """
    bsz, n_mem, d = xp.shape
    m = yp.shape[-1]
    dtype, device = xp.dtype, xp.device
    locs, comp_loc = _state_locations(state_coords, state_location, d, dtype, device)
    n_loc = locs.shape[0]

    if obs_coords is None:
        if isinstance(op, LinearObservationOperator) and op.indices.shape[-1] == 1:
            # Selection operator: observations sit where the observed components are.
            obs_c = locs[comp_loc][op.indices[..., 0].to(device)]
        else:
            raise OptionError(
                "loc_radius is given but obs_coords is missing: pass the (..., m, k) "
                "coordinates of the observations (they can only be inferred for an index "
                "obs_op)"
            )
    else:
        obs_c = as_float_tensor(obs_coords, "obs_coords", dtype=dtype, device=device)
        if obs_c.ndim == 1:
            obs_c = obs_c[:, None]
    if obs_c.ndim < 2 or obs_c.shape[-2] != m or obs_c.shape[-1] != locs.shape[-1]:
        raise ObservationMismatchError(
            f"obs_coords has shape {tuple(obs_c.shape)}; expected (..., {m}, "
            f"{locs.shape[-1]}) for {m} observations and {locs.shape[-1]}-dimensional "
            "state_coords"
        )
    if obs_c.ndim > 2:
        try:
            obs_c = obs_c.expand(*batch, m, obs_c.shape[-1]).reshape(bsz, m, -1)
        except RuntimeError as err:
            raise ObservationMismatchError(
                f"obs_coords batch dims {tuple(obs_c.shape[:-2])} do not broadcast to the "
                f"analysis batch {tuple(batch)}"
            ) from err
    _check_positions(locs, obs_c, rinv > 0, dist_fn)
    # Observations often share a position (a station's variables and levels, a grid
    # point's): distances and weights are evaluated once per position and gathered.
    positions, at_position = obs_c, None
    if obs_c.ndim == 2:
        distinct, inverse = _distinct_rows(obs_c)
        if distinct.shape[0] < m:
            positions, at_position = distinct, inverse

    # Components grouped by location, so a chunk of locations is a slice of `order`.
    order = torch.argsort(comp_loc, stable=True)
    counts = torch.bincount(comp_loc, minlength=n_loc)
    starts = torch.zeros(n_loc + 1, dtype=torch.long, device=device)
    starts[1:] = torch.cumsum(counts, 0)

    fixed_chunks = chunk_size is not None
    if chunk_size is None:
        cost = bsz * (m + 4 * n_mem * n_mem)  # w; A, its eigenvectors, D, a slot's D
        chunk_size = max(1, _CHUNK_BUDGET // max(cost, 1))
    elif int(chunk_size) != chunk_size or chunk_size < 1:
        raise OptionError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    # For the provided distances (metrics: the triangle inequality holds) the
    # observations that can reach a chunk are found from the chunk's first location and
    # its radius, so distances are evaluated for those only, not for all P × m pairs.
    metric = obs_c.ndim == 2 and n_loc * m > _SEARCH_FROM and _is_metric(dist_fn)
    cutoff = 2.0 * radius
    if metric and not fixed_chunks:
        # Chunks of ~2√P locations balance the per-chunk search over all m observations
        # against the pairs within a chunk. They are compact patches (_compact_chunks),
        # not runs of consecutive locations: on a lat/lon grid a run is a band of rows,
        # whose radius seen from its first point spans the globe.
        chunk_size = max(64, min(chunk_size, int(2 * math.sqrt(n_loc))))

    # One component per location, in location order (a ring, a single-field grid):
    # chunks are slices, and the gathers below are skipped.
    in_order = n_loc == d and bool((comp_loc == torch.arange(d, device=device)).all())
    if delta is not None:  # the field at each location: its value at the first component
        delta = delta[:, order[starts[:-1].clamp_max(max(d - 1, 0))]]
    xa = torch.empty_like(xp)

    def transforms(where: torch.Tensor, sel=None) -> torch.Tensor:
        """``D`` ``(B, pc, N, N)`` at the locations ``where`` (``locs[sel]``, a slice or
        an index tensor, when the adaptive field is updated)."""
        yp_c, innov_c, rinv_c = yp, innov, rinv
        pos, at = positions, at_position  # at: each observation's row of pos
        if metric:
            centre = where[:1]
            reach_radius = float(dist_fn(centre, where).max()) + cutoff
            near = dist_fn(centre, positions)[0] <= reach_radius * (1 + 1e-6) + 1e-9
            rows = torch.nonzero(near).flatten()
            pos, cand = positions[rows], rows
            if at_position is not None:  # the observations at those positions
                cand = torch.nonzero(near[at_position]).flatten()
                renumber = at_position.new_full((positions.shape[0],), -1)
                renumber[rows] = torch.arange(rows.numel(), device=device)
                at = renumber[at_position[cand]]
            yp_c, innov_c, rinv_c = yp[..., cand], innov[..., cand], rinv[..., cand]
        dist = dist_fn(where, pos)
        if dist.ndim == 2:
            dist = dist[None]
        weight = gaspari_cohn(dist, radius)
        if at is not None:
            weight = weight[..., at]
        w = weight * rinv_c[:, None, :]  # (B, pc, m)
        # Only observations that reach some location of this chunk take part.
        positive = w > 0
        reach = positive.any(dim=1).any(dim=0)
        most = int(positive.sum(-1).max()) if w.numel() else 0  # at the busiest location
        scale = None
        if delta is not None:
            delta[:, sel] = adaptive.update(delta[:, sel], yp_c, innov_c, w)
            scale = delta[:, sel].sqrt()
        if 4 * most < int(reach.sum()):  # sparse: gather each location's observations
            incr = _increment_transforms_sparse(yp_c, innov_c, w, inflation, max(most, 1), scale)
        elif bool(reach.all()):
            incr = _increment_transforms(yp_c, innov_c, w, inflation, scale)
        else:
            cols = torch.nonzero(reach).flatten()
            incr = _increment_transforms(
                yp_c[..., cols], innov_c[..., cols], w[..., cols], inflation, scale
            )
        return incr.to(xp.dtype)

    def apply(sel, incr: torch.Tensor) -> None:
        """The analysis of the components at locations ``sel`` (a slice or an index
        tensor) with their ``D``:
        ``x_a[n, c] = x[n, c] + Σ_k X'[k, c] D_c[k, n]``, one batched vector–matrix
        product per slot (the j-th component of every location), so that no temporary
        holds an N × N matrix per component (a location's fields and levels share one)."""

        def slots():  # (components, their D); a partial slot's D gathered when used
            if in_order:
                yield sel, incr
                return
            first, count = starts[:-1][sel], counts[sel]
            for j in range(int(count.max()) if count.numel() else 0):
                have = count > j
                if bool(have.all()):
                    yield order[first + j], incr
                else:
                    yield order[first[have] + j], incr[:, torch.nonzero(have).flatten()]

        for comps, d_comp in slots():
            upd = xp[..., comps].transpose(-1, -2)[..., None, :] @ d_comp  # (B, nc, 1, N)
            xa[..., comps] = x[..., comps] + upd[..., 0, :].transpose(-1, -2)

    def chunks(points: torch.Tensor) -> list:
        """Chunks of ``points``: compact patches where the search is on, else slices."""
        if metric and not fixed_chunks:
            return _compact_chunks(points, dist_fn, chunk_size)
        return [slice(q, q + chunk_size) for q in range(0, points.shape[0], chunk_size)]

    if coarse is None:
        for sel in chunks(locs):
            apply(sel, transforms(locs[sel], sel))
    else:  # D at the coarse locations, then interpolated to every location
        at, neighbours, weights = coarse
        anchors = locs[at]
        dc = None
        for q in chunks(anchors):
            d_q = transforms(anchors[q])
            if dc is None:
                dc = d_q.new_empty((d_q.shape[0], at.numel(), *d_q.shape[2:]))
            dc[:, q] = d_q
        for p0 in range(0, n_loc, chunk_size):
            p1 = min(p0 + chunk_size, n_loc)
            w = weights[p0:p1].to(dc.dtype)
            apply(slice(p0, p1), (w[None, :, :, None, None] * dc[:, neighbours[p0:p1]]).sum(2))
    return xa, (None if delta is None else delta[:, comp_loc])
