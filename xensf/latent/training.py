"""Training a Latent-EnSF model: the loss, the loop, and observation samplers.

:func:`train_latent_model` fits a :class:`~xensf.latent.networks.StateVAE` and an
:class:`~xensf.latent.networks.ObservationEncoder` jointly, on normalised variables,
with the loss of Si & Chen (2025), per sample

``‖x − D(z)‖² + ‖x − D(z_obs)‖² + ‖μ(x) − μ_obs(y)‖² + λ KL(ν‖N(0,I)) + λ KL(ν_obs‖N(0,I))``,

``z ~ ν = N(μ(x), σ²(x))`` and ``z_obs ~ ν_obs = N(μ_obs(y), σ_obs²(y))`` drawn by
reparameterisation, squared norms summed over grid points and channels (and latent
dims), so ``λ`` weighs a KL in nats against a sum of squared normalised errors.

Observations for training are made on the fly from each batch of states by a
``make_obs(x, generator) -> (values, mask)`` callable, so every epoch sees fresh
observation noise. :func:`gridded_stride_obs`, :func:`mask_obs` and :func:`point_obs`
make the usual ones.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..checks import is_integer, is_real, require_flag
from ..errors import (
    EnsembleError,
    ObservationMismatchError,
    OptionError,
    PrecisionWarning,
    TrainingDataWarning,
    warn_user,
)
from ..filters.device import compute_device
from ..filters.noise import check_seed
from .calibration import MIN_LATENT_OBS_STD as _MIN_LATENT_OBS_STD
from .calibration import coverage_error_curve, layout_points, leave_out, obs_error_curve
from .model import LatentModel, build_networks
from .networks import LatentGrid, choose_latent_grid, gaussian_kl, reparameterize

__all__ = [
    "ObservationSampler",
    "gridded_stride_obs",
    "latent_loss",
    "mask_obs",
    "point_obs",
    "static_mask",
    "station_obs",
    "train_latent_model",
]

# Training precisions: the autocast dtype of the optimisation steps' forward passes.
_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------
# observation samplers
# --------------------------------------------------------------------------------------
class ObservationSampler:
    """Makes synthetic observations of a batch of states, with noise.

    Build one with :func:`gridded_stride_obs`, :func:`mask_obs` or :func:`point_obs`.
    Calling it, ``sampler(x, generator)``, with states ``x`` ``(B, C, H, W)`` in
    physical units returns ``(values, mask)``: ``(B, C, H, W)`` with NaN where
    unobserved (gridded) or ``(B, n_obs)`` (points), and the boolean mask.

    The noise is Gaussian with standard deviation ``noise_std`` (absolute, scalar or one
    per channel) or, if that is None, ``noise_std_fraction`` times the spatial standard
    deviation of each sample's channel — the convention of ``obs_error="10%"``. It is
    drawn on the CPU from ``generator``, so a seed gives the same observations on any
    device.

    Attributes
    ----------
    layout : dict
        JSON-serialisable description stored in the model's ``config["obs_layout"]``.
    """

    def __init__(
        self,
        layout: dict[str, Any],
        select: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        check: Callable[[int, tuple[int, int]], None],
        noise_std_fraction: float,
        noise_std,
    ):
        if noise_std is None:
            if not (
                is_real(noise_std_fraction)
                and math.isfinite(noise_std_fraction)
                and noise_std_fraction >= 0
            ):
                raise OptionError(
                    f"noise_std_fraction must be a number >= 0, got {noise_std_fraction!r}"
                )
            layout["noise"] = {"std_fraction": float(noise_std_fraction)}
        else:
            std = torch.as_tensor(noise_std, dtype=torch.float64).reshape(-1)
            if not bool(((std >= 0) & torch.isfinite(std)).all()):
                raise OptionError(f"noise_std must be >= 0 and finite, got {noise_std!r}")
            layout["noise"] = {"std": std.tolist()}
        self.layout = layout
        self._select = select
        self._check = check
        self._fraction = noise_std_fraction
        self._std = noise_std

    def check(self, channels: int, grid_shape: tuple[int, int]) -> None:
        """Raise ObservationMismatchError if the layout does not fit the state grid."""
        self._check(channels, tuple(grid_shape))
        if self._std is not None:
            n = torch.as_tensor(self._std).numel()
            if n not in (1, channels):
                raise ObservationMismatchError(
                    f"noise_std has {n} values; give one, or one per channel ({channels})"
                )

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        noise_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observe ``x`` ``(B, C, H, W)``: returns ``(values, mask)``; ``noise_scale``
        multiplies the noise (the latent error's calibration measures several)."""
        self.check(x.shape[1], tuple(x.shape[-2:]))
        if self._std is None:
            flat = x.detach().flatten(2)  # (B, C, H·W); NaN at masked points
            here = ~torch.isnan(flat)
            if bool(here.all()):
                std = self._fraction * flat.std(-1)  # (B, C)
            else:  # the unmasked points' spatial std
                n = here.sum(-1).clamp_min(2)
                mean = torch.where(here, flat, 0).sum(-1, keepdim=True) / n[..., None]
                var = torch.where(here, flat - mean, 0).square().sum(-1) / (n - 1)
                std = self._fraction * var.sqrt()
        else:
            std = torch.as_tensor(self._std, dtype=x.dtype, device=x.device).reshape(1, -1)
            std = std.expand(x.shape[0], x.shape[1])
        std = std * noise_scale
        if self.layout["kind"] == "points":
            # stations interpolate the state, then their own noise is added
            values, mask = self._select(x)
            chan = torch.as_tensor(self.layout["slot_channels"], device=x.device)
            noise = _standard_normal(values.shape, generator, x)
            return values + noise * std[:, chan], mask
        noisy = x + _standard_normal(x.shape, generator, x) * std[:, :, None, None]
        return self._select(noisy)

    def __repr__(self) -> str:
        return f"ObservationSampler({self.layout})"


def _standard_normal(shape, generator: torch.Generator | None, like: torch.Tensor):
    """``N(0, 1)`` draws of ``shape`` in ``like``'s dtype, on ``like``'s device, drawn
    where ``generator`` lives (torch's global CPU generator for None): a CPU generator
    gives the same numbers whatever device the states are on; one on the states' GPU
    draws there, without drawing and copying a whole field on the host for every batch
    (at 150 x 150 that took longer than a training step's arithmetic on a GPU)."""
    device = torch.device("cpu") if generator is None else generator.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _gridded_select(mask: torch.Tensor):
    def select(noisy: torch.Tensor):
        m = mask.to(noisy.device).expand(noisy.shape)
        values = torch.where(m, noisy, torch.full((), math.nan, dtype=noisy.dtype))
        return values, m

    return select


def gridded_stride_obs(
    stride: int | tuple[int, int],
    noise_std_fraction: float = 0.1,
    *,
    offset: int | tuple[int, int] = 0,
    noise_std=None,
) -> ObservationSampler:
    """Observe every ``stride``-th grid point of every channel, with noise.

    Parameters
    ----------
    stride : int or (int, int)
        Spacing of the observed points along (rows, columns).
    noise_std_fraction : float, default 0.1
        Noise standard deviation as a fraction of each sample's spatial standard
        deviation, per channel (ignored if ``noise_std`` is given).
    offset : int or (int, int), default 0
        Index of the first observed row and column.
    noise_std : float or sequence of float, optional
        Absolute noise standard deviation (one, or one per channel).

    Returns
    -------
    ObservationSampler
        Gridded layout ``{"kind": "gridded", "sampler": "stride", ...}``.

    Examples
    --------
    >>> sampler = gridded_stride_obs(4, 0.1)
    >>> values, mask = sampler(torch.rand(2, 1, 8, 8), torch.Generator().manual_seed(0))
    >>> int(mask.sum()), bool(values[0, 0, 0, 1].isnan())
    (8, True)
    """
    sy, sx = _pair(stride, "stride", minimum=1)
    oy, ox = _pair(offset, "offset", minimum=0)
    layout = {"kind": "gridded", "sampler": "stride", "stride": [sy, sx], "offset": [oy, ox]}

    def check(channels, grid_shape):
        h, w = grid_shape
        if oy >= h or ox >= w:
            raise ObservationMismatchError(
                f"the observation offset ({oy}, {ox}) lies outside the {h}x{w} grid"
            )

    def select(noisy):
        mask = torch.zeros(noisy.shape[-2:], dtype=torch.bool, device=noisy.device)
        mask[oy::sy, ox::sx] = True
        return _gridded_select(mask)(noisy)

    return ObservationSampler(layout, select, check, noise_std_fraction, noise_std)


def mask_obs(mask, noise_std_fraction: float = 0.1, *, noise_std=None) -> ObservationSampler:
    """Observe the grid points where ``mask`` is True, with noise.

    Parameters
    ----------
    mask : array_like of bool
        ``(H, W)`` (the same points in every channel) or ``(C, H, W)``.
    noise_std_fraction, noise_std
        As in :func:`gridded_stride_obs`.

    Returns
    -------
    ObservationSampler
        Gridded layout ``{"kind": "gridded", "sampler": "mask", "n_observed": ...}``.
    """
    mask_t = torch.as_tensor(np.asarray(mask))
    if mask_t.dtype != torch.bool or mask_t.ndim not in (2, 3):
        raise ObservationMismatchError(
            f"mask must be a boolean (H, W) or (C, H, W) array, got {mask_t.dtype} of "
            f"shape {tuple(mask_t.shape)}"
        )
    if not bool(mask_t.any()):
        raise ObservationMismatchError("mask observes nothing: it has no True value")
    layout = {"kind": "gridded", "sampler": "mask", "n_observed": int(mask_t.sum())}

    def check(channels, grid_shape):
        ok = tuple(mask_t.shape[-2:]) == grid_shape and (
            mask_t.ndim == 2 or mask_t.shape[0] == channels
        )
        if not ok:
            raise ObservationMismatchError(
                f"the observation mask has shape {tuple(mask_t.shape)} but the states are "
                f"{channels} channel(s) on a {grid_shape[0]}x{grid_shape[1]} grid: give "
                "(H, W) or (C, H, W)"
            )

    return ObservationSampler(
        layout, _gridded_select(mask_t), check, noise_std_fraction, noise_std
    )


def point_obs(
    rows: Sequence[int],
    cols: Sequence[int],
    channels: Sequence[int] | None = None,
    noise_std_fraction: float = 0.1,
    *,
    noise_std=None,
) -> ObservationSampler:
    """Observe a fixed set of grid points as ``n_obs`` station slots, with noise.

    The special case of :func:`station_obs` where every station sits on a grid point.

    Parameters
    ----------
    rows, cols : sequence of int
        Grid indices of each slot.
    channels : sequence of int, optional
        Channel observed by each slot; default channel 0 for all.
    noise_std_fraction, noise_std
        As in :func:`gridded_stride_obs`.

    Returns
    -------
    ObservationSampler
        Points layout (see :func:`station_obs`) with ``"rows"`` and ``"cols"`` too;
        its values are ``(B, m)``.
    """
    rows_t = _whole_numbers(rows, "rows").reshape(-1)
    cols_t = _whole_numbers(cols, "cols").reshape(-1)
    chan_t = _slot_channels(channels, rows_t.numel())
    m = rows_t.numel()
    if not (m == cols_t.numel() == chan_t.numel()) or m == 0:
        raise ObservationMismatchError(
            f"rows, cols and channels must have the same positive length, got "
            f"{m}, {cols_t.numel()}, {chan_t.numel()}"
        )
    layout: dict[str, Any] = {
        "kind": "points",
        "sampler": "points",
        "n_obs": m,
        "slot_channels": chan_t.tolist(),
        "rows": rows_t.tolist(),
        "cols": cols_t.tolist(),
    }

    def check(n_channels, grid_shape):
        h, w = grid_shape
        bad = (rows_t < 0) | (rows_t >= h) | (cols_t < 0) | (cols_t >= w)
        bad |= (chan_t < 0) | (chan_t >= n_channels)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ObservationMismatchError(
                f"observation slot {i} (channel {int(chan_t[i])}, row {int(rows_t[i])}, "
                f"column {int(cols_t[i])}) lies outside {n_channels} channel(s) on the "
                f"{h}x{w} grid"
            )
        # the station form the model reads: all the weight on one grid point
        layout["indices"] = (rows_t * w + cols_t)[:, None].expand(-1, 4).tolist()
        layout["weights"] = [[1.0, 0.0, 0.0, 0.0]] * m

    def select(x):
        d = x.device
        values = x[:, chan_t.to(d), rows_t.to(d), cols_t.to(d)]
        return values, torch.ones_like(values, dtype=torch.bool)

    return ObservationSampler(layout, select, check, noise_std_fraction, noise_std)


def station_obs(
    indices,
    weights,
    channels: Sequence[int] | None = None,
    noise_std_fraction: float = 0.1,
    *,
    noise_std=None,
    observed=None,
) -> ObservationSampler:
    """Observe stations anywhere in the grid (``n_obs`` slots), with noise.

    Each slot observes one channel as a bilinear combination of four grid points — the
    value a station between grid points sees — plus Gaussian noise of its own.

    Parameters
    ----------
    indices : array_like of int, ``(n_obs, 4)``
        Flattened grid indices (``row * W + col``) of the four points around each
        station, as :func:`xensf.obs.bilinear_weights` gives them.
    weights : array_like of float, ``(n_obs, 4)``
        Their weights, non-negative, summing to 1 per station.
    channels : sequence of int, optional
        Channel observed by each slot; default channel 0 for all.
    noise_std_fraction, noise_std
        As in :func:`gridded_stride_obs`; the fraction is of the spatial std of the
        slot's channel in each sample.
    observed : array_like of bool, ``(n_obs,)``, optional
        Slots that are observed; the others are always missing (NaN, mask False) —
        e.g. levels that a station network does not measure. Default: all.

    Returns
    -------
    ObservationSampler
        Points layout ``{"kind": "points", "n_obs": m, "slot_channels": [...],
        "indices": [...], "weights": [...], ...}``; its values are ``(B, m)``.
    """
    idx_t = _whole_numbers(indices, "station indices")
    try:
        w_t = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    except (TypeError, ValueError):
        raise ObservationMismatchError(
            f"station weights must be numbers, (n_obs, 4), got {weights!r}"
        ) from None
    if idx_t.ndim != 2 or idx_t.shape[1] != 4 or w_t.shape != idx_t.shape:
        raise ObservationMismatchError(
            f"station indices and weights must both be (n_obs, 4), got "
            f"{tuple(idx_t.shape)} and {tuple(w_t.shape)}"
        )
    if bool((w_t < 0).any()) or not torch.allclose(w_t.sum(-1), torch.ones(()).double()):
        raise ObservationMismatchError("station weights must be >= 0 and sum to 1 per station")
    n_obs = idx_t.shape[0]
    chan_t = _slot_channels(channels, n_obs)
    if n_obs == 0 or chan_t.numel() != n_obs:
        raise ObservationMismatchError(
            f"stations need the same positive number of slots in indices, weights and "
            f"channels; got {n_obs} and {chan_t.numel()} channels"
        )
    layout: dict[str, Any] = {
        "kind": "points",
        "sampler": "stations",
        "n_obs": int(n_obs),
        "slot_channels": chan_t.tolist(),
    }
    layout["indices"] = idx_t.tolist()
    layout["weights"] = w_t.tolist()
    keep = torch.ones(n_obs, dtype=torch.bool)
    if observed is not None:
        keep = torch.as_tensor(np.asarray(observed, dtype=bool)).reshape(-1)
        if keep.numel() != n_obs:
            raise ObservationMismatchError(
                f"observed has {keep.numel()} entries for {n_obs} station slots"
            )
        layout["observed"] = keep.tolist()

    def check(channels, grid_shape):
        h, w = grid_shape
        bad = (chan_t < 0) | (chan_t >= channels)
        idx = torch.as_tensor(layout["indices"])
        bad |= ((idx < 0) | (idx >= h * w)).any(-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ObservationMismatchError(
                f"observation slot {i} (channel {int(chan_t[i])}, grid points "
                f"{idx[i].tolist()}) lies outside {channels} channel(s) on the {h}x{w} grid"
            )

    def select(x):
        flat = x.flatten(2)  # (B, C, H*W)
        idx = torch.as_tensor(layout["indices"], device=x.device)
        w = torch.as_tensor(layout["weights"], dtype=x.dtype, device=x.device)
        values = (flat[:, chan_t.to(x.device)[:, None], idx] * w).sum(-1)
        mask = keep.to(x.device).expand(values.shape)
        return torch.where(mask, values, torch.full((), math.nan, dtype=values.dtype)), mask

    return ObservationSampler(layout, select, check, noise_std_fraction, noise_std)


def _slot_channels(channels, n: int) -> torch.Tensor:
    """The channel of each of ``n`` station slots: as given, or channel 0 for all."""
    if channels is None:
        return torch.zeros(n, dtype=torch.long)
    return _whole_numbers(channels, "channels").reshape(-1)


def _whole_numbers(value, name: str) -> torch.Tensor:
    """Grid or channel indices as a long tensor of their shape; an
    :class:`~xensf.errors.ObservationMismatchError` naming ``name`` for values that are
    not whole numbers (1.5 or -0.1 were cut to 1 and 0, text crashed torch)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()  # (numpy reads no tensor on a GPU)
    try:
        array = np.asarray(value)
        whole = array.dtype.kind in "iu" or (
            array.dtype.kind == "f"
            and bool(np.isfinite(array).all())
            and bool((array == np.round(array)).all())
        )
    except (TypeError, ValueError):  # ragged lists
        whole = False
    if not whole:
        raise ObservationMismatchError(
            f"{name} must be whole numbers (grid or channel indices), got {value!r}"
        )
    return torch.as_tensor(array.astype(np.int64))


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    try:
        pair = (value, value) if is_integer(value) else tuple(value)
    except TypeError:  # a float, None: no pair either
        pair = ()
    if len(pair) != 2 or any(not is_integer(v) or v < minimum for v in pair):
        raise OptionError(f"{name} must be an integer >= {minimum} or a pair, got {value!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------
def latent_loss(
    model: LatentModel,
    x: torch.Tensor,
    obs_values: torch.Tensor,
    obs_mask: torch.Tensor,
    lam: float,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The Latent-EnSF training loss of a batch, averaged over samples.

    Parameters
    ----------
    model : LatentModel
        Whose networks are trained (in training mode or not).
    x : torch.Tensor
        ``(B, C, H, W)`` states, **normalised**.
    obs_values, obs_mask : torch.Tensor
        The observation encoder's input on the grid: normalised values with 0 where
        missing, and their weight (see :meth:`LatentModel.obs_inputs`).
    lam : float
        KL weight ``λ``.
    generator : torch.Generator, optional
        Reparameterisation noise, on ``x``'s device.
    sample : bool, default True
        Decode reparameterised samples; False decodes the means (a deterministic
        loss, used for validation).

    Returns
    -------
    loss : torch.Tensor
        Scalar, the mean over the batch of the per-sample loss.
    terms : dict of float
        The batch means of the five terms: ``"rec"``, ``"rec_obs"``, ``"latent"``,
        ``"kl"``, ``"kl_obs"``.
    """
    loss, terms = _loss_and_terms(model, x, obs_values, obs_mask, lam, generator, sample)
    return loss, {k: float(v) for k, v in terms.items()}


def _loss_and_terms(model, x, obs_values, obs_mask, lam, generator, sample):
    """:func:`latent_loss` with its terms as 0-dim tensors on ``x``'s device (reading
    them is left to the caller: each read waits for the device)."""
    # the terms in float32 also when the networks run under autocast in a lower precision
    mu, logvar = (t.float() for t in model.vae.encode(x))
    mu_o, logvar_o = (t.float() for t in model.obs_encoder(obs_values, obs_mask))
    z = reparameterize(mu, logvar, generator) if sample else mu
    z_o = reparameterize(mu_o, logvar_o, generator) if sample else mu_o
    keep = 1.0 if model.valid is None else model.valid.to(x.dtype)  # masked points: no loss
    rec = ((x - model.vae.decode(z).float()).square() * keep).flatten(1).sum(-1)
    rec_o = ((x - model.vae.decode(z_o).float()).square() * keep).flatten(1).sum(-1)
    match = (mu - mu_o).square().sum(-1)
    kl, kl_o = gaussian_kl(mu, logvar), gaussian_kl(mu_o, logvar_o)
    loss = (rec + rec_o + match + lam * (kl + kl_o)).mean()
    terms = {
        "rec": rec.detach().mean(),
        "rec_obs": rec_o.detach().mean(),
        "latent": match.detach().mean(),
        "kl": kl.detach().mean(),
        "kl_obs": kl_o.detach().mean(),
    }
    return loss, terms


# --------------------------------------------------------------------------------------
# data sources
# --------------------------------------------------------------------------------------
class BatchSource:
    """Where training states come from: batches per epoch and a validation split.

    A subclass reads ``(B, C, H, W)`` batches of states in physical units in
    :meth:`read` and may hold out validation states in the way that suits it in
    :meth:`split` (single states of a tensor; whole blocks or whole runs of a stream);
    ``size`` is the number of states, or None where it is not known. :meth:`batches`,
    which training calls, checks every batch as it is read (four dims, every value
    finite) and names the first bad one. Subclass it to feed
    :func:`train_latent_model` from storage of your own.
    """

    size: int | None = None
    name: str = "states"

    def read(self, epoch: int) -> Iterable[Any]:
        """The batches of one pass; ``epoch`` may seed a new order."""
        raise NotImplementedError

    def split(self, val_fraction: float, generator: torch.Generator):
        """``(train, validation)`` sources, ``val_fraction`` of the states held out."""
        raise OptionError(
            f"{type(self).__name__} cannot hold out validation states itself; pass "
            "val_states (a tensor or another source) for validation and early stopping"
        )

    #: ``(C, H, W)`` True where valid when the states have a mask (set by the training
    #: loop from the first batch; every batch must have the same); None: no mask
    valid: torch.Tensor | None = None

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """The checked batches of one pass."""
        for i, batch in enumerate(self.read(epoch)):
            batch = torch.as_tensor(batch)
            if batch.ndim != 4:
                raise EnsembleError(
                    f"batch {i} of {self.name} has shape {tuple(batch.shape)}; batches must "
                    "be (B, C, H, W)"
                )
            _check_finite(batch, self.name, f"epoch {epoch}, batch {i}, ", self.valid)
            yield batch


class _TensorSource(BatchSource):
    """Batches of a tensor of states (checked once), reshuffled every epoch."""

    def __init__(
        self,
        states: torch.Tensor,
        batch_size: int,
        generator,
        shuffle: bool,
        name: str,
        checked: bool = False,
    ):
        if states.ndim != 4:
            raise EnsembleError(f"{name} must be (S, C, H, W), got shape {tuple(states.shape)}")
        if not states.is_floating_point():
            states = states.to(torch.float32)
        if not checked:
            self.valid = static_mask(states)
            _check_finite(states, name, "", self.valid)
        self.states = states
        self.batch_size = batch_size
        self.generator = generator
        self.shuffle = shuffle
        self.name = name
        self.size = states.shape[0]

    def read(self, epoch: int) -> Iterator[torch.Tensor]:
        n = self.states.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield self.states[order[start : start + self.batch_size]]

    batches = read  # checked whole at construction

    def split(self, val_fraction: float, generator: torch.Generator):
        n = self.size
        n_val = max(1, round(n * val_fraction))
        if n - n_val < 1:
            raise EnsembleError(f"{n} states are too few to hold out {n_val} for validation")
        order = torch.randperm(n, generator=generator)
        train, val = self.states[order[n_val:]], self.states[order[:n_val]]
        sources = (
            _TensorSource(train, self.batch_size, self.generator, True, self.name, True),
            _TensorSource(val, self.batch_size, self.generator, False, "val_states", True),
        )
        for source in sources:
            source.valid = self.valid
        return sources


class _StreamSource(BatchSource):
    """Batches from a re-iterable or a callable ``epoch -> iterable of batches``."""

    def __init__(self, source, name: str):
        if isinstance(source, Iterator):
            raise OptionError(
                f"{name} is a one-shot iterator, but training reads it once per epoch: pass "
                "a re-iterable (a list, a DataLoader) or a callable epoch -> iterable of "
                "(B, C, H, W) batches"
            )
        self.source = source
        self.name = name

    def read(self, epoch: int) -> Iterable[Any]:
        return self.source(epoch) if callable(self.source) else self.source


def _as_source(states, name: str, batch_size: int, generator, shuffle: bool) -> BatchSource:
    if isinstance(states, BatchSource):
        return states
    if isinstance(states, torch.Tensor | np.ndarray):
        return _TensorSource(torch.as_tensor(states), batch_size, generator, shuffle, name)
    if isinstance(states, Iterable) or callable(states):
        return _StreamSource(states, name)
    raise OptionError(
        f"{name} must be a (S, C, H, W) tensor or array, a BatchSource, a re-iterable of "
        f"(B, C, H, W) batches or a callable epoch -> iterable of batches; got "
        f"{type(states).__name__}"
    )


def static_mask(states: torch.Tensor) -> torch.Tensor | None:
    """``(C, H, W)`` True where valid, if ``states`` ``(S, C, H, W)`` are NaN at the same
    points in every state (a land mask) and nowhere else; None if they hold no NaN.

    States with NaN elsewhere are left to :func:`_check_finite` to refuse.
    """
    nan = torch.isnan(states)
    if not bool(nan.any()):
        return None
    masked = nan.all(0)
    if bool((nan.any(0) & ~masked).any()) or bool(masked.all()):
        return None
    return ~masked


def _check_finite(
    batch: torch.Tensor, name: str, where: str, valid: torch.Tensor | None = None
) -> None:
    """Raise naming the first sample and channel with NaN or inf (``where``: context);
    with ``valid`` (a mask), NaN is required exactly where it is False."""
    bad = ~torch.isfinite(batch)
    if valid is not None:
        bad = bad ^ ~valid.to(batch.device)
    if bool(bad.any()):
        sample = int(bad.flatten(1).any(-1).nonzero()[0, 0])
        channel = int(bad[sample].flatten(1).any(-1).nonzero()[0, 0])
        mask = "" if valid is None else " off the mask of the first states, or a value on it"
        raise EnsembleError(
            f"{name} holds NaN or inf{mask} ({where}sample {sample}, channel {channel}); the "
            "latent model needs complete states, or NaN at the same points in every state "
            "(a mask, such as land): fill or drop the others before training"
        )


def _statistics(source, name: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (population) over the unmasked points, in float64,
    checking every value is finite (the source checks)."""
    count = torch.zeros(channels, dtype=torch.float64)
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    shift = None  # subtract a first estimate to keep the sum of squares accurate
    for i, batch in enumerate(source.batches(0)):
        b = batch.detach().to("cpu", torch.float64).transpose(0, 1).reshape(batch.shape[1], -1)
        if b.shape[0] != channels:
            raise EnsembleError(
                f"batch {i} of {name} has {b.shape[0]} channels, the first had {channels}"
            )
        here = torch.isfinite(b)  # not masked
        if shift is None:
            shift = torch.where(here, b, 0.0).sum(-1) / here.sum(-1).clamp_min(1)
        d = torch.where(here, b - shift[:, None], 0.0)
        total += d.sum(-1)
        total_sq += d.square().sum(-1)
        count += here.sum(-1)
    if not bool((count > 0).all()):
        raise EnsembleError(f"{name} yielded no data (or a channel that is masked everywhere)")
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    # A constant channel is passed through unscaled rather than divided by zero.
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (mean + shift).to(torch.float32), std.to(torch.float32)


def _shared_mask(train, val) -> torch.Tensor | None:
    """The training states' mask (``(C, H, W)`` True where valid), set on both sources.

    A tensor source found it over all its states; a stream's is read from its first
    batch (every later batch is checked against it). Validation states must share it.
    """
    valid = train.valid
    if valid is None and not isinstance(train, _TensorSource):
        for batch in train.read(0):
            valid = static_mask(torch.as_tensor(batch))
            break
    if isinstance(val, _TensorSource) and val.valid is not valid:
        same = val.valid is not None and valid is not None and torch.equal(val.valid, valid)
        if not same:
            counts = [0 if v is None else int((~v).sum()) for v in (val.valid, valid)]
            raise EnsembleError(
                f"the validation states are masked (NaN in every state) at {counts[0]} "
                f"values, the training states at {counts[1]}: give both the same mask"
            )
    train.valid = val.valid = valid
    return valid


def _first_batch(source) -> torch.Tensor:
    for batch in source.batches(0):
        return batch
    raise EnsembleError("the training states yielded no data")


def _obs_layout(make_obs, channels: int, grid_shape, probe: torch.Tensor) -> dict[str, Any]:
    """The observation layout of ``make_obs``, checked against the grid."""
    if isinstance(make_obs, ObservationSampler):
        make_obs.check(channels, grid_shape)
        layout = copy.deepcopy(make_obs.layout)
    else:
        layout = None
    values, mask = make_obs(probe, torch.Generator().manual_seed(0))
    values, mask = torch.as_tensor(values), torch.as_tensor(mask)
    if mask.dtype != torch.bool or mask.shape != values.shape:
        raise ObservationMismatchError(
            f"make_obs must return (values, mask) with a boolean mask of the values' shape; "
            f"got values {tuple(values.shape)} and mask {tuple(mask.shape)} ({mask.dtype})"
        )
    b = probe.shape[0]
    if values.ndim == 4:
        if tuple(values.shape) != (b, channels, *grid_shape):
            raise ObservationMismatchError(
                f"gridded observations from make_obs have shape {tuple(values.shape)}, "
                f"expected {(b, channels, *grid_shape)} (the states' channels and grid)"
            )
        kind = "gridded"
    elif values.ndim == 2 and values.shape[0] == b:
        kind = "points"
    else:
        raise ObservationMismatchError(
            f"make_obs returned values of shape {tuple(values.shape)} for {b} states; "
            f"expected (B, C, H, W) gridded or (B, n_obs) points"
        )
    if layout is None:
        layout = {"kind": kind, "sampler": getattr(make_obs, "__name__", type(make_obs).__name__)}
        if kind == "points":
            slots = getattr(make_obs, "slot_channels", None)
            if slots is None and channels > 1:
                raise OptionError(
                    "point observations of a multi-channel state need the channel of each "
                    "slot: give make_obs a slot_channels attribute, or use point_obs"
                )
            layout["slot_channels"] = (
                [0] * values.shape[1] if slots is None else [int(c) for c in slots]
            )
    if kind == "points":
        layout["n_obs"] = values.shape[1]
        if len(layout["slot_channels"]) != values.shape[1]:
            raise ObservationMismatchError(
                f"make_obs gives {values.shape[1]} slots but slot_channels has "
                f"{len(layout['slot_channels'])} entries"
            )
    if layout["kind"] != kind:
        raise ObservationMismatchError(
            f"make_obs's layout says {layout['kind']!r} but it returned {kind} values"
        )
    # the values of a whole-layout observation (none on a land mask: NaN there)
    layout["n_values"] = int((mask[0] & ~torch.isnan(values[0])).sum())
    return layout


# --------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------
def train_latent_model(
    states,
    make_obs: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    *,
    latent_dim: int = 400,
    latent_channels: int | None = None,
    patch: int | None = None,
    downsample: int | None = None,
    width: int = 64,
    blocks: int = 2,
    lam: float = 1e-3,
    kl_warmup: float = 0.2,
    epochs: int = 100,
    time_budget: float | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    min_lr_fraction: float = 0.02,
    val_fraction: float = 0.1,
    patience: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    precision: str = "float32",
    progress: bool = True,
    val_states=None,
    normalization: tuple[Any, Any] | None = None,
    periodic_lon: bool = False,
    variables: Sequence[str] | None = None,
    units: Sequence[str | None] | None = None,
    obs_dropout: float = 0.0,
) -> LatentModel:
    """Train a state VAE and an observation encoder for Latent-EnSF.

    The loss (see :func:`latent_loss` and the module docstring) is minimised with Adam
    on per-channel normalised states, the learning rate following a cosine from ``lr``
    down to ``min_lr_fraction · lr`` over the run (over ``epochs``, or over
    ``time_budget`` seconds if that ends first) and the KL weight rising linearly from
    0 to ``lam`` over the first ``kl_warmup`` of the run. After each epoch the
    validation states are encoded and decoded (latent means; fixed observation noise):
    the loss and the relative reconstruction error are shown on the progress bar and
    recorded, and the weights of the epoch with the lowest validation loss are kept.
    Finally, on the validation set: the reconstruction error per channel (the model's
    quality record, ``config["quality"]``), the latent observation error (RMS of
    ``μ_obs(y) − μ(x)`` per latent value) and the spread of the latent means.

    Parameters
    ----------
    states : tensor, array, BatchSource, re-iterable or callable
        Training states in physical units. NaN at the same points in every state is
        a mask (land): the model keeps it (``LatentModel.valid``), the loss, the
        statistics and the validation figures skip it, and the observations never
        fall on it (a stream's mask is read from its first batch; every batch, and
        the validation states, must have the same). The simple case is a ``(S, C, H, W)``
        tensor or array: it is split at random into training and validation samples
        (``val_fraction``). For data that does not fit in memory pass a
        :class:`BatchSource` (which holds out its own validation share), or a source
        of ``(B, C, H, W)`` batches — a re-iterable (list,
        ``torch.utils.data.DataLoader``) or a callable ``epoch -> iterable of batches``
        (which may reshuffle per epoch; ``batch_size`` is then its business) —
        together with ``val_states``.
    make_obs : callable
        ``make_obs(x, generator) -> (values, mask)``: synthetic observations of a batch
        ``x`` of states (physical units), ``(B, C, H, W)`` with NaN where unobserved or
        ``(B, n_obs)`` station slots, and a boolean mask. Noise must come from
        ``generator`` (CPU) for the run to be reproducible. Use
        :func:`gridded_stride_obs`, :func:`mask_obs`, :func:`point_obs` or
        :func:`station_obs`; any other callable works if its output is gridded
        (station slots need an :class:`ObservationSampler`, which says where they are).
    latent_dim : int, default 400
        The latent size aimed at: :func:`~xensf.latent.networks.choose_latent_grid`
        picks ``latent_channels``, ``patch`` and ``downsample`` for the grid, unless
        they are given.
    latent_channels, patch, downsample : int, optional
        The latent grid explicitly (see :class:`~xensf.latent.networks.LatentGrid`):
        ``latent_channels × ceil(H / f) × ceil(W / f)`` values, ``f = patch · 2**downsample``.
    width : int, default 64
        Channels of the hidden layers.
    blocks : int, default 2
        Residual blocks at each scale.
    lam : float, default 1e-3
        KL weight ``λ`` (against squared normalised errors summed over the grid). 0
        trains deterministic autoencoders (latent means are decoded).
    kl_warmup : float, default 0.2
        Share of the run over which the KL weight rises from 0 to ``lam``.
    epochs : int, default 100
        Maximum number of epochs.
    time_budget : float, optional
        Stop after this many seconds (at the end of the epoch that passes it); the
        learning-rate schedule is stretched to it.
    batch_size : int, default 64
        Batch size for tensor input.
    lr : float, default 1e-3
        Peak Adam learning rate.
    min_lr_fraction : float, default 0.02
        The learning rate at the end of the run, as a fraction of ``lr``.
    val_fraction : float, default 0.1
        Share of the states held out for validation, in (0, 1), when ``val_states``
        is not given (the source decides how: see :meth:`BatchSource.split`).
    patience : int, optional
        Stop after this many epochs without a lower validation loss; default never
        (the schedule decides the end; the best epoch's weights are kept anyway).
    seed : int, default 0
        Seeds the initial weights, the split, the shuffling, the observation noise and
        the reparameterisation noise: the same seed gives the same weights (on the same
        device and torch build; exactly so on CPU, without ``time_budget``).
    device : str or torch.device, optional
        Where to train; default CUDA if available, else CPU. Tensor states stay where
        they are and are moved batch by batch.
    precision : {"float32", "bfloat16"}, default "float32"
        ``"bfloat16"`` runs the forward passes of the optimisation steps under
        ``torch.autocast`` in bfloat16 with channels-last tensors (weights, optimiser
        and losses stay float32; validation is float32): about 1.5 times the states
        per second on a CPU with AVX-512 BF16 and more on a GPU (see
        docs/performance.md), for a rounding of about 0.4 % in the activations, far
        below the reconstruction errors these models reach. The saved model is
        float32 either way. On a CPU that only emulates bfloat16
        (:func:`cpu_has_bfloat16`) it trains in float32 instead, with a
        :class:`~xensf.errors.PrecisionWarning`; ``config["training"]["precision"]``
        records the precision used.
    progress : bool, default True
        Show a tqdm progress bar over epochs with the validation reconstruction error.
    val_states : tensor, array, re-iterable or callable, optional
        Validation states; required when ``states`` is a stream, optional otherwise
        (then ``val_fraction`` is not used).
    normalization : (mean, std), optional
        Per-channel statistics to use instead of computing them from ``states`` (saves
        one pass over a stream).
    periodic_lon : bool, default False
        The last grid axis is periodic (global longitude).
    variables, units : sequence, optional
        One name (and unit) per channel, recorded in the model's configuration.
    obs_dropout : float, default 0.0
        Train the observation encoder on gaps too: in every training sample a share of
        the observed values, drawn uniformly between 0 and ``obs_dropout`` for that
        sample, is left out (each value independently), so the encoder learns to read
        any subset of its observation layout. 0: always the whole layout, and an
        encoder that may be poor when observations are missing (docs/method.md,
        "Observations with gaps": a price on whole layouts, measured). In [0, 1);
        validation and the quality record use the whole layout either way.

    Returns
    -------
    LatentModel
        On ``device``, in evaluation mode. ``config["quality"]`` holds the validation
        reconstruction error per channel (``"rmse"`` in physical units and
        ``"relative_rmse"``, divided by the channel's std); ``config["training"]``
        the history (per-epoch losses, terms, validation errors, learning rate), the
        epochs run, the best epoch, the seed, the data sizes and the seconds taken.

    Raises
    ------
    EnsembleError
        States that are not ``(S, C, H, W)``, or that hold inf, or NaN that is not a
        mask (a tensor is checked before training, a stream batch by batch as it is
        read; without ``normalization`` its first full pass, for the statistics,
        precedes any step).
    ObservationMismatchError
        An observation layout that does not fit the grid or channels.
    OptionError
        Bad option values.

    Warns
    -----
    TrainingDataWarning
        Fewer training states than latent values: the model will not generalise.
    PrecisionWarning
        ``precision="bfloat16"`` on a CPU that emulates it: float32 is used.

    Examples
    --------
    >>> states = torch.rand(64, 1, 16, 16)
    >>> model = train_latent_model(states, gridded_stride_obs(4), latent_dim=16, width=8,
    ...                            epochs=2, progress=False)
    >>> model.latent_shape, model.latent_obs_std.shape
    ((4, 2, 2), torch.Size([16]))
    """
    from tqdm.auto import tqdm

    _positive_int(epochs, "epochs")
    _positive_int(batch_size, "batch_size")
    _positive_int(width, "width")
    _positive_int(latent_dim, "latent_dim")
    if patience is not None:
        _positive_int(patience, "patience")
    if not (is_integer(blocks) and blocks >= 0):
        raise OptionError(f"blocks must be an integer >= 0, got {blocks!r}")
    for name, flag in (("periodic_lon", periodic_lon), ("progress", progress)):
        require_flag(flag, name, OptionError)
    seed = check_seed(seed)
    if not -(2**63) <= seed <= 2**64 - 4:  # torch's generators take 64 bits; seed + 3 is drawn
        raise OptionError(
            f"seed must lie between -2**63 and 2**64 - 4 (torch's generators take 64 bits), "
            f"got {seed}"
        )
    if not (is_real(lam) and math.isfinite(lam) and lam >= 0):
        raise OptionError(f"lam must be a finite number >= 0, got {lam!r}")
    if not (is_real(lr) and math.isfinite(lr) and lr > 0):
        raise OptionError(f"lr must be a positive finite number, got {lr!r}")
    for value, name in ((kl_warmup, "kl_warmup"), (min_lr_fraction, "min_lr_fraction")):
        if not (is_real(value) and 0 <= value <= 1):
            raise OptionError(f"{name} must lie in [0, 1], got {value!r}")
    if time_budget is not None and not (
        is_real(time_budget) and time_budget > 0 and math.isfinite(time_budget)
    ):
        raise OptionError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    if precision not in _PRECISIONS:
        raise OptionError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if not (is_real(obs_dropout) and 0 <= obs_dropout < 1):
        raise OptionError(
            f"obs_dropout is the largest share of the observations left out of a training "
            f"sample, in [0, 1); got {obs_dropout!r}"
        )
    device = compute_device(device)  # an OptionError for a device that is not there
    if precision == "bfloat16" and device.type == "cpu" and not cpu_has_bfloat16():
        warn_user(
            f"precision='bfloat16' on this CPU ({torch.backends.cpu.get_cpu_capability()}: "
            "no AVX-512 BF16 or AMX) is emulated, about ten times slower than float32: "
            "training in float32 instead (give precision='float32' to say so)",
            PrecisionWarning,
        )
        precision = "float32"
    split_gen = torch.Generator().manual_seed(seed)

    train_src, val_src = _split(states, val_states, val_fraction, batch_size, split_gen)
    n_train, n_val = train_src.size, val_src.size
    valid = _shared_mask(train_src, val_src)
    probe = _first_batch(train_src)
    channels, grid_shape = probe.shape[1], tuple(probe.shape[-2:])
    grid = choose_latent_grid(grid_shape, latent_dim)
    for key, value in (
        ("latent_channels", latent_channels),
        ("patch", patch),
        ("downsample", downsample),
    ):
        if value is not None:
            grid[key] = value
    latent = LatentGrid(grid_shape, **grid)  # checks the values
    if n_train is not None and n_train < latent.size:
        warn_user(
            f"{n_train} training states for a latent of {latent.size} values "
            f"({'x'.join(map(str, latent.shape))}): a model this size needs many more states "
            "than latent values to generalise. Give more states (more runs, more times) or "
            "a smaller latent_dim.",
            TrainingDataWarning,
        )
    if normalization is None:
        mean, std = _statistics(train_src, "states", channels)
    else:
        mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in normalization)
    layout = _obs_layout(make_obs, channels, grid_shape, probe[:2].to(torch.float32))
    for names, label in ((variables, "variables"), (units, "units")):
        if names is not None and len(names) != channels:
            raise OptionError(f"{label} has {len(names)} entries for {channels} channels")

    config: dict[str, Any] = {
        "architecture": {
            "channels": channels,
            "grid_shape": list(grid_shape),
            **grid,
            "width": width,
            "blocks": blocks,
            "periodic_lon": bool(periodic_lon),
        },
        "obs_layout": layout,
        "variables": None if variables is None else list(variables),
        "units": None if units is None else list(units),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae, obs_encoder = build_networks(config)
    vae.to(device)
    obs_encoder.to(device)
    if valid is not None:
        config["mask"] = {"masked_values": int((~valid).sum()), "values": valid.numel()}
    model = LatentModel(
        vae, obs_encoder, mean, std, torch.ones(latent.size), config, valid,
        obs_points=layout_points(make_obs, probe[0]),
    )  # fmt: skip
    params = [*vae.parameters(), *obs_encoder.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    # on the training device: the observations' noise and dropout are drawn there (on
    # the CPU the same numbers as a CPU generator's)
    obs_gen = torch.Generator(device=device).manual_seed(seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 2)
    sample = lam > 0
    low = _PRECISIONS[precision]
    layout_format = torch.channels_last if low is not None else torch.contiguous_format
    if low is not None:
        vae.to(memory_format=layout_format)
        obs_encoder.to(memory_format=layout_format)

    def prepare(batch, generator, dropout=0.0):
        x = batch.to(device=device, dtype=torch.float32)
        values, mask = make_obs(x, generator)
        if valid is not None:  # nothing is observed on the mask
            mask = mask & ~torch.isnan(values)
        if dropout > 0:  # a share up to dropout of each sample's observations left out
            where = generator.device
            share = torch.rand(mask.shape[0], generator=generator, device=where) * dropout
            drawn = torch.rand(mask.shape, generator=generator, device=where)
            mask = leave_out(mask, drawn, share)
        obs_values, obs_weight = model.obs_inputs(values, mask)
        return (
            t.contiguous(memory_format=layout_format) if t.dim() == 4 else t
            for t in (model.normalize(x), obs_values, obs_weight)
        )

    history: list[dict[str, Any]] = []
    best = (math.inf, -1, None)
    waited = 0
    started = time.perf_counter()
    steps_per_epoch = None
    step = 0

    def run_fraction() -> float:
        done = step / (steps_per_epoch * epochs) if steps_per_epoch else 0.0
        if time_budget is not None:
            done = max(done, (time.perf_counter() - started) / time_budget)
        return min(done, 1.0)

    bar = tqdm(total=epochs, desc="training latent model", disable=not progress, unit="epoch")
    for epoch in range(epochs):
        model.vae.train()
        model.obs_encoder.train()
        sums: dict[str, float] = {}
        seen = 0
        for batch in train_src.batches(epoch):
            frac = run_fraction()
            rate = lr * (
                min_lr_fraction + (1 - min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
            )
            for group in optimiser.param_groups:
                group["lr"] = rate
            weight = lam * min(1.0, frac / kl_warmup) if kl_warmup > 0 else lam
            x, ov, ow = prepare(batch, obs_gen, obs_dropout)
            with torch.autocast(device.type, dtype=low, enabled=low is not None):
                loss, terms = _loss_and_terms(model, x, ov, ow, weight, noise_gen, sample)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            n = x.shape[0]
            seen += n
            # summed on the device and read once an epoch: a read per step would make
            # the host wait for every step on a GPU instead of queueing the next one
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.float() * n  # (no float64 on some GPUs)
        if seen == 0:
            raise EnsembleError(f"the training states yielded no data in epoch {epoch}")
        if steps_per_epoch is None:
            steps_per_epoch = step
        train_terms = {k: float(v) / seen for k, v in sums.items()}
        check = _evaluate(model, val_src, prepare, seed, lam)
        if not math.isfinite(check["loss"]):
            raise OptionError(
                f"the validation loss became {check['loss']} in epoch {epoch}; lower lr"
            )
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_terms.pop("loss"),
                "val_loss": check["loss"],
                "val_relative_rmse": check["relative_rmse"],
                "val_obs_relative_rmse": check["obs_relative_rmse"],
                "lr": rate,
                "seconds": time.perf_counter() - started,
                "train_terms": train_terms,
            }
        )
        bar.update(1)
        bar.set_postfix(
            val_rec=f"{check['relative_rmse']:.3f}", val_obs=f"{check['obs_relative_rmse']:.3f}"
        )
        if check["loss"] < best[0]:
            weights = (copy.deepcopy(vae.state_dict()), copy.deepcopy(obs_encoder.state_dict()))
            best = (check["loss"], epoch, weights)
            waited = 0
        else:
            waited += 1
            if patience is not None and waited >= patience:
                break
        if run_fraction() >= 1.0:
            break
    bar.close()

    vae.to(memory_format=torch.contiguous_format)
    obs_encoder.to(memory_format=torch.contiguous_format)
    vae.load_state_dict(best[2][0])
    obs_encoder.load_state_dict(best[2][1])
    vae.eval()
    obs_encoder.eval()
    final = _evaluate(model, val_src, prepare, seed, lam, full=True)
    model.latent_obs_std = final["latent_obs_std"].to(device=model.device, dtype=model.dtype)
    model.config["latent"] = {"scale": final["latent_scale"].tolist()}
    if isinstance(make_obs, ObservationSampler):  # a plain callable has no noise to scale
        # the seed of _evaluate's observations: the curve at the training noise is
        # latent_obs_std
        curve = obs_error_curve(model, val_src.batches(0), make_obs, seed=seed + 3)
        if curve is not None:
            model.config["latent"]["obs_error"] = curve
    model.config["latent"]["coverage_error"] = coverage_error_curve(
        model, val_src.batches(0), make_obs, seed=seed + 3
    )
    model.config["quality"] = {
        "what": (
            "validation reconstruction error decode(encode(x)) - x per channel: rmse in the "
            "channel's units, relative_rmse = rmse / the channel's std over the training data"
        ),
        "rmse": (final["channel_rmse"] * std.double()).tolist(),
        "relative_rmse": final["channel_rmse"].tolist(),
        "obs_relative_rmse": final["channel_obs_rmse"].tolist(),
        "n_val": final["count"],
    }
    model.config["training"] = {
        "seed": seed,
        "lam": float(lam),
        "kl_warmup": float(kl_warmup),
        "lr": float(lr),
        "min_lr_fraction": float(min_lr_fraction),
        "batch_size": batch_size,
        "precision": precision,
        "obs_dropout": float(obs_dropout),
        "epochs_max": epochs,
        "time_budget": time_budget,
        "patience": patience,
        "epochs_run": len(history),
        "best_epoch": best[1],
        "best_val_loss": best[0],
        "n_train": n_train,
        "n_val": n_val,
        "latent_residual_bias": final["latent_bias"].tolist(),
        "device": str(device),
        "seconds": time.perf_counter() - started,
        "history": history,
    }
    return model


def _evaluate(model, val_src, prepare, seed, lam, full: bool = False) -> dict[str, Any]:
    """Validation figures of the current weights.

    The loss (latent means decoded), the relative reconstruction error of the states
    and of the decoded observation encoding (RMS over channels of the per-channel RMSE
    in normalised units); with ``full`` also per-channel errors, the RMS (floored) and
    mean of ``μ_obs(y) − μ(x)`` per latent value and the std of the latent means.
    """
    model.vae.eval()
    model.obs_encoder.eval()
    gen = torch.Generator().manual_seed(seed + 3)  # the same noise every time
    keep = 1.0 if model.valid is None else model.valid.to(model.dtype)  # masked: no error
    total = 0.0
    count = 0
    sq = sq_obs = None
    r_sq = r_sum = z_sum = z_sq = 0.0
    with torch.no_grad():
        for batch in val_src.batches(0):
            x, ov, ow = prepare(batch, gen)
            loss, _ = latent_loss(model, x, ov, ow, lam, sample=False)
            total += float(loss) * x.shape[0]
            count += x.shape[0]
            mu = model.vae.encode(x)[0]
            mu_o = model.obs_encoder(ov, ow)[0]
            err = ((model.vae.decode(mu) - x).square() * keep).sum((-2, -1)).double().sum(0)
            err_o = ((model.vae.decode(mu_o) - x).square() * keep).sum((-2, -1)).double().sum(0)
            sq = err if sq is None else sq + err
            sq_obs = err_o if sq_obs is None else sq_obs + err_o
            if full:
                r = (mu_o - mu).double()
                r_sq = r_sq + r.square().sum(0)
                r_sum = r_sum + r.sum(0)
                z_sum = z_sum + mu.double().sum(0)
                z_sq = z_sq + mu.double().square().sum(0)
    points = keep.sum((-2, -1)).double() if model.valid is not None else x.shape[-2] * x.shape[-1]
    channel = (sq / (count * points)).sqrt().cpu()
    channel_obs = (sq_obs / (count * points)).sqrt().cpu()
    out: dict[str, Any] = {
        "loss": total / count,
        "relative_rmse": float(channel.square().mean().sqrt()),
        "obs_relative_rmse": float(channel_obs.square().mean().sqrt()),
        "count": count,
    }
    if full:
        z_mean = z_sum / count
        out.update(
            channel_rmse=channel,
            channel_obs_rmse=channel_obs,
            latent_obs_std=(r_sq / count).sqrt().clamp_min(_MIN_LATENT_OBS_STD).float().cpu(),
            latent_bias=(r_sum / count).float().cpu(),
            latent_scale=(z_sq / count - z_mean.square())
            .clamp_min(0)
            .sqrt()
            .clamp_min(_MIN_LATENT_OBS_STD)
            .float()
            .cpu(),
        )
    return out


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX): where it does
    not, PyTorch emulates it (measured: 11 times slower than float32 on an AVX2 CPU)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: assume emulated
        return False


def _split(states, val_states, val_fraction, batch_size, generator):
    """``(train, validation)`` sources: ``val_states``, or a split that the source makes."""
    train = _as_source(states, "states", batch_size, generator, shuffle=True)
    if val_states is not None:
        return train, _as_source(val_states, "val_states", batch_size, generator, shuffle=False)
    if not (is_real(val_fraction) and 0 < val_fraction < 1):
        raise OptionError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    return train.split(val_fraction, generator)


def _positive_int(value, name: str) -> int:
    if not is_integer(value) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
