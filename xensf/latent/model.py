"""The trained Latent-EnSF model: networks, normalisation, latent error, and the update.

A :class:`LatentModel` is what :func:`~xensf.latent.training.train_latent_model`
returns and what a model bundle holds. It encodes states and sparse observations to
one latent space and runs the analysis there (:meth:`LatentModel.analyse`): every
forecast member is encoded to its latent mean, the observation to a latent
pseudo-observation with the identity operator and the error ``latent_obs_std``, the
filter (EnSF or ETKF) updates the latent ensemble, and the decoder maps it back.

Everything here works on tensors in physical units; normalisation (per channel, with
statistics of the training data) happens inside.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._version import VERSION
from ..checks import is_integer, is_real, require_flag
from ..errors import (
    BundleError,
    EnsembleError,
    ObservationLayoutWarning,
    ObservationMismatchError,
    OptionError,
    warn_user,
)
from ..filters.ensf import ensf_analysis
from ..filters.letkf import letkf_analysis
from ..filters.localization import cyclic_distance
from .calibration import MIN_LATENT_OBS_STD, innovation_factor
from .networks import LatentGrid, ObservationEncoder, StateVAE

__all__ = [
    "LATENT_METHODS",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "LatentModel",
    "check_model_metadata",
    "check_weight_shapes",
]

LATENT_METHODS = ("latent-ensf", "latent-letkf")

#: latent-letkf's localisation with ``latent_radius="auto"`` (its default) on a latent
#: of at least as many values as the ensemble has members: Gaspari–Cohn half-width in
#: latent grid cells (a value's analysis reads the encoded observation within two cells
#: of it; the demo twin's second half 0.24 → 0.10 at 10 % noise against the global
#: ETKF). A smaller latent is analysed globally: the ensemble spans it (docs/method.md).
LATENT_RADIUS = 1.0

#: ``metadata["format"]`` of a latent model inside a bundle (the bundle container has
#: its own, :data:`xensf.latent.bundle.BUNDLE_FORMAT`).
#: How much less of its observation layout than its training left out the observations
#: of an analysis may cover before the latent methods warn (``LatentModel.min_coverage``).
COVERAGE_TOLERANCE = 0.05

MODEL_FORMAT = "xensf-latent-model"
#: Version of the model's layout: 2 is the spatial latent (``latent_channels × h × w``);
#: version 1 (a dense bottleneck) is no longer read.
MODEL_FORMAT_VERSION = 3
#: The version a model without a mask is written with: it reads as before (version 3
#: adds the mask tensor, which older readers would ignore, so masked models carry 3).
_UNMASKED_FORMAT_VERSION = 2

_ARCHITECTURE_KEYS = (
    "channels",
    "grid_shape",
    "latent_channels",
    "patch",
    "downsample",
    "width",
    "blocks",
    "periodic_lon",
)


#: The name of a masked model's mask (True where valid) among its bundle's tensors.
_MASK_TENSOR = "mask.valid"
#: The bundle tensor of a gridded model's observation layout (uint8 ``(C, H, W)``).
_OBS_POINTS_TENSOR = "obs_layout.points"


def _warn_outside_layout(outside: torch.Tensor, observed: torch.Tensor, points) -> None:
    """Say that the observed values ``outside`` a model's layout were not encoded."""
    n_times = observed.shape[0]
    left = (observed & ~outside).reshape(n_times, -1).any(-1)
    empty = int((~left).sum())
    warn_user(
        f"{int(outside.sum())} of {int(observed.sum())} observed values (at "
        f"{int(outside.reshape(n_times, -1).any(-1).sum())} of {n_times} times) lie at grid "
        f"points outside the model's observation layout ({int(points.sum())} values, "
        "LatentModel.obs_points) and were not given to its observation encoder, which was "
        "never trained to read values there; give the layout's values only, or train a "
        "model on a layout that holds them"
        + (
            f". {empty} time(s) with none on the layout are returned as the prior" if empty else ""
        ),
        ObservationLayoutWarning,
    )


#: letkf_analysis's arguments that place the state: latent-letkf takes them from the
#: latent grid, and ``latent_radius`` for the width
_LATENT_PLACES = {"loc_radius", "state_coords", "obs_coords", "state_location", "distance"}


def check_latent_radius(value: Any, method: str = "latent-letkf") -> None:
    """Refuse a ``latent_radius`` that is not a positive number of latent grid cells,
    None (the global ETKF) or ``"auto"``."""
    if not (
        value is None
        or (isinstance(value, str) and value == "auto")
        or (is_real(value) and value > 0)
    ):
        raise OptionError(
            f"{method}: latent_radius must be a positive number of latent grid cells, "
            f'None (the global ETKF) or "auto", got {value!r}'
        )


def _check_filter_options(method: str, options: Mapping[str, Any]) -> None:
    """Refuse options the latent filter of ``method`` does not take, before any work."""
    given = {"prior", "y", "obs_op", "obs_std", "generator"}
    if method == "latent-ensf":
        known = set(inspect.signature(ensf_analysis).parameters) - given
    else:
        bad = _LATENT_PLACES & set(options)
        if bad:
            raise OptionError(
                f"latent-letkf localises on the latent grid, whose locations the model "
                f"knows; drop {sorted(bad)} and give latent_radius, the Gaspari–Cohn "
                f"half-width in latent grid cells (None: the global ETKF)"
            )
        check_latent_radius(options.get("latent_radius", "auto"))
        # not those that return another shape or need the full-space grid
        known = set(inspect.signature(letkf_analysis).parameters) - given - _LATENT_PLACES
        known -= {"prior_obs", "adaptive_inflation", "interpolate_from"}
        known.add("latent_radius")
    unknown = set(options) - known
    if unknown:
        raise OptionError(
            f"{method} takes no option(s) {sorted(unknown)}; its filter options are "
            f"{sorted(known)}"
        )


def _check_filter_values(method: str, kwargs: Mapping[str, Any]) -> None:
    """Run the latent filter of ``method`` once on a two-member, one-value problem with
    the caller's filter options (``kwargs`` less :meth:`LatentModel.analyse`'s own), so
    that a value the filter refuses fails also where no time has an observation to
    analyse, and no filter call would have checked it."""
    own = set(inspect.signature(LatentModel.analyse).parameters)
    options = {k: v for k, v in kwargs.items() if k not in own and k != "latent_radius"}
    options.pop("scale", None)  # (L,) values: a one-value problem cannot take them
    prior = torch.tensor([[0.0], [1.0]])
    index = torch.zeros(1, dtype=torch.long)
    if method == "latent-ensf":
        options.setdefault("likelihood", "gaussian")  # as analyse sets it
        ensf_analysis(prior, torch.zeros(1), index, 1.0, generator=0, **options)
    else:
        letkf_analysis(prior, torch.zeros(1), index, 1.0, **options)


def _observed(values: torch.Tensor, mask=None) -> torch.Tensor:
    """True where ``values`` are observed, ``values``' shape: ``mask`` (boolean,
    broadcastable to it) or, by default, where they are not NaN; ObservationMismatchError
    for a mask of another type or shape, True at a NaN, or an infinite observed value."""
    if mask is None:
        mask = ~torch.isnan(values)
    else:
        mask = torch.as_tensor(mask, device=values.device)
        if mask.dtype != torch.bool:
            raise ObservationMismatchError(
                f"the observation mask must be boolean, got {mask.dtype}"
            )
        try:
            mask = mask.expand(values.shape)
        except RuntimeError:
            raise ObservationMismatchError(
                f"the observation mask of shape {tuple(mask.shape)} does not fit the "
                f"observations' {tuple(values.shape)}"
            ) from None
        if bool((mask & torch.isnan(values)).any()):
            raise ObservationMismatchError(
                "the observation mask is True where the value is NaN; mark missing "
                "observations False in the mask"
            )
    if bool((mask & torch.isinf(values)).any()):
        raise ObservationMismatchError(
            f"{int((mask & torch.isinf(values)).sum())} observed value(s) are infinite; "
            "give finite values, and NaN (or False in the mask) where nothing is observed"
        )
    return mask


def _result(post: torch.Tensor, device, single: bool, as_numpy: bool, latent: dict | None):
    """What :meth:`LatentModel.analyse` returns: ``post`` on ``device``, without its time
    dim for a single time, as numpy for numpy input, with ``latent`` where given."""
    post = post.to(device)
    if single:
        post = post[0]
    result = post.numpy() if as_numpy else post
    return result if latent is None else (result, latent)


class LatentModel:
    """A trained state VAE and observation encoder, ready to assimilate.

    Parameters
    ----------
    vae : StateVAE
        The state autoencoder.
    obs_encoder : ObservationEncoder
        The observation encoder, into the same latent space.
    mean, std : torch.Tensor
        ``(C,)`` per-channel normalisation: the networks see ``(x − mean) / std``.
    latent_obs_std : torch.Tensor
        ``(latent_dim,)`` standard deviation of the latent pseudo-observation's error,
        ``E_obs(y) − E(x)`` (means), as estimated on validation data.
    config : dict
        JSON-serialisable description: ``"architecture"`` (``channels``,
        ``grid_shape``, ``latent_channels``, ``patch``, ``downsample``, ``width``,
        ``blocks``, ``periodic_lon``), ``"obs_layout"`` (``{"kind": "gridded"}`` or
        ``{"kind": "points", "n_obs": m, "slot_channels": [...], "indices": [[4 grid
        points] × m], "weights": [[4 weights] × m]}``: each station slot observes one
        channel as a bilinear combination of four grid points, plus whatever describes
        how the training observations were made), ``"variables"`` and ``"units"`` (one
        per channel, may be None), ``"quality"`` (validation reconstruction errors) and
        ``"training"`` (the training record).
    valid : torch.Tensor of bool, optional
        ``(C, H, W)``: False at masked points (land in an ocean model), which the
        networks see as 0 (the channel mean), the training loss ignores, and
        :meth:`decode` and :meth:`analyse` return as NaN. None: no mask.
    obs_points : torch.Tensor of bool, optional
        ``(H, W)`` or ``(C, H, W)``: True at the grid values a gridded model's
        observation layout holds (see :attr:`obs_points`); None: that of a stride
        layout in ``config``, else unknown. A station model takes none.

    Notes
    -----
    The model is in evaluation mode and all its methods run without gradients. Move it
    with :meth:`to`. Build it with :func:`~xensf.latent.training.train_latent_model`
    or :meth:`load`.
    """

    def __init__(
        self,
        vae: StateVAE,
        obs_encoder: ObservationEncoder,
        mean: torch.Tensor,
        std: torch.Tensor,
        latent_obs_std: torch.Tensor,
        config: Mapping[str, Any],
        valid: torch.Tensor | None = None,
        obs_points: torch.Tensor | None = None,
    ):
        self.vae = vae.eval()
        self.obs_encoder = obs_encoder.eval()
        device = next(vae.parameters()).device
        dtype = next(vae.parameters()).dtype
        self.mean = torch.as_tensor(mean, dtype=dtype, device=device).reshape(-1)
        self.std = torch.as_tensor(std, dtype=dtype, device=device).reshape(-1)
        self.latent_obs_std = torch.as_tensor(latent_obs_std, dtype=dtype, device=device)
        self.config = copy.deepcopy(dict(config))
        #: the bundle it was loaded from (path, weights hash, content digest), or None
        self.source: dict[str, str] | None = None
        _check_architecture(self.config)
        if self.mean.shape != (vae.channels,) or self.std.shape != (vae.channels,):
            raise OptionError(
                f"mean and std must have one value per channel ({vae.channels}), got "
                f"shapes {tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        if not bool((self.std > 0).all()):
            raise OptionError("std must be positive for every channel")
        if self.latent_obs_std.shape != (vae.latent_dim,):
            raise OptionError(
                f"latent_obs_std must have shape ({vae.latent_dim},), got "
                f"{tuple(self.latent_obs_std.shape)}"
            )
        layout = self.config.setdefault("obs_layout", {"kind": "gridded"})
        if layout.get("kind") not in ("gridded", "points"):
            raise OptionError(
                f"obs_layout kind must be 'gridded' or 'points', got {layout.get('kind')!r}"
            )
        if layout["kind"] == "points":
            self._set_stations(layout, device)
        self.valid = None
        if valid is not None:
            valid = torch.as_tensor(valid, device=device).to(torch.bool)
            if tuple(valid.shape) != (vae.channels, *self.grid_shape):
                raise OptionError(
                    f"valid must be (C, H, W) = {(vae.channels, *self.grid_shape)}, got "
                    f"{tuple(valid.shape)}"
                )
            if not bool(valid.all()):
                self.valid = valid
        self._obs_points = None
        if obs_points is not None:
            self.obs_points = obs_points

    def _set_stations(self, layout: Mapping[str, Any], device) -> None:
        """Tensors that spread station values onto the grid (see :meth:`obs_inputs`)."""
        try:
            chan = torch.as_tensor(layout["slot_channels"], dtype=torch.long, device=device)
            idx = torch.as_tensor(layout["indices"], dtype=torch.long, device=device)
            w = torch.as_tensor(layout["weights"], dtype=self.dtype, device=device)
        except KeyError as err:
            raise OptionError(f"a points obs_layout needs {err.args[0]!r}") from None
        m = chan.numel()
        size = self.grid_shape[0] * self.grid_shape[1]
        if idx.shape != (m, 4) or w.shape != (m, 4):
            raise OptionError(
                f"a points obs_layout needs (n_obs, 4) indices and weights for its {m} slots; "
                f"got {tuple(idx.shape)} and {tuple(w.shape)}"
            )
        if bool(((chan < 0) | (chan >= self.channels)).any()) or bool(
            ((idx < 0) | (idx >= size)).any()
        ):
            raise OptionError(
                "a points obs_layout refers to channels or grid points outside the model"
            )
        self._slot_channels = chan
        self._slot_targets = chan[:, None] * size + idx  # (m, 4) in the flattened (C, H, W)
        self._slot_weights = w

    # -- description -------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """Number of state channels ``C``."""
        return self.vae.channels

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the state grid."""
        return self.vae.grid_shape

    @property
    def latent_dim(self) -> int:
        """Size of the latent space."""
        return self.vae.latent_dim

    @property
    def obs_kind(self) -> str:
        """``"gridded"`` or ``"points"``."""
        return self.config["obs_layout"]["kind"]

    @property
    def obs_layout_values(self) -> int | None:
        """How many values an observation of the whole training layout holds (every
        station slot, every observed grid point of every channel); None when the layout
        does not say (a gridded model saved before it was recorded, but for an unmasked
        model with a stride layout)."""
        layout = self.config["obs_layout"]
        if "n_values" in layout:
            return int(layout["n_values"])
        if layout["kind"] == "points":
            return int(sum(layout.get("observed", [True] * int(layout["n_obs"]))))
        if self.valid is None and layout.get("sampler") == "stride":
            (sy, sx), (oy, ox) = layout["stride"], layout["offset"]
            h, w = self.grid_shape
            return self.channels * len(range(oy, h, sy)) * len(range(ox, w, sx))
        return None

    @property
    def obs_points(self) -> torch.Tensor | None:
        """``(C, H, W)`` bool, on the CPU: the grid values a gridded model's observation
        layout holds, those its observation encoder was trained to read; None for a
        station model, or where the layout is not known (a custom ``make_obs``; a
        ``mask_obs`` layout saved before xensf recorded it: set it, then save).
        Observations elsewhere are not given to the encoder (the accessor warns)."""
        if self._obs_points is not None:
            return self._obs_points
        layout = self.config["obs_layout"]
        if layout["kind"] != "gridded" or layout.get("sampler") != "stride":
            return None
        (sy, sx), (oy, ox) = layout["stride"], layout["offset"]
        points = torch.zeros(self.channels, *self.grid_shape, dtype=torch.bool)
        points[:, oy::sy, ox::sx] = True
        return points if self.valid is None else points & self.valid.cpu()

    @obs_points.setter
    def obs_points(self, points) -> None:
        if self.obs_kind != "gridded":
            raise OptionError("a station model's layout is its stations: it has no obs_points")
        # a tensor on any device (a bundle loaded onto a GPU) as it is; numpy cannot
        # read a CUDA tensor
        points = (
            points.detach().cpu()
            if isinstance(points, torch.Tensor)
            else torch.as_tensor(np.asarray(points))
        )
        shape = (self.channels, *self.grid_shape)
        if points.dtype not in (torch.bool, torch.uint8) or tuple(points.shape[-2:]) != shape[1:]:
            raise OptionError(
                f"obs_points must be a boolean (H, W) or (C, H, W) array on the model's "
                f"grid, {shape}; got {points.dtype} of shape {tuple(points.shape)}"
            )
        points = points.to(torch.bool).expand(shape).clone()
        if self.valid is not None:  # nothing is observed on the mask
            points &= self.valid.cpu()
        if not bool(points.any()):
            raise OptionError("obs_points holds no observed value")
        self._obs_points = points

    @property
    def obs_dropout(self) -> float:
        """The largest share of its observations the observation encoder was trained to
        do without (``train_latent_model``'s ``obs_dropout``; 0 for older models)."""
        return float(self.config.get("training", {}).get("obs_dropout", 0.0))

    @property
    def min_coverage(self) -> float:
        """The least share of :attr:`obs_layout_values` an analysis's observations may
        cover before the latent methods warn: what training left out, and a tolerance."""
        return 1 - self.obs_dropout - COVERAGE_TOLERANCE

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_channels, h, w)``: the latent grid; flattened it has ``latent_dim`` values."""
        return self.vae.latent.shape

    @property
    def device(self) -> torch.device:
        """The device the networks live on."""
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the networks."""
        return self.mean.dtype

    def to(self, device: str | torch.device) -> LatentModel:
        """Move the networks and statistics to ``device`` (in place); returns ``self``.
        A device that is not there is an :class:`~xensf.errors.OptionError`, before
        anything moves."""
        from ..filters.device import compute_device

        device = compute_device(device)
        self.vae.to(device)
        self.obs_encoder.to(device)
        for name in ("mean", "std", "latent_obs_std"):
            setattr(self, name, getattr(self, name).to(device))
        if self.obs_kind == "points":
            self._set_stations(self.config["obs_layout"], device)
        if self.valid is not None:
            self.valid = self.valid.to(device)
        return self

    def __repr__(self) -> str:
        h, w = self.grid_shape
        return (
            f"<LatentModel: {self.channels} channel(s) on {h}x{w}, latent "
            f"{'x'.join(map(str, self.latent_shape))} = {self.latent_dim}, {self.obs_kind} "
            f"observations{self._mask_text()}, on {self.device}>"
        )

    def _mask_text(self) -> str:
        if self.valid is None:
            return ""
        return f", {int((~self.valid).sum())} masked values"

    # -- normalisation -----------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical ``(B, C, H, W)`` to normalised units (0 at masked points)."""
        out = (x - self.mean[:, None, None]) / self.std[:, None, None]
        if self.valid is not None:
            out = torch.where(self.valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, C, H, W)`` to physical units."""
        return x * self.std[:, None, None] + self.mean[:, None, None]

    def obs_inputs(
        self, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The observation encoder's input: normalised values and a weight on the grid.

        Gridded observations are normalised and set to 0 where missing (weight 0).
        Station slots are normalised and spread onto the grid: each grid point gets the
        bilinear-weighted mean of the stations around it, and the sum of their weights
        (clipped to 1) as its weight, so a station on a grid point looks exactly like a
        gridded observation there.

        Parameters
        ----------
        values : torch.Tensor
            ``(B, C, H, W)`` (gridded) or ``(B, n_obs)`` (stations), physical units, NaN
            where missing.
        mask : torch.Tensor of bool, optional
            True where observed; default: where ``values`` is not NaN. A True entry
            with a NaN value is an error.

        Returns
        -------
        values, weight : torch.Tensor
            Both ``(B, C, H, W)``.
        """
        values = torch.as_tensor(values, device=self.device).to(self.dtype)
        mask = _observed(values, mask)
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        if self.obs_kind == "gridded":
            normed = torch.where(mask, self.normalize(values), zero)
            return normed, mask.to(self.dtype)
        chan = self._slot_channels
        normed = torch.where(mask, (values - self.mean[chan]) / self.std[chan], zero)
        b = values.shape[0]
        size = self.channels * self.grid_shape[0] * self.grid_shape[1]
        w = self._slot_weights * mask.to(self.dtype)[..., None]  # (B, m, 4)
        targets = self._slot_targets.reshape(1, -1).expand(b, -1)
        den = torch.zeros(b, size, dtype=self.dtype, device=self.device)
        num = torch.zeros(b, size, dtype=self.dtype, device=self.device)
        den.scatter_add_(1, targets, w.reshape(b, -1))
        num.scatter_add_(1, targets, (w * normed[..., None]).reshape(b, -1))
        grid_values = torch.where(den > 0, num / den.clamp_min(1e-12), zero)
        shape = (b, self.channels, *self.grid_shape)
        return grid_values.reshape(shape), den.clamp_max(1.0).reshape(shape)

    # -- encoding and decoding ---------------------------------------------------------
    def _check_states(self, x: torch.Tensor, name: str) -> None:
        expected = (self.channels, *self.grid_shape)
        if x.ndim < 3 or tuple(x.shape[-3:]) != expected:
            raise EnsembleError(
                f"{name} must end in (C, H, W) = {expected} (the model's channels and "
                f"grid), got shape {tuple(x.shape)}"
            )

    def _check_obs(self, values: torch.Tensor) -> int:
        """Number of leading dims before the observation's own dims."""
        if self.obs_kind == "gridded":
            own, expected = 3, (self.channels, *self.grid_shape)
        else:
            own, expected = 1, (len(self._slot_channels),)
        if values.ndim < own or tuple(values.shape[-own:]) != expected:
            raise ObservationMismatchError(
                f"{self.obs_kind} observations must end in {expected} for this model, got "
                f"shape {tuple(values.shape)}"
            )
        return values.ndim - own

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, *, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent Gaussian of states.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, H, W)`` in physical units.
        batch_size : int, optional
            Encode in chunks of this many states (bounds memory); default all at once.

        Returns
        -------
        mu, logvar : torch.Tensor
            ``(B, latent_dim)``.
        """
        return self._encode(self._state_batch(x, "x"), batch_size)

    def _state_batch(self, x: Any, name: str) -> torch.Tensor:
        """``x`` as a ``(B, C, H, W)`` tensor in the model's dtype, on its device, after
        checking that it holds the model's channels on its grid, finite wherever the
        model reads (an :class:`~xensf.errors.EnsembleError` naming ``name``)."""
        x = torch.as_tensor(x, device=self.device).to(self.dtype)
        self._check_states(x, name)
        if x.ndim != 4:
            raise EnsembleError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")
        read = torch.isfinite(x) if self.valid is None else torch.isfinite(x) | ~self.valid
        if not bool(read.all()):
            raise EnsembleError(
                f"{name} holds NaN or inf at grid points the model reads; fill them (only "
                "the model's masked points may hold NaN)"
            )
        return x

    def _encode(
        self, x: torch.Tensor, batch_size: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` of states already checked (``analyse`` checks its prior once)."""
        parts = [self.vae.encode(self.normalize(c)) for c in _chunks(x, batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """States ``(B, C, H, W)`` in physical units from latent vectors ``(B, latent_dim)``
        (NaN at masked points)."""
        if not bool(torch.isfinite(torch.as_tensor(z)).all()):
            raise OptionError("z holds NaN or inf; give finite latent vectors")
        return self._masked_nan(self._decode(z, batch_size))

    def _decode(self, z: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        """:meth:`decode`, with the channel mean at masked points (finite everywhere)."""
        z = torch.as_tensor(z, device=self.device).to(self.dtype)
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise OptionError(
                f"z must be (B, latent_dim={self.latent_dim}), got shape {tuple(z.shape)}"
            )
        return torch.cat([self.denormalize(self.vae.decode(c)) for c in _chunks(z, batch_size)])

    def _masked_nan(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., C, H, W)`` with NaN at the masked points."""
        if self.valid is None:
            return x
        return torch.where(
            self.valid, x, torch.full((), float("nan"), dtype=x.dtype, device=x.device)
        )

    @torch.no_grad()
    def encode_obs(
        self, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent Gaussian of observations.

        The network as it is: every value given is read, on the layout or off it
        (:meth:`outside_layout`), and observations with nothing observed still get an
        encoding. :meth:`analyse` keeps both away from it.

        Parameters
        ----------
        values : torch.Tensor
            ``(B, C, H, W)`` for gridded observations, ``(B, n_obs)`` for point slots;
            physical units, NaN where missing.
        mask : torch.Tensor of bool, optional
            True where observed; default: where ``values`` is not NaN.

        Returns
        -------
        mu, logvar : torch.Tensor
            ``(B, latent_dim)``.
        """
        values = torch.as_tensor(values, device=self.device)
        if self._check_obs(values) != 1:
            raise ObservationMismatchError(
                f"observations must have one leading (batch) dim, got shape {tuple(values.shape)}"
            )
        return self.obs_encoder(*self.obs_inputs(values, mask))

    # -- the update --------------------------------------------------------------------
    @torch.no_grad()
    def analyse(
        self,
        prior,
        obs,
        mask=None,
        *,
        method: str = "latent-ensf",
        generator: torch.Generator | int | list[int] | None = None,
        batch_size: int | None = None,
        return_latent: bool = False,
        update: str = "decode",
        obs_noise=None,
        latent_error: str | None = None,
        coverage_error: bool = False,
        **options,
    ):
        """Latent-EnSF (or latent ETKF) analysis of a batch of forecast ensembles.

        Every member of every time is encoded to its latent mean (one network pass over
        all ``T × N`` states, or chunks of ``batch_size``); the observation of each time
        is encoded to a latent mean ``μ_obs``, used as a pseudo-observation of the
        latent state with the identity operator and error ``latent_obs_std``; the
        latent ensembles are updated (one time per filter call with one seed per time,
        and always for ``"latent-letkf"``, else in one batched call); the posterior
        members are decoded.

        Parameters
        ----------
        prior : torch.Tensor or numpy.ndarray
            Forecast ensembles ``(T, N, C, H, W)`` in physical units (``(N, C, H, W)``
            for a single time), ``N >= 2``.
        obs : torch.Tensor or numpy.ndarray
            Observations of each time: ``(T, C, H, W)`` gridded, NaN where unobserved,
            or ``(T, n_obs)`` point slots (``(C, H, W)`` / ``(n_obs,)`` for one time).
            Gridded values off the model's layout (:attr:`obs_points`) are not given
            to the encoder (it was never trained to read them), with an
            :class:`~xensf.errors.ObservationLayoutWarning`. A time with no observed
            value the encoder reads is returned as its prior, exactly.
        mask : array of bool, optional
            True where observed, ``obs``' shape or broadcastable to it (one mask for
            every time); default ``~isnan(obs)``. Values where it is False are not
            read. An observed value that is NaN or infinite is refused.
        method : {"latent-ensf", "latent-letkf"}, default "latent-ensf"
            ``"latent-ensf"``: :func:`~xensf.filters.ensf.ensf_analysis` on the latent
            ensemble, standardised by the spread of each latent value over the training
            data (:attr:`latent_scale`), with ``likelihood="gaussian"`` unless given.
            ``"latent-letkf"``: :func:`~xensf.filters.letkf.letkf_analysis` localised on
            the latent grid (each latent value sits at its cell of the
            :attr:`latent_shape` grid; ``latent_radius`` in cells; None: the global
            ETKF; ``"auto"``, the default: :data:`LATENT_RADIUS` cells on a latent of at
            least as many values as there are members, else global).
        generator : torch.Generator, int, list of int or None
            Noise for ``"latent-ensf"``: a list of one seed per time makes each time's
            result independent, bit for bit, of which other times are analysed with it
            (each is analysed in a filter call of its own); one seed or generator draws
            the noise of all times together, in one call. Must be None for
            ``"latent-letkf"`` (deterministic).
        batch_size : int, optional
            States per network pass (observations: ``batch_size // N`` times per pass);
            default all at once. The accessor passes ``N``, one time per pass, so that
            an analysis does not depend on which other times share its dask chunk
            (CPU convolution kernels sum in another order for another batch size).
        return_latent : bool, default False
            Also return the latent prior, pseudo-observation and posterior, and
            per-time diagnostics at the observed entries (normalised units, see
            :meth:`observe`): RMS of the prior members' reconstruction error, of the
            innovation ``y − H x̄_b`` and of the analysis misfit ``y − H x̄_a``.
        update : {"decode", "increment"}, default "decode"
            ``"decode"`` (the published method): each analysis member is the decoded
            posterior latent vector, ``D(z_a)``. ``"increment"``: the prior member plus
            the decoded latent increment, ``x + D(z_a) − D(z_b)`` with ``z_b`` the
            member's latent mean. Where the VAE reconstructs imperfectly (little
            training data, fine detail), ``"decode"`` replaces each member by its
            reconstruction and inherits the reconstruction error; ``"increment"``
            keeps what the VAE does not represent and changes only what the latent
            update changed (a member the update leaves alone is returned unchanged).
        obs_noise : float or array, optional
            The observations' error: RMS of their standard deviations in normalised
            units (each divided by its channel's :attr:`std`), one number or one per
            time. The latent observation error is then read from the model's
            calibration curve at that noise (:meth:`latent_obs_std_at`); default the
            error at the training noise, :attr:`latent_obs_std`.
        latent_error : {"ensemble", "curve"}, optional
            How ``"latent-ensf"`` sets the latent observation error. ``"curve"``: the
            calibration curve at the noise (above). ``"ensemble"`` (its default): the
            curve's noise-0 part, the observation encoder's own error averaged over the
            validation states, is rescaled per time to that error measured on the
            states at hand — a first analysis with the curve's error, whose decoded
            members are observed at the observed points and encoded both ways — so the
            analysis spread follows how well the model represents this flow; the
            noise's part is added as it is; then lowered per time where the latent
            innovations are smaller than that error and the prior's spread account for
            (:func:`~xensf.latent.calibration.innovation_factor`; never raised). It
            costs a second latent analysis and a pass of the encoders over the
            members. ``"latent-letkf"`` takes only
            ``"curve"`` (its default).
        coverage_error : bool, default False
            Widen the latent observation error of each time whose observations cover
            less than the whole layout by what the model's coverage curve says the gaps
            add (:meth:`coverage_excess`, at :meth:`coverage`). ``latent-ensf-letkf``
            sets it: there the wider error lets the real observations decide (the demo
            twin with half its points missing: 0.54 → 0.07 over the second half). The
            latent methods alone do not: with it their analysis stays nearer a prior
            that is off and was measured worse (docs/method.md, "Observations with gaps").
        **options
            Passed to the filter: ``steps``, ``eps_alpha``, ``eps_beta``,
            ``prior_score``, ``likelihood``, ``scale``, ``damping`` for EnSF;
            ``inflation``, ``rtps``, ``latent_radius`` (latent grid cells) for the ETKF.

        Returns
        -------
        posterior : same type as ``prior``
            ``(T, N, C, H, W)`` (or ``(N, C, H, W)``), physical units, ``prior``'s dtype
            (computed in the model's; the prior itself at times with no observation).
        latent : dict of torch.Tensor
            Only with ``return_latent``: ``"prior"`` ``(T, N, L)``, ``"obs"`` ``(T, L)``,
            ``"obs_std"`` ``(L,)`` (``(T, L)`` with ``obs_noise`` or the ensemble
            latent error), ``"posterior"``
            ``(T, N, L)`` and
            ``"diagnostics"`` (``"reconstruction"``, ``"innovation"``,
            ``"analysis_misfit"``, ``"count"``, ``"coverage"`` (:meth:`coverage`; NaN
            where the layout's size is not recorded), each ``(T,)``). At a time with no
            observation: ``"obs"`` NaN, ``"posterior"`` the prior, the diagnostics 0.

        Raises
        ------
        OptionError
            Unknown method or filter options.
        EnsembleError
            A prior that does not fit the model's grid and channels, has one member or
            holds NaN.
        ObservationMismatchError
            Observations that do not fit the model's observation layout, or whose
            times do not match the prior's.
        """
        if method not in LATENT_METHODS:
            raise OptionError(f"method must be one of {LATENT_METHODS}, got {method!r}")
        if update not in ("decode", "increment"):
            raise OptionError(f"update must be 'decode' or 'increment', got {update!r}")
        if latent_error is None:
            latent_error = "ensemble" if method == "latent-ensf" else "curve"
        if latent_error not in ("ensemble", "curve"):
            raise OptionError(f"latent_error must be 'ensemble' or 'curve', got {latent_error!r}")
        if latent_error == "ensemble" and method != "latent-ensf":
            raise OptionError(
                f'latent_error="ensemble" is for method="latent-ensf"; {method!r} takes "curve"'
            )
        for flag, value in (("coverage_error", coverage_error), ("return_latent", return_latent)):
            require_flag(value, flag, OptionError)
        _check_filter_options(method, options)
        if method == "latent-letkf":
            if generator is not None:
                raise OptionError('method="latent-letkf" is deterministic; leave generator=None')
        as_numpy = isinstance(prior, np.ndarray)
        prior_t = torch.as_tensor(prior)
        out_dtype = prior_t.dtype if prior_t.is_floating_point() else self.dtype
        self._check_states(prior_t, "prior")
        single = prior_t.ndim == 4
        if single:
            prior_t = prior_t.unsqueeze(0)
        if prior_t.ndim != 5:
            raise EnsembleError(
                f"prior must be (T, N, C, H, W) or (N, C, H, W), got {tuple(prior_t.shape)}"
            )
        n_times, n_members = prior_t.shape[:2]
        if n_members < 2:
            raise EnsembleError(f"prior has {n_members} member(s) (dim 1); need at least 2")
        seeds = _seed_list(generator)
        if seeds is not None and len(seeds) != n_times:
            raise OptionError(
                f"generator lists {len(seeds)} seed(s) for {n_times} time(s); give one seed "
                "per time, or one seed for all"
            )
        if self.valid is not None:  # masked points may hold anything: they are not read
            prior_t = torch.where(self.valid.to(prior_t.device), prior_t, 0)
        if not bool(torch.isfinite(prior_t).all()):
            raise EnsembleError("prior contains NaN or inf values; fill or drop them first")

        obs_t = torch.as_tensor(obs, device=self.device)
        mask_t = None if mask is None else torch.as_tensor(mask, device=self.device)
        lead = self._check_obs(obs_t)
        if lead == 0:
            obs_t = obs_t.unsqueeze(0)
            mask_t = None if mask_t is None else mask_t.unsqueeze(0)
        if lead > 1 or obs_t.shape[0] != n_times:
            raise ObservationMismatchError(
                f"observations of shape {tuple(obs_t.shape)} do not match the prior's "
                f"{n_times} time(s): give one observation per time, (T, ...)"
            )

        if obs_noise is not None:
            obs_noise = _noise_values(obs_noise, "obs_noise")
            if obs_noise.numel() not in (1, n_times):
                raise ObservationMismatchError(
                    f"obs_noise has {obs_noise.numel()} values; give one, or one per time "
                    f"({n_times})"
                )
            if not bool((torch.isfinite(obs_noise) & (obs_noise >= 0)).all()):
                # checked here too: a call whose times have no observation uses none
                raise OptionError(f"obs_noise must be finite and >= 0, got {obs_noise.tolist()}")
        # True where observed, the observations' shape (T, ...)
        observed = _observed(obs_t, mask_t)
        outside = self.outside_layout(observed)
        if outside is not None:
            _warn_outside_layout(outside, observed, self.obs_points)
            observed = observed & ~outside
        # NaN wherever nothing is read (the mask may leave anything there)
        obs_t = torch.where(observed, obs_t, torch.nan)
        mask_t = None if mask_t is None else observed
        seen = observed.reshape(n_times, -1).any(-1)
        if not bool(seen.all()):  # a time with nothing to go on stays its prior
            return self._analyse_seen(
                prior_t, obs_t, mask_t, seen, out_dtype, single, as_numpy,
                method=method, generator=generator, batch_size=batch_size,
                return_latent=return_latent, update=update, obs_noise=obs_noise,
                latent_error=latent_error, coverage_error=coverage_error, **options,
            )  # fmt: skip

        states = prior_t.reshape(n_times * n_members, *prior_t.shape[2:])
        states = states.to(device=self.device, dtype=self.dtype)
        z_prior = self._encode(states, batch_size)[0]
        z_prior = z_prior.reshape(n_times, n_members, self.latent_dim)
        # observations in passes of as many times as a state pass holds ensembles
        per_pass = None if batch_size is None else max(1, batch_size // n_members)
        z_obs = torch.cat(
            [
                self.encode_obs(o, None if mask_t is None else mask_t[i : i + len(o)])[0]
                for i, o in zip(
                    range(0, n_times, per_pass or n_times),
                    _chunks(obs_t, per_pass),
                    strict=True,
                )
            ]
        )
        identity = torch.arange(self.latent_dim, device=self.device)
        obs_std = self.latent_obs_std
        if obs_noise is not None:
            obs_std = self.latent_obs_std_at(obs_noise.expand(n_times))  # (T, L)
        coverage = self.coverage(observed)
        if coverage_error and coverage is not None:  # what gaps add, where there are any
            extra = self.coverage_excess(coverage)[0]  # (T, L) float64
            wider = (obs_std.double().square() + extra).sqrt().to(obs_std.dtype)
            obs_std = torch.where(extra > 0, wider, obs_std)
        if method == "latent-ensf":
            # EnSF runs on standardised variables: the latent values' own spread over
            # the training data (the latent is not forced to unit scale)
            options.setdefault("scale", self.latent_scale)
            # the exact noised likelihood: calibrated spread (the damped one halves the
            # posterior variance), the accessor's default for latent methods too
            options.setdefault("likelihood", "gaussian")
            if latent_error == "ensemble":
                obs_std = self._ensemble_obs_std(
                    z_prior, z_obs, identity, obs_std, observed, generator, batch_size, options
                )
                factor = innovation_factor(z_prior, z_obs, obs_std)  # (T,), at most 1
                obs_std = (obs_std.double() * factor.sqrt()[:, None]).to(obs_std.dtype)
            z_post = _latent_ensf(z_prior, z_obs, identity, obs_std, generator, options)
        else:
            local = self._latent_localisation(options, n_members)
            z_post = _one_time_per_call(letkf_analysis, z_prior, z_obs, identity, obs_std, local)
        post = self._decode(z_post.reshape(-1, self.latent_dim), batch_size)
        recon = self._decode(z_prior.reshape(-1, self.latent_dim), batch_size)
        if update == "increment":
            post = states + (post - recon)
        diagnostics = self._diagnostics(
            states.reshape(n_times, n_members, -1),
            recon.reshape(n_times, n_members, -1),
            post.reshape(n_times, n_members, -1),
            obs_t,
            observed,
        )
        diagnostics["coverage"] = self._coverage_diagnostic(coverage, n_times)
        post = self._masked_nan(post.reshape(prior_t.shape)).to(out_dtype)
        latent = dict(prior=z_prior, obs=z_obs, obs_std=obs_std, posterior=z_post)
        latent["diagnostics"] = diagnostics
        return _result(post, prior_t.device, single, as_numpy, latent if return_latent else None)

    def _coverage_diagnostic(self, coverage: torch.Tensor | None, n_times: int) -> torch.Tensor:
        """The diagnostics' ``"coverage"``: :meth:`coverage`, NaN where it is None."""
        if coverage is not None:
            return coverage
        return torch.full((n_times,), torch.nan, dtype=torch.float64, device=self.device)

    def outside_layout(self, observed: torch.Tensor) -> torch.Tensor | None:
        """True where ``observed`` (gridded, ``(..., C, H, W)``, True where observed)
        lies off the observation layout (:attr:`obs_points`), a bool tensor on
        ``observed``'s device (a tensor or array); None where nothing does, or where the
        layout is not known (a station model, a custom ``make_obs``)."""
        points = self.obs_points
        if points is None:
            return None
        observed = torch.as_tensor(observed)
        outside = observed & ~points.to(observed.device)
        return outside if bool(outside.any()) else None

    def _analyse_seen(self, prior, obs, mask, seen, out_dtype, single, as_numpy, **kwargs) -> Any:
        """:meth:`analyse` of the times ``seen`` (``(T,)`` bool) alone; the others, with
        no observation the encoder reads, are returned as their prior (exactly, in its
        dtype), their diagnostics zero and their latent posterior the prior's."""
        n_times = prior.shape[0]
        at = seen.nonzero().squeeze(1).cpu()
        generator, noise = kwargs.pop("generator"), kwargs.pop("obs_noise")
        seeds = _seed_list(generator)  # one per time: checked by analyse
        if seeds is not None:
            generator = [seeds[i] for i in at.tolist()]
        if noise is not None and noise.numel() > 1:  # checked: one per time
            noise = noise[at]
        post = self._masked_nan(prior.to(device=self.device, dtype=out_dtype)).clone()
        return_latent = kwargs["return_latent"]
        latent = None
        if at.numel():
            part = self.analyse(
                prior[at], obs[at], None if mask is None else mask[at],
                generator=generator, obs_noise=noise, **kwargs,
            )  # fmt: skip
            part, latent = part if return_latent else (part, None)
            post[at.to(post.device)] = part.to(post.device)
        else:  # no filter call checks the options' values: a dry run does
            _check_filter_values(kwargs["method"], kwargs)
        if not return_latent:
            return _result(post, prior.device, single, as_numpy, None)
        # the latent prior of every time (the analysed ones' from their analysis); at the
        # others, no observation and no update
        n_members = prior.shape[1]
        z_prior = torch.empty(
            n_times, n_members, self.latent_dim, dtype=self.dtype, device=self.device
        )
        rest = (~seen).nonzero().squeeze(1).cpu()
        states = prior[rest].reshape(-1, *prior.shape[2:]).to(device=self.device, dtype=self.dtype)
        z_rest = self._encode(states, kwargs["batch_size"])[0]
        z_prior[rest.to(self.device)] = z_rest.reshape(rest.numel(), n_members, self.latent_dim)
        if latent is not None:
            z_prior[at.to(self.device)] = latent["prior"]
        coverage = self.coverage(~torch.isnan(obs) if mask is None else mask)
        full = dict(
            prior=z_prior,
            obs=torch.full_like(z_prior[:, 0], torch.nan),
            obs_std=self.latent_obs_std,
            posterior=z_prior.clone(),
            diagnostics={
                k: torch.zeros(n_times, dtype=self.dtype, device=self.device)
                for k in ("reconstruction", "innovation", "analysis_misfit", "count")
            },
        )
        full["diagnostics"]["coverage"] = self._coverage_diagnostic(coverage, n_times)
        if latent is not None:
            idx = at.to(self.device)
            full["obs"][idx], full["posterior"][idx] = latent["obs"], latent["posterior"]
            if latent["obs_std"].ndim == 2:  # one row per time
                full["obs_std"] = torch.full_like(full["obs"], torch.nan)
                full["obs_std"][idx] = latent["obs_std"]
            for k, v in latent["diagnostics"].items():
                full["diagnostics"][k][idx] = v
        return _result(post, prior.device, single, as_numpy, full)

    @property
    def latent_scale(self) -> torch.Tensor:
        """``(latent_dim,)`` std of each latent value's mean over the validation states."""
        scale = self.config.get("latent", {}).get("scale")
        if scale is None:
            return torch.ones(self.latent_dim, dtype=self.dtype, device=self.device)
        return torch.as_tensor(scale, dtype=self.dtype, device=self.device)

    def _ensemble_obs_std(
        self, z_prior, z_obs, identity, obs_std, observed, generator, batch_size, options
    ) -> torch.Tensor:
        """The latent observation error with its encoder part measured on this analysis.

        The calibration curve's value at noise 0 is the observation encoder's own error,
        averaged over the validation states; how large it is for the states at hand
        varies (the model represents some flows better than others). A first analysis
        with the curve's error gives members near the observed state; each member is
        observed as the real observations are (same points, ``observed``), and the mean
        square difference between the encoding of those observations and the member's
        own encoding is the encoder's error variance for states like these. It rescales
        the curve's noise-0 part (per time, one factor for all latent values: 20 members
        do not pin down 400 variances), and the noise's part (the curve above noise 0)
        is added as it is.
        Returns ``(T, L)``; ``obs_std`` unchanged for a model without the curve.
        """
        if self.config.get("latent", {}).get("obs_error") is None:
            return obs_std
        n_times, n_members = z_prior.shape[:2]
        first = _latent_ensf(z_prior, z_obs, identity, obs_std, generator, options)
        members = self._decode(first.reshape(-1, self.latent_dim), batch_size)
        z_members = self._encode(members, batch_size)[0]
        members = members.reshape(n_times, n_members, *members.shape[1:])
        z_members = z_members.reshape(n_times, n_members, self.latent_dim)
        encoder_error = torch.empty(n_times, dtype=torch.float64, device=self.device)
        for t in range(n_times):  # one time per pass: independent of the other times
            seen = observed[t].expand(n_members, *observed.shape[1:])
            values = self._observe_members(members[t], seen)
            z_seen = self.encode_obs(values, seen)[0]
            encoder_error[t] = (z_seen - z_members[t]).double().square().mean()
        base = self.latent_obs_std_at(0.0).double().square()  # (L,)
        # (L,) or (T, L); not clamped, so that a factor of 1 gives the curve exactly (a
        # curve measured on few states may dip below its noise-0 value for some values)
        noise_part = obs_std.double().square() - base
        factor = encoder_error / base.mean()  # (T,)
        var = factor[:, None] * base + noise_part
        return var.clamp_min(MIN_LATENT_OBS_STD**2).sqrt().to(self.dtype)

    def _latent_localisation(self, options: dict[str, Any], n_members: int) -> dict[str, Any]:
        """latent-letkf's ``options`` with the localisation on the latent grid.

        Each latent value summarises one cell of the latent grid (``h × w``, every
        channel at the same cell): the cell's row and column are its coordinates, in
        cells, and ``latent_radius`` is in cells too; columns wrap around on a model
        with periodic longitude. ``latent_radius=None``: the global ETKF;
        ``"auto"`` (the default): :data:`LATENT_RADIUS` where the latent has at least
        ``n_members`` values (the ensemble's ``N − 1`` directions cannot span it), else
        the global ETKF (localising there only throws information away: the blob
        twin's easy case 0.085 → 0.099, docs/benchmarks.md).
        """
        options = dict(options)
        radius = options.pop("latent_radius", "auto")
        if radius == "auto":
            radius = LATENT_RADIUS if self.latent_dim >= n_members else None
        if radius is None:
            return options
        channels, h, w = self.latent_shape
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = torch.stack([rows.reshape(-1), cols.reshape(-1)], -1).to(torch.float64)
        periodic = self.config["architecture"].get("periodic_lon", False)
        return dict(
            options,
            loc_radius=float(radius),
            state_coords=coords.to(self.device),
            state_location=torch.arange(channels * h * w, device=self.device) % (h * w),
            distance=cyclic_distance([math.inf, w]) if periodic else "euclidean",
        )

    def _observe_members(self, members: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Members ``(N, C, H, W)`` observed as the observations are: gridded, their
        values where ``seen`` (NaN elsewhere); stations, the bilinear values at the
        slots, physical units."""
        if self.obs_kind == "gridded":
            return torch.where(seen, members, torch.nan)
        values = self._slot_values(members.reshape(members.shape[0], -1))
        return torch.where(seen, values, torch.nan)

    def _slot_values(self, states: torch.Tensor) -> torch.Tensor:
        """Flattened states ``(..., C·H·W)`` at the station slots ``(..., n_obs)``:
        bilinear interpolation, physical units."""
        return (states[..., self._slot_targets] * self._slot_weights).sum(-1)

    def coverage(self, observed: torch.Tensor) -> torch.Tensor | None:
        """``(T,)`` float64: the share of the observation layout (:attr:`obs_layout_values`)
        that the observations of each time cover (``observed`` ``(T, ...)``, True where
        observed; a tensor or array), at most 1; None where the layout's size is not
        recorded."""
        total = self.obs_layout_values
        if not total:
            return None
        observed = torch.as_tensor(observed)
        counts = observed.reshape(observed.shape[0], -1).sum(-1).double()
        return (counts / total).clamp(max=1.0)

    def coverage_excess(self, coverage) -> tuple[torch.Tensor, torch.Tensor]:
        """What gaps add to the latent observation error, by the coverage curve.

        Parameters
        ----------
        coverage : float or array
            ``(T,)`` shares of the observation layout observed, in ``[0, 1]``.

        Returns
        -------
        latent : torch.Tensor
            ``(T, latent_dim)`` float64: the latent error variance at that coverage
            less the one of the whole layout (``config["latent"]["coverage_error"]``,
            measured on the validation states at the training noise, see
            :func:`~xensf.latent.coverage_error_curve`), interpolated linearly in the
            coverage, never below 0; zeros for a model without the curve (trained
            before it was recorded: :func:`~xensf.latent.calibrate_obs_error` measures it).
        decoded : torch.Tensor
            ``(T,)`` float64: the same for the squared relative error of the decoded
            observation encoding.
        """
        q = torch.as_tensor(coverage, dtype=torch.float64).reshape(-1).cpu()
        if not bool(((q >= 0) & (q <= 1)).all()):
            raise OptionError(f"coverage must be in [0, 1], got {coverage!r}")
        curve = self.config.get("latent", {}).get("coverage_error")
        if curve is None:
            zeros = torch.zeros(q.numel(), self.latent_dim, dtype=torch.float64)
            return zeros.to(self.device), zeros[:, 0].to(self.device)
        c = torch.as_tensor(curve["coverage"], dtype=torch.float64)  # (K,) increasing
        v = torch.as_tensor(curve["std"], dtype=torch.float64).square()  # (K, L)
        d = torch.as_tensor(curve["obs_relative_rmse"], dtype=torch.float64).square()  # (K,)
        q = q.clamp(float(c[0]), float(c[-1]))
        hi = torch.searchsorted(c, q).clamp(1, c.numel() - 1)
        w = ((q - c[hi - 1]) / (c[hi] - c[hi - 1]))[:, None]
        # convex weights: exact at the measured coverages (0 at the whole layout)
        latent = (1 - w) * v[hi - 1] + w * v[hi] - v[-1]
        decoded = (1 - w[:, 0]) * d[hi - 1] + w[:, 0] * d[hi] - d[-1]
        return latent.clamp_min(0).to(self.device), decoded.clamp_min(0).to(self.device)

    def latent_obs_std_at(self, noise) -> torch.Tensor:
        """The latent observation error for observations of error ``noise``.

        Parameters
        ----------
        noise : float or array
            RMS observation-error standard deviation in normalised units (each divided
            by its channel's :attr:`std`), ``(T,)`` or a number.

        Returns
        -------
        torch.Tensor
            ``(T, latent_dim)`` (``(latent_dim,)`` for a number): the model's
            calibration curve (``config["latent"]["obs_error"]``, measured on the
            validation states at multiples of the training noise, see
            :mod:`xensf.latent.calibration`), interpolated linearly in the noise
            variance, extrapolated along its last segment beyond the largest noise.

        Raises
        ------
        OptionError
            A model without the curve (trained with a custom ``make_obs``, or before
            the curve was recorded), or a negative or non-finite noise.
        """
        curve = self.config.get("latent", {}).get("obs_error")
        if curve is None:
            raise OptionError(
                "this latent model has no calibration of its observation error against "
                "the observation noise (trained with a custom make_obs, or by an older "
                "xensf): retrain it with xensf.train_latent, or give no observation "
                "error (the model's error at its training noise is used)"
            )
        scalar = np.ndim(noise) == 0
        q = _noise_values(noise, "the observation noise")
        if not bool((torch.isfinite(q) & (q >= 0)).all()):
            raise OptionError(f"the observation noise must be finite and >= 0, got {noise!r}")
        x = torch.as_tensor(curve["noise"], dtype=torch.float64).square()  # (K,)
        v = torch.as_tensor(curve["std"], dtype=torch.float64).square()  # (K, L)
        hi = torch.searchsorted(x, q.square()).clamp(1, x.numel() - 1)
        w = (q.square() - x[hi - 1]) / (x[hi] - x[hi - 1])
        var = v[hi - 1] + w[:, None] * (v[hi] - v[hi - 1])
        out = var.clamp_min(MIN_LATENT_OBS_STD**2).sqrt().to(device=self.device, dtype=self.dtype)
        return out[0] if scalar else out

    def observe(self, states: torch.Tensor) -> torch.Tensor:
        """The model's observation operator on flattened states, normalised.

        Parameters
        ----------
        states : torch.Tensor
            ``(..., C·H·W)`` physical units.

        Returns
        -------
        torch.Tensor
            ``(..., C·H·W)`` (gridded: every grid value) or ``(..., n_obs)``
            (stations: the bilinear interpolation at each slot), each divided by its
            channel's std (after subtracting its mean).
        """
        g = self.grid_shape[0] * self.grid_shape[1]
        if self.obs_kind == "gridded":
            return (states - self.mean.repeat_interleave(g)) / self.std.repeat_interleave(g)
        values = self._slot_values(states)
        chan = self._slot_channels
        return (values - self.mean[chan]) / self.std[chan]

    def _diagnostics(self, prior, recon, post, obs, observed) -> dict[str, torch.Tensor]:
        """Per-time RMS figures at the observed entries, in normalised units.

        ``reconstruction``: ``D(E(x)) − x`` over the prior members; ``innovation``:
        ``y − H x̄_b``; ``analysis_misfit``: ``y − H x̄_a``; ``count``: observed entries.
        """
        y = obs.reshape(obs.shape[0], -1).to(self.dtype)
        observed = observed.reshape(y.shape)
        if self.obs_kind == "gridded":  # observations are states: observe them as such
            y_n = self.observe(torch.nan_to_num(y))
        else:  # station values, normalised by their slot's channel
            chan = self._slot_channels
            y_n = (torch.nan_to_num(y) - self.mean[chan]) / self.std[chan]
        w = observed.to(self.dtype)
        count = w.sum(-1).clamp_min(1)

        def rms(diff):  # diff (T, ..., m) -> (T,)
            sq = diff.square()
            if sq.ndim == 3:
                sq = sq.mean(1)
            return ((sq * w).sum(-1) / count).sqrt()

        hb, hr, ha = self.observe(prior), self.observe(recon), self.observe(post)
        return {
            "reconstruction": rms(hr - hb),
            "innovation": rms(y_n - hb.mean(1)),
            "analysis_misfit": rms(y_n - ha.mean(1)),
            "count": w.sum(-1),
        }

    # -- persistence -------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights, flattened: ``"vae.<name>"`` and ``"obs_encoder.<name>"``, on CPU;
        and the mask (``"mask.valid"``, uint8 ``(C, H, W)``) of a masked model."""
        out = {}
        for prefix, net in (("vae", self.vae), ("obs_encoder", self.obs_encoder)):
            for name, value in net.state_dict().items():
                out[f"{prefix}.{name}"] = value.detach().cpu().contiguous()
        if self.valid is not None:
            out[_MASK_TENSOR] = self.valid.to("cpu", torch.uint8).contiguous()
        if self._obs_points is not None:
            out[_OBS_POINTS_TENSOR] = self._obs_points.to(torch.uint8).contiguous()
        return out

    def metadata(self) -> dict[str, Any]:
        """The JSON-serialisable description stored next to the weights."""
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION
            if self.valid is not None
            else _UNMASKED_FORMAT_VERSION,
            "xensf_version": VERSION,
            "config": copy.deepcopy(self.config),
            "normalization": {"mean": self.mean.tolist(), "std": self.std.tolist()},
            "latent_obs_std": self.latent_obs_std.tolist(),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def content_digest(self) -> str:
        """SHA-256 of what the model is: its metadata and weights (not of a file)."""
        metadata = self.metadata()
        metadata.pop("xensf_version")
        h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
        for name, value in sorted(self.tensors().items()):
            h.update(name.encode())
            h.update(str(value.dtype).encode())
            h.update(value.numpy().tobytes())
        return h.hexdigest()

    def save(self, path, *, overwrite: bool = False, private: bool = False) -> None:
        """Write the model as a bundle (safetensors weights + JSON metadata).

        Parameters
        ----------
        path : str or os.PathLike
            Where to write; see :func:`xensf.latent.bundle.save_bundle`. A bundle
            there is replaced.
        overwrite : bool, default False
            Replace ``path`` even when it is not an xensf bundle (a file or another
            directory, deleted).
        private : bool, default False
            Owner-only permissions (else the user's umask decides).
        """
        from .bundle import save_bundle

        save_bundle(path, self.tensors(), self.metadata(), overwrite=overwrite, private=private)

    @classmethod
    def load(cls, path, device: str | torch.device | None = None) -> LatentModel:
        """Read a model written by :meth:`save`.

        The networks are rebuilt from the stored configuration and the weights loaded
        into them; nothing is unpickled.

        Parameters
        ----------
        path : str or os.PathLike
            The bundle.
        device : str or torch.device, optional
            Where to put the model; default CPU.

        Raises
        ------
        BundleError
            The bundle is not a latent model of a version this xensf can read (a
            version-1 bundle, with a dense latent, must be retrained).
        """
        from .bundle import bundle_info, bundle_path, load_bundle

        tensors, metadata = load_bundle(path, device=device)
        model = cls.from_parts(tensors, metadata, device=device, source=str(path))
        # Where it came from, so that the accessor can name the user's own bundle
        # (while the model and the file are both unchanged) instead of a copy.
        info = bundle_info(path)
        model.source = {
            "path": str(bundle_path(path).resolve()),
            "weights_sha256": info["weights_sha256"],
            "metadata_sha256": info["metadata_sha256"],
            "content": model.content_digest(),
        }
        return model

    @classmethod
    def from_parts(
        cls,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
        *,
        device: str | torch.device | None = None,
        source: str = "the bundle",
    ) -> LatentModel:
        """Rebuild a model from :meth:`tensors` and :meth:`metadata`."""
        check_model_metadata(metadata, source)
        config = metadata["config"]
        dtype = MODEL_DTYPES[metadata.get("dtype", "float32")]
        tensors = dict(tensors)
        valid = tensors.pop(_MASK_TENSOR, None)
        if valid is not None:
            arch = config["architecture"]
            expected = (arch["channels"], *arch["grid_shape"])
            if tuple(valid.shape) != tuple(expected) or valid.dtype != torch.uint8:
                raise BundleError(
                    f"{source}: its mask {_MASK_TENSOR!r} is {valid.dtype} "
                    f"{tuple(valid.shape)}, not uint8 {tuple(expected)}; re-save the model"
                )
            valid = valid.to(torch.bool)
        points = tensors.pop(_OBS_POINTS_TENSOR, None)
        if points is not None:
            arch = config["architecture"]
            expected = (arch["channels"], *arch["grid_shape"])
            if (
                tuple(points.shape) != tuple(expected)
                or points.dtype != torch.uint8
                or config["obs_layout"].get("kind") != "gridded"
                or not bool(points.any())
            ):
                raise BundleError(
                    f"{source}: its observation layout {_OBS_POINTS_TENSOR!r} is "
                    f"{points.dtype} {tuple(points.shape)}, not a non-empty uint8 "
                    f"{tuple(expected)} of a gridded model; re-save the model"
                )
        check_weight_shapes(config, {k: tuple(v.shape) for k, v in tensors.items()}, source)
        vae, obs_encoder = build_networks(config)
        for prefix, net in (("vae", vae), ("obs_encoder", obs_encoder)):
            state = {
                k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
            }
            net.load_state_dict(state, strict=True)
            net.to(device=device or "cpu", dtype=dtype)
        norm = metadata["normalization"]
        return cls(
            vae,
            obs_encoder,
            torch.tensor(norm["mean"], dtype=dtype),
            torch.tensor(norm["std"], dtype=dtype),
            torch.tensor(metadata["latent_obs_std"], dtype=dtype),
            config,
            valid=valid,
            obs_points=points,
        )


def check_model_metadata(metadata: Mapping[str, Any], source: str = "the bundle") -> None:
    """Refuse metadata that is not a latent model of the version this xensf reads.

    Raises
    ------
    BundleError
        Another format, a version-1 model (a dense latent: retrain it) or a newer one.
    """
    if metadata.get("format") != MODEL_FORMAT:
        raise BundleError(
            f"{source} holds {metadata.get('format')!r}, not a latent model ({MODEL_FORMAT!r})"
        )
    version = metadata.get("format_version")
    if version == 1:
        raise BundleError(
            f"{source} is a latent model of format version 1 (a dense 1-D latent), which "
            f"this xensf no longer reads: its models have a spatial latent (version "
            f"{MODEL_FORMAT_VERSION}), which reconstructs far better. Retrain it with "
            "xensf.train_latent (or xensf.latent.train_latent_model) on the same data."
        )
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise BundleError(
            f"{source} has latent-model format version {version!r}; this xensf reads "
            f"version {MODEL_FORMAT_VERSION}: upgrade xensf"
        )
    _check_fields(metadata, source)


def check_weight_shapes(
    config: Mapping[str, Any], shapes: Mapping[str, Any], source: str = "the bundle"
) -> None:
    """Refuse weights (name → shape) that do not fill the networks ``config`` describes.

    The networks are built on the meta device (no memory), so an edited architecture
    (a width of 10**6, say) is refused before anything is allocated.
    """
    with torch.device("meta"):
        nets = build_networks(config)
    for prefix, net in zip(("vae", "obs_encoder"), nets, strict=True):
        expected = {f"{prefix}.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
        given = {k: tuple(v) for k, v in shapes.items() if k.startswith(prefix + ".")}
        if expected != given:
            wrong = sorted(set(expected) ^ set(given)) or sorted(
                k for k in expected if expected[k] != given[k]
            )
            raise BundleError(
                f"{source}: the {prefix} weights do not fit the architecture in its "
                f"metadata (first difference: {wrong[0]!r}); re-save the model"
            )


#: The weight dtypes a bundle may name (the name is looked up on torch: nothing else).
MODEL_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_fields(metadata: Mapping[str, Any], source: str) -> None:
    """Every field the model is built from: present, of its type and size, in range.

    Raises :class:`BundleError` naming ``source`` and the field, at load, rather than
    a failure later (or a negative error accepted) when the model is used.
    """

    def bad(field: str, what: str) -> BundleError:
        return BundleError(f"{source}: metadata field {field} {what}; re-save the model")

    config = metadata.get("config")
    if not isinstance(config, Mapping):
        raise bad("'config'", "is missing or not a mapping")
    arch = config.get("architecture")
    if not isinstance(arch, Mapping):
        raise bad("config['architecture']", "is missing or not a mapping")
    for key in _ARCHITECTURE_KEYS:
        value = arch.get(key)
        if key == "grid_shape":
            ok = isinstance(value, list) and len(value) == 2 and all(_count(v) for v in value)
        elif key == "periodic_lon":
            ok = isinstance(value, bool)
        else:
            ok = _count(value, minimum=0 if key in ("blocks", "downsample") else 1)
        if not ok:
            raise bad(f"config['architecture'][{key!r}]", f"is {value!r}")
    if not isinstance(config.get("obs_layout"), Mapping):
        raise bad("config['obs_layout']", "is missing or not a mapping")
    if metadata.get("dtype", "float32") not in MODEL_DTYPES:
        raise bad("'dtype'", f"is {metadata.get('dtype')!r}, not one of {sorted(MODEL_DTYPES)}")
    norm = metadata.get("normalization")
    if not isinstance(norm, Mapping):
        raise bad("'normalization'", "is missing or not a mapping")
    channels = arch["channels"]
    for key, positive in (("mean", False), ("std", True)):
        _check_numbers(norm.get(key), channels, positive, f"normalization[{key!r}]", bad)
    try:
        grid = LatentGrid(
            tuple(arch["grid_shape"]), arch["latent_channels"], arch["patch"], arch["downsample"]
        )
    except (OptionError, ValueError) as err:
        raise bad("config['architecture']", f"describes no latent grid ({err})") from None
    latent = grid.size
    _check_numbers(metadata.get("latent_obs_std"), latent, True, "'latent_obs_std'", bad)
    _check_curve(config, "obs_error", "noise", latent, bad)
    coverage = _check_curve(config, "coverage_error", "coverage", latent, bad, ends_at=1)
    if coverage is not None:
        field = "config['latent']['coverage_error']['obs_relative_rmse']"
        _check_numbers(coverage.get("obs_relative_rmse"), len(coverage["std"]), False, field, bad)


def _check_curve(config, name, axis, latent, bad, *, ends_at=None) -> Mapping | None:
    """``config["latent"][name]``, a curve of ``std`` rows (``latent`` values each) over
    increasing ``axis`` values >= 0 (ending at ``ends_at`` where given); None if absent."""
    section = config.get("latent")
    curve = section.get(name) if isinstance(section, Mapping) else None
    if curve is None:
        return None
    field = f"config['latent'][{name!r}]"
    if not isinstance(curve, Mapping) or not isinstance(curve.get("std"), list):
        raise bad(field, f"is not a mapping with {axis!r} and 'std'")
    values = curve.get(axis)
    _check_numbers(values, len(curve["std"]), False, f"{field}[{axis!r}]", bad)
    if (
        len(values) < 2
        or values[0] < 0
        or any(b <= a for a, b in itertools.pairwise(values))
        or (ends_at is not None and values[-1] != ends_at)
    ):
        last = "" if ends_at is None else f", the last {ends_at}"
        raise bad(
            f"{field}[{axis!r}]", f"is {values!r}, not at least two increasing values >= 0{last}"
        )
    for row in curve["std"]:
        _check_numbers(row, latent, True, f"{field}['std']", bad)
    return curve


def _count(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= 10**6


def _check_numbers(values: Any, size: int, positive: bool, field: str, bad) -> None:
    if not isinstance(values, list) or len(values) != size:
        raise bad(field, f"is not a list of {size} numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise bad(field, f"holds {v!r}, not a finite number")
        if positive and v <= 0:
            raise bad(field, f"holds {v!r}; it must be positive")


def _check_architecture(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config["architecture"]``, refused if it lacks a key the networks need."""
    arch = config.get("architecture", {})
    missing = [k for k in _ARCHITECTURE_KEYS if k not in arch]
    if missing:
        raise OptionError(f"config['architecture'] misses {missing}")
    return arch


def build_networks(config: Mapping[str, Any]) -> tuple[StateVAE, ObservationEncoder]:
    """Fresh (untrained) networks for a model configuration.

    Parameters
    ----------
    config : mapping
        With ``"architecture"`` as described in :class:`LatentModel`.

    Returns
    -------
    vae, obs_encoder
    """
    arch = _check_architecture(config)
    latent = LatentGrid(
        tuple(arch["grid_shape"]), arch["latent_channels"], arch["patch"], arch["downsample"]
    )
    shape = dict(width=arch["width"], blocks=arch["blocks"], periodic_lon=arch["periodic_lon"])
    vae = StateVAE(arch["channels"], latent, **shape)
    obs_encoder = ObservationEncoder(arch["channels"], latent, **shape)
    return vae, obs_encoder


def _latent_ensf(z_prior, z_obs, identity, obs_std, generator, options) -> torch.Tensor:
    """:func:`~xensf.filters.ensf.ensf_analysis` of the latent ensembles ``(T, N, L)``.

    With one seed per time (the accessor's way), one time per call
    (:func:`_one_time_per_call`); a single generator or seed draws the noise of all
    times together, so they are analysed together."""
    seeds = _seed_list(generator)
    if seeds is None:
        return ensf_analysis(z_prior, z_obs, identity, obs_std, generator=generator, **options)
    return _one_time_per_call(ensf_analysis, z_prior, z_obs, identity, obs_std, options, seeds)


def _seed_list(generator) -> list | None:
    """``generator`` as a list of one seed per time; None for one generator or seed."""
    if generator is None or isinstance(generator, torch.Generator | int | np.integer):
        return None
    seeds = list(generator) if not isinstance(generator, str | bytes) else None
    if seeds is None or not all(is_integer(s) for s in seeds):
        raise OptionError(
            "generator must be a torch.Generator, an int seed or a list of int seeds (one "
            f"per time), got {generator!r}"
        )
    return seeds


def _one_time_per_call(
    analysis, z_prior, z_obs, identity, obs_std, options, seeds: list | None = None
) -> torch.Tensor:
    """``analysis`` (the EnSF or the LETKF) of each time of ``(T, N, L)`` latent ensembles
    in a call of its own, ``seeds[t]`` its noise. Batched over times, torch's CPU matrix
    products sum in another order for some shapes (the EnSF's Gaussian likelihood with 27
    latent values and 5 to 11 members, the localised LETKF's solve), and an analysis must
    not depend on which other times share its call (a dask chunk's;
    ``tests/test_latent_accessor.py``)."""
    parts = []
    for t in range(z_prior.shape[0]):
        noise = {} if seeds is None else {"generator": seeds[t : t + 1]}
        std = obs_std if obs_std.ndim == 1 else obs_std[t : t + 1]
        parts.append(
            analysis(z_prior[t : t + 1], z_obs[t : t + 1], identity, std, **noise, **options)
        )
    return torch.cat(parts)


def _chunks(x: torch.Tensor, batch_size: int | None):
    if batch_size is None:
        return [x]
    if not is_integer(batch_size) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    return list(torch.split(x, int(batch_size)))


def _noise_values(noise: Any, name: str) -> torch.Tensor:
    """An observation noise (numbers, in units of each channel's std) as a flat float64
    tensor; an :class:`~xensf.errors.OptionError` naming ``name`` for anything else."""
    try:
        return torch.as_tensor(noise, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise OptionError(
            f"{name} must be a number or an array of numbers, a fraction of each channel's "
            f"std (0.1 for 10 %), got {noise!r}"
        ) from None
