"""The networks of Latent-EnSF: a state VAE and an observation encoder with a *spatial* latent.

The latent space is a small grid: ``latent_channels × h × w`` values, where ``(h, w)``
is the state grid reduced by a factor ``patch · 2**downsample``. Both networks map into
it: the state VAE (:class:`StateVAE`) encodes a field, the observation encoder
(:class:`ObservationEncoder`) a sparse observation given as values and a mask on the
same grid (stations are spread onto the grid first, see
:meth:`~xensf.latent.model.LatentModel.encode_obs`). Each latent value summarises one
patch of the field, so a latent grid keeps the locality that a dense bottleneck loses:
it reconstructs far better and trains far faster for the same size.

The architecture, the same for both encoders:

- *stem*: the field is padded to a multiple of the reduction factor and cut into
  ``patch × patch`` patches by one strided convolution (cheap: every later layer works
  on the coarse grid);
- ``blocks`` residual blocks (two 3 × 3 convolutions with SiLU) at every scale, with
  ``downsample`` stride-2 convolutions between scales;
- a 1 × 1 convolution to the mean and log-variance of the latent Gaussian.

The decoder mirrors it: a 1 × 1 convolution from the latent grid, residual blocks and
nearest-neighbour upsampling by 2, then a 3 × 3 convolution to ``C · patch²`` channels
rearranged into patches (pixel shuffle), and a crop back to ``(H, W)``.

No batch statistics are used (no batch normalisation), so a member's encoding does not
depend on what else is in the batch. Longitude (the last axis) may be declared periodic:
every convolution then wraps around it; otherwise, and always along the first axis, edge
values are replicated.

All networks take and give latent vectors *flattened* (``(B, latent_dim)`` with
``latent_dim = latent_channels · h · w``, channel-major), the form the filters work on.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import is_integer
from ..errors import OptionError

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "LatentGrid",
    "ObservationEncoder",
    "StateVAE",
    "choose_latent_grid",
    "gaussian_kl",
    "reparameterize",
]


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
    if not is_integer(value) or value < minimum:
        raise OptionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _grid(grid_shape) -> tuple[int, int]:
    try:
        h, w = (int(n) for n in grid_shape)
    except (TypeError, ValueError):
        raise OptionError(f"grid_shape must be (H, W), got {grid_shape!r}") from None
    if h < 1 or w < 1:
        raise OptionError(f"grid_shape must be positive, got {grid_shape!r}")
    return h, w


class LatentGrid:
    """The shape of a spatial latent and how a state grid is reduced to it.

    Parameters
    ----------
    grid_shape : (int, int)
        ``(H, W)`` of the state.
    latent_channels : int
        Values per latent cell.
    patch : int
        Side of the stem's patches.
    downsample : int
        Stride-2 stages after the stem.

    Attributes
    ----------
    factor : int
        ``patch · 2**downsample``: state cells per latent cell along each axis.
    shape : (int, int, int)
        ``(latent_channels, h, w)`` with ``h = ceil(H / factor)``, ``w = ceil(W / factor)``.
    size : int
        ``latent_channels · h · w``, the ``latent_dim`` of the filters.
    """

    def __init__(self, grid_shape, latent_channels: int, patch: int, downsample: int):
        self.grid_shape = _grid(grid_shape)
        self.latent_channels = _check_positive_int(latent_channels, "latent_channels")
        self.patch = _check_positive_int(patch, "patch")
        self.downsample = _check_positive_int(downsample, "downsample", minimum=0)
        self.factor = self.patch * 2**self.downsample
        h, w = self.grid_shape
        self.shape = (self.latent_channels, math.ceil(h / self.factor), math.ceil(w / self.factor))
        self.size = math.prod(self.shape)

    def __repr__(self) -> str:
        c, h, w = self.shape
        return f"LatentGrid({c} x {h} x {w} = {self.size}, patch {self.patch}, downsample {self.downsample})"


def choose_latent_grid(grid_shape, latent_dim: int = 400) -> dict[str, int]:
    """A latent grid of about ``latent_dim`` values for a state grid.

    Picks the reduction factor ``patch · 2**downsample`` (stem patches of 1 to 5 cells,
    4 preferred: cheap on a CPU and fine enough) and the channels per latent cell (1 to
    16, about 4 preferred) whose size is closest to ``latent_dim``.

    Parameters
    ----------
    grid_shape : (int, int)
        ``(H, W)``.
    latent_dim : int, default 400
        The size aimed at (400 is the published model's for the 150 × 150 basin).

    Returns
    -------
    dict
        ``{"latent_channels", "patch", "downsample"}``, the keywords of :class:`LatentGrid`.

    Examples
    --------
    >>> choose_latent_grid((40, 40), 400)
    {'latent_channels': 4, 'patch': 4, 'downsample': 0}
    """
    h, w = _grid(grid_shape)
    _check_positive_int(latent_dim, "latent_dim")
    best = None
    for downsample in range(5):
        for patch in range(1, 6):
            factor = patch * 2**downsample
            ch, cw = math.ceil(h / factor), math.ceil(w / factor)
            # an axis of one latent cell decodes to a field that repeats every patch
            if (h > 1 and ch < 2) or (w > 1 and cw < 2) or (patch == 1 and downsample > 0):
                continue
            cells = ch * cw
            channels = min(16, max(1, round(latent_dim / cells)))
            size = channels * cells
            # closeness to the request first, then ~4 channels, then 4 x 4 patches
            cost = (
                abs(math.log(size / latent_dim))
                + 0.05 * abs(math.log(channels / 4))
                + 0.01 * abs(patch - 4)
            )
            if best is None or cost < best[0]:
                best = (
                    cost,
                    {"latent_channels": channels, "patch": patch, "downsample": downsample},
                )
    return best[1]


def _pad3(x: torch.Tensor, periodic_lon: bool) -> torch.Tensor:
    """Pad one cell around ``(B, C, H, W)``: wrap or replicate along W, replicate along H."""
    x = F.pad(x, (1, 1, 0, 0), mode="circular" if periodic_lon else "replicate")
    return F.pad(x, (0, 0, 1, 1), mode="replicate")


class _Conv3(nn.Module):
    """A 3 × 3 convolution (stride 1 or 2) that pads as the grid asks."""

    def __init__(self, c_in: int, c_out: int, periodic_lon: bool, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride)
        self.periodic_lon = periodic_lon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad3(x, self.periodic_lon))


class _ResBlock(nn.Module):
    """``x + conv(silu(conv(silu(x))))``; the second convolution starts at zero."""

    def __init__(self, width: int, periodic_lon: bool):
        super().__init__()
        self.a = _Conv3(width, width, periodic_lon)
        self.b = _Conv3(width, width, periodic_lon)
        nn.init.zeros_(self.b.conv.weight)
        nn.init.zeros_(self.b.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(F.silu(self.a(F.silu(x))))


class _GridPadding:
    """Pads ``(B, C, H, W)`` to multiples of ``factor`` and crops back."""

    def __init__(self, grid_shape: tuple[int, int], factor: int, periodic_lon: bool):
        self.h, self.w = grid_shape
        self.ph = math.ceil(self.h / factor) * factor
        self.pw = math.ceil(self.w / factor) * factor
        self.periodic_lon = periodic_lon

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = self.ph - self.h, self.pw - self.w
        top, left = dh // 2, dw // 2
        if dw:
            if self.periodic_lon:
                # a grid narrower than its pad is wrapped more than once
                reps = math.ceil(self.pw / self.w) + 1
                tiled = x.repeat(1, 1, 1, reps)
                start = self.w * (reps // 2) - left
                x = tiled[..., start : start + self.pw]
            else:
                x = F.pad(x, (left, dw - left, 0, 0), mode="replicate")
        if dh:
            x = F.pad(x, (0, 0, top, dh - top), mode="replicate")
        return x

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        top = (self.ph - self.h) // 2
        left = (self.pw - self.w) // 2
        return x[..., top : top + self.h, left : left + self.w]


class ConvEncoder(nn.Module):
    """Fields ``(B, C_in, H, W)`` to a latent Gaussian on a grid, flattened.

    Parameters
    ----------
    in_channels : int
        Input channels.
    latent : LatentGrid
        The latent grid (and so the stem's patch and the downsampling stages).
    width : int, default 64
        Channels of the hidden layers.
    blocks : int, default 2
        Residual blocks at each scale.
    periodic_lon : bool, default False
        Wrap around the last axis.
    """

    def __init__(
        self,
        in_channels: int,
        latent: LatentGrid,
        width: int = 64,
        blocks: int = 2,
        periodic_lon: bool = False,
    ):
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(width, "width")
        _check_positive_int(blocks, "blocks", minimum=0)
        self.latent = latent
        self.padding = _GridPadding(latent.grid_shape, latent.factor, periodic_lon)
        self.stem = nn.Conv2d(in_channels, width, latent.patch, stride=latent.patch)
        layers: list[nn.Module] = [_ResBlock(width, periodic_lon) for _ in range(blocks)]
        for _ in range(latent.downsample):
            layers.append(_Conv3(width, width, periodic_lon, stride=2))
            layers += [_ResBlock(width, periodic_lon) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 2 * latent.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C_in, H, W) -> (μ, log σ²)``, each ``(B, latent_dim)``."""
        h = self.body(self.stem(self.padding.pad(x)))
        mu, logvar = self.head(F.silu(h)).chunk(2, dim=1)
        return mu.flatten(1), logvar.flatten(1)


class ConvDecoder(nn.Module):
    """Flattened latent vectors ``(B, latent_dim)`` to fields ``(B, C, H, W)``.

    The mirror of :class:`ConvEncoder`; same parameters, ``channels`` the output's.
    """

    def __init__(
        self,
        channels: int,
        latent: LatentGrid,
        width: int = 64,
        blocks: int = 2,
        periodic_lon: bool = False,
    ):
        super().__init__()
        self.latent = latent
        self.channels = channels
        self.padding = _GridPadding(latent.grid_shape, latent.factor, periodic_lon)
        self.head = nn.Conv2d(latent.latent_channels, width, 1)
        layers: list[nn.Module] = []
        for _ in range(latent.downsample):
            layers += [_ResBlock(width, periodic_lon) for _ in range(blocks)]
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                _Conv3(width, width, periodic_lon),
            ]
        layers += [_ResBlock(width, periodic_lon) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.out = _Conv3(width, channels * latent.patch**2, periodic_lon)
        self.unpatch = nn.PixelShuffle(latent.patch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim) -> (B, C, H, W)``."""
        h = self.head(z.reshape(z.shape[0], *self.latent.shape))
        h = self.out(F.silu(self.body(h)))
        return self.padding.crop(self.unpatch(h))


class StateVAE(nn.Module):
    """Variational autoencoder of gridded states ``(B, C, H, W)`` with a spatial latent.

    Multi-variable or multi-level states are stacked as channels. The encoder gives the
    mean and log-variance of a diagonal Gaussian on the latent grid (see
    :class:`LatentGrid`), flattened to ``latent_dim`` values; the decoder maps a latent
    vector back to a field.

    Parameters
    ----------
    channels : int
        Number of channels (variables × levels).
    latent : LatentGrid
        The latent grid; its ``grid_shape`` is the state's ``(H, W)``, any size.
    width : int, default 64
        Channels of the hidden layers.
    blocks : int, default 2
        Residual blocks at each scale.
    periodic_lon : bool, default False
        Treat the last axis as periodic (global longitude).

    Examples
    --------
    >>> vae = StateVAE(3, LatentGrid((61, 120), 2, patch=4, downsample=1), width=8)
    >>> mu, logvar = vae.encode(torch.zeros(2, 3, 61, 120))
    >>> mu.shape, vae.decode(mu).shape
    (torch.Size([2, 240]), torch.Size([2, 3, 61, 120]))
    """

    def __init__(
        self,
        channels: int,
        latent: LatentGrid,
        width: int = 64,
        blocks: int = 2,
        periodic_lon: bool = False,
    ):
        super().__init__()
        self.channels = _check_positive_int(channels, "channels")
        self.latent = latent
        self.grid_shape = latent.grid_shape
        self.latent_dim = latent.size
        self.encoder = ConvEncoder(channels, latent, width, blocks, periodic_lon)
        self.decoder = ConvDecoder(channels, latent, width, blocks, periodic_lon)

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
    encoder's for the state observed. Its input is gridded, ``(B, C, H, W)`` values
    (0 where unobserved) and a weight of the same shape in [0, 1] (the mask: 1 at an
    observed grid point; stations off the grid are spread onto the four surrounding
    points with bilinear weights before they get here), so the set of observed points
    may change from one time to the next. The network is a :class:`ConvEncoder` on the
    ``2 C`` channels.

    Parameters
    ----------
    channels : int
        State channels.
    latent : LatentGrid
        The state VAE's latent grid.
    width, blocks, periodic_lon
        As in :class:`StateVAE`.
    """

    def __init__(
        self,
        channels: int,
        latent: LatentGrid,
        width: int = 64,
        blocks: int = 2,
        periodic_lon: bool = False,
    ):
        super().__init__()
        self.channels = _check_positive_int(channels, "channels")
        self.latent_dim = latent.size
        self.net = ConvEncoder(2 * channels, latent, width, blocks, periodic_lon)

    def forward(
        self, values: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, weight) -> (μ, log σ²)``, each ``(B, latent_dim)``.

        ``values`` and ``weight`` are ``(B, C, H, W)``; ``values`` must be 0 where
        ``weight`` is 0.
        """
        return self.net(torch.cat([values, weight.to(values.dtype)], dim=1))
