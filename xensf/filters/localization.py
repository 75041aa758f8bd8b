"""Distance-based localisation: the Gaspari–Cohn taper and the distances it is fed.

Radius convention
-----------------
Throughout xensf a localisation radius ``c`` is the **half-width of the Gaspari–Cohn
function** (Gaspari & Cohn 1999, eq. 4.10): the weight is 1 at distance 0, about 0.21
at ``c`` and exactly 0 from ``2 c`` on. The *cut-off distance* is therefore ``2 c``.

How this maps to other conventions:

* "cut-off radius" / "localisation distance" used by many LETKF codes (weight reaches 0
  at that distance): ``c = cutoff / 2``;
* a Gaussian length scale ``L`` (``exp(-d² / 2L²)``, also DAPPER's ``loc_rad``, which
  DAPPER turns into a GC half-width by multiplying with ``sqrt(10/3) ≈ 1.82``):
  ``c = sqrt(10/3) · L``, cut-off ``≈ 3.65 L``.

Distances
---------
A distance is any callable ``(a, b) -> D`` with ``a`` of shape ``(P, k)`` (state
locations), ``b`` of shape ``(..., m, k)`` (observation locations) and ``D`` of shape
``(..., P, m)``. Three are provided: :func:`great_circle_distance` (``k = 2``, latitude
and longitude in degrees, km), :func:`euclidean_distance` and :func:`cyclic_distance`
(a factory for periodic domains, e.g. the Lorenz-96 ring); :class:`with_vertical`
adds a vertical coordinate to any of them (vertical localisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..checks import as_number, is_real
from ..errors import OptionError

__all__ = [
    "EARTH_RADIUS_KM",
    "cyclic_distance",
    "euclidean_distance",
    "gaspari_cohn",
    "great_circle_distance",
    "resolve_distance",
    "with_vertical",
    "within_variable",
]

EARTH_RADIUS_KM = 6371.0

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gaspari_cohn(r: torch.Tensor, c: float) -> torch.Tensor:
    """Gaspari–Cohn compactly supported correlation function (their eq. 4.10).

    Parameters
    ----------
    r : torch.Tensor
        Non-negative distances, any shape.
    c : float
        Half-width: the weight is 1 at ``r = 0`` and reaches 0 at ``r = 2 c`` (see the
        module docstring for how this relates to other radius conventions).

    Returns
    -------
    torch.Tensor
        Weights in ``[0, 1]``, same shape and dtype as ``r``; exactly 0 for ``r >= 2 c``.

    Examples
    --------
    >>> import torch
    >>> gaspari_cohn(torch.tensor([0.0, 1.0, 2.0, 3.0]), 1.0)
    tensor([1.0000, 0.2083, 0.0000, 0.0000])
    """
    c = as_number(c)
    if not (is_real(c) and c > 0 and math.isfinite(c)):
        raise OptionError(f"gaspari_cohn: the half-width c must be positive and finite, got {c!r}")
    z = torch.as_tensor(r).abs() / c
    w = torch.zeros_like(z)
    # The pieces at the distances within the support only: with a radius small against
    # the domain most pairs lie beyond it (and NaN distances get 0).
    support = z < 2.0
    z = z[support]
    # Horner forms of the two quintic pieces.
    inner = 1.0 + z**2 * (-5.0 / 3.0 + z * (5.0 / 8.0 + z * (1.0 / 2.0 + z * (-1.0 / 4.0))))
    outer = (
        4.0
        + z * (-5.0 + z * (5.0 / 3.0 + z * (5.0 / 8.0 + z * (-1.0 / 2.0 + z * (1.0 / 12.0)))))
        - 2.0 / (3.0 * z.clamp_min(1.0))
    )
    w[support] = torch.where(z <= 1.0, inner, outer).clamp_min(0.0)
    return w


def _pairwise_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``b[..., None, :, :] - a[:, None, :]`` with shape ``(..., P, m, k)``."""
    if a.ndim != 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
        raise OptionError(
            f"locations must be (P, k) and (..., m, k) with the same k coordinates, got "
            f"shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return b[..., None, :, :] - a[:, None, :]


def euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between locations ``a`` ``(P, k)`` and ``b`` ``(..., m, k)``.

    Returns a tensor of shape ``(..., P, m)`` in the units of the coordinates.
    """
    return torch.linalg.vector_norm(_pairwise_diff(a, b), dim=-1)


def great_circle_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km on a sphere of radius 6371 km.

    Parameters
    ----------
    a : torch.Tensor
        ``(P, 2)`` latitude and longitude in degrees (in that order).
    b : torch.Tensor
        ``(..., m, 2)`` latitude and longitude in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., P, m)`` distances in km. Longitudes may be in ``[0, 360)`` or
        ``[-180, 180)``; the haversine formula does not care.

    Examples
    --------
    >>> import torch
    >>> pole = torch.tensor([[90.0, 0.0]])
    >>> equator = torch.tensor([[0.0, 123.0]])
    >>> round(float(great_circle_distance(pole, equator)), 1)  # a quarter meridian
    10007.5
    """
    if a.shape[-1] != 2 or b.shape[-1] != 2:
        raise OptionError(
            "great_circle_distance: coordinates must be (latitude, longitude) pairs in "
            f"degrees, got last dims {a.shape[-1]} and {b.shape[-1]}"
        )
    lat1 = torch.deg2rad(a[:, 0])[:, None]
    lon1 = torch.deg2rad(a[:, 1])[:, None]
    lat2 = torch.deg2rad(b[..., 0])[..., None, :]
    lon2 = torch.deg2rad(b[..., 1])[..., None, :]
    h = (
        torch.sin((lat2 - lat1) / 2) ** 2
        + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * torch.asin(h.clamp(0.0, 1.0).sqrt())


class cyclic_distance:  # lower-case: it is used like a function, cyclic_distance(40)
    """Distance on a periodic domain (a ring, a torus).

    ``cyclic_distance(period)`` returns a distance callable; along each coordinate axis
    the separation is ``min(|Δ| mod p, p − |Δ| mod p)``, and the axes are combined in
    the Euclidean way.

    Parameters
    ----------
    period : float or sequence of float
        The period, one for all axes or one per axis (``inf`` for a non-periodic axis).

    Examples
    --------
    >>> import torch
    >>> dist = cyclic_distance(40)
    >>> dist(torch.tensor([[0.0]]), torch.tensor([[39.0], [20.0], [3.0]]))
    tensor([[ 1., 20.,  3.]])
    """

    def __init__(self, period):
        try:
            p = torch.as_tensor(period, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            p = torch.tensor([math.nan])
        if p.numel() == 0 or bool((p <= 0).any()) or bool(p.isnan().any()):
            raise OptionError(
                f"cyclic_distance: period must be a positive number (or one per axis), "
                f"got {period!r}"
            )
        self.period = p

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = _pairwise_diff(a, b).abs()
        p = self.period.to(device=diff.device, dtype=diff.dtype)
        if p.numel() not in (1, diff.shape[-1]):
            raise OptionError(
                f"cyclic_distance: {p.numel()} periods given for {diff.shape[-1]}-dimensional "
                "coordinates; give one period or one per coordinate axis"
            )
        wrapped = torch.where(torch.isinf(p), diff, torch.remainder(diff, p))
        sep = torch.minimum(wrapped, torch.where(torch.isinf(p), wrapped, p - wrapped))
        return torch.linalg.vector_norm(sep, dim=-1)

    def __repr__(self) -> str:
        return f"cyclic_distance({self.period.tolist()})"


class with_vertical:  # lower-case: it is used like a function, with_vertical(d, ratio)
    """A horizontal distance extended by a vertical coordinate (the last column).

    ``with_vertical(horizontal, ratio)(a, b) = sqrt(h² + (ratio · Δz)²)`` with ``h`` the
    ``horizontal`` distance of all columns but the last and ``Δz`` the difference of
    the last. With ``ratio = c / c_z`` the Gaspari–Cohn taper of half-width ``c`` in this
    distance localises with half-width ``c`` horizontally and ``c_z`` vertically (an
    ellipsoidal support): a purely vertical separation ``Δz`` weighs
    ``gaspari_cohn(Δz, c_z)``. A NaN vertical coordinate (a field without levels, such
    as a surface variable) counts as ``Δz = 0``: no vertical localisation for it. If
    ``horizontal`` is a metric, so is this.

    Parameters
    ----------
    horizontal : distance callable or name
        As for :func:`resolve_distance`.
    ratio : float
        Horizontal units per vertical unit (``loc_radius / vertical_radius``).
    """

    def __init__(self, horizontal, ratio: float):
        if not (is_real(ratio) and math.isfinite(ratio) and ratio > 0):
            raise OptionError(f"with_vertical: ratio must be positive and finite, got {ratio!r}")
        self.horizontal = resolve_distance(horizontal)
        self.ratio = float(ratio)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.horizontal(a[:, :-1], b[..., :-1])
        dz = b[..., None, :, -1] - a[:, None, -1]
        dz = torch.nan_to_num(dz, nan=0.0) * self.ratio
        return torch.sqrt(h.square() + dz.square())

    def __repr__(self) -> str:
        return f"with_vertical({self.horizontal!r}, ratio={self.ratio:g})"


class within_variable:  # lower-case: used like a function, as with_vertical
    """A distance that keeps each variable to itself (variable localisation).

    The last column of each location is a variable id; ``within_variable(inner)(a, b)``
    is ``inner`` of the other columns where the ids agree and infinite where they
    differ, so the Gaspari–Cohn weight of another variable's observation is 0: each
    variable is analysed with its own observations only (Kang et al. 2011, J. Geophys.
    Res. 116, D09110). With few members the sampled covariances between variables are
    mostly noise. If ``inner`` is a metric, this is one too (with infinite distances).

    Parameters
    ----------
    inner : distance callable or name
        As for :func:`resolve_distance` (or a :class:`with_vertical`).
    """

    def __init__(self, inner):
        self.inner = inner if isinstance(inner, with_vertical) else resolve_distance(inner)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = self.inner(a[:, :-1], b[..., :-1])
        same = b[..., None, :, -1] == a[:, None, -1]
        return torch.where(same, d, torch.full_like(d, math.inf))

    def __repr__(self) -> str:
        return f"within_variable({self.inner!r})"


_NAMED_DISTANCES: dict[str, Distance] = {
    "great_circle": great_circle_distance,
    "euclidean": euclidean_distance,
}


def resolve_distance(distance: str | Distance) -> Distance:
    """Turn the ``distance`` argument of the filters into a distance callable.

    Accepts ``"great_circle"``, ``"euclidean"``, a :class:`cyclic_distance` instance or
    any callable ``(a (P, k), b (..., m, k)) -> (..., P, m)``.
    """
    if isinstance(distance, str):
        if distance == "cyclic":
            raise OptionError(
                'distance="cyclic" needs a period: pass distance=cyclic_distance(period) '
                "(from xensf.filters.localization)"
            )
        try:
            return _NAMED_DISTANCES[distance]
        except KeyError:
            raise OptionError(
                f"unknown distance {distance!r}: use one of {sorted(_NAMED_DISTANCES)}, "
                "cyclic_distance(period), or a callable (a (P, k), b (..., m, k)) -> (..., P, m)"
            ) from None
    if callable(distance):
        return distance
    raise OptionError(
        f"distance must be a name or a callable, got {type(distance).__name__}: use "
        '"great_circle", "euclidean" or cyclic_distance(period)'
    )
