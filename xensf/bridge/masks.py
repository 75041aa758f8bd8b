"""Land masks: points that are NaN in every member at a time.

An ocean model's land, or rock under a terrain-following grid, is NaN in the prior. An
analysis leaves those points NaN and analyses the others; an observation whose
interpolation reads masked points only is dropped, and one next to the mask reads its
unmasked neighbours, their weights scaled up to the whole. Sea ice, which comes and
goes, is a mask that moves in time: each time is analysed with its own mask, as it
would be in a dask chunk of its own (:func:`times_by_mask`). One chunk and the spatial
blocks of a chunked prior (:mod:`xensf.bridge.spatial`) find the mask and warn about
the observations it touches here, with the same numbers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import EnsembleError, MaskedObservationWarning
from .observations import time_text

__all__ = [
    "mask_of",
    "masked_counts",
    "observations_off_the_mask",
    "times_by_mask",
    "warn_masked_observations",
]


def mask_of(x: np.ndarray, times, plan: Any) -> np.ndarray:
    """The masked components ``(T, d)`` of ``x`` ``(T, N, d)``, stacked as
    ``plan.layout`` says: NaN in every member at that time (land, or sea ice that comes
    and goes).

    Any other NaN or infinite value is an :class:`~xensf.errors.EnsembleError`. (A
    latent method checks the mask against its model's.)
    """
    nan = np.isnan(x)
    masked = nan.all(axis=1)
    bad = (nan & ~masked[:, None, :]) | np.isinf(x)
    if bad.any():
        t = np.flatnonzero(bad.any(axis=(1, 2)))[0]
        component = int(np.flatnonzero(bad[t].any(axis=0))[0])
        layout = plan.layout
        name = layout.variables[layout.field_of_variable()[component // layout.grid_size]]
        when = f" at time {time_text(times[t])}" if times is not None else ""
        raise EnsembleError(
            f"the prior ensemble has NaN or infinite values{when} in {name!r} that are not a "
            "mask: a masked point (land, sea ice) is NaN in every member; fill or drop the "
            "others before assimilating"
        )
    return masked


def times_by_mask(masked: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """The times of ``masked`` ``(T, d)`` grouped by their mask (or any other row, such
    as the observed rows): ``(times, mask (d,))`` pairs, ``times`` an index into the
    first axis, in the order of their first time. One group (every time: a slice) where
    the mask stays put, as land does. Times are analysed independently, so a group's
    analysis is the one its times would get alone (or in a dask chunk of their own)."""
    if masked.shape[0] == 0 or (masked == masked[:1]).all():
        return [(slice(None), masked[0] if masked.shape[0] else masked.any(axis=0))]
    # each row as one opaque value: a 1-D unique (unique(axis=0) takes ~15 ms a call)
    rows = np.ascontiguousarray(masked)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    group = group.ravel()
    return [(np.flatnonzero(group == g), masked[first[g]]) for g in np.argsort(first)]


def observations_off_the_mask(plan: Any, y: np.ndarray, masked: np.ndarray):
    """The plan with each observation's weights on unmasked points only, ``y`` NaN where
    an observation reads masked points alone, and how many observations (finite ``y``)
    were dropped so and how many read some masked points (:func:`masked_counts`)."""
    obs = plan.obs
    valid = ~masked[obs.indices] & (obs.weights != 0)
    kept = np.where(valid, obs.weights, 0.0)
    total, total_kept = obs.weights.sum(-1), kept.sum(-1)
    dropped = ~valid.any(-1)
    moved = ~dropped & (valid != (obs.weights != 0)).any(-1)
    if not (dropped.any() or moved.any()):
        return plan, y, (0, 0)
    counts = masked_counts(y, dropped, moved)
    scale = np.divide(total, total_kept, out=np.zeros_like(total), where=total_kept != 0)
    weights = kept * scale[:, None]
    y = np.where(dropped, np.nan, y)
    return replace(plan, obs=replace(obs, weights=weights)), y, counts


def masked_counts(y: np.ndarray, dropped, moved) -> tuple[int, int]:
    """The observations (finite ``y``) that read masked points only (``dropped``) and
    those that read some (``moved``)."""
    seen = np.isfinite(y)
    return int((seen & dropped).sum()), int((seen & moved).sum())


def warn_masked_observations(plan: Any, counts: tuple[int, int]) -> None:
    """A :class:`~xensf.errors.MaskedObservationWarning` with the :func:`masked_counts`
    of an analysis (of all its times)."""
    n_dropped, n_moved = counts
    if n_dropped or n_moved:
        plan.warn(
            MaskedObservationWarning,
            f"{n_dropped} observations fall on masked points of the prior (NaN in every "
            f"member) and were dropped; {n_moved} next to the mask use only the unmasked "
            "points of their interpolation",
            MaskedObservationWarning,
        )
