"""Latent models as the xarray layer passes them around: small handles, cached loads.

A task graph must not carry a model's weights in every task, nor load them while the
graph is built. The accessor turns ``model=`` (a bundle path or a
:class:`~xensf.latent.LatentModel`) into a :class:`ModelHandle` — a path and the
SHA-256 of its weights — and each worker process loads a handle once per device and
keeps it (:func:`cached_model`); the handle of a path is read and checked again only
when the bundle's files change (inodes, sizes, modification times). A model loaded
from a bundle and unchanged since is named by that bundle's path; a model that exists
only in memory (or was changed) is written to a private, content-addressed bundle in
the user's cache (:func:`model_cache_dir`), checked against the model on every reuse
(on a cluster without a shared file system, save it to shared storage and pass the
path instead, or set ``XENSF_CACHE_DIR`` to shared storage).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionError

__all__ = ["ModelHandle", "cached_model", "load", "model_cache_dir", "model_handle"]

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
    from ..latent.bundle import bundle_info, bundle_path
    from ..latent.model import check_model_metadata, check_weight_shapes

    if isinstance(model, str | os.PathLike):
        # read and checked again only when the bundle's files change: a cycle or a
        # cross-validation passes the same bundle to every analysis (~20 ms a read)
        path = bundle_path(model).resolve()
        signature = _signature(path)
        known = _HANDLES.get(path)
        if signature is not None and known is not None and known[0] == signature:
            return known[1]
        info = bundle_info(model)
        check_model_metadata(info["metadata"], str(model))
        shapes = {k: v["shape"] for k, v in info["tensors"].items()}
        check_weight_shapes(info["metadata"]["config"], shapes, str(model))
        handle = ModelHandle(str(path), info["weights_sha256"]), info["metadata"]["config"]
        if signature is not None:
            _HANDLES[path] = (signature, handle)
        return handle
    if isinstance(model, LatentModel):
        digest = model.content_digest()
        source = model.source
        if source is not None and source["content"] == digest:
            info = _bundle_info_or_none(source["path"])
            if info is not None and all(
                info[k] == source[k] for k in ("weights_sha256", "metadata_sha256")
            ):
                return ModelHandle(source["path"], info["weights_sha256"]), info["metadata"][
                    "config"
                ]
        path = _cached_bundle(model, digest)
        info = bundle_info(path)
        return ModelHandle(str(path), info["weights_sha256"]), info["metadata"]["config"]
    raise OptionError(
        f"model= must be a latent model bundle path or a LatentModel (xensf.load(path)), "
        f"got {type(model).__name__}"
    )


def model_cache_dir() -> Path:
    """Where models that exist only in memory are written for the workers to load.

    ``$XENSF_CACHE_DIR/models`` if that variable is set (on a cluster: shared storage
    the workers can read), else the user's cache folder (``platformdirs``), created
    readable by the owner only.
    """
    import platformdirs

    root = os.environ.get("XENSF_CACHE_DIR") or platformdirs.user_cache_dir("xensf")
    folder = Path(root) / "models"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _bundle_info_or_none(path) -> dict[str, Any] | None:
    from ..errors import BundleError
    from ..latent.bundle import bundle_info

    try:
        return bundle_info(path)
    except (BundleError, OSError):
        return None


def _cached_bundle(model, digest: str) -> Path:
    """The model's bundle in the cache, named by its content, verified on every reuse.

    Whatever lies at the path is loaded and its content compared with the model's:
    a bundle planted or damaged there is replaced, never used. A bundle this process
    wrote or verified, and whose files have not changed since (same inodes, sizes and
    modification times), is not loaded again.
    """
    from ..errors import BundleError
    from ..latent import LatentModel

    path = model_cache_dir() / f"{digest[:32]}.xensf"
    if _VERIFIED.get(path) == (digest, _signature(path)):
        return path
    if os.path.lexists(path):
        try:
            if LatentModel.load(path).content_digest() == digest:
                _VERIFIED[path] = (digest, _signature(path))
                return path
        except (BundleError, OptionError, OSError):
            pass
    model.save(path, private=True)
    _VERIFIED[path] = (digest, _signature(path))
    return path


#: Cache bundles checked by this process: path -> (content digest, file signature).
_VERIFIED: dict[Path, tuple[str, tuple]] = {}

#: Bundle paths read and checked by this process: path -> (file signature, what
#: :func:`model_handle` returned for it).
_HANDLES: dict[Path, tuple[tuple, tuple[ModelHandle, dict[str, Any]]]] = {}


def _signature(path: Path) -> tuple | None:
    """Inode, size and modification time of the bundle folder and its files."""
    try:
        return tuple(
            (st.st_ino, st.st_size, st.st_mtime_ns)
            for st in (os.stat(p) for p in (path, *sorted(path.iterdir())))
        )
    except OSError:
        return None


def cached_model(handle: ModelHandle, device) -> Any:
    """The model of ``handle`` on ``device``, loaded once per process."""
    from ..latent import LatentModel
    from ..latent.bundle import bundle_info

    key = (handle.path, handle.digest, str(device))
    with _LOCK:
        if key not in _CACHE:
            if not os.path.lexists(handle.path):
                raise OptionError(_missing_bundle(handle.path))
            if bundle_info(handle.path)["weights_sha256"] != handle.digest:
                raise OptionError(
                    f"the model bundle {handle.path} changed after the computation was "
                    "set up; rebuild the analysis"
                )
            _CACHE[key] = LatentModel.load(handle.path, device=device)
        return _CACHE[key]


def _missing_bundle(path: str) -> str:
    """What to do when a task cannot find the bundle its analysis was set up with."""
    import socket

    return (
        f"the latent model bundle {path} does not exist on {socket.gethostname()!r}, where "
        "this part of the analysis runs: it was removed after the analysis was set up, or "
        "this worker does not share the file system of the process that set it up. On a "
        "cluster, save the model where every worker can read it and pass that path "
        "(model.save('/shared/model.xensf'), then model='/shared/model.xensf'), or set "
        "XENSF_CACHE_DIR to such a folder before passing a LatentModel"
    )


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
