"""The object every task of an analysis reads (its plan), as one key of the dask graph.

A keyword argument of ``apply_ufunc`` is pickled into every task: with 10⁵ stations
on a 0.25° grid the plan is some 25 MB (the stations' rows, the grid's locations), so
the scheduler would ship 3.5 GB for 144 blocks. As an input (a 0-d object array, one
chunk, one key) it travels to each worker once and the tasks there share it.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["shared_input", "shared_value"]


def shared_input(obj: Any, lazy: bool) -> xr.DataArray:
    """``obj`` as a 0-d input of ``apply_ufunc`` (core dims ``[]``); a dask array of one
    key when ``lazy``, so that numpy inputs still give a numpy result."""
    holder = np.empty((), dtype=object)
    holder[()] = obj
    if not lazy:
        return xr.DataArray(holder)
    import dask.array as dsa
    from dask.base import tokenize

    name = "xensf-plan-" + tokenize(pickle.dumps(obj, protocol=5))
    return xr.DataArray(dsa.from_array(holder, chunks=(), name=name))


def shared_value(arg: Any) -> Any:
    """The object back from the task's argument (broadcast to any number of size-1 axes)."""
    return np.asarray(arg, dtype=object).flat[0]
