"""The HDF5 feature cache: one index file per dataset plus one file per source, filled once per image.

Layout (schema version 1)::

    fi.h5                     the index: attrs schema_version, vea_bench_version, dataset, label_space,
                                     label_names (JSON), manifest_hashes (JSON), split_seed (-1: none),
                                     created_at, extra (JSON)
    fi.h5:/splits/<split>/ids       relative image paths (UTF-8), the split's stable order
    fi.h5:/splits/<split>/labels    int16 class indices in ``label_names`` order
    fi.h5:/<kind>/<key>       an HDF5 external link to the source's own file:
    fi.h5.sources/<kind>/<key>.<token>.h5:/<kind>/<key>
                              attrs: provenance (JSON), fields (JSON) + flat provenance attrs
        <split>/<field>       N x ... arrays (e.g. ``emb`` N x D float16)
        <split>/_status       uint8 per row: 0 missing, 1 written, 2 failed
        <split>/_error        UTF-8 reason for failed rows
        <split>/_fp           uint64 fingerprint of the image each row came from (0: not recorded;
                              see `vea_bench.cache.fingerprints`)
    fi.h5.lock                the writer's lock (``flock``), one writer per cache at a time

Why one file per source: a fault while writing (SIGKILL in the middle of an HDF5 metadata
flush, a full disk, a crash of the HDF5 library) can damage at most the file being written. The
index is never modified in place: adding, replacing or dropping a source writes a new index
beside it, fsyncs it and renames it over the old one (and a new source's file is likewise
created under a temporary name, fsynced and renamed before the index links to it), so whatever
happens the index and every other source stay readable. Readers open the index read-only and
reach sources through the links (plain h5py works too); a writer holds the lock file for as long
as it is open, so two writers of one cache are refused in one line, never interleaved.

Sources are written by row index into arrays preallocated at creation (numeric fields are
contiguous with their file space allocated up front, so a write touches raw data only and never
the file's metadata) and flushed after every write, values first and ``_status`` last, so a
killed job loses at most its current batch, readers never see half-written rows, and a resumed
run computes exactly the missing rows and ends byte-identical to an uninterrupted one. Failed
rows hold zeros (and empty strings) so that shards and resumed runs compare exactly. A source is
complete when no row is missing (failed rows are resolved, and readers exclude them through the
status mask). A source whose file is damaged (truncated, a dataset removed) is refused in one
line; `vea-bench cache repair` (or the next `extract` of it) drops it so it can be recomputed.

Files written before this layout (sources stored inside ``fi.h5``) are read as they are; the
first time such a file is opened for writing, its sources are copied out into their own files.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vea_bench import __version__
from vea_bench.cache.guard import CacheLock, check_free_space, fsync_path, is_lock_error
from vea_bench.errors import CacheError, errno_of, os_error
from vea_bench.splits import SplitSpec
from vea_bench.versions import package_versions

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SOURCE_KINDS: tuple[str, ...] = ("visual", "vlm", "teacher", "backbone")
ROW_MISSING, ROW_OK, ROW_FAILED = 0, 1, 2

# Provenance keys that may differ between shards or resumed runs of the *same* source.
VOLATILE_PROVENANCE = frozenset({"time", "created_at", "shard", "host", "versions", "elapsed_s"})

# The dtype spelling of a variable-length UTF-8 string field.
STR_DTYPE = "str"
_TARGET_CHUNK_BYTES = 1 << 20
SOURCES_SUFFIX = ".sources"
# Bytes per row assumed for a string field when estimating the space a run needs (answers,
# parse statuses and failure reasons are short; HDF5's heap adds its overhead).
_STR_ROW_BYTES = 256
# Per-row bytes of the auxiliary arrays: _status (1), _fp (8) and the _error heap reference.
_AUX_ROW_BYTES = 1 + 8 + 16
# Space a writer holds in reserve (a file it deletes on "no space left"), so that HDF5 can still
# flush and close the file it was writing when the disk fills up under it: without room for that
# last metadata flush the library may crash (SIGSEGV) and leave the file unreadable.
BALLAST_BYTES = 2 << 20
BALLAST_NAME = ".space-reserve"
# A write is refused (and the reserve freed for a clean close) once the disk has less free than
# this: HDF5 writes metadata at moments Python cannot intercept (object deallocation), and an
# ENOSPC there cannot be recovered from.
LOW_SPACE_BYTES = 1 << 20


class DamagedSourceError(CacheError):
    """A source's file or datasets cannot be read: drop it (`cache repair`) and recompute it."""


def sources_dir(path: str | Path) -> Path:
    """The folder holding the per-source files of cache ``path`` (``fi.h5`` -> ``fi.h5.sources``)."""
    p = Path(path)
    return p.with_name(p.name + SOURCES_SUFFIX)


def cache_files(path: str | Path) -> list[Path]:
    """Every file that belongs to cache ``path``: the index, its source files and its lock file."""
    p = Path(path)
    out = [p] if p.is_file() else []
    d = sources_dir(p)
    if d.is_dir():
        out.extend(sorted(x for x in d.rglob("*") if x.is_file()))
    lock = p.with_name(p.name + ".lock")
    if lock.is_file():
        out.append(lock)
    return out


def remove_cache(path: str | Path) -> None:
    """Delete a cache: its index, its source folder and its lock file."""
    p = Path(path)
    p.unlink(missing_ok=True)
    shutil.rmtree(sources_dir(p), ignore_errors=True)
    p.with_name(p.name + ".lock").unlink(missing_ok=True)


def _writing_marker(path: Path) -> Path:
    """Exists while a writer has ``path`` open; left behind, it says the writer died mid-write."""
    return path.with_name(path.name + ".writing")


def _copy_readable_rows(src: h5py.Group, dst: h5py.Group, specs: Mapping[str, FieldSpec]) -> None:
    """Copy one split of a source; rows whose strings or status do not read back become missing."""
    st = np.asarray(src["_status"][()], dtype=np.uint8).copy()
    n = st.size
    if n == 0:
        return
    numeric = [f for f, sp in specs.items() if sp.dtype != STR_DTYPE] + (["_fp"] if "_fp" in src else [])
    strings = [f for f, sp in specs.items() if sp.dtype == STR_DTYPE] + ["_error"]
    for fname in numeric:
        step = max(1, _TARGET_CHUNK_BYTES * 16 // max(1, src[fname].dtype.itemsize * int(np.prod(src[fname].shape[1:]))))
        for lo in range(0, n, step):
            dst[fname][lo : lo + step] = src[fname][lo : lo + step]
    for fname in strings:
        try:
            vals = decode_strings(src[fname][()])
        except (OSError, ValueError, RuntimeError):
            vals = np.asarray([""] * n, dtype=object)
            for i in range(n):
                try:
                    vals[i] = decode_strings(src[fname][i : i + 1])[0]
                except (OSError, ValueError, RuntimeError):
                    st[i] = ROW_MISSING
        dst[fname][...] = vals
    dst["_status"][...] = st


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _row_bytes(specs: Mapping[str, FieldSpec]) -> int:
    """Estimated bytes one row of a source takes on disk (numeric exact, strings estimated)."""
    n = _AUX_ROW_BYTES
    for spec in specs.values():
        if spec.dtype == STR_DTYPE:
            n += _STR_ROW_BYTES
        else:
            n += int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    return n


@dataclass(frozen=True)
class FieldSpec:
    """One array of a source: per-row shape (after the row axis) and dtype (or ``"str"``)."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        # Normalise ``np.float16`` / ``"<f2"`` / ``"float16"`` to one spelling, so resuming a
        # source compares fields by meaning rather than by how the caller spelled the dtype.
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype != STR_DTYPE:
            try:
                object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
            except TypeError as exc:
                raise CacheError(f"unknown field dtype {self.dtype!r} ({exc})") from None

    def to_json(self) -> list[Any]:
        return [list(self.shape), self.dtype]

    @classmethod
    def from_json(cls, obj: Sequence[Any]) -> FieldSpec:
        return cls(tuple(int(s) for s in obj[0]), str(obj[1]))


@dataclass
class SourceInfo:
    """Summary of one source: fields, provenance and per-split row status counts."""

    kind: str
    key: str
    fields: dict[str, FieldSpec]
    provenance: dict[str, Any]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.key}"

    @property
    def complete(self) -> bool:
        return all(c["missing"] == 0 for c in self.counts.values())


@dataclass
class SourceData:
    """Arrays of one source for one split, with the row status and failure reasons."""

    arrays: dict[str, np.ndarray]
    status: np.ndarray
    errors: list[str]

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of rows that were written successfully."""
        return self.status == ROW_OK

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def _h5_dtype(dtype: str) -> Any:
    return h5py.string_dtype("utf-8") if dtype == STR_DTYPE else np.dtype(dtype)


def _chunk_rows(n: int, shape: tuple[int, ...], dtype: str) -> int:
    itemsize = 16 if dtype == STR_DTYPE else np.dtype(dtype).itemsize
    row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * itemsize)
    return int(max(1, min(n, _TARGET_CHUNK_BYTES // row_bytes)))


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """HDF5 strings as ``str`` objects (h5py hands back ``bytes``); other arrays unchanged."""
    if arr.dtype.kind in ("O", "S"):
        return np.array([a.decode("utf-8") if isinstance(a, bytes) else a for a in arr], dtype=object)
    return arr


def stable_provenance(prov: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance that must agree for rows to belong to one source (volatile keys dropped)."""
    return {k: v for k, v in prov.items() if k not in VOLATILE_PROVENANCE}


def _json_roundtrip(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``obj`` looks like after being stored as a JSON attribute (tuples become lists)."""
    return dict(json.loads(json.dumps(dict(obj), default=str)))


def empty_rows(spec: FieldSpec, n: int) -> np.ndarray:
    """The value of rows that hold no result (failed or missing): zeros, or empty strings."""
    if spec.dtype == STR_DTYPE:
        return np.asarray([""] * n, dtype=object)
    return np.zeros((n, *spec.shape), dtype=spec.dtype)


def create_source_group(
    h5: h5py.File | h5py.Group,
    name: str,
    specs: Mapping[str, FieldSpec],
    provenance: Mapping[str, Any],
    split_rows: Mapping[str, int],
) -> h5py.Group:
    """Lay out an empty source: every field preallocated for every split, all rows missing."""
    g = h5.create_group(name)
    g.attrs["fields"] = json.dumps({n: s.to_json() for n, s in specs.items()})
    g.attrs["provenance"] = json.dumps(dict(provenance), default=str)
    for k, v in provenance.items():
        if isinstance(v, (str, int, float, bool)) and k not in ("fields", "provenance"):
            g.attrs[f"prov_{k}"] = v
    for split, n in split_rows.items():
        sg = g.create_group(split)
        for fname, spec in specs.items():
            _create_field(sg, fname, (n, *spec.shape), spec.dtype)
        _create_field(sg, "_status", (n,), "uint8")
        _create_field(sg, "_fp", (n,), "uint64")
        sg.create_dataset("_error", shape=(n,), dtype=_h5_dtype(STR_DTYPE), chunks=(max(1, min(n, 4096)),) if n else None)
    return g


def _create_field(g: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> h5py.Dataset:
    """Numeric arrays: contiguous, file space allocated now (no chunk index to update later, so
    a SIGKILL between flushes cannot leave dangling metadata, and reads/writes are plain file
    I/O). Strings: chunked variable-length, allocated as written."""
    if dtype == STR_DTYPE:
        chunks = (_chunk_rows(shape[0], shape[1:], dtype), *shape[1:]) if shape[0] else None
        return g.create_dataset(name, shape=shape, dtype=_h5_dtype(STR_DTYPE), chunks=chunks)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # ``_status`` must read 0 (missing) before it is written; data fields are never read where
    # the status says missing, so they skip the fill (a 700 MB source is created instantly).
    fill_time = "alloc" if name in ("_status", "_fp") else "never"
    return g.create_dataset(
        name, shape=shape, dtype=np.dtype(dtype), dcpl=dcpl, fillvalue=0, fill_time=fill_time
    )


class SourceWriter:
    """Writes rows of one source by index; every write is flushed so a kill loses at most one batch."""

    def __init__(self, cache: FeatureCache, kind: str, key: str, fields: dict[str, FieldSpec]) -> None:
        self.cache = cache
        self.kind = kind
        self.key = key
        self.fields = fields

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.key}"

    @property
    def file(self) -> h5py.File:
        """The source's file, opened for writing at the first write (a complete source that is
        only checked stays readable by other processes)."""
        if not self.cache._h5.id.valid:
            raise CacheError(f"{self.cache.path}: the cache is closed")
        return self.cache._open_for_writing(self.name)

    @property
    def group(self) -> h5py.Group:
        return self.file[self.name]

    def _flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def _check_space(self) -> None:
        """Stop before the disk is full (see `LOW_SPACE_BYTES`), while the file can still be closed."""
        try:
            free = shutil.disk_usage(self.cache.sources_dir).free
        except OSError:
            return
        if free < LOW_SPACE_BYTES:
            import errno

            raise self._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def _failed(self, exc: OSError) -> CacheError:
        """A write failed (typically: the disk is full): free the reserve so HDF5 can flush the
        file's metadata and close it cleanly, then report in one line."""
        self.cache._release_ballast()
        try:
            self.file.flush()
        except OSError:
            pass
        return os_error(self.file.filename, exc, f"write source {self.name}")

    def status(self, split: str) -> np.ndarray:
        return self.cache.source_group(self.name)[f"{split}/_status"][()]

    def fingerprints(self, split: str) -> np.ndarray | None:
        """Stored per-row image fingerprints (None for sources written before they existed)."""
        g = self.cache.source_group(self.name)[split]
        return g["_fp"][()] if "_fp" in g else None

    def invalidate(self, split: str, rows: Sequence[int] | np.ndarray) -> None:
        """Mark rows missing again (their image changed): readers see the source incomplete until redone."""
        g, _, srows = self._rows(split, rows)
        if srows.size == 0:
            return
        try:
            _write_rows(g["_status"], srows, np.full(len(srows), ROW_MISSING, dtype=np.uint8))
        except OSError as exc:
            raise self._failed(exc) from None
        self._flush()

    def _write_fp(self, g: h5py.Group, srows: np.ndarray, order: np.ndarray, fingerprints: Any) -> None:
        if fingerprints is None or "_fp" not in g:
            return
        fp = np.asarray(fingerprints, dtype=np.uint64)
        if fp.shape != (len(srows),):
            raise CacheError(f"source {self.name}: {fp.shape[0] if fp.ndim else 0} fingerprints for {len(srows)} rows")
        _write_rows(g["_fp"], srows, fp[order])

    def missing(self, split: str, *, retry_failed: bool = False) -> np.ndarray:
        """Row indices still to compute (optionally also the failed ones), ascending."""
        st = self.status(split)
        mask = st == ROW_MISSING
        if retry_failed:
            mask |= st == ROW_FAILED
        return np.flatnonzero(mask)

    def _rows(self, split: str, rows: Sequence[int] | np.ndarray) -> tuple[h5py.Group, np.ndarray, np.ndarray]:
        """Validate row indices; returns the split group, the sort order and the sorted rows."""
        name = self.name
        if split not in self.group:
            raise CacheError(f"{self.cache.path}: source {name} has no split '{split}'")
        g = self.group[split]
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise CacheError(f"source {name}: row indices must be a 1-D sequence of integers")
        rows = rows.astype(np.int64)
        n = g["_status"].shape[0]
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise CacheError(f"source {name}: row index out of range for split '{split}' ({n} rows)")
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        if srows.size > 1 and np.any(np.diff(srows) == 0):
            raise CacheError(f"source {name}: duplicate row indices in one write to split '{split}'")
        return g, order, srows

    def _clear_errors(self, g: h5py.Group, srows: np.ndarray) -> None:
        """Blank the reason of rows that had failed before (a retry); others already read ''."""
        lo, hi = int(srows[0]), int(srows[-1]) + 1
        prev = g["_status"][lo:hi][srows - lo]
        was_failed = srows[prev == ROW_FAILED]
        if was_failed.size:
            _write_rows(g["_error"], was_failed, np.asarray([""] * was_failed.size, dtype=object))

    def write(self, split: str, rows: Sequence[int] | np.ndarray, *, fingerprints: Any = None, **arrays: Any) -> None:
        """Store ``arrays`` (each with ``len(rows)`` rows) at ``rows`` and mark them written.

        Every field of the source must be given: a row marked written has all its values.
        ``fingerprints`` (one uint64 per row) records the image each row was computed from.
        """
        g, order, srows = self._rows(split, rows)
        if srows.size == 0:
            return
        self._check_space()
        name = self.name
        unknown = set(arrays) - set(self.fields)
        if unknown:
            raise CacheError(f"source {name} has no field(s) {sorted(unknown)}")
        absent = [f for f in self.fields if f not in arrays]
        if absent:
            raise CacheError(f"source {name}: write() lacks field(s) {absent}; every written row needs all fields")
        prepared: dict[str, np.ndarray] = {}
        for fname, value in arrays.items():
            spec = self.fields[fname]
            if spec.dtype == STR_DTYPE:
                vals = np.asarray([str(v) for v in value], dtype=object)
            else:
                vals = np.asarray(value)
                if vals.shape[1:] != spec.shape:
                    raise CacheError(
                        f"source {name} field '{fname}' expects rows of shape "
                        f"{spec.shape}, got {vals.shape[1:]}"
                    )
                vals = vals.astype(spec.dtype, copy=False)
            if len(vals) != len(srows):
                raise CacheError(f"source {name}: field '{fname}' has {len(vals)} rows for {len(srows)} indices")
            prepared[fname] = vals[order] if len(order) > 1 and np.any(np.diff(order) != 1) else vals
        # Values first, status last: a kill in between leaves the rows missing, never half-written.
        try:
            for fname, vals in prepared.items():
                _write_rows(g[fname], srows, vals)
            self._clear_errors(g, srows)
            self._write_fp(g, srows, order, fingerprints)
            self._flush()  # values on disk before the status says they are there
            _write_rows(g["_status"], srows, np.full(len(srows), ROW_OK, dtype=np.uint8))
        except OSError as exc:
            raise self._failed(exc) from None
        self._flush()

    def fail(self, split: str, rows: Sequence[int] | np.ndarray, reasons: Sequence[str], *,
             fingerprints: Any = None) -> None:
        """Mark rows failed with a reason each (a corrupt image, say); the job goes on.

        Their values are reset to zeros / empty strings so that every copy of a failed row
        (resumed run, shard, merge) holds the same bytes.
        """
        g, order, srows = self._rows(split, rows)
        if srows.size == 0:
            return
        self._check_space()
        reasons = [str(r) for r in reasons]
        if len(reasons) != len(srows):
            raise CacheError(f"source {self.kind}/{self.key}: {len(reasons)} reasons for {len(srows)} failed rows")
        try:
            for fname, spec in self.fields.items():
                _write_rows(g[fname], srows, empty_rows(spec, len(srows)))
            _write_rows(g["_error"], srows, np.asarray(reasons, dtype=object)[order])
            self._write_fp(g, srows, order, fingerprints)
            self._flush()
            _write_rows(g["_status"], srows, np.full(len(srows), ROW_FAILED, dtype=np.uint8))
        except OSError as exc:
            raise self._failed(exc) from None
        self._flush()

    def info(self) -> SourceInfo:
        return self.cache.source(self.kind, self.key)


def _row_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Split sorted unique ``rows`` into arithmetic runs ``(pos_start, pos_end, step)``.

    Contiguous blocks (step 1) and shard strides (``row % n == i``: step n) each become one
    hyperslab write instead of one write per row.
    """
    n = len(rows)
    if n == 1:
        return [(0, 1, 1)]
    diffs = np.diff(rows)
    changes = np.flatnonzero(diffs[1:] != diffs[:-1]) + 1  # positions in diffs where the step changes
    runs: list[tuple[int, int, int]] = []
    s = 0
    while s < n:
        if s == n - 1:
            runs.append((s, n, 1))
            break
        k = int(changes[np.searchsorted(changes, s, side="right")]) if changes.size and changes[-1] > s else n - 1
        runs.append((s, k + 1, int(diffs[s])))
        s = k + 1
    return runs


def _write_rows(ds: h5py.Dataset, rows: np.ndarray, vals: np.ndarray) -> None:
    """Write ``vals`` at sorted unique ``rows``, one strided slice per arithmetic run."""
    if rows.size == 0:
        return
    for s, e, step in _row_runs(rows):
        first, last = int(rows[s]), int(rows[e - 1])
        ds[first : last + 1 : step] = vals[s:e]


def _replace_h5(tmp: Path, final: Path, fill: Any, *, where: Path, action: str,
                before_replace: Any = None, make_parent: bool = False) -> None:
    """Write an HDF5 file under ``tmp`` with ``fill``, fsync it, then rename it over ``final`` (and
    fsync the folder): ``final`` is either the old file or the whole new one, never half of it.
    ``before_replace`` runs just before the rename (closing a handle on ``final``). An OS error is
    one line naming ``where`` and ``action``; on any failure ``tmp`` is removed."""
    try:
        if make_parent:
            final.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            fill(f)
        fsync_path(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, final)
        fsync_path(final.parent, folder=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(where, exc, action) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FeatureCache:
    """An open cache file. Use `FeatureCache.create` for writers and `FeatureCache.open` for readers."""

    def __init__(self, path: str | Path, h5: h5py.File, *, lock: CacheLock | None = None) -> None:
        self.path = Path(path)
        self._h5 = h5  # the index, always opened read-only (it is replaced, never edited)
        self._lock = lock  # held while open for writing
        self._files: dict[str, h5py.File] = {}  # source name -> its file, open for writing
        self._readers: dict[str, h5py.File] = {}  # source name -> its file, open read-only

    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def sources_dir(self) -> Path:
        return sources_dir(self.path)

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        dataset: str,
        label_space: str,
        label_names: Sequence[str],
        splits: Mapping[str, SplitSpec],
        split_seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> FeatureCache:
        """Create a cache for a dataset's splits, or reopen an existing one that matches exactly.

        An existing file of another dataset, label space or split manifest is refused rather
        than silently mixed (stale features are the worst kind of wrong result).
        """
        path = Path(path)
        if path.is_dir():
            raise CacheError(f"{path} is a folder, not a cache file; give a file name such as {path / 'cache.h5'}")
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(path.parent, exc, "create the cache's folder") from None
            lock = CacheLock(path)
            lock.acquire()
            try:
                if not path.exists():  # not created by another process meanwhile
                    tmp = path.with_name(path.name + ".creating")
                    try:
                        cls._write_new(tmp, dataset, label_space, label_names, splits, split_seed, extra)
                        fsync_path(tmp)
                        os.replace(tmp, path)  # a cache file either exists whole or not at all
                        fsync_path(path.parent, folder=True)
                    except OSError as exc:
                        tmp.unlink(missing_ok=True)
                        raise os_error(path, exc, "create the cache file") from None
                    except BaseException:
                        tmp.unlink(missing_ok=True)
                        raise
            finally:
                lock.release()
        cache = cls.open(
            path,
            mode="a",
            expect_dataset=dataset,
            expect_label_names=label_names,
            expect_manifests={s: sp.manifest_hash for s, sp in splits.items()},
        )
        missing = set(splits) - set(cache.splits)
        if missing:
            cache.close()
            raise CacheError(f"{path}: cache lacks split(s) {sorted(missing)}; use a new cache file")
        return cache

    @staticmethod
    def _write_new(
        tmp: Path,
        dataset: str,
        label_space: str,
        label_names: Sequence[str],
        splits: Mapping[str, SplitSpec],
        split_seed: int | None,
        extra: Mapping[str, Any] | None,
    ) -> None:
        if len(set(label_names)) != len(label_names) or not label_names:
            raise CacheError(f"label names must be unique and non-empty, got {list(label_names)}")
        with h5py.File(tmp, "w") as h5:
            h5.attrs["schema_version"] = SCHEMA_VERSION
            h5.attrs["vea_bench_version"] = __version__
            h5.attrs["dataset"] = dataset
            h5.attrs["label_space"] = label_space
            h5.attrs["label_names"] = json.dumps(list(label_names))
            h5.attrs["manifest_hashes"] = json.dumps({s: sp.manifest_hash for s, sp in splits.items()})
            h5.attrs["split_seed"] = -1 if split_seed is None else int(split_seed)
            h5.attrs["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            h5.attrs["extra"] = json.dumps(dict(extra or {}), default=str)
            for name, sp in splits.items():
                labels = np.asarray(sp.labels)
                if len(sp.ids) != len(labels):
                    raise CacheError(f"split '{name}': {len(sp.ids)} ids but {len(labels)} labels")
                g = h5.create_group(f"splits/{name}")
                g.create_dataset("ids", data=np.asarray(list(sp.ids), dtype=object), dtype=_h5_dtype(STR_DTYPE))
                g.create_dataset("labels", data=labels.astype(np.int16))

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: str = "r",
        *,
        expect_dataset: str | None = None,
        expect_label_names: Sequence[str] | None = None,
        expect_manifests: Mapping[str, str] | None = None,
    ) -> FeatureCache:
        """Open and validate a cache; every mismatch is a one-line `CacheError`.

        ``mode="a"`` (or ``"r+"``) opens it for writing: the writer's lock is taken (a second
        writer is refused) and a file of the older single-file layout gets its own source files.
        """
        path = Path(path)
        if mode not in ("r", "a", "r+"):
            raise CacheError(f"cache mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise CacheError(f"no cache file at {path}; run `vea-bench extract` first")
        if path.is_dir():
            raise CacheError(f"{path} is a folder, not a cache file")
        lock = None
        if mode != "r":
            lock = CacheLock(path)
            lock.acquire()
        try:
            cache = cls._open_index(path, lock, expect_dataset, expect_label_names, expect_manifests)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            try:
                cache._collect_garbage()
                if any(rel is None for rel in cache._links().values()):
                    cache._commit_index({})  # copy the sources of an old single-file cache out
            except BaseException:
                cache.close()
                raise
        return cache

    @classmethod
    def _open_index(
        cls,
        path: Path,
        lock: CacheLock | None,
        expect_dataset: str | None,
        expect_label_names: Sequence[str] | None,
        expect_manifests: Mapping[str, str] | None,
    ) -> FeatureCache:
        try:
            h5 = h5py.File(path, "r")
        except OSError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "unable to lock file" in msg.lower():
                raise CacheError(
                    f"{path}: the file is open for writing in another process (HDF5 file lock); "
                    f"wait for it to finish"
                ) from None
            if "permission" in msg.lower():
                raise CacheError(f"{path}: permission denied; make it readable for this user") from None
            try:
                is_h5 = h5py.is_hdf5(path)
            except OSError:
                is_h5 = False
            kind = "truncated or corrupt HDF5 file" if is_h5 else "not an HDF5 file"
            raise CacheError(f"{path}: {kind} ({msg[:120]})") from None
        cache = cls(path, h5, lock=lock)
        try:
            cache._validate(expect_dataset, expect_label_names, expect_manifests)
        except CacheError:
            h5.close()
            raise
        except Exception as exc:  # unreadable attributes or groups: damage, not a bug of ours
            h5.close()
            raise CacheError(f"{path}: corrupt cache file ({type(exc).__name__}: {str(exc)[:120]})") from None
        return cache

    def _validate(
        self,
        expect_dataset: str | None,
        expect_label_names: Sequence[str] | None,
        expect_manifests: Mapping[str, str] | None,
    ) -> None:
        attrs = self._h5.attrs
        if "schema_version" not in attrs or "label_names" not in attrs or "splits" not in self._h5:
            raise CacheError(f"{self.path}: not a vea-bench cache (no schema attributes)")
        if int(attrs["schema_version"]) != SCHEMA_VERSION:
            raise CacheError(
                f"{self.path}: cache schema {int(attrs['schema_version'])}, this vea-bench reads "
                f"schema {SCHEMA_VERSION}; re-extract"
            )
        if expect_dataset is not None and self.dataset != expect_dataset:
            raise CacheError(f"{self.path}: cache is of dataset '{self.dataset}', expected '{expect_dataset}'")
        if expect_label_names is not None and list(expect_label_names) != self.label_names:
            raise CacheError(
                f"{self.path}: cache label space ({', '.join(self.label_names)}) differs from "
                f"the expected ({', '.join(expect_label_names)})"
            )
        if expect_manifests is not None:
            have = self.manifest_hashes
            for split, h in expect_manifests.items():
                if split in have and have[split] != h:
                    raise CacheError(
                        f"{self.path}: split '{split}' manifest hash {have[split][:12]} differs from "
                        f"the dataset on disk ({h[:12]}); the images or labels changed, use a new cache"
                    )

    def _take_ballast(self) -> None:
        """Reserve ``BALLAST_BYTES`` on the cache's disk (best effort; see `BALLAST_BYTES`)."""
        path = self.sources_dir / BALLAST_NAME
        if path.exists():
            return
        try:
            self.sources_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"\0" * BALLAST_BYTES)  # written, not sparse: the blocks are really taken
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            path.unlink(missing_ok=True)

    def _release_ballast(self) -> None:
        (self.sources_dir / BALLAST_NAME).unlink(missing_ok=True)

    def close(self) -> None:
        self._close_files()
        for f in self._readers.values():
            if f.id.valid:
                f.close()
        self._readers.clear()
        if self._h5.id.valid:
            self._h5.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------ index writes
    def _links(self) -> dict[str, str | None]:
        """Source name -> file its link points to (relative to the index), None when stored inline."""
        out: dict[str, str | None] = {}
        for kind in SOURCE_KINDS:
            if kind not in self._h5:
                continue
            grp = self._h5[kind]
            for key in grp:
                link = grp.get(key, getlink=True)
                out[f"{kind}/{key}"] = link.filename if isinstance(link, h5py.ExternalLink) else None
        return out

    def _source_file(self, name: str, rel: str | None = None) -> Path | None:
        """Where a source's file is: in this index's own ``.sources`` folder (so a cache copied or
        renamed together with its folder works), else where the link itself points."""
        rel = rel if rel is not None else self._links().get(name)
        if rel is None:
            return None
        kind = name.split("/", 1)[0]
        own = self.sources_dir / kind / Path(rel).name
        return own if own.exists() else self.path.parent / rel

    def _new_source_path(self, kind: str, key: str) -> tuple[Path, str]:
        safe = re.sub(r"[^A-Za-z0-9._+-]", "_", key)[:80] or "source"
        fname = f"{safe}.{secrets.token_hex(4)}.h5"
        return self.sources_dir / kind / fname, f"{self.path.name}{SOURCES_SUFFIX}/{kind}/{fname}"

    def _require_writable(self) -> None:
        if not self.writable:
            raise CacheError(f"{self.path}: opened read-only")

    def _commit_index(self, changes: Mapping[str, str | None]) -> None:
        """Replace the index atomically with one whose links are the current ones updated by ``changes``.

        ``changes`` maps a source name to its new file (relative to the index) or None to drop
        it. Sources still stored inline (old layout) are first copied out into their own files;
        one that cannot be copied (damaged) is dropped with a warning.
        """
        self._require_writable()
        links = self._links()
        for name, rel in list(links.items()):
            if rel is None and name not in changes:
                links[name] = self._externalize(name)
        for name, rel in changes.items():
            links[name] = rel
        keep = {}
        for n, r in links.items():
            if r is None:
                continue
            f = self._source_file(n, r)
            own = self.sources_dir / n.split("/", 1)[0] / Path(r).name
            keep[n] = f"{self.path.name}{SOURCES_SUFFIX}/{n.split('/', 1)[0]}/{Path(r).name}" if f == own else r
        self._close_readers()
        tmp = self.path.with_name(f"{self.path.name}.index-{secrets.token_hex(4)}.tmp")

        def fill(new: h5py.File) -> None:
            for k, v in self._h5.attrs.items():
                new.attrs[k] = v
            self._h5.copy("splits", new)
            for name in sorted(keep):
                new[name] = h5py.ExternalLink(keep[name], "/" + name)

        try:
            _replace_h5(tmp, self.path, fill, where=self.path, action="rewrite the cache index",
                        before_replace=self._h5.close)
        finally:
            if not self._h5.id.valid:
                self._h5 = h5py.File(self.path, "r")
        for name in [n for n in self._files if n not in keep]:
            f = self._files.pop(name)
            path = Path(f.filename)
            f.close()
            _writing_marker(path).unlink(missing_ok=True)
        self._collect_garbage()

    def _close_readers(self) -> None:
        for f in self._readers.values():
            if f.id.valid:
                f.close()
        self._readers.clear()

    def _externalize(self, name: str) -> str | None:
        kind, key = name.split("/", 1)
        final, rel = self._new_source_path(kind, key)
        try:
            self._write_source_file(final, lambda f: self._h5.copy(self._h5[name], f.require_group(kind), key))
        except CacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged inline source is dropped, the rest kept
            log.warning("%s: dropping damaged source %s while moving it to its own file (%s)",
                        self.path, name, _first_line(exc))
            return None
        return rel

    @staticmethod
    def _write_source_file(final: Path, fill: Any) -> None:
        """Create a source file under a temporary name, fsync it, then rename it into place."""
        _replace_h5(final.with_name(final.name + ".creating"), final, fill, where=final.parent,
                    action="create a source file", make_parent=True)

    def _collect_garbage(self) -> None:
        """Delete source files no link points to (replaced, dropped, or left by a killed creation)."""
        d = self.sources_dir
        if not self.writable or not d.is_dir():
            return
        used = {p.resolve() for n, r in self._links().items() if r is not None
                and (p := self._source_file(n, r)) is not None}
        used |= {_writing_marker(u) for u in used}  # a writer's marker lives as long as its file
        for f in d.rglob("*"):
            if f.is_file() and f.resolve() not in used and not (f.name == BALLAST_NAME and self._files):
                try:
                    f.unlink()
                except OSError:
                    pass
        for stale in self.path.parent.glob(f"{self.path.name}.index-*.tmp"):
            stale.unlink(missing_ok=True)

    def _open_for_writing(self, name: str) -> h5py.File:
        f = self._files.get(name)
        if f is not None and f.id.valid:
            return f
        p = self._source_file(name)
        if p is None:
            raise CacheError(f"{self.path}: source {name} is stored in the index itself")
        r = self._readers.pop(name, None)
        if r is not None and r.id.valid:
            r.close()  # HDF5 refuses to reopen for writing a file this process has open read-only
        if not self._files:
            self._take_ballast()
        marker = _writing_marker(p)
        try:
            if marker.exists() and p.exists():
                # The last writer of this file died without closing it (SIGKILL, a crash, power
                # loss): HDF5's string heap may be half-written. Copy its readable rows into a
                # fresh file; rows that do not read back are recomputed.
                p = self._rebuild(name, p)
                marker = _writing_marker(p)
            marker.touch()
            fsync_path(marker.parent, folder=True)
            f = h5py.File(p, "r+")
        except OSError as exc:
            if not self._files:
                self._release_ballast()
            if is_lock_error(exc):
                raise CacheError(f"{p}: open in another process; wait for it to finish") from None
            if p.exists() and errno_of(exc) is None:
                raise DamagedSourceError(
                    f"{self.path}: source {name} is damaged ({_first_line(exc)[:100]}); "
                    f"run `vea-bench cache repair {self.path}` to drop it, then extract it again"
                ) from None
            if not p.exists():
                raise DamagedSourceError(
                    f"{self.path}: source {name} has lost its file {p.name}; "
                    f"run `vea-bench cache repair {self.path}` to drop it, then extract it again"
                ) from None
            raise os_error(p, exc, f"open source {name} for writing") from None
        self._files[name] = f
        return f

    def release_handles(self) -> None:
        """Close every source file this process holds (they reopen on next use). Call before
        forking workers: a child inheriting an HDF5 file keeps its lock after the parent exits."""
        self._close_files()
        self._close_readers()

    def _close_files(self) -> None:
        if self._files:
            self._release_ballast()  # room for the final flush, whatever happened before
        for f in self._files.values():
            try:
                if f.id.valid:
                    path = Path(f.filename)
                    f.close()
                    _writing_marker(path).unlink(missing_ok=True)  # closed cleanly
            except OSError as exc:  # a full disk can refuse the final flush; the rows before it are kept
                log.warning("%s", os_error(self.path, exc, "close a source file"))
        self._files.clear()

    def _rebuild(self, name: str, old_path: Path) -> Path:
        """Copy a source's readable rows into a new file and link it; returns the new file."""
        kind, key = name.split("/", 1)
        final, rel = self._new_source_path(kind, key)
        try:
            old = h5py.File(old_path, "r")
        except OSError as exc:
            raise DamagedSourceError(
                f"{self.path}: source {name} is damaged ({_first_line(exc)[:100]}); "
                f"run `vea-bench cache repair {self.path}` to drop it, then extract it again"
            ) from None
        with old:
            g = old[name]
            specs = {n: FieldSpec.from_json(v) for n, v in json.loads(g.attrs["fields"]).items()}
            prov = json.loads(g.attrs.get("provenance", "{}"))
            split_rows = {s: int(g[s]["_status"].shape[0]) for s in g}

            def fill(f: h5py.File) -> None:
                ng = create_source_group(f, name, specs, prov, split_rows)
                for split in split_rows:
                    _copy_readable_rows(g[split], ng[split], specs)

            self._write_source_file(final, fill)
        self._commit_index({name: rel})
        log.warning("%s: source %s was not closed by its last writer; copied its readable rows to %s",
                    self.path, name, final.name)
        return final

    def source_group(self, name: str) -> h5py.Group:
        """A source's group: from its file open for writing, else through the index's link."""
        f = self._files.get(name) or self._readers.get(name)
        if f is not None and f.id.valid:
            return f[name]
        try:
            p = self._source_file(name)
            if p is None:
                return self._h5[name]  # old layout: stored in the index itself
            if name not in self._links():
                raise KeyError(f"no source {name}")
            if not p.exists():
                raise KeyError(f"its file {p.name} is missing")
            f = h5py.File(p, "r")
            self._readers[name] = f
            return f[name]
        except (KeyError, OSError) as exc:
            if is_lock_error(exc):
                raise CacheError(
                    f"{self.path}: source {name} is being written by another process; wait for it to finish"
                ) from None
            raise DamagedSourceError(
                f"{self.path}: source {name} is damaged or its file is missing ({_first_line(exc)[:100]}); "
                f"run `vea-bench cache repair {self.path}` to drop it, then extract it again"
            ) from None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- metadata
    @property
    def dataset(self) -> str:
        return str(self._h5.attrs["dataset"])

    @property
    def label_space(self) -> str:
        return str(self._h5.attrs.get("label_space", ""))

    @property
    def label_names(self) -> list[str]:
        return list(json.loads(self._h5.attrs["label_names"]))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def manifest_hashes(self) -> dict[str, str]:
        return dict(json.loads(self._h5.attrs["manifest_hashes"]))

    @property
    def split_seed(self) -> int | None:
        s = int(self._h5.attrs.get("split_seed", -1))
        return None if s < 0 else s

    @property
    def splits(self) -> list[str]:
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(self._h5["splits"], key=lambda s: (order.get(s, 9), s))

    def attrs(self) -> dict[str, Any]:
        """File attributes as plain Python values (for provenance in run records)."""
        out: dict[str, Any] = {}
        for k, v in self._h5.attrs.items():
            out[k] = v.item() if hasattr(v, "item") else v
        for k in ("label_names", "manifest_hashes", "extra"):
            if k in out:
                out[k] = json.loads(out[k])
        return out

    def raw_attrs(self) -> dict[str, Any]:
        """The index's attributes exactly as stored (JSON still encoded), for `verify_cache`,
        which must report a damaged attribute rather than fail on decoding it."""
        return dict(self._h5.attrs.items())

    def split_group(self, split: str) -> h5py.Group:
        """The index's ``splits/<split>`` group (ids, labels) for whole-file checks."""
        self._check_split(split)
        return self._h5[f"splits/{split}"]

    def top_level_names(self) -> list[str]:
        """Names of the index's top-level groups (``splits`` and the source kinds present)."""
        return list(self._h5)

    def copy_index_into(self, h5: h5py.File) -> None:
        """Copy the index's attributes and splits (not the sources) into another open file:
        the start of a new cache of the same dataset, e.g. a merge's output."""
        for k, v in self._h5.attrs.items():
            h5.attrs[k] = v
        self._h5.copy("splits", h5)

    def provenance(self) -> dict[str, Any]:
        """What a run record stores about the cache it read: file, dataset, hashes, sources."""
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "label_names": self.label_names,
            "manifest_hashes": self.manifest_hashes,
            "split_seed": self.split_seed,
            "sources": {s.name: s.provenance for s in self.sources()},
        }

    def ids(self, split: str) -> list[str]:
        self._check_split(split)
        return [x.decode("utf-8") if isinstance(x, bytes) else x for x in self._h5[f"splits/{split}/ids"][()]]

    def labels(self, split: str) -> np.ndarray:
        self._check_split(split)
        return self._h5[f"splits/{split}/labels"][()].astype(np.int64)

    def num_rows(self, split: str) -> int:
        self._check_split(split)
        return int(self._h5[f"splits/{split}/labels"].shape[0])

    def _check_split(self, split: str) -> None:
        if split not in self._h5["splits"]:
            raise CacheError(f"{self.path}: no split '{split}' (has {', '.join(self.splits)})")

    # ----------------------------------------------------------------- sources
    def has_source(self, kind: str, key: str) -> bool:
        return f"{kind}/{key}" in self._h5

    def source_keys(self, kind: str) -> list[str]:
        return sorted(self._h5[kind]) if kind in self._h5 else []

    def sources(self, kind: str | None = None) -> list[SourceInfo]:
        kinds = [kind] if kind else list(SOURCE_KINDS)
        return [self.source(k, key) for k in kinds for key in self.source_keys(k)]

    def source(self, kind: str, key: str) -> SourceInfo:
        if not self.has_source(kind, key):
            have = ", ".join(s.name for s in self.sources()) or "none"
            raise CacheError(f"{self.path}: no source {kind}/{key} (sources: {have})")
        name = f"{kind}/{key}"
        g = self.source_group(name)
        try:
            fields = {n: FieldSpec.from_json(v) for n, v in json.loads(g.attrs["fields"]).items()}
            prov = json.loads(g.attrs.get("provenance", "{}"))
            counts: dict[str, dict[str, int]] = {}
            for split in self.splits:
                if split not in g:
                    raise KeyError(f"no group for split '{split}'")
                sg = g[split]
                lacking = [f for f in (*fields, "_status", "_error") if f not in sg]
                if lacking:
                    raise KeyError(f"'{split}' lacks dataset(s) {', '.join(lacking)}")
                st = sg["_status"][()]
                counts[split] = {
                    "rows": int(st.size),
                    "done": int((st == ROW_OK).sum()),
                    "failed": int((st == ROW_FAILED).sum()),
                    "missing": int((st == ROW_MISSING).sum()),
                }
        except (KeyError, OSError, ValueError, TypeError, IndexError, CacheError) as exc:
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else _first_line(exc)
            raise DamagedSourceError(
                f"{self.path}: source {name} is damaged ({reason[:120]}); "
                f"run `vea-bench cache repair {self.path}` to drop it, then extract it again"
            ) from None
        return SourceInfo(kind, key, fields, prov, counts)

    def resolve_key(self, kind: str, key: str | None = None) -> str:
        """The key to use for ``kind``: the given one, or the only one present (else a one-line error)."""
        keys = self.source_keys(kind)
        if key is not None:
            if key not in keys:
                raise CacheError(
                    f"{self.path}: no {kind} source '{key}' (has: {', '.join(keys) or 'none'}); "
                    f"run `vea-bench extract` with it"
                )
            return key
        if not keys:
            raise CacheError(f"{self.path}: no {kind} source; run `vea-bench extract` to add one")
        if len(keys) > 1:
            raise CacheError(f"{self.path}: several {kind} sources ({', '.join(keys)}); choose one by key")
        return keys[0]

    def writer(
        self,
        kind: str,
        key: str,
        fields: Mapping[str, FieldSpec | tuple[tuple[int, ...], str]],
        provenance: Mapping[str, Any],
        *,
        overwrite: bool = False,
    ) -> SourceWriter:
        """A writer for source ``kind/key``; reopening an existing one resumes it.

        Resuming is allowed only with the same fields and the same stable provenance (model,
        revision, prompt, decoding, image size): otherwise rows of two models would mix.
        """
        if kind not in SOURCE_KINDS:
            raise CacheError(f"unknown source kind '{kind}' (choices: {', '.join(SOURCE_KINDS)})")
        if not key or "/" in key:
            raise CacheError(f"invalid source key '{key}' (non-empty, no '/')")
        self._require_writable()
        specs = {n: f if isinstance(f, FieldSpec) else FieldSpec(tuple(f[0]), str(f[1])) for n, f in fields.items()}
        prov = dict(provenance)
        prov.setdefault("versions", package_versions())
        prov.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        prov = _json_roundtrip(prov)  # compare exactly what was stored, not tuples against lists
        name = f"{kind}/{key}"
        if name in self._h5 and not overwrite:
            try:
                info = self.source(kind, key)
            except DamagedSourceError as exc:
                # Its rows cannot be trusted or read: recompute the source from scratch.
                log.warning("%s; recomputing it", str(exc).split("; run `")[0])
                self._files.pop(name, None)
                info = None
            if info is not None:
                if info.fields != specs:
                    raise CacheError(
                        f"{self.path}: source {name} exists with other fields; use another key or overwrite"
                    )
                old, new = stable_provenance(info.provenance), stable_provenance(prov)
                if old != new:
                    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                    raise CacheError(
                        f"{self.path}: source {name} was written with other settings ({', '.join(diff)}); "
                        f"use another key or overwrite"
                    )
                if any(f.dtype == STR_DTYPE for f in specs.values()):
                    todo = sum(c["missing"] for c in info.counts.values())
                    str_bytes = sum(_STR_ROW_BYTES for f in specs.values() if f.dtype == STR_DTYPE)
                    check_free_space(self.sources_dir, todo * str_bytes,
                                     f"the {todo:,} missing rows of {name} (~{str_bytes} bytes/row of text)")
                return SourceWriter(self, kind, key, specs)
        if not specs:
            raise CacheError(f"source {name}: no fields given")
        bad = [n for n in specs if not n or n.startswith("_") or "/" in n]
        if bad:
            raise CacheError(f"source {name}: invalid field name(s) {bad} (no leading '_', no '/')")
        split_rows = {s: self.num_rows(s) for s in self.splits}
        n = sum(split_rows.values())
        per_row = _row_bytes(specs)
        check_free_space(self.sources_dir, n * per_row, f"source {name} ({n:,} rows x ~{per_row:,} bytes/row)")
        final, rel = self._new_source_path(kind, key)
        self._write_source_file(final, lambda f: create_source_group(f, name, specs, prov, split_rows))
        old = self._files.pop(name, None)
        if old is not None and old.id.valid:
            old.close()
        self._commit_index({name: rel})
        return SourceWriter(self, kind, key, specs)

    def delete_source(self, kind: str, key: str) -> None:
        """Drop a source (its link and its file); a damaged one can always be dropped."""
        self._require_writable()
        name = f"{kind}/{key}"
        if name not in self._links():
            self.source(kind, key)  # the one-line "no source" error
        self._commit_index({name: None})

    def damaged_sources(self) -> dict[str, str]:
        """Sources that cannot be read, with the reason: file missing or unopenable, datasets lost,
        or data that does not read back in full (truncation)."""
        out: dict[str, str] = {}
        for name in self._links():
            kind, key = name.split("/", 1)
            try:
                info = self.source(kind, key)
                g = self.source_group(name)
                for split in info.counts:
                    for fname in (*info.fields, "_status", "_error"):
                        ds = g[f"{split}/{fname}"]
                        step = max(1, min(ds.shape[0] or 1, 8192))
                        for lo in range(0, ds.shape[0], step):
                            ds[lo : lo + step]
            except DamagedSourceError as exc:
                out[name] = str(exc).split(" is damaged ", 1)[-1].split("; run `")[0].strip()
            except CacheError:
                raise  # in use by another process: not damage
            except Exception as exc:  # noqa: BLE001 - unreadable data is the damage being looked for
                out[name] = f"({type(exc).__name__}: {_first_line(exc)[:100]})"
        return out

    def fingerprints(self, kind: str, key: str, split: str) -> tuple[np.ndarray | None, np.ndarray]:
        """A source's stored per-row image fingerprints (None if not recorded) and its row status."""
        self._check_split(split)
        g = self.source_group(f"{kind}/{key}")[split]
        return (g["_fp"][()] if "_fp" in g else None), g["_status"][()]

    def read(
        self,
        kind: str,
        key: str | None,
        split: str,
        fields: Sequence[str] | None = None,
        *,
        allow_incomplete: bool = False,
    ) -> SourceData:
        """Arrays of a source for a split; an incomplete source is refused unless asked for."""
        key = self.resolve_key(kind, key)
        info = self.source(kind, key)
        self._check_split(split)
        c = info.counts.get(split)
        if c is None:
            raise CacheError(f"{self.path}: source {info.name} has no split '{split}'")
        if c["missing"] and not allow_incomplete:
            raise CacheError(
                f"{self.path}: source {info.name} is incomplete on '{split}' "
                f"({c['missing']} of {c['rows']} rows missing); resume `vea-bench extract`"
            )
        g = self.source_group(info.name)[split]
        names = list(fields) if fields is not None else list(info.fields)
        unknown = [n for n in names if n not in info.fields]
        if unknown:
            raise CacheError(f"{self.path}: source {info.name} has no field(s) {unknown}")
        try:
            arrays = {n: decode_strings(g[n][()]) for n in names}
            status = g["_status"][()]
        except (OSError, KeyError, ValueError) as exc:
            raise DamagedSourceError(
                f"{self.path}: source {info.name} is damaged ({_first_line(exc)[:100]}); "
                f"run `vea-bench cache repair {self.path}` to drop it, then extract it again"
            ) from None
        missing = status == ROW_MISSING
        if missing.any():  # never written: show zeros / '' rather than whatever the disk held
            for n in names:
                arrays[n][missing] = "" if info.fields[n].dtype == STR_DTYPE else 0
        errors = [e.decode("utf-8") if isinstance(e, bytes) else e for e in g["_error"][()]]
        return SourceData(arrays, status, errors)
