"""Exception and warning types raised by xensf, and how its warnings are issued.

Every error xensf raises on bad input is one of these, so that callers can catch
them specifically. Each subclasses the builtin it refines (``ValueError``,
``KeyError``) so generic handlers keep working. Messages name the variable,
dimension or file at fault and say what would fix it. Warnings are issued by
:func:`warn_user`, so that they name the caller's line, not xensf's; a misspelt name
is answered with :func:`did_you_mean`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the frame that called the outermost xensf
    function on the stack: the line of the user's code that called into xensf, past
    the xarray and dask frames xensf runs its blocks through (when a dask worker runs
    them, the scheduler's frame in that thread). The warning then shows where the call
    was made, and the warnings filters' ``module`` and the once-per-location registry
    apply to it."""
    frame, level, outermost = sys._getframe(0), 1, 1
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE):
            outermost = level
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=outermost + 1)


class WarningTally:
    """xensf's warnings over a sequence of analyses (the cycles of a run, the settings
    and folds of a cross-validation): one summary each at the end, not one per step.

    A warning whose text changes from step to step (it carries numbers) would otherwise
    be printed at every step and kept in the warnings registry, which then grows with
    the sequence. Other warnings pass through as they are. ``what`` names the steps in
    the summary ("cycles of this run").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: dict[type, tuple[set[str], str]] = {}

    @contextlib.contextmanager
    def step(self, label: str):
        """Record the warnings of one step, called ``label`` in the summary."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            if issubclass(w.category, XensfWarning):
                steps, _ = self.seen.setdefault(w.category, (set(), f"{label}: {w.message}"))
                steps.add(label)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def report(self, total: int) -> None:
        """One warning per category seen, out of ``total`` steps."""
        for category, (steps, first) in self.seen.items():
            warn_user(
                f"{category.__name__} in {len(steps)} of the {total} {self.what}; the "
                f"first, at {first}",
                category,
            )


def keyword_names(fn, hide: tuple[str, ...] = ()) -> list[str]:
    """The keyword-only parameters of ``fn`` a user may give, less ``hide``: the names
    :func:`did_you_mean` offers beside a function's ``**options``."""
    import inspect

    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in hide]


def unknown_options(unknown, where: str, listing: str, candidates, other_home=None):
    """The :class:`OptionError` for the options ``unknown`` that ``where`` does not
    take: each is answered with where else it belongs (``other_home(name)``, a hint or
    ``""``) or the closest of ``candidates``; ``listing`` ends the message with what
    ``where`` does take."""
    hints = [
        h for n in unknown if (h := (other_home and other_home(n)) or did_you_mean(n, candidates))
    ]
    return OptionError(
        f"unknown option(s) {unknown} for {where}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f"; {listing}"
    )


def did_you_mean(name: str, candidates) -> str:
    """``"'name': did you mean 'x'?"`` for the candidate closest to a misspelt
    ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.75)
    return f"{name!r}: did you mean {close[0]!r}?" if close else ""


class XensfError(Exception):
    """Base class of every error raised by xensf."""


class DimensionError(XensfError, ValueError):
    """A required dimension (member, latitude, longitude, time) is missing or ambiguous."""


class ChunkingError(XensfError, ValueError):
    """A dask chunking xensf cannot map over (a core dimension split across chunks)."""


class UnitsError(XensfError, ValueError):
    """Units that are missing, unparsable or incompatible with the state's units."""


class EnsembleError(XensfError, ValueError):
    """The prior ensemble is unusable (NaN values, a single member, ...)."""


class ObservationMismatchError(XensfError, ValueError):
    """Observations that do not fit the state: unknown variable, other grid, other times."""


class ObservationDomainError(XensfError, ValueError):
    """Point observations lying outside the state's grid."""

    #: How many offending points a message lists.
    LISTED = 5

    @classmethod
    def for_points(cls, outside, lat, lon, grid: str) -> ObservationDomainError:
        """The error for the points ``outside`` (indices into ``lat``/``lon``), naming
        how many, the first few as ``#index (lat, lon)``, and the ``grid`` they miss
        (e.g. ``"grid (latitude -90..90)"``)."""
        outside = [int(i) for i in outside]
        listed = ", ".join(
            f"#{i} ({float(lat[i]):g}, {float(lon[i]):g})" for i in outside[: cls.LISTED]
        )
        more = f" and {len(outside) - cls.LISTED} more" if len(outside) > cls.LISTED else ""
        return cls(
            f"{len(outside)} of {len(lat)} observation points lie outside the {grid}: "
            f"{listed}{more}. Drop them, or use a grid that covers them."
        )


class OptionError(XensfError, ValueError):
    """An unknown method, an unknown option, or an option value out of range."""


class BundleError(XensfError, ValueError):
    """A model bundle that cannot be read or written: not a bundle, corrupt, or too new."""


class StoreError(XensfError, OSError):
    """A data store or file that cannot be opened: unreachable, missing, or needing a package."""


class RunStoreError(StoreError, ValueError):
    """A cycling run's store that cannot be used: not an xensf run, other settings, locked."""


class ForecastError(EnsembleError):
    """A forecast model that returned NaN/inf or a state of another shape while cycling."""


class XensfWarning(UserWarning):
    """Base class of every warning xensf issues."""


class TrainingDataWarning(XensfWarning):
    """Training data too small for the model asked for."""


class PrecisionWarning(XensfWarning):
    """A precision asked for that this hardware only emulates (much slower); another used."""


class ObservationErrorWarning(XensfWarning):
    """Observation errors so large against the prior spread that the analysis hardly moves,
    or given in more than one place (``obs_error=``, an error variable, an attribute), of
    which only the first is used."""


class MaskedObservationWarning(XensfWarning):
    """Observations on masked points of the prior (NaN in every member: land) were
    dropped, or re-weighted to the unmasked points next to them."""


class ObservationLayoutWarning(XensfWarning):
    """Observations at grid points outside a latent model's observation layout were not
    given to its observation encoder (it was never trained to read values there)."""


class ModelQualityWarning(XensfWarning):
    """A latent model that represents the data at hand worse than the observations pin it down."""


class InnovationWarning(XensfWarning):
    """Observations of a variable lying, typically, far beyond what the prior spread and
    the observation errors allow from the prior mean: nearly always observations in
    other units than the state's."""


class LocalisationWarning(XensfWarning):
    """A localisation radius so small against the grid's spacing that an observation
    reaches no grid point beyond the one it sits on: usually a radius in other units
    than the grid's (metres for km)."""


class SpreadWarning(XensfWarning):
    """An option that makes the analysis far wider than the prior: an EnSF ``scale`` so
    large against the prior spread that the filter's own terminal noise, ``√eps_beta ·
    scale``, outweighs the spread."""


class InflationLimitWarning(XensfWarning):
    """An adaptive inflation field at its maximum over most of the analysed grid: the
    ensemble cannot represent the errors the observations show, and more inflation adds
    noise rather than skill."""
