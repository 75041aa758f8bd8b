"""The torch device a task computes on, chosen inside the task (never at graph build)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import OptionError

__all__ = ["SMALL_PROBLEM", "compute_device", "parse_device", "small_problem_turn"]

_INIT_LOCK = threading.Lock()
_READY: set[str] = set()

#: EnSF analyses of fewer values than this (members × state components, all times of
#: the call) take turns in a process (:func:`small_problem_turn`).
SMALL_PROBLEM = 2**14
_SMALL_LOCK = threading.RLock()  # re-entrant: a turn may hold a smaller call


@contextmanager
def small_problem_turn(values: int) -> Iterator[None]:
    """Run the block inside alone among the process's threads if it is an analysis of
    fewer than :data:`SMALL_PROBLEM` values; at once with them otherwise
    (:func:`~xensf.filters.ensf.ensf_analysis` takes its turn here, so every caller
    does: the accessor's full-space and latent EnSF, the array-level user's threads).

    A small analysis is a loop of many small torch operations (100 EnSF steps of some
    25 operations of about 10 µs each), and each operation lets go of the GIL and
    takes it back: two of dask's threads running such loops at once took twice as long
    as one after the other (latent EnSF, 10 members × 128 latent values; full-space
    EnSF, 20 members × 128 and × 512 values), while on 20 × 2048 values and more the
    threads gain (docs/performance.md, "Lazy throughput"). The threads still overlap
    the rest of their work (reading, the networks, writing) around the turns. LETKF
    takes no turns: on 20 × 128 values its threads neither lost nor gained. Measured
    on CPU; processes (a LocalCluster's workers) run small analyses in parallel.
    """
    if values >= SMALL_PROBLEM:
        yield
        return
    with _SMALL_LOCK:
        yield


def compute_device(device=None):
    """``device`` as a ``torch.device``; default CUDA when available, else CPU.

    CUDA, and torch's lazily loaded CUDA linear-algebra backend, are initialised once
    per device under a lock: dask's threaded scheduler starts several tasks at once,
    and torch's lazy initialisation must not race (seen on an H200: "lazy wrapper
    should be called at most once" from concurrent ``torch.linalg.eigh`` calls).
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(device)
    if device.type == "cuda" and str(device) not in _READY:
        _check_cuda(device)
        with _INIT_LOCK:
            if str(device) not in _READY:
                torch.cuda.init()
                torch.linalg.eigh(torch.eye(2, device=device))
                torch.linalg.cholesky(torch.eye(2, device=device))
                _READY.add(str(device))
    return device


def parse_device(device):
    """``device`` as a ``torch.device``, or an :class:`~xensf.errors.OptionError` that
    names it. Whether the device is there is not checked: at graph build the client
    may lack the GPUs its workers have (:func:`compute_device` checks, in the task)."""
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise OptionError(
            f"device={device!r} is not a torch device ({err}); give 'cpu', 'cuda' or "
            "'cuda:N', or None for CUDA when available"
        ) from None


def _check_cuda(device) -> None:
    import torch

    if not torch.cuda.is_available():
        raise OptionError(
            f"device={str(device)!r}, but torch finds no CUDA device in this process "
            "(torch.cuda.is_available() is False); give device='cpu', or None for CUDA "
            "when available"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise OptionError(
            f"device={str(device)!r}, but this process sees {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
