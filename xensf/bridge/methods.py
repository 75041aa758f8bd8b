"""The analysis methods the accessor offers, with their options and defaults.

One table, so that adding a method is one entry and the accessor needs no change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError

__all__ = ["METHODS", "MethodSpec", "resolve_method"]


@dataclass(frozen=True)
class MethodSpec:
    """An analysis method: its name, options with defaults, and whether it needs a model."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    needs_model: bool = False
    description: str = ""
    #: whether the method takes the real observations' errors (``obs_error``)
    takes_obs_error: bool = True


#: The options of latent EnSF, defaults included (``latent-ensf-letkf`` adds LETKF's).
_LATENT_ENSF: dict[str, Any] = {
    "steps": 100,
    "eps_alpha": 0.05,
    "eps_beta": 0.025,
    "prior_score": "mixture",
    # the exact noised Gaussian likelihood: calibrated spread in latent space (the
    # damped one halves the posterior variance; docs/method.md)
    "likelihood": "gaussian",
    "update": "decode",
}

METHODS: dict[str, MethodSpec] = {
    "ensf": MethodSpec(
        "ensf",
        {
            "steps": 100,
            "eps_alpha": 0.05,
            "eps_beta": 0.025,
            "prior_score": "mixture",
            "likelihood": "damped",
            "scale": None,
        },
        description="Ensemble score filter in the full state space (Bao, Zhang & Zhang 2023)",
    ),
    "letkf": MethodSpec(
        "letkf",
        {"inflation": 1.0, "rtps": 0.0, "loc_radius": None},
        description="Local ensemble transform Kalman filter (Hunt et al. 2007)",
    ),
    "latent-ensf": MethodSpec(
        "latent-ensf",
        _LATENT_ENSF,
        needs_model=True,
        takes_obs_error=False,
        description="Latent Ensemble Score Filter (Si & Chen 2025): EnSF in a VAE's latent space",
    ),
    "latent-letkf": MethodSpec(
        "latent-letkf",
        {"inflation": 1.0, "rtps": 0.9, "update": "decode"},
        needs_model=True,
        takes_obs_error=False,
        description="ETKF on the latent ensemble with the encoded observation",
    ),
    "latent-ensf-letkf": MethodSpec(
        "latent-ensf-letkf",
        {**_LATENT_ENSF, "inflation": 1.0, "rtps": 0.0, "loc_radius": None},
        needs_model=True,
        description=(
            "Latent-EnSF, then a localised LETKF with the real observations, from the prior "
            "recentred on the latent analysis where the prior is far off and its spread "
            "does not show it, else from the prior"
        ),
    ),
}


#: Largest multiplicative inflation accepted.
MAX_INFLATION = 10.0


def _check_option(method: str, key: str, value: Any) -> None:
    """Range checks that can be made before any work is done."""
    positive = {"steps", "inflation"}
    if key in positive and (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise OptionError(f"{method}: {key} must be a positive number, got {value!r}")
    if key == "inflation" and value > MAX_INFLATION:
        raise OptionError(
            f"{method}: inflation={value!r} multiplies the prior spread by more than "
            f"{MAX_INFLATION:g}; a prior that needs this much is wrong, not underdispersed "
            "(usual values are 1.0-1.5; rtps= relaxes the analysis spread instead)"
        )
    if key in ("eps_alpha", "eps_beta") and not (isinstance(value, int | float) and 0 < value < 1):
        raise OptionError(f"{method}: {key} must lie in (0, 1), got {value!r}")
    if key == "steps" and int(value) != value:
        raise OptionError(f"{method}: steps must be a whole number, got {value!r}")
    if key == "rtps" and not (isinstance(value, int | float) and 0 <= value <= 1):
        raise OptionError(f"{method}: rtps must lie in [0, 1], got {value!r}")
    if (
        key == "loc_radius"
        and value is not None
        and not (isinstance(value, int | float) and value > 0)
    ):
        raise OptionError(
            f"{method}: loc_radius must be a positive distance or None, got {value!r}"
        )
    if key == "prior_score" and value not in ("mixture", "paired"):
        raise OptionError(f"{method}: prior_score must be 'mixture' or 'paired', got {value!r}")
    if key == "update" and value not in ("decode", "increment"):
        raise OptionError(f"{method}: update must be 'decode' or 'increment', got {value!r}")
    if key == "likelihood" and value not in ("damped", "gaussian"):
        raise OptionError(f"{method}: likelihood must be 'damped' or 'gaussian', got {value!r}")
    if key == "inflation" and value < 1:
        raise OptionError(f"{method}: inflation must be >= 1 (1 = none), got {value!r}")


def resolve_method(
    method: str | None, model: Any, options: dict[str, Any]
) -> tuple[MethodSpec, dict[str, Any]]:
    """The method's spec and its full option set; unknown methods/options raise OptionError."""
    if method is None:
        method = "latent-ensf" if model is not None else "ensf"
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    spec = METHODS[method]
    if model is not None and not spec.needs_model:
        raise OptionError(
            f"method {method!r} does not use a model; drop model= or choose a latent method "
            "('latent-ensf', 'latent-letkf')"
        )
    if model is None and spec.needs_model:
        raise OptionError(
            f"method {method!r} needs a trained latent model: pass model=xensf.load(path) "
            "(or a bundle path); train one with xensf.train_latent"
        )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise OptionError(
            f"unknown option(s) {unknown} for method {method!r}; its options are "
            f"{sorted(spec.options)}"
        )
    resolved = {**spec.options, **options}
    for key, value in resolved.items():
        if value is not None or key == "loc_radius":
            if key != "scale":
                _check_option(method, key, value)
    return spec, resolved
