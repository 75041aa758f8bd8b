"""The analysis methods: each a small class with its options, checks and ``analyse``.

A method is a frozen dataclass (DAPPER's way): its options are its fields, with their
defaults, checked when it is made; class attributes say whether it needs a latent
model and whether it takes the real observations' errors. :meth:`Method.analyse`
turns one task's :class:`Block` (the prior of the times of a chunk, their
observations, seeds and plan) into the analysis; :meth:`Method.parameters` is what
the result records. The registry :data:`METHODS` maps names to classes: a new method
is one class here and one entry there, and the bridge needs no change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..checks import as_number, as_python, is_flag, is_integer, is_real
from ..errors import (
    EnsembleError,
    LocalisationWarning,
    ModelQualityWarning,
    ObservationLayoutWarning,
    OptionError,
    UnitsError,
    did_you_mean,
    unknown_options,
    warn_user,
)
from ..latent.model import check_latent_radius
from .geometry import letkf_geometry
from .layout import grid_field
from .masks import times_by_mask
from .model_cache import cached_model

if TYPE_CHECKING:
    from .analysis import BlockPlan

__all__ = [
    "LETKF",
    "METHODS",
    "Block",
    "EnSF",
    "LatentEnSF",
    "LatentEnSFLETKF",
    "LatentLETKF",
    "Method",
    "resolve_method",
]

#: Largest multiplicative inflation accepted.
MAX_INFLATION = 10.0

#: An option the user must give (the LETKF's loc_radius): set it, or an error says how.
UNSET: Any = "unset"

#: A loc_radius under this fraction of the grid spacing warns (LocalisationWarning): its
#: cut-off, twice the radius, then stops short of half a grid spacing.
LOC_RADIUS_FLOOR = 4.0


@dataclass(frozen=True)
class Block:
    """One task's data: what :meth:`Method.analyse` works on (numpy, no xarray)."""

    #: the prior ``(T, N, d)`` of the chunk's times, stacked as ``plan.layout`` says
    x: np.ndarray
    #: observation values and error standard deviations ``(T, M)`` (NaN: none)
    y: np.ndarray
    err: np.ndarray
    #: where there is an observation ``(T, M)``
    observed: np.ndarray
    #: one seed per time (:func:`~xensf.filters.noise.analysis_seeds`)
    seeds: list[int]
    plan: BlockPlan
    #: the torch device to compute on
    device: Any
    #: the working precision: ``np.float64`` for float64 states, else ``np.float32``
    work: type
    #: the masked components ``(d,)`` (land: NaN in the prior, 0 in ``x``), or None
    masked: np.ndarray | None = None
    #: a spatial block's place in the whole grid: ``(grid_shape, (row0, row1), (col0,
    #: col1))``; None: ``x`` is the whole grid (``plan.layout``'s)
    window: tuple | None = None
    #: the standardisation scale per time and field ``(T, F)`` computed over the whole
    #: grid (a spatial block cannot see it), or None: from ``x``
    field_scale: np.ndarray | None = None

    def __post_init__(self):
        # C order, whatever the order of the input's dims: a numpy-backed prior arrives
        # here in its own memory layout and a dask chunk in another, and torch's kernels
        # sum in another order over another layout (the last bit of a float64 analysis
        # differed; tests/test_assimilate.py)
        for name in ("x", "y", "err"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name)))

    @property
    def torch_dtype(self):
        import torch

        return torch.float64 if self.work == np.float64 else torch.float32

    def groups(self):
        """``(times, observed)`` for each set of times sharing the same observed rows."""
        every = np.arange(self.observed.shape[0])
        for times, sel in times_by_mask(self.observed):
            if sel.any():  # nothing observed: the prior passes through unchanged
                yield (every if isinstance(times, slice) else times), sel


# --------------------------------------------------------------------------------------
# the base class and the option checks
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """An analysis method; subclasses declare their options as dataclass fields."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: whether it needs a trained latent model (``model=``)
    needs_model: ClassVar[bool] = False
    #: whether it needs the observations' errors (``obs_error``); the latent filters
    #: take them if given (their latent error then follows the stated noise)
    needs_obs_error: ClassVar[bool] = True
    #: whether a prior chunked along latitude/longitude is analysed block by block
    #: (:mod:`xensf.bridge.spatial`); otherwise the grid must be one chunk
    spatial_blocks: ClassVar[bool] = False
    #: whether the analysis follows the order of the state's components (random draws
    #: by position, windows from the grid's first row): the state is then analysed in
    #: one order of its grid and levels (:mod:`xensf.bridge.orientation`), whatever
    #: order the data come in
    follows_grid_order: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_option(self.name, f.name, getattr(self, f.name))

    def options(self) -> dict[str, Any]:
        """The options, by name (what ``assimilate`` takes as keyword arguments)."""
        return asdict(self)

    def bind(self, variables: list[str]) -> Method:
        """This method for the state ``variables`` (checks options that name them)."""
        return self

    def for_grid(self, grid: Any) -> Method:
        """This method on the grid ``grid`` (a :class:`~xensf.bridge.grid.GridCoords`;
        checks options that need it)."""
        return self

    def for_state(self, prior: Any, dims: Any, layout: Any) -> Method:
        """This method on the state ``prior`` (options given on its grid are read here)."""
        return self

    def check_observations(self, obs: Any) -> None:
        """Refuse observations (an :class:`~xensf.bridge.observations.ObservationPlan`)
        that this method's options cannot take, before any work."""

    def field_heights(self, prior: Any, dims: Any, layout: Any) -> np.ndarray | None:
        """The vertical coordinate of every field, where the method localises vertically
        (:func:`xensf.bridge.geometry.field_heights`); None otherwise."""
        return None

    def parameters(self, spherical: bool) -> dict[str, Any]:
        """What the analysis records of the method (``xensf_<name>`` attributes)."""
        return self.options()

    def grid_outputs(self) -> dict[str, dict[str, str]]:
        """Fields on the horizontal grid that the analysis gives besides the ensemble (one
        per analysis time), by variable name, with their attributes."""
        return {}

    def time_outputs(self) -> dict[str, dict[str, str]]:
        """Numbers that the analysis gives besides the ensemble, one per analysis time, by
        variable name, with their attributes."""
        return {}

    def outputs(self) -> dict[str, dict[str, str]]:
        """The :meth:`grid_outputs`, then the :meth:`time_outputs`."""
        return {**self.grid_outputs(), **self.time_outputs()}

    def carry(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Options for the next cycle's analysis, given this one's :meth:`outputs`
        (DataArrays, one time): how ``xensf.cycle`` carries them on."""
        return {}

    def outputs_without_observations(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The :meth:`outputs` of a cycle without observations, given the last ones (as
        an analysis with nothing observed gives them): by default the same."""
        return fields

    def analyse(self, block: Block) -> np.ndarray:
        """The analysis ``(T, N, d)`` of ``block`` in ``block.work`` precision."""
        raise NotImplementedError

    def analyse_with_fields(self, block: Block) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The analysis and the :meth:`outputs`: each grid output ``(T, grid_size)``,
        each time output ``(T,)``."""
        return self.analyse(block), {}


def _check_option(method: str, key: str, value: Any) -> None:
    """Range checks that can be made before any work is done."""
    if key in ("steps", "inflation") and (
        not is_real(value) or not math.isfinite(value) or value <= 0
    ):
        raise OptionError(f"{method}: {key} must be a positive number, got {value!r}")
    if key == "inflation" and value < 1:
        raise OptionError(f"{method}: inflation must be >= 1 (1 = none), got {value!r}")
    if key == "inflation" and value > MAX_INFLATION:
        raise OptionError(
            f"{method}: inflation={value!r} multiplies the prior spread by more than "
            f"{MAX_INFLATION:g}; a prior that needs this much is wrong, not underdispersed "
            "(usual values are 1.0-1.5; rtps= relaxes the analysis spread instead)"
        )
    if key in ("eps_alpha", "eps_beta") and not (is_real(value) and 0 < value < 1):
        raise OptionError(f"{method}: {key} must lie in (0, 1), got {value!r}")
    if key == "steps" and int(value) != value:
        raise OptionError(f"{method}: steps must be a whole number, got {value!r}")
    if key == "rtps" and not (is_real(value) and 0 <= value <= 1):
        raise OptionError(f"{method}: rtps must lie in [0, 1], got {value!r}")
    if key == "cross_variable" and not is_flag(value):
        raise OptionError(
            f"{method}: cross_variable must be True (observations update every variable "
            f"nearby) or False (each variable only its own), got {value!r}"
        )
    if key == "weight_stride" and not (is_integer(value) and value >= 1):
        raise OptionError(
            f"{method}: weight_stride must be a whole number >= 1 (1: a transform at every "
            f"grid point), got {value!r}"
        )
    if (
        key == "vertical_radius"
        and value is not None
        and not (is_real(value) and math.isfinite(value) and value > 0)
    ):
        raise OptionError(
            f"{method}: vertical_radius must be a positive number (ln p on pressure levels, "
            f"metres on heights) or None, got {value!r}"
        )
    if key == "latent_radius":
        check_latent_radius(value, method)
    if key == "loc_radius" and value is not None and value is not UNSET:
        from .units import length

        if length(value, where="loc_radius") is None and not (is_real(value) and value > 0):
            raise OptionError(
                f"{method}: loc_radius must be a positive distance or None (no "
                f"localisation), got {value!r}: a number (in km on a latitude/longitude "
                "grid, else in the grid's coordinate units) or a length with its units "
                "('500 km')"
            )
    if (
        key == "blend_evidence"
        and value is not None
        and not (is_real(value) and math.isfinite(value) and value >= 0)
    ):
        raise OptionError(
            f"{method}: blend_evidence must be None (each analysis's evidence alone) or a "
            "number >= 0, the evidence accumulated so far (0: none yet; a previous "
            f"analysis's as float(analysis.blend_evidence)), got {value!r}"
        )
    if key == "adaptive_inflation" and value is not None and not isinstance(value, bool):
        from ..filters.adaptive_inflation import AdaptiveInflation

        if not isinstance(value, AdaptiveInflation):
            raise OptionError(
                f"{method}: adaptive_inflation must be True, False or an "
                f"xensf.AdaptiveInflation (its settings and starting field), got {value!r}"
            )
    scores = ("mixture", "paired", "local-mixture") if method == "ensf" else ("mixture", "paired")
    if key == "prior_score" and value not in scores:
        raise OptionError(
            f"{method}: prior_score must be one of {', '.join(map(repr, scores))}, got {value!r}"
        )
    if key == "window" and not (is_integer(value) and value >= 1):
        raise OptionError(
            f"{method}: window must be a whole number of grid points, at least 1, got {value!r}"
        )
    if key == "update" and value not in ("decode", "increment"):
        raise OptionError(f"{method}: update must be 'decode' or 'increment', got {value!r}")
    if key == "latent_error" and value not in ("ensemble", "curve"):
        raise OptionError(f"{method}: latent_error must be 'ensemble' or 'curve', got {value!r}")
    if key == "likelihood" and value not in ("damped", "gaussian"):
        raise OptionError(f"{method}: likelihood must be 'damped' or 'gaussian', got {value!r}")
    if key == "scale" and value is not None:
        numbers = value.values() if isinstance(value, dict) else [value]
        if not all(is_real(v) and math.isfinite(v) and v > 0 for v in numbers):
            raise OptionError(
                f"{method}: scale must be a positive number or a mapping {{variable: "
                f"positive number}}, got {value!r}"
            )


# --------------------------------------------------------------------------------------
# full-space methods
# --------------------------------------------------------------------------------------
#: The side of ``prior_score="local-mixture"``'s windows, in grid points, by default.
_DEFAULT_WINDOW = 16


@dataclass(frozen=True)
class EnSF(Method):
    """Ensemble score filter in the full state space (Bao, Zhang & Zhang 2023)."""

    name: ClassVar[str] = "ensf"
    #: ``prior_score="paired"`` or ``"local-mixture"`` with the damped likelihood: a
    #: prior chunked along latitude/longitude is analysed block by block (others refuse)
    spatial_blocks: ClassVar[bool] = True
    follows_grid_order: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Ensemble score filter in the full state space (Bao, Zhang & Zhang 2023)"
    )
    steps: int = 100
    eps_alpha: float = 0.05
    eps_beta: float = 0.025
    prior_score: str = "mixture"
    likelihood: str = "damped"
    #: a number or ``{variable: number}`` in state units; None: the prior spread
    scale: Any = None
    #: ``prior_score="local-mixture"``: the side, in grid points, of the windows (a fixed
    #: partition of the grid from its first row and column) whose members' weights are
    #: computed apart
    window: int = _DEFAULT_WINDOW

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior_score != "local-mixture" and self.window != _DEFAULT_WINDOW:
            raise OptionError(
                f"ensf: window={self.window!r} sizes the windows of "
                f"prior_score='local-mixture' only; with prior_score={self.prior_score!r} "
                "it would do nothing: give prior_score='local-mixture' with it, or leave "
                "window out"
            )
        if self.prior_score == "local-mixture" and self.likelihood != "damped":
            raise OptionError(
                "ensf: prior_score='local-mixture' analyses each window apart, which the "
                "Gaussian likelihood (the ensemble covariance of the whole grid) does not "
                "allow: use likelihood='damped'"
            )

    def check_observations(self, obs: Any) -> None:
        if self.prior_score == "local-mixture":
            require_point_reads(
                obs, "ensf with prior_score='local-mixture'",
                "use prior_score='mixture' or 'paired', or method='letkf'", OptionError,
            )  # fmt: skip

    def bind(self, names: list[str]) -> EnSF:
        """This method with ``scale`` as ``{variable: number}`` for exactly ``names``."""
        if self.scale is None:
            return self
        scale = self.scale
        if not isinstance(scale, dict):
            scale = dict.fromkeys(names, float(scale))
        if set(scale) != set(names):
            raise OptionError(
                f"scale must be a positive number or a mapping {{variable: positive number}} "
                f"naming exactly the state variables {names}; got {self.scale!r}"
            )
        return EnSF(**{**self.options(), "scale": {k: float(v) for k, v in scale.items()}})

    def windows(self, block: Block):
        """``(components, rows, cols)`` of each window of ``block``: the state components
        (in ``block.x``) of one analysis, and its rows and columns in the whole grid.

        One window, the block, unless ``prior_score="local-mixture"``, whose windows are
        the ``window × window`` cells of a partition of the whole grid from its origin.
        """
        layout = block.plan.layout
        h, w = layout.grid_shape
        full, (r0, r1), (c0, c1) = block.window or ((h, w), (0, h), (0, w))
        step = max(full) if self.prior_score != "local-mixture" else int(self.window)
        fields = np.arange(layout.n_fields)[:, None, None] * layout.grid_size
        for top in range(r0 - r0 % step, r1, step):
            for left in range(c0 - c0 % step, c1, step):
                rows = (max(top, r0), min(top + step, r1))
                cols = (max(left, c0), min(left + step, c1))
                i = np.arange(*rows)[None, :, None] - r0
                j = np.arange(*cols)[None, None, :] - c0
                yield (fields + i * w + j).ravel(), rows, cols

    def parameters(self, spherical: bool) -> dict[str, Any]:
        out = self.options()
        if self.scale is None:
            out["scale"] = "prior ensemble spread per variable and level at each analysis time"
        return out

    def analyse(self, block: Block) -> np.ndarray:
        import torch

        from ..filters import ensf_analysis
        from ..filters.operators import LinearObservationOperator

        plan, obs, x, work = block.plan, block.plan.obs, block.x, block.work
        out = x.astype(work, copy=True)
        score = "mixture" if self.prior_score == "local-mixture" else self.prior_score
        # the observed component of each row (its largest weight; local-mixture rows read one)
        target = obs.indices[np.arange(len(obs.indices)), np.argmax(obs.weights, axis=-1)]
        # One time per call: batched over times, torch's CPU matrix products (the
        # mixture weights, the Gaussian likelihood's eigh and Cholesky) sum in another
        # order for some batch sizes and shapes, and an analysis must not depend on
        # which times a chunk holds (tests/test_assimilate.py).
        groups = [(ts[i : i + 1], sel) for ts, sel in block.groups() for i in range(len(ts))]
        for ts, sel in groups:
            # Standardised here, in float64, rather than by the filter's ``scale``: the
            # filter then sees numbers of order one whatever the units (a state of
            # 1e-30 with errors of 1e-31 would otherwise underflow float32
            # precisions). Each observation is scaled with the field it observes (the
            # operator stays within one field, so H(x / s) = H(x) / s).
            if block.field_scale is not None and self.scale is None:
                scale = np.repeat(block.field_scale[ts], plan.layout.grid_size, axis=-1)
            else:
                scale = _ensf_scale(x[ts], plan.layout, self.scale, block.masked)  # (T, d)
            _check_ensf_scale(x[ts], scale, plan.layout, self.scale)
            for comps, rows, cols in self.windows(block):
                whole = comps.size == x.shape[-1]
                if whole:  # one window: the block, with its rows (and no copies)
                    comps = slice(None)
                    use, indices, weights = sel, obs.indices[sel], obs.weights[sel]
                else:  # a window: the rows on its points, each reading one of them
                    position = np.full(x.shape[-1], -1)
                    position[comps] = np.arange(comps.size)
                    use = sel & (position[target] >= 0)
                    indices = position[target[use]][:, None]
                    weights = obs.weights[use].max(axis=-1, keepdims=True)
                op = LinearObservationOperator(
                    torch.from_numpy(indices), torch.from_numpy(weights)
                ).to(device=block.device, dtype=block.torch_dtype)
                s = scale[:, comps]
                scale_obs = scale[:, target[use]]
                post = ensf_analysis(
                    torch.from_numpy((x[ts][..., comps] / s[:, None, :]).astype(work)).to(
                        block.device
                    ),
                    torch.from_numpy((block.y[ts][:, use] / scale_obs).astype(work)).to(
                        block.device
                    ),
                    op,
                    torch.from_numpy((block.err[ts][:, use] / scale_obs).astype(work)).to(
                        block.device
                    ),
                    steps=int(self.steps),
                    eps_alpha=float(self.eps_alpha),
                    eps_beta=float(self.eps_beta),
                    prior_score=score,
                    likelihood=self.likelihood,
                    generator=_tiled_noise(block, ts, rows, cols),
                )
                post = post.cpu().numpy() * s[:, None, :]
                if whole:
                    out[ts] = post
                else:
                    out[np.ix_(ts, np.arange(x.shape[1]), comps)] = post
        return out


@dataclass(frozen=True)
class _LocalisedLETKF:
    """The options of a localised LETKF on the real observations and its loop over the
    observed times, adaptive inflation included (a mixin of ``letkf`` and
    ``latent-ensf-letkf``)."""

    inflation: float = 1.0
    rtps: float = 0.0
    #: Gaspari–Cohn half-width (zero beyond twice it), in km on latitude/longitude grids,
    #: else in grid coordinate units; None: no localisation (a global ETKF). No default:
    #: the right radius depends on the ensemble size and the fields (see for_grid).
    loc_radius: float | None = UNSET  # type: ignore[assignment]
    #: Gaspari–Cohn half-width along the level dim: in ln(p) on pressure levels, in
    #: metres on height or depth levels; None: every level of a point analysed alike.
    vertical_radius: float | None = None
    #: Weight interpolation (Yang et al. 2009): the transforms are computed on every
    #: weight_stride-th row and column of the grid and interpolated between; 1: everywhere.
    weight_stride: int = 1
    #: False: variable localisation (Kang et al. 2011): each variable is analysed with
    #: its own observations only, not through the ensemble's covariances between
    #: variables (mostly noise with a few members). True: every observation nearby.
    cross_variable: bool = True
    #: Estimate the inflation at every grid point from the innovations (Miyoshi 2011)
    #: instead of a fixed ``inflation``: True (start from no inflation), or an
    #: :class:`~xensf.filters.AdaptiveInflation` whose ``mean`` is a number or the
    #: ``inflation`` field of a previous analysis (a DataArray on the grid).
    adaptive_inflation: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adaptive_inflation not in (None, False) and self.weight_stride > 1:
            raise OptionError(
                f"{self.name}: adaptive_inflation needs a transform at every grid point; "
                "drop weight_stride (or set it to 1)"
            )
        if self.adaptive_inflation not in (None, False) and self.inflation != 1:
            raise OptionError(
                f"{self.name}: inflation={self.inflation!r} and adaptive_inflation were both "
                "given; the adaptive field replaces the fixed factor (start it from a value "
                "with adaptive_inflation=xensf.AdaptiveInflation(mean=...))"
            )

    def for_grid(self, grid: Any) -> Method:
        if self.loc_radius is None and not self.cross_variable:
            raise OptionError(
                f"{self.name}: cross_variable=False needs a loc_radius (variable "
                "localisation is part of the localisation; a global ETKF has none); give "
                "loc_radius= or drop cross_variable"
            )
        step = grid.spacing()
        unit = "km" if grid.geographic else (grid.units[0] or "grid coordinate units")
        if self.loc_radius not in (None, UNSET) and not is_real(self.loc_radius):
            radius = _in_grid_units(self.loc_radius, grid, self.name)
            return replace(self, loc_radius=radius).for_grid(grid)
        if self.loc_radius is not UNSET:
            if self.loc_radius is not None and self.loc_radius < step / LOC_RADIUS_FLOOR:
                warn_user(
                    f"{self.name}: loc_radius={as_python(self.loc_radius)!r} {unit} is under "
                    f"1/{LOC_RADIUS_FLOOR:g} of this grid's spacing, about {step:.3g} {unit}: "
                    f"observations are ignored beyond {2 * self.loc_radius:.3g} {unit}, so "
                    "each updates at most the grid point it sits on (a station between grid "
                    "points none). Is the radius in other units than the grid's (km on a "
                    "latitude/longitude grid, else its coordinates' units)? Radii from 1 to 6 "
                    f"grid spacings ({step:.3g} to {6 * step:.3g} {unit}) are usual.",
                    LocalisationWarning,
                )
            apart = self.weight_stride * step
            if self.loc_radius is not None and self.weight_stride > 1 and apart > self.loc_radius:
                warn_user(
                    f"{self.name}: weight_stride={self.weight_stride} times this grid's "
                    f"spacing (about {step:.3g} {unit}) is {apart:.3g} {unit}, more than "
                    f"loc_radius={as_python(self.loc_radius)!r} {unit}: the anchors whose "
                    "transforms are computed lie too far apart for the transforms to be "
                    "interpolated between them, and observations between anchors may "
                    "reach none of them and be lost. Keep weight_stride × spacing under "
                    f"loc_radius: weight_stride <= {max(1, int(self.loc_radius // step))} "
                    "here (docs/method.md, 'Weight interpolation')",
                    LocalisationWarning,
                )
            return self
        raise OptionError(
            f"{self.name} needs loc_radius=, the localisation half-width (Gaspari–Cohn; "
            f"observations beyond twice it are ignored), in {unit}. This grid's spacing is "
            f"about {step:.3g} {unit}: try radii from 1 to 6 grid spacings ({step:.3g} to "
            f"{6 * step:.3g}) and keep the one whose analysis fits withheld observations "
            "best (prior.ensf.cross_validate(obs, {'loc_radius': [...]}, ...)); fewer "
            "members need smaller radii (docs/method.md, 'LETKF localisation'). "
            "loc_radius=None analyses every point with every "
            "observation (a global ETKF), which with a few members hardly moves a large grid"
        )

    def field_heights(self, prior: Any, dims: Any, layout: Any) -> np.ndarray | None:
        if self.vertical_radius is None:
            return None
        if self.loc_radius is None:
            raise OptionError(
                f"{self.name}: vertical_radius needs a horizontal loc_radius too (a global "
                "ETKF has no locations to localise around)"
            )
        from .geometry import field_heights

        return field_heights(prior, dims, layout)[0]

    def for_state(self, prior: Any, dims: Any, layout: Any) -> Method:
        settings = self.adaptive_inflation
        if settings in (None, False):
            return self
        from ..filters.adaptive_inflation import AdaptiveInflation

        if settings is True:
            settings = AdaptiveInflation()
        field = grid_field(settings.mean, prior, dims, layout, "adaptive_inflation.mean")
        return replace(self, adaptive_inflation=replace(settings, mean=field))

    def parameters(self, spherical: bool) -> dict[str, Any]:
        units = "km" if spherical else "grid coordinate units"
        settings = self.adaptive_inflation
        adaptive = (
            "none"
            if settings in (None, False)
            else "Miyoshi (2011)"
            if settings is True
            else f"Miyoshi (2011), std {settings.std:g}, bounds [{settings.minimum:g}, "
            f"{settings.maximum:g}]"
        )
        return {**self.options(), "loc_radius_units": units, "adaptive_inflation": adaptive}

    def grid_outputs(self) -> dict[str, dict[str, str]]:
        if self.adaptive_inflation in (None, False):
            return {}
        return {
            "inflation": {
                "long_name": "adaptive covariance inflation factor (Miyoshi 2011)",
                "units": "1",
                "comment": "the analysis multiplied the prior covariance by this factor "
                "(the perturbations by its square root); give it to the next analysis as "
                "adaptive_inflation=xensf.AdaptiveInflation(mean=...)",
            }
        }

    def carry(self, fields: dict[str, Any]) -> dict[str, Any]:
        settings = self.adaptive_inflation
        if settings in (None, False):
            return {}
        from ..filters.adaptive_inflation import AdaptiveInflation

        start = AdaptiveInflation() if settings is True else settings
        return {"adaptive_inflation": replace(start, mean=fields["inflation"])}

    def letkf_times(
        self, block: Block, prior: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The LETKF of ``prior`` ``(T, N, d)`` at every observed time of ``block`` (the
        other times keep ``prior``) and the :meth:`grid_outputs`, each ``(T, grid_size)``:
        with adaptive inflation its field, the starting one where nothing is observed."""
        out = np.array(prior, dtype=block.work)
        fields = self.inflation_start(block.plan.layout, out.shape[0])
        if not fields:
            for ts, sel in block.groups():
                out[ts] = _letkf(self, block, prior[ts], ts, sel)
            return out, {}
        field = fields["inflation"]
        n_fields = block.plan.layout.n_fields
        start = replace(self.adaptive_inflation, mean=np.tile(field[0], n_fields))
        for ts, sel in block.groups():
            out[ts], updated = _letkf(self, block, prior[ts], ts, sel, start)
            field[ts] = updated[:, : field.shape[1]]  # every field of a point shares it
        return out, fields

    def inflation_start(self, layout: Any, n_times: int) -> dict[str, np.ndarray]:
        """The :meth:`grid_outputs` as they are before the analysis, ``(n_times,
        grid_size)`` each: the adaptive inflation's starting field (none without it)."""
        settings = self.adaptive_inflation
        if settings in (None, False):
            return {}
        start = np.broadcast_to(np.asarray(settings.mean, np.float64), (layout.grid_size,))
        return {"inflation": np.tile(start, (n_times, 1))}


def _in_grid_units(radius: Any, grid: Any, method: str) -> float:
    """A localisation radius given with its units (``"500 km"``) in the units distances
    are measured in on ``grid``: km on a latitude/longitude grid, else its coordinates'
    (which must then be lengths, the same along both axes)."""
    from .units import length, parse_units

    quantity = length(radius, where="loc_radius")
    if grid.geographic:
        return float(quantity.to("km").magnitude)
    units = set(grid.units)
    target = units.pop() if len(units) == 1 else None
    try:
        unit = None if target is None else parse_units(target, where="the grid coordinates")
    except UnitsError:
        unit = None
    if unit is None or unit.dimensionality != quantity.dimensionality:
        given = " and ".join(repr(u) for u in grid.units) if any(grid.units) else "no units"
        raise OptionError(
            f"{method}: loc_radius={radius!r} is a length, and this grid's coordinates "
            f"have {given}, not one length unit, to measure it in: give loc_radius as a "
            "number in the grid's coordinate units, or give the coordinates a units "
            "attribute (prior.x.attrs['units'] = 'm')"
        )
    return float(quantity.to(unit).magnitude)


@dataclass(frozen=True)
class LETKF(_LocalisedLETKF, Method):
    """Local ensemble transform Kalman filter (Hunt et al. 2007)."""

    name: ClassVar[str] = "letkf"
    description: ClassVar[str] = "Local ensemble transform Kalman filter (Hunt et al. 2007)"
    spatial_blocks: ClassVar[bool] = True

    def analyse(self, block: Block) -> np.ndarray:
        return self.analyse_with_fields(block)[0]

    def analyse_with_fields(self, block: Block) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.letkf_times(block, block.x)


# --------------------------------------------------------------------------------------
# latent methods
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LatentMethod(Method):
    """A filter in a latent model's latent space (``LatentModel.analyse``)."""

    needs_model: ClassVar[bool] = True
    needs_obs_error: ClassVar[bool] = False
    #: the latent filter, as :meth:`xensf.latent.LatentModel.analyse` names it
    latent_filter: ClassVar[str] = ""
    #: whether the latent filter draws random numbers (then seeded per time)
    stochastic: ClassVar[bool] = False

    def latent_options(self) -> dict[str, Any]:
        """The options :meth:`~xensf.latent.LatentModel.analyse` takes."""
        return self.options()

    def analyse(self, block: Block) -> np.ndarray:
        return self.analyse_with_fields(block)[0]

    def analyse_with_fields(self, block: Block) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        out = block.x.astype(block.work, copy=True)
        has = np.flatnonzero(block.observed.any(axis=1))
        post, diag, model = _latent_analysis(self, block, has) if has.size else (None,) * 3
        out[has], fields = self.correct(block, has, post, diag, model)
        return out, fields

    def correct(
        self, block: Block, has: np.ndarray, post, diag, model
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The analysis of the observed times ``has`` from the decoded latent one
        (``post``; None when nothing is observed) and the :meth:`grid_outputs` at every
        time of ``block``."""
        return (block.x[has] if post is None else post), {}


@dataclass(frozen=True)
class LatentEnSF(_LatentMethod):
    """Latent Ensemble Score Filter (Si & Chen 2025): EnSF in a VAE's latent space."""

    name: ClassVar[str] = "latent-ensf"
    description: ClassVar[str] = (
        "Latent Ensemble Score Filter (Si & Chen 2025): EnSF in a VAE's latent space"
    )
    latent_filter: ClassVar[str] = "latent-ensf"
    stochastic: ClassVar[bool] = True
    steps: int = 100
    eps_alpha: float = 0.05
    eps_beta: float = 0.025
    prior_score: str = "mixture"
    # the exact noised Gaussian likelihood: calibrated spread in latent space (the
    # damped one halves the posterior variance; docs/method.md)
    likelihood: str = "gaussian"
    update: str = "decode"
    # the latent observation error's encoder part measured on the analysis at hand
    # (LatentModel.analyse, docs/method.md)
    latent_error: str = "ensemble"

    def latent_options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(LatentEnSF)}


@dataclass(frozen=True)
class LatentLETKF(_LatentMethod):
    """The LETKF on the latent ensemble with the encoded observation, localised on the
    latent grid (``latent_radius`` cells; None: the global ETKF; "auto": 1 cell where
    the latent has at least as many values as there are members, else global)."""

    name: ClassVar[str] = "latent-letkf"
    description: ClassVar[str] = (
        "LETKF on the latent ensemble with the encoded observation, localised on the latent grid"
    )
    latent_filter: ClassVar[str] = "latent-letkf"
    # multiplicative, on top of the relaxation: lower or equal error in the twin
    # settings measured (one cell +0.001), the paper-size one most (docs/benchmarks.md)
    inflation: float = 1.2
    # relaxation to the prior spread, in full: with the localisation the analysis
    # spread is still below its error (docs/benchmarks.md)
    rtps: float = 1.0
    # Gaspari–Cohn half-width in latent grid cells; None: the global ETKF; "auto":
    # LatentModel.analyse's rule (localised where the members cannot span the latent)
    latent_radius: float | str | None = "auto"
    update: str = "decode"


@dataclass(frozen=True)
class LatentEnSFLETKF(_LocalisedLETKF, LatentEnSF):
    """Latent-EnSF, then a localised LETKF with the real observations."""

    name: ClassVar[str] = "latent-ensf-letkf"
    description: ClassVar[str] = (
        "Latent-EnSF, then a localised LETKF with the real observations, from prior "
        "members moved towards the latent analysis members as far as the prior's error "
        "exceeds its spread"
    )
    needs_obs_error: ClassVar[bool] = True
    # the curve's latent error: measured on the analysis ("ensemble") it made the
    # hybrid's first cycles in the hard twin worse and its spread wider (benchmarks.md)
    latent_error: str = "curve"
    #: None: step 2 blends on the evidence of each analysis alone. A number: on the
    #: evidence accumulated over analyses (a CUSUM of the innovations' excess),
    #: starting from this value (0: none yet); the analysis gives the updated value as
    #: its ``blend_evidence`` variable, which ``xensf.cycle`` carries on.
    blend_evidence: float | None = None

    def latent_options(self) -> dict[str, Any]:
        # the latent error widened where the observations have gaps: the blend then
        # leaves such times to the real observations (docs/method.md)
        return {**super().latent_options(), "coverage_error": True}

    def time_outputs(self) -> dict[str, dict[str, str]]:
        weight = {
            "blend_weight": {
                "long_name": "weight of the latent analysis in the LETKF background "
                "(latent-ensf-letkf)",
                "units": "1",
                "comment": "each prior member was moved this fraction of the way to its "
                "decoded latent analysis member before the LETKF (0: the prior; 0 where "
                "nothing is observed)",
            }
        }
        if self.blend_evidence is None:
            return weight
        return {
            **weight,
            "blend_evidence": {
                "long_name": "evidence that the prior is off beyond its spread, accumulated "
                "over analyses (CUSUM)",
                "units": "1",
                "comment": "latent-ensf-letkf moved the prior towards its latent analysis "
                f"only where this is at least {EVIDENCE_THRESHOLD:g}; give it to the next "
                "analysis as blend_evidence=float(...)",
            },
        }

    def carry(self, fields: dict[str, Any]) -> dict[str, Any]:
        carried = super().carry(fields)
        if self.blend_evidence is not None:
            carried["blend_evidence"] = float(fields["blend_evidence"])
        return carried

    def outputs_without_observations(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "blend_weight": fields["blend_weight"] * 0.0}  # nothing blended

    def correct(
        self, block: Block, has: np.ndarray, post, diag, model
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fields = self.inflation_start(block.plan.layout, block.x.shape[0])
        fields["blend_weight"] = np.zeros(block.x.shape[0])
        if self.blend_evidence is not None:
            fields["blend_evidence"] = np.full(block.x.shape[0], float(self.blend_evidence))
        if post is None:
            return block.x[has], fields
        background, weight, evidence = _hybrid_background(
            block.x[has], post, block.observed[has], diag, model, block.plan,
            self.blend_evidence,
        )  # fmt: skip
        fields["blend_weight"][has] = weight
        if evidence is not None:
            fields["blend_evidence"][has] = evidence
        observed = Block(
            x=background,
            y=block.y[has],
            err=block.err[has],
            observed=block.observed[has],
            seeds=[block.seeds[t] for t in has],
            plan=block.plan,
            device=block.device,
            work=block.work,
        )
        out, at_has = self.letkf_times(observed, background)
        for name, values in at_has.items():
            fields[name][has] = values
        return out, fields


#: The methods ``assimilate`` offers, by name.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (EnSF, LETKF, LatentEnSF, LatentLETKF, LatentEnSFLETKF)
}


def resolve_method(
    method: str | None,
    model: Any,
    options: dict[str, Any],
    model_arg: str = "model",
    parameters: Sequence[str] = (),
) -> Method:
    """The method object for ``method`` with ``options``; OptionError on anything wrong
    (naming the caller's model argument, ``model_arg``, and suggesting the closest of
    the options and the caller's own ``parameters`` for a misspelt name)."""
    if method is None:
        method = "latent-ensf" if model is not None else "ensf"
    if method not in METHODS:
        hint = ""
        if isinstance(method, str):  # the names are lower case, with hyphens
            spelt = method.lower().replace("_", "-")
            hint = f"did you mean {spelt!r}?" if spelt in METHODS else did_you_mean(spelt, METHODS)
        raise OptionError(
            f"unknown method {method!r}; choose one of {sorted(METHODS)}"
            + (f" ({hint})" if hint else "")
        )
    cls = METHODS[method]
    if model is not None and not cls.needs_model:
        raise OptionError(
            f"method {method!r} does not use a model; drop {model_arg}= or choose a latent method "
            f"({', '.join(repr(n) for n, c in METHODS.items() if c.needs_model)})"
        )
    if model is None and cls.needs_model:
        raise OptionError(
            f"method {method!r} needs a trained latent model: pass {model_arg}=xensf.load(path) "
            "(or a bundle path); train one with xensf.train_latent"
        )
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:

        def other_home(name: str) -> str:
            homes = [n for n, c in METHODS.items() if name in {f.name for f in fields(c)}]
            return f"{name!r} is an option of {', '.join(map(repr, homes))}" if homes else ""

        raise unknown_options(
            unknown, f"method {method!r}", f"its options are {sorted(known)}",
            [*known, *parameters], other_home,
        )  # fmt: skip
    # a number read out of an array (cv.loc_radius[i].values) is a 0-d array: the number
    return cls(**{k: as_number(v) for k, v in options.items()})


# --------------------------------------------------------------------------------------
# the pieces the methods share
# --------------------------------------------------------------------------------------
def _letkf(
    params, block: Block, prior: np.ndarray, ts: np.ndarray, sel: np.ndarray, adaptive=None
):
    """Localised LETKF of ``prior`` (the times ``ts`` of ``block``) with the observations
    ``sel``; ``params`` has ``inflation``, ``rtps`` and ``loc_radius``. With ``adaptive``
    (an :class:`~xensf.filters.AdaptiveInflation` per state component) also the updated
    inflation ``(len(ts), d)``."""
    import torch

    from ..filters import letkf_analysis
    from ..filters.operators import LinearObservationOperator

    plan, obs, work, device = block.plan, block.plan.obs, block.work, block.device
    op = LinearObservationOperator(
        torch.from_numpy(obs.indices[sel]), torch.from_numpy(obs.weights[sel])
    ).to(device=device, dtype=block.torch_dtype)
    layout = plan.layout
    geometry = letkf_geometry(
        plan.grid_locations, layout.n_fields, obs.locations[sel], obs.indices[sel],
        layout.grid_size, plan.distance, params.loc_radius, params.vertical_radius,
        plan.field_heights, params.weight_stride, layout.grid_shape,
        variables=None if params.cross_variable else layout.field_of_variable(),
    )  # fmt: skip
    x = torch.from_numpy(prior.astype(work)).to(device)
    y = torch.from_numpy(block.y[ts][:, sel].astype(work)).to(device)
    err = torch.from_numpy(block.err[ts][:, sel].astype(work)).to(device)
    # One time per call: batched over times, torch's CPU matrix products and eigh sum
    # in another order for another batch size, and an analysis must not depend on which
    # times a chunk holds (the last bit of float64 did: tests/test_assimilate.py).
    options = dict(
        inflation=float(params.inflation), rtps=float(params.rtps), adaptive_inflation=adaptive
    )
    results = [
        letkf_analysis(x[t : t + 1], y[t : t + 1], op, err[t : t + 1], **options, **geometry)
        for t in range(len(ts))
    ]
    if adaptive is None:
        return torch.cat(results).cpu().numpy()
    return (
        torch.cat([analysis for analysis, _ in results]).cpu().numpy(),
        np.concatenate([updated.mean.cpu().numpy() for _, updated in results]),
    )


def _latent_analysis(method: _LatentMethod, block: Block, has: np.ndarray):
    """The decoded latent analysis ``(len(has), N, d)`` of the observed times ``has``,
    its diagnostics and the model.

    All those times go to the model in one call, which runs one time per network pass
    and per filter call (so the result does not depend on the chunking). The
    observations reach the model laid out on the grid (NaN where unobserved) for a
    gridded model, or as its station slots for a station model. A model whose
    reconstruction error of the prior members at the observed points exceeds the RMS
    innovation there, and whose analysis fits the observations worse than the prior
    mean, gets a :class:`~xensf.errors.ModelQualityWarning`. Gridded observations off
    the model's layout are kept from it (:func:`_drop_outside_layout`, which says what
    the method does without them); the model returns a time left with none as the
    prior, with zero diagnostics (so the hybrid does not blend).
    """
    plan, x, y, observed = block.plan, block.x, block.y, block.observed
    layout = plan.layout
    n_members = x.shape[1]
    shape = (layout.n_fields, *layout.grid_shape)
    model = cached_model(plan.model, block.device)
    _check_model_mask(model, block.masked, plan)
    if plan.obs.kind == "gridded":
        model_obs = np.full((has.size, layout.size), np.nan, dtype=np.float32)
        model_obs[:, plan.obs.indices[:, 0]] = np.where(observed[has], y[has], np.nan)
        model_obs = model_obs.reshape(has.size, *shape)
    else:
        slots = np.asarray(plan.model_slots)
        model_obs = np.full((has.size, model.config["obs_layout"]["n_obs"]), np.nan, np.float32)
        model_obs[:, slots] = np.where(observed[has], y[has], np.nan)
    if plan.obs.kind == "gridded":
        model_obs = _drop_outside_layout(model, model_obs, plan, method)
    _warn_coverage(model, model_obs, plan)
    noise = _obs_noise(block, has, model)
    # in the prior's dtype (at least float32): a time with no observation the encoder
    # reads comes back as its prior, exactly
    dtype = np.result_type(x.dtype, np.float32)
    post, latent = model.analyse(
        x[has].astype(dtype, copy=False).reshape(has.size, n_members, *shape),
        model_obs,
        obs_noise=noise if plan.obs.errors_given else None,
        method=method.latent_filter,
        generator=[block.seeds[t] for t in has] if method.stochastic else None,
        batch_size=n_members,  # one time per network pass: independent of the chunking
        return_latent=True,
        **method.latent_options(),
    )
    post = np.asarray(post).reshape(has.size, n_members, layout.size)
    diag = {k: v.cpu().numpy().astype(np.float64) for k, v in latent["diagnostics"].items()}
    if block.masked is not None:  # as the prior there: no spread, never updated
        post[..., block.masked] = 0.0
    diag["noise"] = noise  # the stated errors' RMS, normalised (placeholders: 1)
    _warn_quality(diag, plan)
    return post, diag, model


def _drop_outside_layout(model, model_obs: np.ndarray, plan: BlockPlan, method) -> np.ndarray:
    """Gridded observations ``(T, C, H, W)`` with those at grid points outside the
    model's observation layout (:attr:`~xensf.latent.LatentModel.obs_points`) set to
    NaN, and an :class:`~xensf.errors.ObservationLayoutWarning` saying how many.

    The encoder was trained to read its layout only: values elsewhere are inputs it
    never saw (the demo's model given its layout shifted by two cells decoded the state
    at relative error 1.0 instead of 0.065; every other point, its layout among them,
    0.24: ``benchmarks/bench_obs_layout.py``). A model that does not know its layout
    (``obs_points`` None) gets them all."""
    observed = ~np.isnan(model_obs)
    outside = model.outside_layout(observed)
    if outside is None:
        return model_obs
    outside, points = outside.numpy(), model.obs_points
    n_times = model_obs.shape[0]
    left = (observed & ~outside).reshape(n_times, -1).sum(-1)
    empty = int((left == 0).sum())
    uses = (
        "latent-ensf-letkf still assimilates them in its LETKF step"
        if method.name == "latent-ensf-letkf"
        else "the latent analysis does not use them: use method='latent-ensf-letkf' (its "
        "LETKF step assimilates every observation) or a full-space method"
    )
    plan.warn(
        ObservationLayoutWarning,
        f"{int(outside.sum())} of {int(observed.sum())} observed values (at "
        f"{int(outside.reshape(n_times, -1).any(-1).sum())} of {n_times} analysed times) "
        f"lie at grid points outside the observation layout of the latent model "
        f"{plan.model.path} ({int(points.sum())} values) and were not given to its "
        f"observation encoder, which was never trained to read values there; {uses}, "
        "or train a model on a layout that holds them"
        + (
            f". At {empty} time(s) no observation lies on the layout: the latent analysis "
            "leaves them as the prior"
            if empty
            else ""
        ),
        ObservationLayoutWarning,
    )
    return np.where(outside, np.nan, model_obs).astype(model_obs.dtype)


def _obs_noise(block: Block, has: np.ndarray, model) -> np.ndarray:
    """Per observed time, the RMS observation error in the model's normalised units
    (each divided by its channel's std): where the latent error is read off the
    model's calibration curve."""
    scale = model.std.cpu().numpy()[_row_fields(block.plan, model)]  # (M,)
    observed = block.observed[has]
    ratio = np.where(observed, block.err[has] / scale, 0.0)
    return np.sqrt((ratio**2).sum(-1) / np.maximum(observed.sum(-1), 1))


def _check_model_mask(model, masked: np.ndarray | None, plan: BlockPlan) -> None:
    """Refuse a prior whose mask (land: NaN in every member) is not the model's."""
    valid = None if model.valid is None else model.valid.cpu().numpy().reshape(-1)
    if masked is None and valid is None:
        return
    name = plan.model.path if plan.model is not None else "the model"
    if valid is None:
        raise EnsembleError(
            f"the prior has masked points (NaN in every member: {int(masked.sum())} of "
            f"{masked.size} values), and the model {name} was trained on complete states: "
            "train it on data with the same mask (xensf.train_latent takes NaN at the same "
            "points in every sample), or use method='letkf' or 'ensf'"
        )
    prior_valid = np.ones_like(valid) if masked is None else ~masked
    if not np.array_equal(prior_valid, valid):
        raise EnsembleError(
            f"the prior's mask (NaN in every member: {int((~prior_valid).sum())} values) is "
            f"not the one the model {name} was trained with ({int((~valid).sum())} masked "
            f"values; {int((prior_valid != valid).sum())} differ): a latent model reads and "
            "writes exactly its own unmasked points"
        )


#: The cumulative blend test of ``latent-ensf-letkf`` (``blend_evidence``): each
#: analysis adds its excess in sampling errors less this drift ...
EVIDENCE_DRIFT = 1.0
#: ... and the prior is moved towards the latent analysis only while the sum is at
#: least this. Both set once from the demo twin's sequences (docs/benchmarks.md).
EVIDENCE_THRESHOLD = 4.0


def _hybrid_background(prior, latent, observed, diag, model, plan: BlockPlan, evidence=None):
    """The LETKF background of ``latent-ensf-letkf``, per time: each prior member moved
    a fraction ``w`` of the way to its decoded latent analysis member; ``w`` per time;
    and the accumulated evidence per time (None when ``evidence``, the starting value,
    is None).

    At the observed points, in units of each variable's training std: the prior's
    error is estimated from the innovation, ``e_b² = max(RMS(y − H x̄_b)² − RMS(σ_o)²,
    0)`` (``RMS(σ_o)`` is ``diag["noise"]``), and the part of it that the prior spread ``s_b`` there does not account for
    — what LETKF from the prior alone could not correct — as ``u = max(e_b² − s_b² −
    2·sqrt(2/M)·RMS(y − H x̄_b)², 0)`` (less twice the sampling error of ``e_b²``, a
    mean of ``M`` squared innovations, so that a chance excess does not count). The
    latent analysis's error ``e_l`` is the largest of the model's validation error of
    decoded observations (with what gaps in the layout add to it, from the model's
    coverage curve), the latent analysis's own spread there, and how well the
    model represents the state at hand: the smaller of the reconstruction error of the
    prior members there and the latent analysis's misfit to these observations beyond
    their noise. (The reconstruction error alone judged the model by the prior: a
    prior far from anything the model has seen — the first cycles of a hard twin —
    reconstructs badly though the model represents the truth well. The misfit alone
    is optimistic, the analysis being made from these observations; a model that can
    represent neither fits neither.) The weight is that of two independent estimates,
    ``w = u / (u + e_l²)``: 0 where the prior's error is within its spread (the
    method is then LETKF), towards 1 where the prior is far off and does not know it.
    Blending members, not only means, brings the latent analysis's perturbations —
    the uncertainty as the VAE sees it, e.g. of a feature's position, which the prior
    members may not span — into the ensemble that the LETKF and the next forecasts
    carry.

    With ``evidence``, a number, the test accumulates over analyses: the excess of
    ``e_b²`` over ``s_b²`` in sampling errors, ``z = (e_b² − s_b²) / (sqrt(2/M)·RMS(y −
    H x̄_b)²)``, is added to it less :data:`EVIDENCE_DRIFT` (never below 0), and ``w``
    is kept only where the sum is at least :data:`EVIDENCE_THRESHOLD`, else 0. A prior
    that is off keeps ``z`` high over several analyses; a chance excess of one does not
    add up. (``z ≤ sqrt(M/2)``: with few observations the evidence needs several
    analyses, and with two or fewer it never reaches the threshold.)
    """
    obs = plan.obs
    scale = model.std.cpu().numpy()[_row_fields(plan, model)]  # (M,)
    count = np.maximum(observed.sum(-1), 1)

    def rms_at_obs(values):  # (T, M) -> (T,)
        return np.sqrt(np.where(observed, values**2, 0.0).sum(-1) / count)

    def spread_at_obs(members):  # (T, N, d) -> (T,)
        values = (members[:, :, obs.indices] * obs.weights).sum(-1)  # (T, N, M)
        return rms_at_obs(values.std(1, ddof=1) / scale)

    def beyond_noise(rms):  # the squared RMS at the observed points less the noise's
        return np.maximum(rms**2 - diag["noise"] ** 2, 0.0)

    e_b2 = beyond_noise(diag["innovation"])
    sampling = np.sqrt(2.0 / count) * diag["innovation"] ** 2  # of e_b², a mean of M squares
    excess = e_b2 - spread_at_obs(prior) ** 2
    unexplained = np.maximum(excess - 2.0 * sampling, 0.0)
    accumulated = None
    if evidence is not None:
        z = np.divide(excess, sampling, out=np.zeros_like(excess), where=sampling > 0)
        accumulated = np.maximum(float(evidence) + z - EVIDENCE_DRIFT, 0.0)
        unexplained = np.where(accumulated >= EVIDENCE_THRESHOLD, unexplained, 0.0)
    quality = model.config.get("quality", {}).get("obs_relative_rmse", [0.0])
    floor2 = float(np.mean(np.square(quality)))
    coverage = diag.get("coverage")
    if coverage is not None and not np.isnan(coverage).any():  # and what gaps add to it
        floor2 = floor2 + model.coverage_excess(coverage)[1].cpu().numpy()
    floor = np.sqrt(floor2)
    represent = np.minimum(diag["reconstruction"], np.sqrt(beyond_noise(diag["analysis_misfit"])))
    e_l = np.maximum(np.maximum(represent, floor), spread_at_obs(latent))
    w = unexplained / (unexplained + np.maximum(e_l, 1e-12) ** 2)
    return prior + w[:, None, None] * (latent - prior), w, accumulated


def _row_fields(plan: BlockPlan, model) -> np.ndarray:
    """The model channel of each observation row."""
    if plan.obs.kind == "gridded":
        return plan.obs.indices[:, 0] // plan.layout.grid_size
    return np.asarray(model.config["obs_layout"]["slot_channels"])[np.asarray(plan.model_slots)]


def _warn_quality(diag: dict[str, np.ndarray], plan: BlockPlan) -> None:
    """ModelQualityWarning when the model cannot represent the prior as well as obs pin it.

    Both must hold at an analysed time: the reconstruction error of the prior members at
    the observed points exceeds the RMS innovation there, and the latent analysis fits
    the observations worse than the prior mean. (The first alone also happens in a
    well-converged cycle with a good model, where the latent analysis still fits the
    observations better.) Each time is judged on its own, so that whether the warning
    comes does not depend on how the times are chunked (pooled over a chunk, one poor
    time among good ones went unsaid without dask and was said with a chunk per time).
    """
    rec, innov, misfit = (
        np.asarray(diag[k], np.float64).reshape(-1)
        for k in ("reconstruction", "innovation", "analysis_misfit")
    )
    poor = (rec > innov) & (misfit > innov)
    if poor.any():
        t = int(np.flatnonzero(poor)[0])
        plan.warn(
            (ModelQualityWarning, "quality"),
            f"the latent model {plan.model.path} cannot represent this data as well as "
            f"the observations pin it down, at {int(poor.sum())} of {poor.size} analysed "
            f"times. At the first it reconstructs the prior members at the observed points "
            f"with an RMS error of {rec[t]:.3g} (in units of each variable's training "
            f"std), more than the RMS innovation (observation minus prior mean) there, "
            f"{innov[t]:.3g}, and its analysis fits the observations worse than the prior "
            f"(RMS {misfit[t]:.3g}). Its analysis may be worse than the prior. Use "
            "method='latent-ensf-letkf' (keeps the prior where the latent error is large "
            "against the prior's), train the model on more data like this, or use "
            "a full-space method (ensf, letkf).",
            ModelQualityWarning,
        )


def _warn_coverage(model, model_obs: np.ndarray, plan: BlockPlan) -> None:
    """ModelQualityWarning when the observations of some time cover less of the model's
    observation layout than its observation encoder was trained on.

    An encoder trained on whole layouts (``obs_dropout=0``) reads a layout with gaps
    badly: in the demo twin, half the points missing took latent-ensf from 0.10 to 0.68
    relative RMSE (docs/benchmarks.md).
    """
    observed = ~np.isnan(model_obs)
    coverage = model.coverage(observed)
    if coverage is None:
        return
    total = model.obs_layout_values
    counts = observed.reshape(model_obs.shape[0], -1).sum(-1)
    lowest = float(coverage.min())
    if lowest >= model.min_coverage:
        return
    trained = model.obs_dropout
    short = int((coverage < model.min_coverage).sum())
    seen = (
        "whole layouts only"
        if trained == 0
        else f"layouts with up to {trained:.0%} of the values left out"
    )
    plan.warn(
        (ModelQualityWarning, "coverage"),
        f"the observations at {short} of {counts.size} analysed times cover as little as "
        f"{lowest:.0%} of the latent model {plan.model.path}'s observation layout "
        f"({int(counts.min())} of {total} values); its observation encoder was trained on "
        f"{seen} and may encode fewer observations badly, so the analysis may be worse "
        f"than the prior. Retrain it with obs_dropout >= {min(1 - lowest, 0.9):.2f} "
        "(xensf.train_latent(..., obs_dropout=...)), or use method='latent-ensf-letkf' "
        "(it falls back on the real observations) or a full-space method (ensf, letkf).",
        ModelQualityWarning,
    )


def require_point_reads(obs: Any, who: str, remedy: str, error: type[Exception]) -> None:
    """Refuse observations of which some read more than one grid point (stations
    between grid points), for ``who``, which analyses points or cells apart."""
    reads = (obs.weights != 0).sum(-1)
    if (reads > 1).any():
        raise error(
            f"{who} needs observations that each read one grid point (gridded ones, or "
            f"stations on grid points); {int((reads > 1).sum())} of {reads.size} lie "
            f"between grid points: {remedy}"
        )


#: The side of the noise tiles of the full-space EnSF (:class:`~xensf.filters.noise.TiledNoise`).
NOISE_TILE = 64


def _tiled_noise(block: Block, ts: np.ndarray, rows, cols):
    """The EnSF's noise for the times ``ts`` on the ``rows × cols`` of the whole grid:
    drawn per tile of the whole grid, so a spatial block (or a window of the local
    mixture) gets what the whole grid would there."""
    from ..filters.noise import TiledNoise

    layout = block.plan.layout
    grid_shape = block.window[0] if block.window is not None else layout.grid_shape
    return TiledNoise(
        [block.seeds[t] for t in ts], block.x.shape[1], layout.n_fields, grid_shape, rows, cols,
        NOISE_TILE, block.device, block.torch_dtype,
    )  # fmt: skip


def ensf_field_scale(spread: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The default EnSF scale per field from its RMS member spread and largest |mean|:
    the spread, with a floor that keeps a field without spread finite."""
    floor = np.maximum(size * 1e-6, np.finfo(np.float32).tiny)
    return np.maximum(spread, floor)


def _ensf_scale(
    x: np.ndarray, layout, scales: dict[str, float] | None, masked: np.ndarray | None = None
) -> np.ndarray:
    """Per-component standardisation scale ``(T, d)``.

    By default each field (variable at one level) is scaled by the prior ensemble's
    spread, the root-mean-square over the grid (its unmasked points) of the member
    standard deviation, at each analysis time; a floor keeps a field without spread
    finite.
    """
    T, _, d = x.shape
    G = layout.grid_size
    # float64: the variance of float32 values of 1e-30 (or 1e25) under- (over-)flows
    per_field = x.reshape(T, x.shape[1], layout.n_fields, G).astype(np.float64)
    if scales is not None:
        var_of_field = layout.field_of_variable()
        s = np.array([scales[layout.variables[i]] for i in var_of_field], dtype=np.float64)
        s = np.broadcast_to(s, (T, layout.n_fields))
    else:
        where = True if masked is None else ~masked.reshape(layout.n_fields, G)
        spread = np.sqrt(
            per_field.var(axis=1, ddof=1).mean(axis=-1, where=where)  # (T, F)
        )
        size = np.abs(per_field.mean(axis=1)).max(axis=-1, initial=0.0, where=where)
        s = ensf_field_scale(spread, size)
    return np.repeat(s, G, axis=-1).reshape(T, d)


#: Largest |state| / scale the EnSF is given: its squares must stay far inside float32.
_MAX_STANDARDISED = 1e15


def _check_ensf_scale(x: np.ndarray, scale: np.ndarray, layout, given) -> None:
    """Refuse a user's ``scale`` so small against the state that the standardised state
    overflows (the default scale, the prior spread, cannot be)."""
    if given is None:
        return
    ratio = np.abs(x).max(axis=1) / scale  # (T, d)
    if ratio.max() > _MAX_STANDARDISED:
        field = int(np.unravel_index(ratio.argmax(), ratio.shape)[1]) // layout.grid_size
        name = layout.variables[layout.field_of_variable()[field]]
        raise OptionError(
            f"scale={given[name]:g} for {name!r} is {ratio.max():.3g} times smaller than the "
            f"state's values, which standardised by it would overflow. Give a scale near "
            f"the prior spread of {name!r}, or leave scale= out"
        )
