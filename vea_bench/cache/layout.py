"""What a cache looks like on disk: names, row states, field specs, and how a source's arrays are laid out.

Two layouts, each for a purpose:

- **Per-source files** (for writing; what `extract`, `cache merge` and `cache repair` write)::

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

  A cache in this layout is the index *and* its ``.sources`` folder: copy or move both (or use
  `vea-bench cache copy|move`, which also points the copy's links at its own folder).

- **Packed** (for moving and archiving; what `vea-bench cache pack` writes): the same index with
  every ``<kind>/<key>`` stored inside it as a group instead of a link. Every command reads it as
  it is; the first writer unpacks its sources into their own files. Caches written before the
  per-source layout existed are packed files.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vea_bench.errors import CacheError

SCHEMA_VERSION = 1
SOURCE_KINDS: tuple[str, ...] = ("visual", "vlm", "teacher", "backbone")
ROW_MISSING, ROW_OK, ROW_FAILED = 0, 1, 2

# Provenance keys that may differ between shards or resumed runs of the *same* source.
VOLATILE_PROVENANCE = frozenset({"time", "created_at", "shard", "host", "versions", "elapsed_s"})

# The dtype spelling of a variable-length UTF-8 string field.
STR_DTYPE = "str"
SOURCES_SUFFIX = ".sources"
TARGET_CHUNK_BYTES = 1 << 20
# Bytes per row assumed for a string field when estimating the space a run needs (answers,
# parse statuses and failure reasons are short; HDF5's heap adds its overhead).
STR_ROW_BYTES = 256
# Per-row bytes of the auxiliary arrays: _status (1), _fp (8) and the _error heap reference.
_AUX_ROW_BYTES = 1 + 8 + 16


def sources_dir(path: str | Path) -> Path:
    """The folder holding the per-source files of cache ``path`` (``fi.h5`` -> ``fi.h5.sources``)."""
    p = Path(path)
    return p.with_name(p.name + SOURCES_SUFFIX)


def lock_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".lock")


def cache_files(path: str | Path) -> list[Path]:
    """Every file that belongs to cache ``path``: the index, its source files and its lock file."""
    p = Path(path)
    out = [p] if p.is_file() else []
    d = sources_dir(p)
    if d.is_dir():
        out.extend(sorted(x for x in d.rglob("*") if x.is_file()))
    if lock_path(p).is_file():
        out.append(lock_path(p))
    return out


def remove_cache(path: str | Path) -> None:
    """Delete a cache: its index, its source folder and its lock file."""
    p = Path(path)
    p.unlink(missing_ok=True)
    shutil.rmtree(sources_dir(p), ignore_errors=True)
    lock_path(p).unlink(missing_ok=True)


def discard(path: Path) -> None:
    """Remove a file if it is there; a folder that cannot be written (read-only, no permission)
    leaves it, the error that led here being the one reported."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def split_name(name: str) -> tuple[str, str]:
    """``"visual/vit"`` -> ``("visual", "vit")``."""
    kind, key = name.split("/", 1)
    return kind, key


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (HDF5 errors run over several), at most 160 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


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


def field_specs(group: h5py.Group) -> dict[str, FieldSpec]:
    """The fields a source group declares in its ``fields`` attribute."""
    return {n: FieldSpec.from_json(v) for n, v in json.loads(group.attrs["fields"]).items()}


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


def stored_bytes(group: h5py.Group) -> int:
    """Bytes the datasets under ``group`` take in their file (what copying it needs)."""
    total = 0

    def add(_: str, obj: Any) -> None:
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(obj.id.get_storage_size())

    group.visititems(add)
    return total


def h5_dtype(dtype: str) -> Any:
    return h5py.string_dtype("utf-8") if dtype == STR_DTYPE else np.dtype(dtype)


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """HDF5 strings as ``str`` objects (h5py hands back ``bytes``); other arrays unchanged."""
    if arr.dtype.kind in ("O", "S"):
        return np.array([a.decode("utf-8") if isinstance(a, bytes) else a for a in arr], dtype=object)
    return arr


def stable_provenance(prov: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance that must agree for rows to belong to one source (volatile keys dropped)."""
    return {k: v for k, v in prov.items() if k not in VOLATILE_PROVENANCE}


def json_roundtrip(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``obj`` looks like after being stored as a JSON attribute (tuples become lists)."""
    return dict(json.loads(json.dumps(dict(obj), default=str)))


def empty_rows(spec: FieldSpec, n: int) -> np.ndarray:
    """The value of rows that hold no result (failed or missing): zeros, or empty strings."""
    if spec.dtype == STR_DTYPE:
        return np.asarray([""] * n, dtype=object)
    return np.zeros((n, *spec.shape), dtype=spec.dtype)


def row_bytes(specs: Mapping[str, FieldSpec]) -> int:
    """Estimated bytes one row of a source takes on disk (numeric exact, strings estimated)."""
    n = _AUX_ROW_BYTES
    for spec in specs.values():
        if spec.dtype == STR_DTYPE:
            n += STR_ROW_BYTES
        else:
            n += int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    return n


def _chunk_rows(n: int, shape: tuple[int, ...], dtype: str) -> int:
    itemsize = 16 if dtype == STR_DTYPE else np.dtype(dtype).itemsize
    row = max(1, int(np.prod(shape, dtype=np.int64)) * itemsize)
    return int(max(1, min(n, TARGET_CHUNK_BYTES // row)))


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
        sg.create_dataset("_error", shape=(n,), dtype=h5_dtype(STR_DTYPE), chunks=(max(1, min(n, 4096)),) if n else None)
    return g


def _create_field(g: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> h5py.Dataset:
    """Numeric arrays: contiguous, file space allocated now (no chunk index to update later, so
    a SIGKILL between flushes cannot leave dangling metadata, and reads/writes are plain file
    I/O). Strings: chunked variable-length, allocated as written."""
    if dtype == STR_DTYPE:
        chunks = (_chunk_rows(shape[0], shape[1:], dtype), *shape[1:]) if shape[0] else None
        return g.create_dataset(name, shape=shape, dtype=h5_dtype(STR_DTYPE), chunks=chunks)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # ``_status`` must read 0 (missing) before it is written; data fields are never read where
    # the status says missing, so they skip the fill (a 700 MB source is created instantly).
    fill_time = "alloc" if name in ("_status", "_fp") else "never"
    return g.create_dataset(
        name, shape=shape, dtype=np.dtype(dtype), dcpl=dcpl, fillvalue=0, fill_time=fill_time
    )


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


def write_rows(ds: h5py.Dataset, rows: np.ndarray, vals: np.ndarray) -> None:
    """Write ``vals`` at sorted unique ``rows``, one strided slice per arithmetic run."""
    if rows.size == 0:
        return
    for s, e, step in _row_runs(rows):
        first, last = int(rows[s]), int(rows[e - 1])
        ds[first : last + 1 : step] = vals[s:e]


def copy_readable_rows(src: h5py.Group, dst: h5py.Group, specs: Mapping[str, FieldSpec]) -> None:
    """Copy one split of a source; rows whose strings or status do not read back become missing."""
    st = np.asarray(src["_status"][()], dtype=np.uint8).copy()
    n = st.size
    if n == 0:
        return
    numeric = [f for f, sp in specs.items() if sp.dtype != STR_DTYPE] + (["_fp"] if "_fp" in src else [])
    strings = [f for f, sp in specs.items() if sp.dtype == STR_DTYPE] + ["_error"]
    for fname in numeric:
        per_row = src[fname].dtype.itemsize * int(np.prod(src[fname].shape[1:]))
        step = max(1, TARGET_CHUNK_BYTES * 16 // max(1, per_row))
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


# Rows per block when streaming a field: keeps one block of output plus one block of one input
# in memory (about 2 x 64 MB), whatever the size of the source.
_BLOCK_BYTES = 64 << 20


def rows_per_block(specs: Mapping[str, FieldSpec], n: int) -> int:
    """How many rows of the widest field of ``specs`` fit in one streaming block."""
    widest = 1
    for spec in specs.values():
        item = 64 if spec.dtype == STR_DTYPE else np.dtype(spec.dtype).itemsize
        widest = max(widest, int(np.prod(spec.shape, dtype=np.int64)) * item)
    return int(max(1, min(max(n, 1), _BLOCK_BYTES // widest)))
