"""xensf: ensemble score filters and LETKF for xarray, lazily over dask.

``import xensf`` registers the ``.ensf`` accessor on Datasets and DataArrays; nothing
heavy (torch, CUDA) is imported until a computation asks for it.
"""

from __future__ import annotations

from importlib import import_module

from . import accessor as _accessor  # noqa: F401  (registers the .ensf accessor)
from ._version import VERSION as __version__
from .errors import (
    BundleError,
    ChunkingError,
    DimensionError,
    EnsembleError,
    ForecastError,
    InflationLimitWarning,
    InnovationWarning,
    LocalisationWarning,
    MaskedObservationWarning,
    ModelQualityWarning,
    ObservationDomainError,
    ObservationErrorWarning,
    ObservationLayoutWarning,
    ObservationMismatchError,
    OptionError,
    PrecisionWarning,
    RunStoreError,
    SpreadWarning,
    StoreError,
    TrainingDataWarning,
    UnitsError,
    XensfError,
    XensfWarning,
)

# Public names loaded on first use, so that `import xensf` stays light.
_LAZY = {
    "AdaptiveInflation": "xensf.filters",
    "ensf_analysis": "xensf.filters",
    "letkf_analysis": "xensf.filters",
    "assimilate": "xensf.bridge.analysis",
    "cycle": "xensf.cycling",
    "open_era5_sample": "xensf.era5",
    "open_era5": "xensf.era5",
    "catalog": "xensf.era5",
    "load": "xensf.bridge.model_cache",
    "train_latent": "xensf.bridge.training",
    "LatentModel": "xensf.latent",
}

__all__ = [
    "BundleError",
    "ChunkingError",
    "DimensionError",
    "EnsembleError",
    "ForecastError",
    "InflationLimitWarning",
    "InnovationWarning",
    "LocalisationWarning",
    "MaskedObservationWarning",
    "ModelQualityWarning",
    "ObservationErrorWarning",
    "ObservationLayoutWarning",
    "ObservationDomainError",
    "ObservationMismatchError",
    "OptionError",
    "RunStoreError",
    "SpreadWarning",
    "StoreError",
    "PrecisionWarning",
    "TrainingDataWarning",
    "UnitsError",
    "XensfError",
    "XensfWarning",
    "__version__",
    *_LAZY,
]


#: Subpackages and modules reached as attributes (``xensf.models.shallow_water(...)``,
#: ``xensf.metrics.crps``), imported on first use as ``xensf.era5`` is. Without this,
#: ``import xensf; xensf.models`` was an AttributeError unless something had imported
#: the subpackage first.
_SUBMODULES = (
    "curvilinear", "cycling", "era5", "experiments", "filters", "latent", "metrics",
    "models", "obs", "plot",
)  # fmt: skip


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f"xensf.{name}")
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xensf' has no attribute {name!r}")
