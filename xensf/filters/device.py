"""The torch device a task computes on, chosen inside the task (never at graph build)."""

from __future__ import annotations

import threading

__all__ = ["compute_device"]

_INIT_LOCK = threading.Lock()
_READY: set[str] = set()


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
    device = torch.device(device)
    if device.type == "cuda" and str(device) not in _READY:
        with _INIT_LOCK:
            if str(device) not in _READY:
                torch.cuda.init()
                torch.linalg.eigh(torch.eye(2, device=device))
                torch.linalg.cholesky(torch.eye(2, device=device))
                _READY.add(str(device))
    return device
