"""A zarr store that grows by one cycle at a time and is never seen half-written.

:func:`xensf.cycle` writes its results here; this module owns the run format (its
encoding, opening a run to write or resume, reading it back). The store is an ordinary zarr v3 group
with consolidated metadata, so ``xr.open_zarr(path)`` reads it like any other; what is
particular is the order in which it is written.

The commit point
----------------
The root ``zarr.json`` holds the consolidated metadata: the shape of every array, in
particular the length of the ``time`` dimension, the number of complete cycles. A
reader that uses it (the default of ``xr.open_zarr`` and ``zarr.open_group``) takes
every shape from that one file and reads no chunk beyond them. A cycle is written in
three steps:

1. every per-cycle array is grown to ``k + 1`` along ``time`` (its own ``zarr.json``)
   and cycle ``k`` is written into it. Arrays are chunked one cycle per chunk along
   ``time``, so this writes new chunk files and changes no committed one;
2. the analysis ensemble of cycle ``k`` is written to slot ``k % 2`` of the restart
   copy (group ``restart``: every state variable at full precision, two slots, and
   ``restart/cycle`` saying which cycle each slot holds). The slot of the last
   committed cycle, ``(k - 1) % 2``, is not touched;
3. the new root ``zarr.json`` (the committed one with ``time`` grown by one) is written
   to a temporary file, flushed to disk and moved over the old one with
   :func:`os.replace`, which is atomic on a local POSIX or Windows filesystem.

A process killed at any moment therefore leaves a store whose readers see ``k`` or
``k + 1`` complete cycles, never a partial one, and whose restart slot of the last
committed cycle is intact. Opening the store to resume (:meth:`CycleStore.open`)
first *recovers* it: every array's ``zarr.json`` is reset from the committed
consolidated copy (undoing step 1), chunks beyond the committed length and temporary
files of interrupted writes are removed. A resumed run then rewrites the cycle that
was interrupted, from the same restart ensemble, and ends with the same store as a
run that was never interrupted.

Before step 3 the chunk files of the cycle are flushed to disk (``fsync``), so the
commit also survives a power cut or an operating-system crash on filesystems that
honour ``fsync``. A reader that bypasses the consolidated metadata
(``consolidated=False``) while a cycle is being written may see the grown shape of
an array whose cycle is not committed yet: use the default.

A new store is built in a sibling directory ``.<name>.xensf-creating`` and renamed
into place once complete, so a store path either does not exist or holds a valid,
possibly empty, run. The builder holds a lock on that directory: of two processes
creating the same run at once, one builds it and the other gets ``RunStoreError``. One process writes a store at a time: a lock (``fcntl.flock`` on
the store directory, released by the operating system when the process dies) refuses
a second writer.

Other stores
------------
Only local filesystem paths are accepted. An object store (S3, GCS) has no atomic
rename and no file locks; the same protocol would work there (a single PUT of the
root ``zarr.json`` is atomic) but is not implemented: cycle into a local path and copy
the finished store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..bridge.metadata import without_fill_value
from ..errors import RunStoreError

__all__ = ["RUN_KIND", "RUN_MARKER", "CycleStore", "open_run", "read_run"]

RUN_MARKER = "xensf_run"
RUN_KIND = "cycle"
FORMAT_ATTR = "xensf_run_format"
FORMAT = 1
TIME = "time"
RESTART = "restart"
ROOT_DOC = "zarr.json"
CREATING_SUFFIX = ".xensf-creating"
# The encoding of datetime coordinates: exact to the nanosecond, whatever the step.
DATETIME_UNITS = "nanoseconds since 1970-01-01"
# cftime dates (noleap, 360_day, ...) count microseconds, their finest unit.
CFTIME_UNITS = "microseconds since 1970-01-01"

# Test-only: ``XENSF_CYCLE_KILL="<point>@<cycle>"`` makes the writing process kill
# itself with SIGKILL at that point of that cycle, so that tests can interrupt a write
# exactly where they want. Points, in order: "create" (cycle 0 only: the new store
# built, not yet renamed into place), "data" (half of the per-cycle arrays written),
# "chunks" (all of them), "restart" (restart slot written, not committed), "committed"
# (root metadata replaced).
KILL_ENV = "XENSF_CYCLE_KILL"


def _kill_point(point: str, cycle: int) -> None:
    target = os.environ.get(KILL_ENV)
    if target and target == f"{point}@{cycle}":
        os.kill(os.getpid(), signal.SIGKILL)


def local_path(store: Any) -> Path:
    """The store's local path; anything else is refused with an explanation."""
    if not isinstance(store, str | os.PathLike):
        raise RunStoreError(
            f"store must be a local directory path, got {type(store).__name__}; cycling "
            "needs an atomic rename to commit each cycle"
        )
    text = os.fspath(store)
    if "://" in text and not text.startswith("file://"):
        raise RunStoreError(
            f"store {text!r} is not on the local filesystem; cycling commits each cycle by an "
            "atomic file rename that object stores lack. Cycle into a local path and copy "
            "the finished store"
        )
    return Path(text.removeprefix("file://")).expanduser().absolute()


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace ``path`` by ``doc`` in one step: temp file, fsync, os.replace, fsync dir."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    data = json.dumps(doc, indent=2).encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_cycle_array(name: str, meta: Mapping[str, Any]) -> bool:
    names = meta.get("dimension_names") or []
    return (
        meta.get("node_type") == "array" and "/" not in name and bool(names) and names[0] == TIME
    )


def encode_values(var: xr.Variable | np.ndarray) -> np.ndarray:
    """A variable's values as the store holds them (datetimes as int64 nanoseconds,
    cftime dates as int64 microseconds in their calendar)."""
    values = np.asarray(var.values if isinstance(var, xr.Variable) else var)
    if values.dtype.kind == "M":
        return values.astype("datetime64[ns]").view(np.int64)
    calendar = _cftime_calendar(values)
    if calendar is not None:
        import cftime

        return np.asarray(cftime.date2num(values, CFTIME_UNITS, calendar), dtype=np.int64)
    return values


def _cftime_calendar(values: np.ndarray) -> str | None:
    """The calendar of an array of cftime dates, else None."""
    if values.dtype.kind != "O" or not values.size:
        return None
    return getattr(values.flat[0], "calendar", None)


class CycleStore:
    """An xensf cycling run on disk: create it, open it, add cycles, read the restart.

    Use :meth:`create` or :meth:`open`; both take the writer's lock, which
    :meth:`close` (or the end of the process) releases.
    """

    def __init__(self, path: Path, doc: dict[str, Any], lock: Any) -> None:
        self.path = path
        self._doc = doc
        self._lock = lock
        self._arrays: dict[str, Any] = {}

    # -- opening ----------------------------------------------------------------------

    @staticmethod
    def read_attrs(path: Path) -> dict[str, Any]:
        """The committed global attributes of the run at ``path``.

        Raises :class:`RunStoreError` (touching nothing) when ``path`` is not an xensf
        cycling run.
        """
        doc = _read_json(path / ROOT_DOC) if path.is_dir() else None
        attrs = (doc or {}).get("attributes") or {}
        if attrs.get(RUN_MARKER) != RUN_KIND or "consolidated_metadata" not in (doc or {}):
            what = "a directory" if path.is_dir() else "a file"
            raise RunStoreError(
                f"{str(path)!r} exists and is {what} that is not an xensf cycling run (no "
                f"{RUN_MARKER!r} attribute in its consolidated zarr metadata); it was left "
                "untouched. Choose another store path, or remove it yourself"
            )
        if attrs.get(FORMAT_ATTR, FORMAT) > FORMAT:
            raise RunStoreError(
                f"{str(path)!r} was written by a newer xensf (run format "
                f"{attrs.get(FORMAT_ATTR)}; this one reads {FORMAT}); upgrade xensf"
            )
        return attrs

    @classmethod
    def open(cls, path: Path) -> CycleStore:
        """Open a run to add cycles: lock it and recover it to its last commit."""
        cls.read_attrs(path)
        lock = _acquire_lock(path)
        try:
            store = cls(path, _read_json(path / ROOT_DOC), lock)
            store._recover()
        except BaseException:
            _release_lock(lock)
            raise
        return store

    @classmethod
    def create(
        cls,
        path: Path,
        template: xr.Dataset,
        encoding: Mapping[str, Mapping[str, Any]],
        restart: Mapping[str, xr.Variable],
    ) -> CycleStore:
        """Create an empty run (``time`` of length 0) at ``path`` in one step.

        ``template`` has every per-cycle variable with a ``time`` dim of length 0,
        the static coordinates and the global attributes (with the run marker);
        ``restart`` the state variables, one member ensemble each, whose two restart
        slots are allocated.
        """
        if os.path.lexists(path):
            raise RunStoreError(f"{str(path)!r} exists already; it was left untouched")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            above = next(p for p in path.parents if p.exists())
            raise RunStoreError(
                f"cannot create the run {str(path)!r}: {str(above)!r} is a file, not a "
                "directory; choose another path"
            ) from None
        building = path.with_name(f".{path.name}{CREATING_SUFFIX}")
        lock = _claim_building(building, path)
        try:
            cls._build(building, template, encoding, restart)
            _kill_point("create", 0)
            try:
                os.rename(building, path)
            except OSError:  # a directory made at path meanwhile, by other means
                shutil.rmtree(building, ignore_errors=True)
                raise RunStoreError(
                    f"{str(path)!r} appeared while this run was being created; it was left "
                    "untouched"
                ) from None
        finally:
            _release_lock(lock)
        _fsync_dir(path.parent)
        return cls.open(path)

    @staticmethod
    def _build(building: Path, template, encoding, restart) -> None:
        """Write the empty run into the (claimed, empty) ``building`` directory."""
        import zarr

        with warnings.catch_warnings():
            # "consolidated metadata is not part of the zarr v3 spec": known, and what
            # every xarray user of zarr v3 relies on.
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            template.to_zarr(
                building, mode="w-", zarr_format=3, consolidated=False, encoding=dict(encoding)
            )
            for name, var in restart.items():
                zarr.create_array(
                    store=str(building),
                    name=f"{RESTART}/{name}",
                    shape=(2, *var.shape),
                    chunks=(1, *var.shape),
                    dtype=var.dtype,
                    fill_value=0,
                    dimension_names=("slot", *map(str, var.dims)),
                )
            zarr.create_array(
                store=str(building),
                name=f"{RESTART}/cycle",
                shape=(2,),
                chunks=(1,),
                dtype="int64",
                fill_value=-1,
                dimension_names=("slot",),
            )
            zarr.consolidate_metadata(str(building))
        for file in building.rglob("*"):
            if file.is_file():
                _fsync_file(file)

    def close(self) -> None:
        """Release the writer's lock."""
        _release_lock(self._lock)
        self._lock = None

    def __enter__(self) -> CycleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what is committed ------------------------------------------------------------

    @property
    def _metadata(self) -> dict[str, Any]:
        return self._doc["consolidated_metadata"]["metadata"]

    @property
    def attrs(self) -> dict[str, Any]:
        """The committed global attributes."""
        return dict(self._doc.get("attributes") or {})

    @property
    def committed(self) -> int:
        """The number of complete cycles."""
        return int(self._metadata[TIME]["shape"][0])

    def cycle_arrays(self) -> list[str]:
        """The arrays that grow by one along ``time`` per cycle."""
        return sorted(n for n, m in self._metadata.items() if _is_cycle_array(n, m))

    def _recover(self) -> None:
        """Undo whatever a killed writer left beyond the last commit.

        A writer writes only cycle ``committed`` (:meth:`write_cycle` refuses any other):
        that cycle's chunks, the restart slots, the metadata documents, and zarr's
        and this module's temporary files beside them. So only those places are looked
        at, never the committed chunks: opening a run costs the same after ten cycles as
        after a hundred thousand (a walk over every chunk file took about 0.5 ms per
        committed cycle, 0.9 s at 1600: benchmarks/bench_resume.py).
        """
        n = self.committed
        places = [self.path]  # where temporary files may be left, not below
        below = []  # small trees: the restart slots, the arrays written once
        for name, meta in self._metadata.items():
            node = self.path / name / ROOT_DOC
            if _read_json(node) != meta:
                _atomic_write_json(node, meta)
            if not _is_cycle_array(name, meta):
                array = meta.get("node_type") == "array"
                (below if array else places).append(self.path / name)
                continue
            places.append(self.path / name)
            encoding = meta.get("chunk_key_encoding", {})
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
            if encoding.get("name") != "default" or chunks[0] != 1:
                continue  # not laid out by xensf: chunks beyond n are unreachable anyway
            k = n  # the interrupted cycle's chunks (and any after them, to be sure)
            while (entry := self.path / name / "c" / str(k)).exists():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                k += 1
        for pattern in ("*.partial", f".{ROOT_DOC}.*.tmp"):
            for place in places:
                for leftover in place.glob(pattern):
                    leftover.unlink(missing_ok=True)
            for tree in below:
                for leftover in tree.rglob(pattern):
                    leftover.unlink(missing_ok=True)

    # -- adding a cycle ---------------------------------------------------------------

    def _array(self, name: str):
        if name not in self._arrays:
            import zarr

            self._arrays[name] = zarr.open_array(
                store=str(self.path), path=name, mode="r+", zarr_format=3
            )
        return self._arrays[name]

    def write_cycle(
        self, k: int, row: Mapping[str, np.ndarray], restart: Mapping[str, np.ndarray]
    ) -> None:
        """Write cycle ``k`` (0-based, ``k`` = the committed count) without committing it.

        ``row`` maps every per-cycle array to its values at this cycle (no time dim),
        ``restart`` every state variable to the analysis ensemble to resume from.
        """
        if k != self.committed:
            raise RunStoreError(f"cycle {k} cannot follow {self.committed} committed cycles")
        names = self.cycle_arrays()
        if set(row) != set(names):
            raise RunStoreError(
                f"cycle {k}: the store's per-cycle arrays are {names}, got {sorted(row)}"
            )
        for i, name in enumerate(names):
            array = self._array(name)
            array.resize((k + 1, *array.shape[1:]))
            array[k] = row[name]
            if i == len(names) // 2:
                _kill_point("data", k)
        _kill_point("chunks", k)
        slot = k % 2
        for name, values in restart.items():
            self._array(f"{RESTART}/{name}")[slot] = values
        self._array(f"{RESTART}/cycle")[slot] = k
        _kill_point("restart", k)

    def commit(self, k: int) -> None:
        """Make cycle ``k`` visible: flush its chunks, then replace the root metadata."""
        if k != self.committed:
            raise RunStoreError(f"cycle {k} cannot be committed after {self.committed} cycles")
        for name in self.cycle_arrays():
            written = self.path / name / "c" / str(k)
            for file in [written] if written.is_file() else written.rglob("*"):
                if file.is_file():
                    _fsync_file(file)
        for written in (self.path / RESTART).glob(f"*/c/{k % 2}"):
            for file in [written] if written.is_file() else written.rglob("*"):
                if file.is_file():
                    _fsync_file(file)
        doc = json.loads(json.dumps(self._doc))
        for name, meta in doc["consolidated_metadata"]["metadata"].items():
            if _is_cycle_array(name, meta):
                meta["shape"][0] = k + 1
        _atomic_write_json(self.path / ROOT_DOC, doc)
        self._doc = doc
        _kill_point("committed", k)

    def read_cycle(self, name: str, k: int) -> np.ndarray:
        """The per-cycle array ``name`` at committed cycle ``k``, as written."""
        if not 0 <= k < self.committed:
            raise RunStoreError(
                f"{str(self.path)!r} has {self.committed} committed cycles, not a cycle {k}"
            )
        return np.asarray(self._array(name)[k])

    def read_restart(self, names: list[str]) -> dict[str, np.ndarray]:
        """The analysis ensemble of the last committed cycle, as written."""
        k = self.committed - 1
        if k < 0:
            raise RunStoreError(f"{str(self.path)!r} has no complete cycle to resume from")
        slot = k % 2
        held = int(self._array(f"{RESTART}/cycle")[slot])
        if held != k:
            raise RunStoreError(
                f"{str(self.path)!r}: the restart copy of cycle {k} is missing (slot {slot} "
                f"holds cycle {held}); the store is damaged, start it again with overwrite=True"
            )
        return {name: np.asarray(self._array(f"{RESTART}/{name}")[slot]) for name in names}


def _acquire_lock(path: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer is the user's affair
        return None
    # The lock is on the store directory itself: no extra file for zarr to trip over.
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunStoreError(
            f"{str(path)!r} is being written by another process (it holds a lock on the "
            "store directory); wait for it to finish or stop it"
        ) from None
    return fd


def _claim_building(building: Path, path: Path) -> Any:
    """Make (or take over) the build directory of a new run; return its lock.

    Of processes creating the same run at once, one holds the lock on the build
    directory and goes on; the others get :class:`RunStoreError` before writing.
    A build directory that nobody holds is what a killed creation left: it is
    emptied and reused.
    """
    try:
        os.mkdir(building)
        fresh = True
    except FileExistsError:
        fresh = False
    try:
        lock = _acquire_lock(building)
    except (RunStoreError, FileNotFoundError):
        raise RunStoreError(
            f"{str(path)!r} is being created by another process; wait for it to finish "
            "(then resume or choose another path)"
        ) from None
    if not fresh:  # left by a killed creation: empty it, keeping the locked directory
        for child in building.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    return lock


def _release_lock(fd: Any) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def remove_run(path: Path) -> None:
    """Delete the xensf run at ``path`` (checked to be one first)."""
    CycleStore.read_attrs(path)
    lock = _acquire_lock(path)
    try:
        shutil.rmtree(path)
    finally:
        _release_lock(lock)


# -- the run: encoding, opening to write, reading back ----------------------------------


def without_coordinate_fill(ds: xr.Dataset) -> xr.Dataset:
    """No ``_FillValue`` on coordinates when the result is written on (CF 2.5.1)."""
    for name in ds.coords:
        without_fill_value(ds.variables[name])
    return ds


def read_run(path) -> xr.Dataset:
    """The run store, lazily: dask chunks of many cycles along time (dask's size target).

    The store holds one cycle per chunk file (so a commit never rewrites a committed
    chunk); its dask view groups them, so a long run is not a graph of one task per
    cycle and dask's chunk caches, which hold the chunk tuples, stay small.
    """
    ds = xr.open_zarr(path, consolidated=True, chunks={TIME: "auto"})
    return without_coordinate_fill(ds)


def _encoding(template: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Chunks of one cycle along time, whole otherwise; no fill value on coordinates."""
    encoding = {}
    for name, var in template.variables.items():
        if TIME in var.dims:
            enc: dict[str, Any] = {"chunks": (1, *var.shape[1:])}
        else:
            enc = {"chunks": var.shape}
        if name in template.coords:
            enc["_FillValue"] = None
        if name == TIME and var.dtype.kind == "M":
            enc.update(units=DATETIME_UNITS, calendar="proleptic_gregorian", dtype="int64")
        encoding[str(name)] = enc
    return encoding


def open_run(store, overwrite: bool, settings: dict, template: xr.Dataset,
             restart: Mapping[str, xr.Variable]) -> CycleStore | None:  # fmt: skip
    """The run at ``store`` to write into: resumed, started afresh, or created.

    ``settings`` must equal the stored run's (each difference is named in the error);
    ``template`` is one cycle's record (its variables, coordinates and attributes) and
    ``restart`` the ensemble a new run starts from. None for ``store=None``.
    """
    if store is None:
        return None
    path = local_path(store)
    if path.exists() or path.is_symlink():
        attrs = CycleStore.read_attrs(path)  # refuses anything that is not a run
        if overwrite:
            remove_run(path)
        else:
            try:
                stored = json.loads(attrs.get("xensf_settings", "null"))
            except ValueError:
                stored = None
            if not isinstance(stored, dict):
                raise RunStoreError(f"{str(path)!r}: the run's settings are unreadable")
            diffs = differences(stored, settings)
            if diffs:
                raise RunStoreError(
                    f"{str(path)!r} holds a run made with other settings, so it cannot be "
                    f"resumed: {'; '.join(diffs)}. Use another store, or overwrite=True to "
                    "start it afresh"
                )
            return CycleStore.open(path)
    return CycleStore.create(path, _cftime_encoded(template).isel({TIME: slice(0, 0)}),
                             _encoding(template), dict(restart))  # fmt: skip


def _cftime_encoded(template: xr.Dataset) -> xr.Dataset:
    """``template`` with cftime times written as their int64 values and CF attributes:
    xarray cannot tell an empty object array of dates from any other, so it would not
    encode the empty time of a new store."""
    calendar = _cftime_calendar(template[TIME].values)
    if calendar is None:
        return template
    attrs = {**template[TIME].attrs, "units": CFTIME_UNITS, "calendar": calendar}
    return template.assign_coords({TIME: (TIME, encode_values(template[TIME].variable), attrs)})


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Each key whose value differs between two settings, with both values."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in stored:
                out.append(f"{name} (not in the store; this call: {current[key]!r})")
            elif key not in current:
                out.append(f"{name} (the store: {stored[key]!r}; not in this call)")
            else:
                out.extend(differences(stored[key], current[key], name))
        return out
    if stored != current:
        return [f"{prefix} (the store: {stored!r}; this call: {current!r})"]
    return []
