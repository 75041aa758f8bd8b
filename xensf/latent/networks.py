"""The networks of Latent-EnSF: a state VAE and an observation encoder.

Both map into the same latent space: a diagonal Gaussian ``N(μ, diag exp(log σ²))`` of
size ``latent_dim``. The state VAE (:class:`StateVAE`) has a convolutional encoder and
decoder; the observation encoder (:class:`ObservationEncoder`) reads a sparse
observation — gridded with gaps, or a fixed set of point slots — together with the
mask of what is observed. They work on normalised variables; :class:`~xensf.latent.
model.LatentModel` does the normalisation.

Grids of any size are accepted: the convolutional stacks pad the field internally to a
multiple of ``2**depth`` and crop the output back, so 61 × 120 (ERA5 at 3°) or 150 × 150
(the shallow-water twin) need no resampling. Longitude (the last axis) may be declared
periodic (circular padding); otherwise, and always along the first axis, the edge
values are replicated, which adds no artificial gradient at the boundary.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import OptionError

__all__ = [
    "OBS_KINDS",
    "ConvEncoder",
    "ObservationEncoder",
    "StateVAE",
    "gaussian_kl",
    "reparameterize",
]

OBS_KINDS = ("gridded", "points")

# Channel count of the deepest stages is capped at width * _MAX_WIDTH_FACTOR, which
# bounds the parameter count of the dense bottleneck on large grids.
_MAX_WIDTH_FACTOR = 8


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``z = μ + exp(½ log σ²) ε`` with ``ε ~ N(0, I)``.

    Parameters
    ----------
    mu, logvar : torch.Tensor
        Mean and log-variance of a diagonal Gaussian, same shape.
    generator : torch.Generator, optional
        Source of ``ε``, on the device of ``mu``; ``None`` uses torch's global one.

    Returns
    -------
    torch.Tensor
        A sample, differentiable with respect to ``mu`` and ``logvar``.
    """
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, diag σ²) ‖ N(0, I))`` summed over the last dim.

    ``½ Σ (μ² + σ² − 1 − log σ²)``.

    Parameters
    ----------
    mu, logvar : torch.Tensor
        ``(..., latent_dim)``.

    Returns
    -------
    torch.Tensor
        ``(...)``, non-negative.
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _grid(grid_shape) -> tuple[int, int]:
    try:
        h, w = (int(n) for n in grid_shape)
    except (TypeError, ValueError):
        raise OptionError(f"grid_shape must be (H, W), got {grid_shape!r}") from None
    if h < 1 or w < 1:
        raise OptionError(f"grid_shape must be positive, got {grid_shape!r}")
    return h, w


def _stage_widths(width: int, depth: int) -> list[int]:
    """Channels after the stem and after each downsampling stage."""
    return [width * min(2**i, _MAX_WIDTH_FACTOR) for i in range(depth + 1)]


class _GridPadding:
    """Pads ``(B, C, H, W)`` to multiples of ``2**depth`` and crops back."""

    def __init__(self, grid_shape: tuple[int, int], depth: int, periodic_lon: bool):
        self.h, self.w = grid_shape
        factor = 2**depth
        self.ph = math.ceil(self.h / factor) * factor
        self.pw = math.ceil(self.w / factor) * factor
        self.periodic_lon = periodic_lon

    @property
    def bottleneck(self) -> tuple[int, int]:
        return self.ph, self.pw

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = self.ph - self.h, self.pw - self.w
        top, left = dh // 2, dw // 2
        if dw:
            if self.periodic_lon:
                # Circular padding needs the pad to be at most the size; a grid narrower
                # than its pad is wrapped more than once.
                reps = math.ceil(self.pw / self.w) + 1
                tiled = x.repeat(1, 1, 1, reps)
                start = self.w * (reps // 2) - left
                x = tiled[..., start : start + self.pw]
            else:
                x = _replicate(x, -1, left, dw - left)
        if dh:
            x = _replicate(x, -2, top, dh - top)
        return x

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        top = (self.ph - self.h) // 2
        left = (self.pw - self.w) // 2
        return x[..., top : top + self.h, left : left + self.w]


def _replicate(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    def edge(index: int, count: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = count
        return x.narrow(dim, index, 1).expand(shape)

    parts = [edge(0, before)] if before else []
    parts.append(x)
    if after:
        parts.append(edge(x.shape[dim] - 1, after))
    return torch.cat(parts, dim)


class ConvEncoder(nn.Module):
    """Convolutional encoder of ``(B, C_in, H, W)`` fields to a latent Gaussian.

    A 3 × 3 stem, then ``depth`` stages each halving the grid (a stride-2 3 × 3
    convolution and a 3 × 3 convolution, SiLU activations), then a linear map of the
    flattened bottleneck to ``(μ, log σ²)``. No batch statistics are used, so a
    member's encoding does not depend on what else is in the batch.

    Parameters
    ----------
    in_channels : int
        Input channels.
    grid_shape : (int, int)
        ``(H, W)`` of the input, any size.
    latent_dim : int
        Size of the latent space.
    width : int, default 32
        Channels after the stem; they double at each stage, up to ``8 * width``.
    depth : int, default 3
        Downsampling stages; the grid is padded to a multiple of ``2**depth``.
    periodic_lon : bool, default False
        Pad the last axis circularly (a periodic longitude) instead of replicating
        its edges.
    """

    def __init__(
        self,
        in_channels: int,
        grid_shape: tuple[int, int],
        latent_dim: int,
        width: int = 32,
        depth: int = 3,
        periodic_lon: bool = False,
    ):
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(latent_dim, "latent_dim")
        _check_positive_int(width, "width")
        _check_positive_int(depth, "depth", minimum=0)
        self.padding = _GridPadding(_grid(grid_shape), depth, periodic_lon)
        widths = _stage_widths(width, depth)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        stages = []
        for c_in, c_out in itertools.pairwise(widths):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                    nn.SiLU(),
                    nn.Conv2d(c_out, c_out, 3, padding=1),
                    nn.SiLU(),
                )
            )
        self.stages = nn.ModuleList(stages)
        ph, pw = self.padding.bottleneck
        flat = widths[-1] * (ph // 2**depth) * (pw // 2**depth)
        self.head = nn.Linear(flat, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C_in, H, W) -> (μ, log σ²)``, each ``(B, latent_dim)``."""
        h = F.silu(self.stem(self.padding.pad(x)))
        for stage in self.stages:
            h = stage(h)
        mu, logvar = self.head(h.flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Decoder of latent vectors to ``(B, C, H, W)`` fields, the mirror of :class:`ConvEncoder`.

    A linear map to the bottleneck grid, then ``depth`` stages of nearest-neighbour
    upsampling by 2 and two 3 × 3 convolutions, a final 3 × 3 convolution to ``C``
    channels, and a crop back to ``(H, W)``.
    """

    def __init__(
        self,
        channels: int,
        grid_shape: tuple[int, int],
        latent_dim: int,
        width: int = 32,
        depth: int = 3,
        periodic_lon: bool = False,
    ):
        super().__init__()
        self.padding = _GridPadding(_grid(grid_shape), depth, periodic_lon)
        widths = _stage_widths(width, depth)
        ph, pw = self.padding.bottleneck
        self.bottleneck = (widths[-1], ph // 2**depth, pw // 2**depth)
        self.head = nn.Linear(latent_dim, math.prod(self.bottleneck))
        stages = []
        for c_in, c_out in zip(widths[:0:-1], widths[-2::-1], strict=True):
            stages.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c_in, c_out, 3, padding=1),
                    nn.SiLU(),
                    nn.Conv2d(c_out, c_out, 3, padding=1),
                    nn.SiLU(),
                )
            )
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(widths[0], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim) -> (B, C, H, W)``."""
        h = F.silu(self.head(z)).reshape(z.shape[0], *self.bottleneck)
        for stage in self.stages:
            h = stage(h)
        return self.padding.crop(self.out(h))


class StateVAE(nn.Module):
    """Variational autoencoder of gridded states ``(B, C, H, W)``.

    Multi-variable or multi-level states are stacked as channels. The encoder gives the
    mean and log-variance of a diagonal Gaussian in a latent space of size
    ``latent_dim``; the decoder maps a latent vector back to a field.

    Parameters
    ----------
    channels : int
        Number of channels (variables × levels).
    grid_shape : (int, int)
        ``(H, W)``; any size (padded internally to a multiple of ``2**depth``).
    latent_dim : int
        Size of the latent space.
    width : int, default 32
        Channels after the first convolution; doubled per stage up to ``8 * width``.
    depth : int, default 3
        Number of downsampling (and upsampling) stages.
    periodic_lon : bool, default False
        Treat the last axis as periodic (global longitude) when padding.

    Examples
    --------
    >>> vae = StateVAE(3, (61, 120), latent_dim=16, width=8)
    >>> mu, logvar = vae.encode(torch.zeros(2, 3, 61, 120))
    >>> vae.decode(mu).shape
    torch.Size([2, 3, 61, 120])
    """

    def __init__(
        self,
        channels: int,
        grid_shape: tuple[int, int],
        latent_dim: int,
        width: int = 32,
        depth: int = 3,
        periodic_lon: bool = False,
    ):
        super().__init__()
        self.channels = _check_positive_int(channels, "channels")
        self.grid_shape = _grid(grid_shape)
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(channels, grid_shape, latent_dim, width, depth, periodic_lon)
        self.decoder = ConvDecoder(channels, grid_shape, latent_dim, width, depth, periodic_lon)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W) -> (μ, log σ²)``, each ``(B, latent_dim)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim) -> (B, C, H, W)``."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, draw ``z`` by reparameterisation and decode.

        Returns
        -------
        reconstruction, mu, logvar : torch.Tensor
        """
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, generator)), mu, logvar


class ObservationEncoder(nn.Module):
    """Encoder of a sparse observation to the latent space of a :class:`StateVAE`.

    The observation operator is learned: the network sees only the observed values and
    where they are, and is trained so that its latent Gaussian matches the state
    encoder's for the state observed.

    Parameters
    ----------
    kind : {"gridded", "points"}
        ``"gridded"``: observations on the state grid with gaps, ``(B, C, H, W)``. The
        input of the convolutional encoder is the values (missing ones set to 0) and
        the mask, ``2 C`` channels, so the set of observed points may change from one
        time to the next. ``"points"``: a fixed set of ``n_obs`` observation slots
        ``(B, n_obs)`` (stations); an MLP reads the values (missing ones set to 0) and
        the mask, so a station may be missing at some times.
    latent_dim : int
        Size of the latent space.
    channels : int, optional
        State channels, for ``"gridded"``.
    grid_shape : (int, int), optional
        ``(H, W)``, for ``"gridded"``.
    n_obs : int, optional
        Number of slots, for ``"points"``.
    width : int, default 32
        ``"gridded"``: as in :class:`StateVAE`. ``"points"``: the hidden layers have
        ``8 * width`` units.
    depth : int, default 3
        ``"gridded"``: downsampling stages. ``"points"``: hidden layers (at least 1).
    periodic_lon : bool, default False
        ``"gridded"``: periodic padding of the last axis.

    Notes
    -----
    Missing values must be set to 0 (and the mask to False) before calling the module;
    :meth:`~xensf.latent.model.LatentModel.encode_obs` does it.
    """

    def __init__(
        self,
        kind: str,
        latent_dim: int,
        *,
        channels: int | None = None,
        grid_shape: tuple[int, int] | None = None,
        n_obs: int | None = None,
        width: int = 32,
        depth: int = 3,
        periodic_lon: bool = False,
    ):
        super().__init__()
        if kind not in OBS_KINDS:
            raise OptionError(f"observation kind must be one of {OBS_KINDS}, got {kind!r}")
        self.kind = kind
        self.latent_dim = _check_positive_int(latent_dim, "latent_dim")
        if kind == "gridded":
            if channels is None or grid_shape is None:
                raise OptionError('a "gridded" observation encoder needs channels and grid_shape')
            self.net = ConvEncoder(
                2 * channels, grid_shape, latent_dim, width, depth, periodic_lon
            )
        else:
            _check_positive_int(n_obs, "n_obs")
            hidden = 8 * _check_positive_int(width, "width")
            layers: list[nn.Module] = []
            n_in = 2 * n_obs
            for _ in range(max(depth, 1)):
                layers += [nn.Linear(n_in, hidden), nn.SiLU()]
                n_in = hidden
            layers.append(nn.Linear(n_in, 2 * latent_dim))
            self.net = nn.Sequential(*layers)

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, mask) -> (μ, log σ²)``, each ``(B, latent_dim)``.

        ``values`` and ``mask`` are ``(B, C, H, W)`` (gridded) or ``(B, n_obs)``
        (points); ``values`` must be 0 where ``mask`` is False.
        """
        inputs = torch.cat([values, mask.to(values.dtype)], dim=1)
        if self.kind == "gridded":
            return self.net(inputs)
        return self.net(inputs).chunk(2, dim=-1)
