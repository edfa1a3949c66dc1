"""Whole-file cache operations: sharding helpers, merging shards, end-to-end verification, summaries.

Extraction of a large dataset can run as ``n`` separate processes (``--shard i/n``), each writing
rows ``row % n == i`` into its own cache file next to the final one; `merge_caches` then combines
them (and any cache already at the output path) into one file, refusing anything that would mix
results of different datasets, label spaces, splits, models or settings.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vea_bench.cache.store import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    SCHEMA_VERSION,
    SOURCE_KINDS,
    STR_DTYPE,
    VOLATILE_PROVENANCE,
    DamagedSourceError,
    FeatureCache,
    FieldSpec,
    SourceInfo,
    cache_files,
    create_source_group,
    decode_strings,
    empty_rows,
    remove_cache,
    sources_dir,
    stable_provenance,
)
from vea_bench.cache.guard import CacheLock, fsync_path, os_error
from vea_bench.errors import CacheError, ConfigError
from vea_bench.hashing import manifest_hash
from vea_bench.progress import Progress, ensure

# Rows per block when streaming a field: keeps one block of output plus one block of one input
# in memory (about 2 x 64 MB), whatever the size of the source.
_BLOCK_BYTES = 64 << 20

__all__ = [
    "MergeReport",
    "RepairReport",
    "VerifyReport",
    "cache_summary",
    "delete_cache_files",
    "merge_caches",
    "parse_shard",
    "repair_cache",
    "shard_path",
    "shard_rows",
    "verify_cache",
]


# ------------------------------------------------------------------------------------ shards
def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based ``i`` < ``n``) as given to ``--shard``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard expects 'i/n' with 0 <= i < n (e.g. 0/4), got '{text}'")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n and n >= 1 (shards are numbered from 0)")
    return i, n


def shard_rows(rows: np.ndarray, index: int, count: int) -> np.ndarray:
    """The rows of shard ``index`` of ``count``: those with ``row % count == index``.

    Assignment by row number (not by position in ``rows``) keeps a row in the same shard when a
    shard is resumed with only its missing rows.
    """
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: need 0 <= index < count")
    rows = np.asarray(rows, dtype=np.int64)
    return rows[rows % count == index]


def shard_path(cache_path: str | Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` writes: ``fi.h5`` -> ``fi.shard-0-of-2.h5`` beside it."""
    p = Path(cache_path)
    suffix = p.suffix or ".h5"
    return p.with_name(f"{p.stem if p.suffix else p.name}.shard-{index}-of-{count}{suffix}")


# ------------------------------------------------------------------------------------- merge
@dataclass
class MergeReport:
    """What a merge produced: the output's sources and how many rows each input contributed."""

    output: Path
    inputs: list[Path]
    sources: list[SourceInfo]
    rows_from: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.sources)


def _same_space(ref: FeatureCache, other: FeatureCache) -> None:
    """Refuse, naming ``other``, a cache that is not of exactly the same dataset and splits."""
    where = f"{other.path}"
    if other.dataset != ref.dataset:
        raise CacheError(f"{where}: dataset '{other.dataset}' differs from '{ref.dataset}' in {ref.path}")
    if other.label_names != ref.label_names:
        raise CacheError(
            f"{where}: label names ({', '.join(other.label_names)}) differ from those in {ref.path} "
            f"({', '.join(ref.label_names)})"
        )
    if other.manifest_hashes != ref.manifest_hashes or other.splits != ref.splits:
        raise CacheError(f"{where}: split manifest hashes differ from {ref.path}; caches of different data")
    for split in ref.splits:
        if other.ids(split) != ref.ids(split) or not np.array_equal(other.labels(split), ref.labels(split)):
            raise CacheError(f"{where}: split '{split}' lists its images in another order than {ref.path}")


def _rows_per_block(specs: dict[str, FieldSpec], n: int) -> int:
    row_bytes = 1
    for spec in specs.values():
        item = 64 if spec.dtype == STR_DTYPE else np.dtype(spec.dtype).itemsize
        row_bytes = max(row_bytes, int(np.prod(spec.shape, dtype=np.int64)) * item)
    return int(max(1, min(max(n, 1), _BLOCK_BYTES // row_bytes)))


def _values_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def merge_caches(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    progress: Progress | None = None,
) -> MergeReport:
    """Merge shard caches (and a cache already at ``output``) into ``output``, atomically.

    Each row is taken from the input that wrote it (ok or failed, with its reason); a row written
    by two inputs must hold the same values there, else the merge stops with a one-line conflict.
    The result goes to a temporary file renamed over ``output`` at the end, so an interrupted
    merge leaves the old output (and the shards) untouched.
    """
    prog = ensure(progress)
    ins = [Path(p) for p in inputs]
    out = Path(output)
    if not ins:
        raise CacheError("merge needs at least one input cache")
    seen: dict[Path, Path] = {}
    for p in ins:
        r = p.resolve()
        if r in seen:
            raise CacheError(f"{p}: given twice as merge input")
        seen[r] = p
    if out.resolve() in seen:
        raise CacheError(f"{out}: the output cannot also be an input (an existing output is merged in by itself)")
    if out.is_dir():
        raise CacheError(f"{out} is a folder, not a cache file")
    paths = ([out] if out.exists() else []) + ins

    caches: list[FeatureCache] = []
    tmp = out.with_name(out.name + ".merging")
    lock = CacheLock(out)
    lock.acquire()  # no extract may write the output while it is being replaced
    try:
        for p in paths:
            caches.append(FeatureCache.open(p))
            if len(caches) > 1:
                _same_space(caches[0], caches[-1])
        ref = caches[0]

        # Sources: name -> holders; fields and stable provenance must agree across holders.
        holders: dict[str, list[tuple[FeatureCache, SourceInfo]]] = {}
        for c in caches:
            for info in c.sources():
                holders.setdefault(info.name, []).append((c, info))
        for name, hs in holders.items():
            c0, i0 = hs[0]
            for c, info in hs[1:]:
                if info.fields != i0.fields:
                    raise CacheError(f"{c.path}: source {name} has other fields than in {c0.path}")
                a, b = stable_provenance(i0.provenance), stable_provenance(info.provenance)
                if a != b:
                    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                    raise CacheError(
                        f"{c.path}: source {name} was written with other settings than in {c0.path} "
                        f"({', '.join(diff)})"
                    )

        split_rows = {s: ref.num_rows(s) for s in ref.splits}
        total = sum(split_rows.values()) * len(holders)
        rows_from = {str(p): 0 for p in paths}
        tmp.unlink(missing_ok=True)
        prog.start(f"merge {len(ins)} cache(s) into {out.name}", total=total)
        with h5py.File(tmp, "w") as h5:
            ref.copy_index_into(h5)
            for name in sorted(holders):
                _merge_source(h5, name, holders[name], ref, split_rows, rows_from, prog)
            h5.flush()
        prog.finish()
        for c in caches:
            c.close()
        fsync_path(tmp)
        os.replace(tmp, out)
        fsync_path(out.parent, folder=True)
        # The merged file holds every source itself: the old output's source files are obsolete
        # (the next writer moves the sources back out into their own files).
        shutil.rmtree(sources_dir(out), ignore_errors=True)
    except OSError as exc:
        for c in caches:
            c.close()
        tmp.unlink(missing_ok=True)
        raise os_error(out, exc, "write the merged cache") from None
    except BaseException:
        for c in caches:
            c.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        lock.release()

    with FeatureCache.open(out) as merged:
        sources = merged.sources()
    return MergeReport(output=out, inputs=ins, sources=sources, rows_from=rows_from)


def _merge_source(
    h5: h5py.File,
    name: str,
    hs: list[tuple[FeatureCache, SourceInfo]],
    ref: FeatureCache,
    split_rows: dict[str, int],
    rows_from: dict[str, int],
    prog: Progress,
) -> None:
    specs = hs[0][1].fields
    # Shard-specific provenance (which shard wrote it) no longer describes the merged source.
    prov = {k: v for k, v in hs[0][1].provenance.items() if k != "shard"}
    create_source_group(h5, name, specs, prov, split_rows)
    for split, n in split_rows.items():
        dst = h5[f"{name}/{split}"]
        srcs = [(c, c.source_group(name)[split]) for c, _ in hs if split in c.source_group(name)]
        step = _rows_per_block(specs, n)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            m = hi - lo
            st_out = np.zeros(m, dtype=np.uint8)
            fp_out = np.zeros(m, dtype=np.uint64)
            owner = np.full(m, -1, dtype=np.int64)
            err_out = np.asarray([""] * m, dtype=object)
            sts = [g["_status"][lo:hi] for _, g in srcs]
            for j, (c, g) in enumerate(srcs):
                st = sts[j]
                has = st != ROW_MISSING
                if not has.any():
                    continue
                new = has & (st_out == ROW_MISSING)
                both = has & ~new
                need_err = (st == ROW_FAILED) & has
                err = decode_strings(g["_error"][lo:hi]) if need_err.any() else None
                if both.any():
                    bad = both & (st != st_out)
                    if err is not None:
                        fb = both & (st == ROW_FAILED) & ~bad
                        bad |= fb & (err != err_out)
                    _raise_conflict(bad, lo, name, split, ref, c, srcs, owner)
                st_out[new] = st[new]
                owner[new] = j
                if "_fp" in g:
                    fp_out[new] = g["_fp"][lo:hi][new]
                if err is not None:
                    take = new & (st == ROW_FAILED)
                    err_out[take] = err[take]
                rows_from[str(c.path)] += int(new.sum())
            # Values, one field at a time: output block + one input block in memory.
            ok = st_out == ROW_OK
            for fname, spec in specs.items():
                vals = empty_rows(spec, m)
                for j, (c, g) in enumerate(srcs):
                    mine = ok & (owner == j)
                    # Rows an earlier input already supplied (owner < j): they must agree.
                    again = ok & (owner != j) & (sts[j] == ROW_OK)
                    if not (mine.any() or again.any()):
                        continue
                    block = decode_strings(g[fname][lo:hi])
                    if again.any() and not _values_equal(block[again], vals[again]):
                        _raise_value_conflict(again, block, vals, lo, name, split, fname, ref, c, srcs, owner)
                    vals[mine] = block[mine]
                dst[fname][lo:hi] = vals
            failed = np.flatnonzero(st_out == ROW_FAILED)
            if failed.size:
                dst["_error"][lo + failed[0] : lo + failed[-1] + 1] = err_out[failed[0] : failed[-1] + 1]
            dst["_fp"][lo:hi] = fp_out
            dst["_status"][lo:hi] = st_out
            prog.advance(m)
    h5.flush()


def _row_label(ref: FeatureCache, split: str, row: int) -> str:
    try:
        return f"row {row} ({ref.ids(split)[row]})"
    except (IndexError, CacheError):
        return f"row {row}"


def _raise_conflict(
    bad: np.ndarray,
    lo: int,
    name: str,
    split: str,
    ref: FeatureCache,
    c: FeatureCache,
    srcs: list[tuple[FeatureCache, h5py.Group]],
    owner: np.ndarray,
) -> None:
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    other = srcs[int(owner[i])][0].path
    raise CacheError(
        f"merge conflict: {name} split '{split}' {_row_label(ref, split, lo + i)} has another status "
        f"or failure reason in {c.path} than in {other}"
    )


def _raise_value_conflict(
    again: np.ndarray,
    block: np.ndarray,
    vals: np.ndarray,
    lo: int,
    name: str,
    split: str,
    fname: str,
    ref: FeatureCache,
    c: FeatureCache,
    srcs: list[tuple[FeatureCache, h5py.Group]],
    owner: np.ndarray,
) -> None:
    for i in np.flatnonzero(again):
        if not _values_equal(np.asarray(block[i]), np.asarray(vals[i])):
            other = srcs[int(owner[i])][0].path
            raise CacheError(
                f"merge conflict: {name} split '{split}' {_row_label(ref, split, lo + int(i))} field '{fname}' "
                f"differs between {other} and {c.path}"
            )
    raise CacheError(f"merge conflict: {name} split '{split}' field '{fname}' differs in {c.path}")


# ------------------------------------------------------------------------------------ verify
@dataclass
class VerifyReport:
    """Findings of `verify_cache`: ``problems`` make the file wrong; ``incomplete`` are notes."""

    path: Path
    problems: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    checked_rows: int = 0
    checked_sources: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(path: str | Path, *, require_complete: bool = False) -> VerifyReport:
    """Check a cache end to end; returns every problem found rather than stopping at the first.

    A missing path or a folder raises `CacheError`; a file that cannot be opened as a cache
    (truncated, not HDF5, foreign) is reported as a problem.

    Schema attributes, split ids (unique) and labels (in range), each split's manifest hash
    recomputed from its ids and label names, every source's array shapes and dtypes, status
    values, finite values in written rows of float fields, and one-hot rows (0/1, at most one 1).
    """
    report = VerifyReport(Path(path))
    if not report.path.exists() or report.path.is_dir():  # a wrong argument, not a damaged file
        FeatureCache.open(report.path).close()
    try:
        cache = FeatureCache.open(path)
    except CacheError as exc:
        report.problems.append(str(exc))
        return report
    with cache:
        _verify(cache, report)
    if require_complete:
        report.problems.extend(f"incomplete: {m}" for m in report.incomplete)
    return report


def _verify(cache: FeatureCache, report: VerifyReport) -> None:
    p = report.problems
    attrs = cache.raw_attrs()
    for k in ("schema_version", "vea_bench_version", "dataset", "label_space", "label_names", "manifest_hashes"):
        if k not in attrs:
            p.append(f"file attribute '{k}' is missing")
    try:
        names = json.loads(attrs["label_names"])
        if not isinstance(names, list) or not names or len(set(names)) != len(names):
            p.append(f"label_names must be a non-empty list of unique names, got {names!r}")
    except (KeyError, ValueError, TypeError) as exc:
        p.append(f"label_names unreadable ({exc})")
        return
    try:
        hashes = dict(json.loads(attrs["manifest_hashes"]))
    except (KeyError, ValueError, TypeError) as exc:
        p.append(f"manifest_hashes unreadable ({exc})")
        hashes = {}
    splits = cache.splits
    if set(hashes) != set(splits):
        p.append(f"manifest_hashes lists splits {sorted(hashes)} but the file has {sorted(splits)}")
    C = len(names)
    rows: dict[str, int] = {}
    for split in splits:
        g = cache.split_group(split)
        if "ids" not in g or "labels" not in g:
            p.append(f"split '{split}' lacks ids or labels")
            continue
        try:
            ids = cache.ids(split)
            labels = g["labels"][()]
        except Exception as exc:  # noqa: BLE001 - damaged data is a finding, not a crash
            p.append(f"split '{split}': ids/labels unreadable ({type(exc).__name__}: {exc})")
            continue
        rows[split] = len(ids)
        if len(ids) != len(labels):
            p.append(f"split '{split}': {len(ids)} ids but {len(labels)} labels")
            continue
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1) if len(ids) < 5000 else "several"
            p.append(f"split '{split}': duplicate ids ({dup})")
        if labels.size and (labels.min() < 0 or labels.max() >= C):
            p.append(f"split '{split}': labels outside 0..{C - 1}")
            continue
        if split in hashes:
            h = manifest_hash(ids, [names[int(i)] for i in labels])
            if h != hashes[split]:
                p.append(
                    f"split '{split}': manifest hash recomputed from ids and labels ({h[:12]}) "
                    f"differs from the stored one ({str(hashes[split])[:12]})"
                )
    for name in cache.top_level_names():
        if name != "splits" and name not in SOURCE_KINDS:
            p.append(f"unexpected top-level group '{name}'")
    for kind in SOURCE_KINDS:
        for key in cache.source_keys(kind):
            try:
                _verify_source(cache, f"{kind}/{key}", rows, C, report)
            except (KeyError, OSError, DamagedSourceError) as exc:
                msg = str(exc).split("; run `")[0] if isinstance(exc, CacheError) else (
                    f"{cache.path}: source {kind}/{key} is damaged ({type(exc).__name__}: {str(exc)[:100]})")
                p.append(f"{msg}; `vea-bench cache repair {cache.path}` drops it so `extract` can recompute it")


def _verify_source(cache: FeatureCache, name: str, rows: dict[str, int], C: int, report: VerifyReport) -> None:
    p = report.problems
    g = cache.source_group(name)
    try:
        fields = {n: FieldSpec.from_json(v) for n, v in json.loads(g.attrs["fields"]).items()}
        json.loads(g.attrs.get("provenance", "{}"))
    except (KeyError, ValueError, TypeError, IndexError, CacheError) as exc:
        p.append(f"{name}: fields/provenance attributes unreadable ({exc})")
        return
    report.checked_sources += 1
    for split, n in rows.items():
        if split not in g:
            p.append(f"{name}: no group for split '{split}'")
            continue
        sg = g[split]
        bad_layout = False
        for fname, spec in fields.items():
            if fname not in sg:
                p.append(f"{name}/{split}: field '{fname}' is missing")
                bad_layout = True
                continue
            ds = sg[fname]
            if ds.shape != (n, *spec.shape):
                p.append(f"{name}/{split}/{fname}: shape {ds.shape}, expected {(n, *spec.shape)}")
                bad_layout = True
            if spec.dtype == STR_DTYPE:
                if h5py.check_string_dtype(ds.dtype) is None:
                    p.append(f"{name}/{split}/{fname}: dtype {ds.dtype}, expected a string")
                    bad_layout = True
            elif ds.dtype != np.dtype(spec.dtype):
                p.append(f"{name}/{split}/{fname}: dtype {ds.dtype}, expected {spec.dtype}")
                bad_layout = True
        for aux, want in (("_status", np.dtype(np.uint8)), ("_error", None)):
            if aux not in sg or sg[aux].shape != (n,):
                p.append(f"{name}/{split}: '{aux}' missing or not of shape ({n},)")
                bad_layout = True
            elif want is not None and sg[aux].dtype != want:
                p.append(f"{name}/{split}/{aux}: dtype {sg[aux].dtype}, expected {want}")
                bad_layout = True
        if bad_layout:
            continue
        try:
            st = sg["_status"][()]
        except Exception as exc:  # noqa: BLE001
            p.append(f"{name}/{split}/_status unreadable ({type(exc).__name__})")
            continue
        bad = ~np.isin(st, (ROW_MISSING, ROW_OK, ROW_FAILED))
        if bad.any():
            p.append(f"{name}/{split}: {int(bad.sum())} row(s) with invalid status (first row {int(np.flatnonzero(bad)[0])})")
        missing = int((st == ROW_MISSING).sum())
        if missing:
            report.incomplete.append(f"{name}: {missing} of {n} rows missing on '{split}'")
        failed = np.flatnonzero(st == ROW_FAILED)
        if failed.size:
            errs = decode_strings(sg["_error"][int(failed[0]) : int(failed[-1]) + 1])[failed - failed[0]]
            if any(not e for e in errs):
                p.append(f"{name}/{split}: failed row(s) without a reason")
        report.checked_rows += int((st == ROW_OK).sum())
        _verify_values(sg, name, split, fields, st, p)


def _verify_values(
    sg: h5py.Group, name: str, split: str, fields: dict[str, FieldSpec], st: np.ndarray, p: list[str]
) -> None:
    """Written rows: finite floats; one-hot rows of 0/1 with at most one 1. Streamed in blocks."""
    n = st.size
    for fname, spec in fields.items():
        if spec.dtype == STR_DTYPE:
            continue
        is_float = np.dtype(spec.dtype).kind == "f"
        is_onehot = fname == "onehot"
        if not (is_float or is_onehot):
            continue
        step = _rows_per_block({fname: spec}, n)
        nonfinite: list[int] = []
        bad_onehot: list[int] = []
        for lo in range(0, n, step):
            ok = st[lo : lo + step] == ROW_OK
            if not ok.any():
                continue
            try:
                block = sg[fname][lo : lo + step]
            except Exception as exc:  # noqa: BLE001
                p.append(f"{name}/{split}/{fname}: rows {lo}.. unreadable ({type(exc).__name__})")
                break
            flat = block.reshape(len(block), -1)
            if is_float:
                rows_bad = ok & ~np.isfinite(flat).all(axis=1)
                nonfinite.extend((lo + np.flatnonzero(rows_bad)).tolist())
            if is_onehot:
                binary = ((flat == 0) | (flat == 1)).all(axis=1)
                rows_bad = ok & ~(binary & (flat.sum(axis=1) <= 1))
                bad_onehot.extend((lo + np.flatnonzero(rows_bad)).tolist())
        if nonfinite:
            p.append(
                f"{name}/{split}/{fname}: {len(nonfinite)} written row(s) with NaN or inf (first row {nonfinite[0]})"
            )
        if bad_onehot:
            p.append(
                f"{name}/{split}/{fname}: {len(bad_onehot)} row(s) not one-hot (0/1, at most one 1; "
                f"first row {bad_onehot[0]})"
            )


# ------------------------------------------------------------------------------------ summary
def cache_summary(path: str | Path) -> dict[str, Any]:
    """Everything `vea-bench cache info` shows, as plain JSON-able values."""
    p = Path(path)
    with FeatureCache.open(p) as cache:
        attrs = cache.attrs()
        splits = {}
        for s in cache.splits:
            labels = cache.labels(s)
            splits[s] = {
                "rows": int(labels.size),
                "per_class": {n: int((labels == i).sum()) for i, n in enumerate(cache.label_names)},
                "manifest_hash": cache.manifest_hashes.get(s, ""),
            }
        sources = []
        damaged = {}
        infos = []
        for kind in SOURCE_KINDS:
            for key in cache.source_keys(kind):
                try:
                    infos.append(cache.source(kind, key))
                except DamagedSourceError as exc:
                    damaged[f"{kind}/{key}"] = str(exc)
        for info in infos:
            sources.append(
                {
                    "name": info.name,
                    "kind": info.kind,
                    "key": info.key,
                    "fields": {n: {"shape": list(f.shape), "dtype": f.dtype} for n, f in info.fields.items()},
                    "counts": info.counts,
                    "complete": info.complete,
                    "provenance": info.provenance,
                }
            )
    return {
        "path": str(p),
        "size_bytes": sum(f.stat().st_size for f in cache_files(p)),
        "schema_version": int(attrs.get("schema_version", SCHEMA_VERSION)),
        "vea_bench_version": str(attrs.get("vea_bench_version", "")),
        "dataset": str(attrs.get("dataset", "")),
        "label_space": str(attrs.get("label_space", "")),
        "label_names": list(attrs.get("label_names", [])),
        "split_seed": None if int(attrs.get("split_seed", -1)) < 0 else int(attrs["split_seed"]),
        "created_at": str(attrs.get("created_at", "")),
        "extra": attrs.get("extra", {}),
        "splits": splits,
        "sources": sources,
        "damaged": damaged,
        "volatile_provenance_keys": sorted(VOLATILE_PROVENANCE),
    }


# ------------------------------------------------------------------------------------ repair
@dataclass
class RepairReport:
    """What `repair_cache` dropped (name -> reason) and which sources remain."""

    path: Path
    dropped: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)


def repair_cache(path: str | Path) -> RepairReport:
    """Drop the damaged sources of a cache (and only those) so that `extract` can recompute them.

    A source is damaged when its file is missing or cannot be opened, a dataset is gone, or its
    data does not read back in full. The index itself must open (a lost index is refused in one
    line: its splits cannot be rebuilt from the sources).
    """
    p = Path(path)
    with FeatureCache.open(p, "a") as cache:
        report = RepairReport(p)
        report.dropped = cache.damaged_sources()
        for name in report.dropped:
            cache.delete_source(*name.split("/", 1))
        report.kept = [s.name for s in cache.sources()]
    return report


def delete_cache_files(path: str | Path) -> None:
    """Remove a cache with its source folder and lock file (e.g. merged shards)."""
    remove_cache(path)
