"""Where the EnSF's random numbers come from: seeds, per-entry streams, per-time seeds.

A batched analysis draws its standard normals ``(*batch, N, d)`` either from one
generator or from one stream per batch entry (:class:`NoiseSource`), or, for a gridded
state analysed in spatial blocks, from one stream per entry and tile of the grid
(:class:`TiledNoise`), so that a block gets the numbers the whole grid would. The xarray layer
gives each analysis time its own seed, derived from the user's seed and the time value
alone (:func:`analysis_seeds`), so a result does not depend on how the times are
chunked or batched. The fused CUDA kernel draws from counters keyed by
:meth:`NoiseSource.keys` instead.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from ..checks import is_integer
from ..errors import OptionError

__all__ = ["NoiseSource", "TiledNoise", "analysis_seeds", "check_seed"]


def check_seed(seed, *, non_negative: bool = False) -> int:
    """``seed`` as an int, or an :class:`~xensf.errors.OptionError`: an integer (not a
    bool), at least 0 where ``non_negative`` (numpy's generators take no other)."""
    if not is_integer(seed):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    if non_negative and seed < 0:
        raise OptionError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _object_time_key(v) -> str:
    """A time held as a Python object (a cftime date) by its value: the bytes of an
    object array are a pointer, another at every run."""
    if hasattr(v, "calendar"):
        fields = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
        return f"{v.calendar}|" + "|".join(map(str, fields))
    return repr(v)


def analysis_seeds(seed: int, times: np.ndarray | None, n: int = 1) -> list[int]:
    """One 63-bit seed per analysis, from the user's seed and the analysis time alone."""
    if times is None:
        times = np.zeros(n, dtype=np.int64)
    values = np.asarray(times)
    if values.dtype.kind in "mM":
        values = values.astype("datetime64[ns]" if values.dtype.kind == "M" else "timedelta64[ns]")
        values = values.view(np.int64)
    out = []
    for v in values.ravel():
        if values.dtype.kind == "O":
            text = f"{int(seed)}|{_object_time_key(v)}|O"
        else:
            text = f"{int(seed)}|{np.asarray(v).tobytes().hex()}|{np.asarray(v).dtype.str}"
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return out


class NoiseSource:
    """Draws standard normal tensors ``(*batch, N, d)``, from one or per-entry streams."""

    #: whether :meth:`keys` gives the fused CUDA kernel keys to draw the same noise
    keyed = True

    def __init__(self, generator, batch, member_shape, device, dtype):
        self.batch = tuple(batch)
        self.member_shape = tuple(member_shape)
        self.device = device
        self.dtype = dtype
        self.generators: list[torch.Generator] | None = None
        self.generator: torch.Generator | None = None
        self.seed: int | None = None
        self.seeds: list[int] | None = None
        n_entries = math.prod(self.batch)
        if generator is None or isinstance(generator, torch.Generator):
            self.generator = generator
        elif is_integer(generator):
            self.seed = int(generator)
            self.generator = _seeded(self.seed, device)
        else:
            seeds = _as_seed_list(generator)
            self.seeds = seeds
            if len(seeds) != n_entries:
                raise OptionError(
                    f"generator has {len(seeds)} seeds but there are {n_entries} batch "
                    f"entries (batch shape {self.batch}); give one seed per entry"
                )
            self.generators = [_seeded(s, device) for s in seeds]

    def keys(self) -> torch.Tensor:
        """One int64 key per batch entry (C order) for counter-based generators.

        A seed list gives its seeds; an int seed ``s`` gives ``s`` to the first entry
        (so one entry with ``s`` equals ``[s]``) and distinct keys to the others; a
        ``torch.Generator`` (or the global one) provides one random key.
        """
        n = math.prod(self.batch)
        if self.seeds is not None:
            keys = self.seeds
        else:
            if self.seed is not None:
                base = self.seed
            else:
                where = self.device if self.generator is None else self.generator.device
                base = int(
                    torch.randint(2**62, (1,), generator=self.generator, device=where).item()
                )
            keys = [(base + 0x9E3779B97F4A7C15 * i) % 2**63 for i in range(n)]
        return torch.tensor(keys, dtype=torch.int64, device=self.device)

    def draw(self) -> torch.Tensor:
        shape = self.member_shape
        if self.generators is not None:
            out = torch.empty((len(self.generators), *shape), dtype=self.dtype, device=self.device)
            for row, g in zip(out, self.generators, strict=True):
                if g.device == self.device:
                    torch.randn(shape, generator=g, dtype=self.dtype, device=self.device, out=row)
                else:
                    row.copy_(self._randn(shape, g))
            return out.reshape(*self.batch, *shape)
        return self._randn(self.batch + shape, self.generator)

    def _randn(self, shape, generator) -> torch.Tensor:
        where = self.device if generator is None else generator.device
        out = torch.randn(shape, generator=generator, device=where, dtype=self.dtype)
        return out.to(self.device)


class TiledNoise(NoiseSource):
    """Standard normals for a block of a gridded state, the same whatever the blocks.

    The state of one batch entry is ``n_fields`` fields on a ``grid_shape`` grid,
    flattened field by field (:mod:`xensf.obs`'s layout). The grid is cut into fixed
    tiles of ``tile × tile`` points from its first row and column, and every (entry,
    tile) pair has its own stream, seeded from the entry's seed and the tile's
    position alone; each draw takes one ``(N, n_fields, tile, tile)`` array (smaller at
    the grid's far edges) from the stream of every tile the block touches and keeps
    the part inside the block. So the block ``rows × cols`` gets exactly the numbers
    the whole grid would get there: an analysis of the grid in blocks equals the
    analysis of the whole grid. A block that does not follow the tile boundaries draws
    the outside parts of its edge tiles too (and throws them away).

    It has no keys for the fused CUDA kernel (``keyed`` is False): analyses with it
    take the torch path on every device.
    """

    keyed = False

    def __init__(self, seeds, n_members, n_fields, grid_shape, rows, cols, tile, device, dtype):
        seeds = _as_seed_list(seeds)
        self.batch = (len(seeds),)
        (r0, r1), (c0, c1) = rows, cols
        self.rows, self.cols = (int(r0), int(r1)), (int(c0), int(c1))
        self.member_shape = (int(n_members), int(n_fields) * (r1 - r0) * (c1 - c0))
        self.device = device
        self.dtype = dtype
        self.n_fields = int(n_fields)
        self.grid_shape = tuple(int(v) for v in grid_shape)
        self.tile = int(tile)
        self.tiles = [
            (ti, tj)
            for ti in range(r0 // self.tile, (r1 - 1) // self.tile + 1)
            for tj in range(c0 // self.tile, (c1 - 1) // self.tile + 1)
        ]
        self.generators = [
            [_seeded(_tile_seed(seed, ti, tj), device) for ti, tj in self.tiles] for seed in seeds
        ]

    def keys(self) -> torch.Tensor:
        raise OptionError("tiled noise has no keys for the fused kernel")

    def draw(self) -> torch.Tensor:
        (r0, r1), (c0, c1) = self.rows, self.cols
        n, t = self.member_shape[0], self.tile
        H, W = self.grid_shape
        out = torch.empty((self.batch[0], n, self.n_fields, r1 - r0, c1 - c0),
                          dtype=self.dtype, device=self.device)  # fmt: skip
        for entry, generators in zip(out, self.generators, strict=True):
            for (ti, tj), g in zip(self.tiles, generators, strict=True):
                top, left = ti * t, tj * t
                shape = (n, self.n_fields, min(t, H - top), min(t, W - left))
                values = torch.randn(shape, generator=g, dtype=self.dtype, device=self.device)
                i0, i1 = max(top, r0), min(top + shape[2], r1)
                j0, j1 = max(left, c0), min(left + shape[3], c1)
                entry[:, :, i0 - r0 : i1 - r0, j0 - c0 : j1 - c0] = values[
                    :, :, i0 - top : i1 - top, j0 - left : j1 - left
                ]
        return out.reshape(*self.batch, *self.member_shape)


def _tile_seed(seed: int, ti: int, tj: int) -> int:
    digest = hashlib.blake2b(f"{int(seed)}|tile|{ti}|{tj}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _as_seed_list(generator) -> list[int]:
    try:
        seeds = np.asarray(
            generator.cpu() if isinstance(generator, torch.Tensor) else generator
        ).ravel()
    except Exception:
        seeds = None
    if seeds is None or seeds.dtype.kind not in "iu":
        raise OptionError(
            "generator must be a torch.Generator, an int seed, a sequence of int seeds "
            f"(one per batch entry) or None; got {generator!r}"
        )
    return [int(s) for s in seeds]
