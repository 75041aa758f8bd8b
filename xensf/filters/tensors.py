"""Accepting numpy or torch at the filters' boundary, and giving back what came in.

The filters compute on torch tensors in float32 (the default) or float64. These
helpers decide the compute dtype from the prior ensemble, move the other arguments to
its device and dtype, and convert the result back to the caller's array type, so the
numerical code in between sees only tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ObservationMismatchError, OptionError

__all__ = [
    "as_float_tensor",
    "check_observed_values",
    "compute_dtype",
    "float_dtype",
    "restore_array_type",
]

_REFUSED = (torch.float16, torch.bfloat16)


def compute_dtype(value: Any, name: str) -> torch.dtype:
    """The dtype the analysis of ``value`` runs in: float64 kept, everything else float32.

    Half precision (float16, bfloat16) is refused: the update divides by ``β² ≥ ε_β``
    and sums squares over the whole state, which half precision cannot hold.
    """
    dtype = value.dtype if isinstance(value, torch.Tensor) else None
    if dtype is None:
        np_dtype = np.asarray(value).dtype
        if np_dtype == np.float16:
            dtype = torch.float16
        elif np_dtype == np.float64:
            dtype = torch.float64
        else:
            dtype = torch.float32
    if dtype in _REFUSED:
        raise OptionError(
            f"{name} has dtype {dtype}; the analysis runs in float32 or float64 only. "
            f"Convert {name} with .float() (or .astype('float32')) first."
        )
    if dtype is torch.complex64 or dtype is torch.complex128:
        raise OptionError(f"{name} has complex dtype {dtype}; a real array is required")
    return torch.float64 if dtype == torch.float64 else torch.float32


#: Floating dtypes by name, as torch, numpy and text spell them.
_FLOAT_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def float_dtype(dtype: Any, name: str) -> torch.dtype:
    """A floating dtype given as a torch dtype, a numpy one or text (``"float64"``,
    ``np.float64``) as the torch dtype; an :class:`~xensf.errors.OptionError` naming
    ``name`` for anything else (an integer dtype, a misspelling)."""
    if isinstance(dtype, torch.dtype):
        found = dtype if dtype.is_floating_point else None
    else:
        try:
            key = dtype if dtype == "bfloat16" else np.dtype(dtype).name
        except TypeError:
            key = None
        found = _FLOAT_DTYPES.get(key)
    if found is None:
        raise OptionError(
            f"{name}: dtype must be a floating dtype (torch.float32, 'float64', "
            f"numpy.float64, ...), got {dtype!r}"
        )
    return found


def as_float_tensor(
    value: Any,
    name: str,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``value`` (number, numpy array or tensor) as a tensor of ``dtype`` on ``device``.

    Half-precision inputs are refused with an :class:`~xensf.errors.OptionError`
    naming ``name``; other inputs are converted (no copy when nothing changes).
    """
    if isinstance(value, torch.Tensor):
        if value.dtype in _REFUSED:
            compute_dtype(value, name)  # raises with the message above
        return value.detach().to(device=device, dtype=dtype)
    try:
        array = np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise OptionError(f"{name} must be a number, numpy array or torch tensor") from err
    if array.dtype == np.float16:
        compute_dtype(array, name)
    if array.dtype.kind not in "biuf":
        raise OptionError(f"{name} must be numeric, got an array of dtype {array.dtype}")
    return torch.as_tensor(array, dtype=dtype, device=device)


def check_observed_values(y: torch.Tensor) -> None:
    """Refuse observations ``y`` with an infinite value: NaN marks a missing one, and an
    infinite one (an overflow upstream) is neither a value nor a mark (the LETKF took
    it as missing, EnSF returned NaN)."""
    infinite = int(torch.isinf(y).sum())
    if infinite:
        raise ObservationMismatchError(
            f"y holds {infinite} infinite values; NaN marks a missing observation: set "
            "those to NaN, or find where they overflowed"
        )


def restore_array_type(result: torch.Tensor, like: Any) -> Any:
    """``result`` converted to the array type of ``like`` (numpy in, numpy out).

    The dtype is the compute dtype (see :func:`compute_dtype`), so float32 and float64
    inputs come back unchanged in dtype; integer inputs come back as float32.
    """
    if isinstance(like, torch.Tensor):
        return result
    return result.detach().cpu().numpy()
