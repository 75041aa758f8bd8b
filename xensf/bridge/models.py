"""Latent models as the xarray layer passes them around: small handles, cached loads.

A task graph must not carry a model's weights in every task, nor load them while the
graph is built. The accessor turns ``model=`` (a bundle path or a
:class:`~xensf.latent.LatentModel`) into a :class:`ModelHandle` — a path and the
SHA-256 of its weights — and each worker process loads a handle once per device and
keeps it (:func:`cached_model`). A model that exists only in memory is written once to
a content-addressed bundle in the temporary directory (on a cluster without a shared
file system, save it to shared storage and pass the path instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionError

__all__ = ["ModelHandle", "cached_model", "load", "model_handle"]

_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelHandle:
    """Where a model bundle lies and the SHA-256 of its weights file."""

    path: str
    digest: str


def model_handle(model: Any) -> tuple[ModelHandle, dict[str, Any]]:
    """A handle and the model's configuration, reading only the bundle's JSON."""
    from ..latent import LatentModel
    from ..latent.bundle import bundle_info
    from ..latent.model import check_model_metadata

    if isinstance(model, str | os.PathLike):
        info = bundle_info(model)
        check_model_metadata(info["metadata"], str(model))
        return ModelHandle(str(Path(model).resolve()), info["weights_sha256"]), info["metadata"][
            "config"
        ]
    if isinstance(model, LatentModel):
        tensors, metadata = model.tensors(), model.metadata()
        h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].numpy().tobytes())
        path = Path(tempfile.gettempdir()) / "xensf-models" / f"{h.hexdigest()[:32]}.xensf"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save(path)
        info = bundle_info(path)
        return ModelHandle(str(path), info["weights_sha256"]), info["metadata"]["config"]
    raise OptionError(
        f"model= must be a latent model bundle path or a LatentModel (xensf.load(path)), "
        f"got {type(model).__name__}"
    )


def cached_model(handle: ModelHandle, device) -> Any:
    """The model of ``handle`` on ``device``, loaded once per process."""
    from ..latent import LatentModel
    from ..latent.bundle import bundle_info

    key = (handle.path, handle.digest, str(device))
    with _LOCK:
        if key not in _CACHE:
            if bundle_info(handle.path)["weights_sha256"] != handle.digest:
                raise OptionError(
                    f"the model bundle {handle.path} changed after the computation was "
                    "set up; rebuild the analysis"
                )
            _CACHE[key] = LatentModel.load(handle.path, device=device)
        return _CACHE[key]


def load(path: str | os.PathLike, device=None):
    """Read a latent model bundle written by ``model.save(path)``; never unpickles.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle (a ``NAME.xensf`` directory of safetensors weights and JSON).
    device : str or torch.device, optional
        Where to put the model (default CPU). The accessor moves it where it computes.

    Returns
    -------
    xensf.latent.LatentModel
    """
    from ..latent import LatentModel

    return LatentModel.load(path, device=device)
