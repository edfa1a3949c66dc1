"""Writing one source by row index: values first, status last, every write flushed.

Sources are written by row index into arrays preallocated at creation (numeric fields are
contiguous with their file space allocated up front, so a write touches raw data only and never
the file's metadata) and flushed after every write, values first and ``_status`` last, so a
killed job loses at most its current batch, readers never see half-written rows, and a resumed
run computes exactly the missing rows and ends byte-identical to an uninterrupted one. Failed
rows hold zeros (and empty strings) so that shards and resumed runs compare exactly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from vea_bench.cache.guard import check_free_space
from vea_bench.cache.layout import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    STR_DTYPE,
    STR_ROW_BYTES,
    FieldSpec,
    SourceInfo,
    empty_rows,
    stable_provenance,
    write_rows,
)
from vea_bench.cache.sources import SourceFiles
from vea_bench.errors import CacheError, os_error



class WriterHost(Protocol):
    """What a `SourceWriter` needs of its cache (`FeatureCache` provides it)."""

    path: Path
    _files: SourceFiles

    @property
    def sources_dir(self) -> Path: ...

    def _open_for_writing(self, name: str) -> h5py.File: ...

    def source_group(self, name: str) -> h5py.Group: ...

    def source(self, kind: str, key: str) -> SourceInfo: ...


class SourceWriter:
    """Writes rows of one source by index; every write is flushed so a kill loses at most one batch."""

    def __init__(self, cache: WriterHost, kind: str, key: str, fields: dict[str, FieldSpec]) -> None:
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
        low = self.cache._files.reserve.low_space()
        if low is not None:
            raise self._failed(low)

    def _failed(self, exc: OSError) -> CacheError:
        """A write failed (typically: the disk is full): free the reserve so HDF5 can flush the
        file's metadata and close it cleanly, then report in one line."""
        self.cache._files.reserve.release()
        f = self.cache._files.writers.get(self.name)
        if f is None or not f.id.valid:
            return os_error(self.cache.sources_dir, exc, f"write source {self.name}")
        try:
            f.flush()
        except OSError:
            pass
        return os_error(f.filename, exc, f"write source {self.name}")

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
            write_rows(g["_status"], srows, np.full(len(srows), ROW_MISSING, dtype=np.uint8))
        except OSError as exc:
            raise self._failed(exc) from None
        self._flush()

    def _write_fp(self, g: h5py.Group, srows: np.ndarray, order: np.ndarray, fingerprints: Any) -> None:
        if fingerprints is None or "_fp" not in g:
            return
        fp = np.asarray(fingerprints, dtype=np.uint64)
        if fp.shape != (len(srows),):
            raise CacheError(f"source {self.name}: {fp.shape[0] if fp.ndim else 0} fingerprints for {len(srows)} rows")
        write_rows(g["_fp"], srows, fp[order])

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
            write_rows(g["_error"], was_failed, np.asarray([""] * was_failed.size, dtype=object))

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
                write_rows(g[fname], srows, vals)
            self._clear_errors(g, srows)
            self._write_fp(g, srows, order, fingerprints)
            self._flush()  # values on disk before the status says they are there
            write_rows(g["_status"], srows, np.full(len(srows), ROW_OK, dtype=np.uint8))
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
                write_rows(g[fname], srows, empty_rows(spec, len(srows)))
            write_rows(g["_error"], srows, np.asarray(reasons, dtype=object)[order])
            self._write_fp(g, srows, order, fingerprints)
            self._flush()
            write_rows(g["_status"], srows, np.full(len(srows), ROW_FAILED, dtype=np.uint8))
        except OSError as exc:
            raise self._failed(exc) from None
        self._flush()

    def info(self) -> SourceInfo:
        return self.cache.source(self.kind, self.key)


def check_new_fields(name: str, specs: Mapping[str, FieldSpec]) -> None:
    """Refuse a new source without fields or with names the layout reserves."""
    if not specs:
        raise CacheError(f"source {name}: no fields given")
    bad = [n for n in specs if not n or n.startswith("_") or "/" in n]
    if bad:
        raise CacheError(f"source {name}: invalid field name(s) {bad} (no leading '_', no '/')")


def check_resume(cache: Path, info: SourceInfo, specs: Mapping[str, FieldSpec], prov: Mapping[str, Any],
                 folder: Path) -> None:
    """Resuming ``info`` is allowed only with the same fields and the same stable provenance
    (model, revision, prompt, decoding, image size): otherwise rows of two models would mix.
    The text of the missing rows must fit on the disk."""
    name = info.name
    if info.fields != dict(specs):
        raise CacheError(f"{cache}: source {name} exists with other fields; use another key or overwrite")
    old, new = stable_provenance(info.provenance), stable_provenance(prov)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CacheError(
            f"{cache}: source {name} was written with other settings ({', '.join(diff)}); use another key or overwrite"
        )
    if any(f.dtype == STR_DTYPE for f in specs.values()):
        todo = sum(c["missing"] for c in info.counts.values())
        str_bytes = sum(STR_ROW_BYTES for f in specs.values() if f.dtype == STR_DTYPE)
        check_free_space(folder, todo * str_bytes, f"the {todo:,} missing rows of {name} (~{str_bytes} bytes/row of text)")
