"""What makes two runs the same run: the settings a resume compares, key by key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import xarray as xr

from ..bridge.metadata import json_text
from .context import CycleContext
from .forecast import forecaster_settings

__all__ = ["run_settings"]


def _digest(ds: xr.Dataset) -> str:
    """SHA-256 of the data of every variable and coordinate (names, dims, dtypes, values)."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        values = np.asarray(var.values)
        if values.dtype.kind == "O":
            try:
                values = values.astype(str)
            except (TypeError, ValueError):  # tuples: the labels of a stacked dim
                values = np.array([str(v) for v in values.ravel()]).reshape(values.shape)
        h.update(f"{name}|{var.dims}|{values.dtype.str}|{values.shape}|".encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def run_settings(ctx: CycleContext, resolved: dict, latent_digest: str | None) -> dict[str, Any]:
    """What makes two runs the same run: a resume compares these, key by key.

    ``resolved`` are the method's options with their defaults filled in,
    ``latent_digest`` the latent model's weights hash (or None).
    """
    latent = None if latent_digest is None else {"weights_sha256": latent_digest}
    state0, obs, schedule = ctx.state0, ctx.obs, ctx.schedule
    times = obs[ctx.obs_time].values
    settings = {
        "method": ctx.method,
        "options": resolved,
        "latent_model": latent,
        "obs_error": ctx.obs_error,
        "forecaster": forecaster_settings(ctx.forecaster),
        "initial_ensemble": {
            "time": str(schedule.t0),
            "variables": ctx.names,
            "sizes": {str(d): int(s) for d, s in state0.sizes.items()},
            "sha256": _digest(state0),
        },
        "obs": {
            "variables": sorted(map(str, obs.data_vars)),
            "sizes": {str(d): int(s) for d, s in obs.sizes.items()},
            "first_time": str(times.min()),
            "last_time": str(times.max()),
            "sha256": _digest(obs),
        },
        "seed": int(ctx.seed),
        "every": schedule.every,
        "members": bool(ctx.members),
    }
    return json.loads(json_text(settings))
