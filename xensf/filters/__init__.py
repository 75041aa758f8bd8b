"""Analysis algorithms on tensors ``(..., N, d)``: EnSF, LETKF and what they share.

Layer 1 of xensf: torch (and numpy at the edges) only, no xarray.
"""

from __future__ import annotations

from .adaptive_inflation import AdaptiveInflation
from .ensf import ensf_analysis
from .letkf import letkf_analysis
from .localization import (
    cyclic_distance,
    euclidean_distance,
    gaspari_cohn,
    great_circle_distance,
    with_vertical,
    within_variable,
)
from .operators import (
    CallableObservationOperator,
    LinearObservationOperator,
    as_observation_operator,
)

__all__ = [
    "AdaptiveInflation",
    "CallableObservationOperator",
    "LinearObservationOperator",
    "as_observation_operator",
    "cyclic_distance",
    "ensf_analysis",
    "euclidean_distance",
    "gaspari_cohn",
    "great_circle_distance",
    "letkf_analysis",
    "with_vertical",
    "within_variable",
]
