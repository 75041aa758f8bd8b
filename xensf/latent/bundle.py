"""The on-disk format of a trained latent model: a *bundle*.

A bundle is a directory, conventionally named ``NAME.xensf``, that holds exactly two
files::

    NAME.xensf/
        weights.safetensors   every tensor, in the safetensors format
        bundle.json           what the tensors are, and everything else, as JSON

``weights.safetensors`` is a plain `safetensors <https://huggingface.co/docs/safetensors>`_
file (8-byte little-endian header length, JSON header, raw little-endian data). Any
safetensors reader opens it; no code is ever executed to read it.

``bundle.json`` is a UTF-8 JSON object with these keys::

    {
      "format": "xensf-latent-bundle",     # always this string
      "format_version": 1,                 # integer; readers refuse larger ones
      "xensf_version": "0.1.0",            # the xensf that wrote it ("0+unknown" if none)
      "created": "2025-01-01T00:00:00+00:00",
      "weights_sha256": "<hex>",           # SHA-256 of weights.safetensors, as bytes
      "tensors": {"NAME": {"dtype": "float32", "shape": [3, 4]}, ...},
      "metadata_sha256": "<hex>",          # SHA-256 of the canonical JSON of "metadata"
      "metadata": {...}                    # the caller's metadata, verbatim
    }

The *canonical JSON* of the metadata is its UTF-8 encoding as written by
``json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)``. The metadata holds only strict JSON: objects with string keys,
arrays, strings, finite numbers, booleans and null.

Why a directory and not one file: the JSON document is the part people and other tools
read (``jq .metadata NAME.xensf/bundle.json``), it is nested, and it can be large
(grid coordinates, normalisation statistics). The safetensors header only holds a flat
string-to-string map, so nesting would mean JSON encoded inside a JSON string, readable
only by a program. Two files also let :func:`bundle_info` read the metadata without
touching the weights, and a directory can be replaced in one rename.

Safety and integrity:

- Loading never unpickles. Weights are read by ``safetensors.torch`` only; a file that
  is a pickle or a ``torch.save`` archive is recognised and refused before anything
  parses it.
- The two hashes detect a truncated, corrupted or hand-edited bundle. They are checks
  of integrity, not signatures: whoever can write the bundle can update them too.
- :func:`save_bundle` writes into a temporary sibling directory and renames it into
  place, so ``path`` never holds a half-written bundle. A crash can leave a temporary
  sibling named ``.NAME.xensf.*.tmp`` behind; it may be deleted.

Compatibility: ``format_version`` changes only when a reader of the previous version
would misread a new bundle. Readers accept every version up to their own
(:data:`BUNDLE_VERSION`) and ignore keys they do not know.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._version import VERSION
from ..checks import require_flag
from ..errors import BundleError
from ..filters.device import compute_device
from ..urls import url_scheme

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "bundle_info", "load_bundle", "save_bundle"]

BUNDLE_FORMAT = "xensf-latent-bundle"
"""The value of ``"format"`` in every bundle's ``bundle.json``."""

BUNDLE_VERSION = 1
"""The ``"format_version"`` this xensf writes, and the newest one it reads."""

WEIGHTS_FILE = "weights.safetensors"
DOCUMENT_FILE = "bundle.json"

# The safetensors reference implementation refuses headers above 100 MB.
_MAX_HEADER_BYTES = 100_000_000
_HASH_CHUNK = 1 << 20


def save_bundle(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
    private: bool = False,
) -> Path:
    """Write tensors and metadata as a bundle directory at ``path``.

    The bundle is assembled in a temporary sibling directory and renamed into place
    once complete, so ``path`` holds either the previous content or the whole new
    bundle, never a part of it. (When replacing, the old content is renamed aside just
    before the new bundle is renamed in, so for that instant ``path`` does not exist.)

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory to write, conventionally ``NAME.xensf``. Its parent
        directory must exist. An existing bundle there is replaced.
    tensors : mapping of str to torch.Tensor
        The weights, e.g. a module's ``state_dict()``. Any floating-point, integer or
        boolean dtype, on any device, of any layout in memory: tensors are detached,
        copied to the CPU and made contiguous; tensors that share memory (tied
        weights) are stored as separate copies.
    metadata : mapping of str to JSON-compatible values
        Everything else a reader needs: architecture config, variables and units, grid,
        normalisation statistics, training metadata. Nested dicts (string keys),
        lists, tuples, str, int, finite float, bool and None are stored as they are;
        numpy scalars and arrays are converted to numbers and (nested) lists.
    overwrite : bool, default False
        Replace ``path`` even when it exists and is *not* an xensf bundle. Existing
        bundles are replaced without it.
    private : bool, default False
        Readable by the owner only (directory 0700, files 0600). By default the
        bundle's permissions follow the user's umask, like any file they write.

    Returns
    -------
    pathlib.Path
        The path of the written bundle.

    Raises
    ------
    BundleError
        A metadata value that JSON cannot hold (named by its key path, e.g.
        ``metadata['norm']['mean']``), a tensor of an unsupported dtype or layout, a
        missing parent directory, or an existing non-bundle ``path`` without
        ``overwrite=True``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from xensf.latent.bundle import save_bundle, load_bundle
    >>> folder = tempfile.mkdtemp()
    >>> path = save_bundle(f"{folder}/demo.xensf", {"w": torch.ones(2, 3)}, {"latent_dim": 8})
    >>> tensors, meta = load_bundle(path)
    >>> tensors["w"].shape, meta["latent_dim"]
    (torch.Size([2, 3]), 8)
    """
    path = bundle_path(path)
    for name, flag in (("overwrite", overwrite), ("private", private)):
        require_flag(flag, name, BundleError)
    document_metadata = _jsonable(metadata, "metadata")
    if not isinstance(document_metadata, dict):
        raise BundleError(f"metadata must be a dict with string keys, got {type(metadata)}.")
    prepared = _prepare_tensors(tensors)

    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a directory" if parent.exists() else "does not exist"
        raise BundleError(f"Cannot save the bundle {path}: {parent} {what}.")
    if os.path.lexists(path) and not overwrite and not _is_bundle(path):
        raise BundleError(
            f"{path} exists and is not an xensf bundle; refusing to replace it. "
            "Choose another path or pass overwrite=True."
        )

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        weights = tmp / WEIGHTS_FILE
        try:
            save_file(prepared, weights)
        except (SafetensorError, ValueError, RuntimeError, KeyError) as err:
            raise BundleError(f"Cannot write the tensors of {path} as safetensors: {err}") from err
        _fsync(weights)
        canonical = _canonical_json(document_metadata)
        document = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "xensf_version": VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights_sha256": _sha256_file(weights),
            "tensors": {
                name: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
                for name, t in prepared.items()
            },
            "metadata_sha256": hashlib.sha256(canonical).hexdigest(),
            "metadata": document_metadata,
        }
        text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        (tmp / DOCUMENT_FILE).write_text(text, encoding="utf-8")
        _set_permissions(tmp, private)
        _fsync(tmp / DOCUMENT_FILE)
        _fsync(tmp)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(parent)
    return path


def _set_permissions(folder: Path, private: bool) -> None:
    """The bundle's modes: owner only, or what the umask gives a new file and folder
    (``mkdtemp`` makes the folder 0700, and a writer may make its file 0600)."""
    mask = 0o077 if private else _umask()
    for f in (folder / WEIGHTS_FILE, folder / DOCUMENT_FILE):
        os.chmod(f, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def load_bundle(
    path: str | os.PathLike, *, device: str | torch.device | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a bundle's tensors and metadata, after checking its integrity.

    The checks, in order: ``bundle.json`` names this format and a version this xensf
    reads; the metadata matches its hash; ``weights.safetensors`` is a complete
    safetensors file (not a pickle, not truncated); it matches its hash; its tensors
    are the ones ``bundle.json`` lists. Nothing is unpickled at any point.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory (``NAME.xensf``).
    device : str or torch.device, optional
        Where to place the tensors, e.g. ``"cpu"`` or ``"cuda:0"``. Default: the CPU.

    Returns
    -------
    tensors : dict of str to torch.Tensor
        The weights, contiguous, bit-identical to those saved.
    metadata : dict
        The caller's metadata as saved (tuples and numpy arrays come back as lists).

    Raises
    ------
    BundleError
        ``path`` is not a bundle (a pickle, a ``torch.save`` file or a bare safetensors
        file is named as such), was written by a newer xensf, or is truncated, corrupt
        or edited after saving (``hash mismatch``).
    OptionError
        ``device`` is not a device name torch knows.

    See Also
    --------
    bundle_info : the metadata alone, without reading the weights.
    """
    path = bundle_path(path)
    target = _device(device)
    document = _read_document(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"The bundle {path} has no {WEIGHTS_FILE}; it is incomplete.")
    _check_safetensors_layout(weights)
    if _sha256_file(weights) != document["weights_sha256"]:
        raise BundleError(
            f"{weights}: hash mismatch — the file is not the one this bundle was saved "
            "with (corrupted or replaced). Save the model again."
        )
    try:
        tensors = load_file(weights, device=target)
    except SafetensorError as err:
        raise BundleError(f"{weights} is corrupt: {err}") from err
    listed = {
        name: (entry.get("dtype"), entry.get("shape"))
        for name, entry in document["tensors"].items()
        if isinstance(entry, dict)
    }
    found = {name: (_dtype_name(t.dtype), list(t.shape)) for name, t in tensors.items()}
    if listed != found:
        differ = sorted(k for k in listed.keys() | found.keys() if listed.get(k) != found.get(k))
        raise BundleError(
            f"{path / DOCUMENT_FILE} does not describe the tensors of {weights} "
            f"(they differ in {differ}); the bundle was edited after saving."
        )
    return tensors, document["metadata"]


def bundle_info(path: str | os.PathLike) -> dict[str, Any]:
    """Read a bundle's ``bundle.json`` without reading its weights.

    The format, version and metadata hash are checked as by :func:`load_bundle`; the
    weights file is neither read nor verified.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory (``NAME.xensf``).

    Returns
    -------
    dict
        The whole document: ``format``, ``format_version``, ``xensf_version``,
        ``created``, ``weights_sha256``, ``tensors`` (name to ``{"dtype", "shape"}``),
        ``metadata_sha256`` and ``metadata`` (see the module documentation).

    Raises
    ------
    BundleError
        As :func:`load_bundle`, for everything that concerns ``bundle.json``.
    """
    return _read_document(bundle_path(path))


def bundle_path(path) -> Path:
    """A bundle's path as given, with ``~`` expanded (as xarray and pandas expand it);
    a URL is a :class:`BundleError` (``Path`` would fold ``https://`` into ``https:/``)."""
    if not isinstance(path, str | os.PathLike):
        raise BundleError(
            f"a bundle's path must be text or a path (os.PathLike), got {type(path).__name__}"
        )
    scheme = url_scheme(path) if isinstance(path, str) else None
    if scheme is not None:
        raise BundleError(
            f"{path} is a URL; a bundle is a local directory. Copy it here first, e.g. "
            f"fsspec.filesystem({scheme!r}).get({path!r}, 'model.xensf', recursive=True), "
            "then load 'model.xensf'"
        )
    return Path(path).expanduser()


# --- reading -------------------------------------------------------------------------


def _read_document(path: Path) -> dict[str, Any]:
    """Parse and check ``bundle.json``: format, version, required keys, metadata hash."""
    if not path.is_dir():
        if not path.exists():
            raise BundleError(f"No bundle at {path}: it does not exist.")
        if path.name == DOCUMENT_FILE:
            raise BundleError(
                f"{path} is the {DOCUMENT_FILE} of a bundle; give the bundle, the "
                f"directory that holds it: {path.parent}"
            )
        raise BundleError(
            f"{path} is not an xensf bundle: {_describe_file(path)}. A bundle is a "
            f"directory holding {DOCUMENT_FILE} and {WEIGHTS_FILE}; xensf never loads "
            "pickled weights (.pt, .pkl). Re-save the model with save_bundle."
        )
    file = path / DOCUMENT_FILE
    if not file.is_file():
        raise BundleError(f"{path} is not an xensf bundle: it has no {DOCUMENT_FILE}.")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{file} is corrupt: not valid UTF-8 JSON ({err}).") from err
    except ValueError as err:  # an integer beyond Python's 4300-digit limit
        raise BundleError(f"{file} is corrupt: {err}.") from None
    except RecursionError:
        raise BundleError(f"{file} is corrupt: its JSON is nested too deeply.") from None
    if not isinstance(document, dict) or document.get("format") != BUNDLE_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise BundleError(
            f"{file} does not describe an xensf bundle: format {found!r}, "
            f"expected {BUNDLE_FORMAT!r}."
        )
    found_version = document.get("format_version")
    if not isinstance(found_version, int) or isinstance(found_version, bool) or found_version < 1:
        raise BundleError(f"{file} has an invalid format_version {found_version!r}.")
    if found_version > BUNDLE_VERSION:
        raise BundleError(
            f"{path} was written by a newer xensf ({document.get('xensf_version', 'unknown')}, "
            f"bundle format version {found_version}); this xensf ({VERSION}) reads "
            f"versions up to {BUNDLE_VERSION}. Upgrade xensf to load it."
        )
    kinds = {"weights_sha256": str, "tensors": dict, "metadata_sha256": str, "metadata": dict}
    for key, kind in kinds.items():
        if not isinstance(document.get(key), kind):
            raise BundleError(f"{file} is corrupt: {key!r} is missing or not a {kind.__name__}.")
    canonical = _canonical_json(_jsonable(document["metadata"], "metadata"))
    if hashlib.sha256(canonical).hexdigest() != document["metadata_sha256"]:
        raise BundleError(
            f"{file}: metadata hash mismatch — the metadata was edited after the bundle "
            "was saved. Restore it, or save the bundle again with save_bundle."
        )
    return document


def _check_safetensors_layout(file: Path) -> None:
    """Refuse a file that is not one complete safetensors file, without parsing data.

    Reads only the 8-byte length and the JSON header, and checks that the file is as
    long as the header's offsets say: this is what tells a truncated file from a
    corrupt one, and a pickle from either.
    """
    size = file.stat().st_size
    with open(file, "rb") as stream:
        head = stream.read(8)
        kind = _foreign_kind(head)
        if kind is not None:
            raise BundleError(
                f"{file} is {kind}, not safetensors; xensf never unpickles weights. "
                "Re-save the model with save_bundle."
            )
        if len(head) < 8:
            raise BundleError(f"{file} is truncated or corrupt: only {size} bytes long.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise BundleError(
                f"{file} is truncated or corrupt: its header claims {header_len} bytes, "
                f"the file has {size}."
            )
        try:
            header = json.loads(stream.read(header_len))
            ends = [
                int(entry["data_offsets"][1])
                for name, entry in header.items()
                if name != "__metadata__"
            ]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise BundleError(f"{file} is corrupt: unreadable safetensors header.") from err
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise BundleError(
            f"{file} is truncated: {size} bytes where its header needs {expected}. "
            "Copy the bundle again or save it again."
        )
    if size > expected:
        raise BundleError(f"{file} is corrupt: {size - expected} bytes beyond its last tensor.")


def _foreign_kind(head: bytes) -> str | None:
    """Name the kind of a file that is a pickle in disguise, from its first bytes."""
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (what torch.save writes, holding a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    return None


def _describe_file(path: Path) -> str:
    """A few words on what a file offered as a bundle is, for error messages."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    kind = _foreign_kind(head)
    if kind is not None:
        return f"it is {kind}"
    if len(head) == 9 and head[8:9] == b"{":
        return "it is a bare safetensors file, without the bundle's metadata"
    return "it is a file, not a bundle directory"


def _is_bundle(path: Path) -> bool:
    """Whether ``path`` is a directory whose bundle.json names this format (any version)."""
    try:
        document = json.loads((path / DOCUMENT_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and document.get("format") == BUNDLE_FORMAT


def _device(device: str | torch.device | None) -> str:
    """``device`` as a string, an OptionError if torch does not know it or this
    process lacks it (torch's own error came from deep inside the load)."""
    return "cpu" if device is None else str(compute_device(device))


# --- writing -------------------------------------------------------------------------


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory with another."""
    if not isinstance(tensors, Mapping):
        raise BundleError(f"tensors must be a dict of str to torch.Tensor, got {type(tensors)}.")
    prepared: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise BundleError(f"Tensor names must be non-empty strings, got {name!r}.")
        if not isinstance(tensor, torch.Tensor):
            raise BundleError(f"tensors[{name!r}] is a {type(tensor)}, not a torch.Tensor.")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.dtype.is_complex:
            raise BundleError(
                f"tensors[{name!r}] has dtype {tensor.dtype} and layout {tensor.layout}; "
                "bundles hold dense floating-point, integer or boolean tensors."
            )
        cpu = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights, views of one
        # buffer); store each as its own copy.
        pointer = cpu.untyped_storage().data_ptr()
        if pointer in storages:
            cpu = cpu.clone()
        storages.add(cpu.untyped_storage().data_ptr())
        prepared[name] = cpu
    return prepared


def _jsonable(value: Any, key: str) -> Any:
    """``value`` as strict JSON types; ``key`` is its path, for error messages."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic | np.ndarray):
        # Only kinds whose .item() is the same number or text: a datetime64[ns] would
        # silently turn into an integer count of nanoseconds.
        if value.dtype.kind not in "biufUO":
            raise BundleError(
                f"{key} is a numpy {value.dtype} value, which JSON cannot hold; "
                "convert it to str or a number first."
            )
        return _jsonable(value.item() if isinstance(value, np.generic) else value.tolist(), key)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BundleError(
                f"{key} is {value}, which strict JSON cannot hold; store None or a string."
            )
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise BundleError(f"{key} has the key {k!r}; JSON object keys must be strings.")
            out[str(k)] = _jsonable(v, f"{key}[{k!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    hint = " Tensors belong in `tensors`." if isinstance(value, torch.Tensor) else ""
    raise BundleError(
        f"{key} is a {type(value).__module__}.{type(value).__qualname__}, which JSON "
        f"cannot hold; convert it to str, a number, a list or a dict.{hint}"
    )


def _canonical_json(metadata: dict[str, Any]) -> bytes:
    return json.dumps(
        metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished bundle ``tmp`` to ``path``, replacing what is there.

    ``rename`` cannot replace a non-empty directory, so the old content is first moved
    aside and deleted only once the new bundle is in place (and put back if that fails).
    """
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # directories cannot be fsync'ed on some platforms (Windows)
    finally:
        os.close(fd)


# --- shared --------------------------------------------------------------------------


def _sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
