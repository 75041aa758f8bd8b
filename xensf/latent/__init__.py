"""Latent-EnSF models: the state VAE, the observation encoder, training and the update.

Layer 2 of xensf: torch and layer 1 only, no xarray. :func:`train_latent_model` fits a
:class:`LatentModel` on states (a tensor or a stream of batches) and synthetic sparse
observations of them; :meth:`LatentModel.analyse` runs Latent-EnSF (or latent ETKF) on
forecast ensembles; :meth:`LatentModel.save` / :meth:`LatentModel.load` write and read
a model bundle (safetensors weights and JSON metadata, never pickle).
"""

from __future__ import annotations

from .calibration import (
    COVERAGES,
    NOISE_SCALES,
    calibrate_obs_error,
    coverage_error_curve,
    obs_error_curve,
)
from .model import LATENT_METHODS, LatentModel, build_networks
from .networks import (
    LatentGrid,
    ObservationEncoder,
    StateVAE,
    choose_latent_grid,
    gaussian_kl,
    reparameterize,
)
from .training import (
    BatchSource,
    ObservationSampler,
    gridded_stride_obs,
    latent_loss,
    mask_obs,
    point_obs,
    station_obs,
    train_latent_model,
)

__all__ = [
    "COVERAGES",
    "LATENT_METHODS",
    "NOISE_SCALES",
    "BatchSource",
    "LatentGrid",
    "LatentModel",
    "ObservationEncoder",
    "ObservationSampler",
    "StateVAE",
    "build_networks",
    "calibrate_obs_error",
    "choose_latent_grid",
    "coverage_error_curve",
    "gaussian_kl",
    "gridded_stride_obs",
    "latent_loss",
    "mask_obs",
    "obs_error_curve",
    "point_obs",
    "reparameterize",
    "station_obs",
    "train_latent_model",
]
