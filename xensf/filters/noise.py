"""Where the EnSF's random numbers come from: seeds, per-entry streams, per-time seeds.

A batched analysis draws its standard normals ``(*batch, N, d)`` either from one
generator or from one stream per batch entry (:class:`NoiseSource`). The xarray layer
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

from ..errors import OptionError

__all__ = ["NoiseSource", "analysis_seeds"]


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
        digest = hashlib.blake2b(
            f"{int(seed)}|{np.asarray(v).tobytes().hex()}|{np.asarray(v).dtype.str}".encode(),
            digest_size=8,
        ).digest()
        out.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return out


class NoiseSource:
    """Draws standard normal tensors ``(*batch, N, d)``, from one or per-entry streams."""

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
        elif isinstance(generator, int | np.integer) and not isinstance(generator, bool):
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
