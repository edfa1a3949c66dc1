"""End-to-end verification of a cache (`vea-bench cache verify`): every problem found, not the first."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from vea_bench.cache.layout import field_specs, rows_per_block
from vea_bench.cache.messages import SourcesNotCopiedError, damaged
from vea_bench.cache.store import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    SOURCE_KINDS,
    STR_DTYPE,
    DamagedSourceError,
    FeatureCache,
    FieldSpec,
    decode_strings,
)
from vea_bench.errors import CacheError
from vea_bench.hashing import manifest_hash

__all__ = ["VerifyReport", "verify_cache"]


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
    _verify_sources(cache, rows, C, report)


def _verify_sources(cache: FeatureCache, rows: dict[str, int], C: int, report: VerifyReport) -> None:
    """Each source in turn; an index whose sources folder was not copied is one finding, not
    one "damaged" per source."""
    for kind in SOURCE_KINDS:
        for key in cache.source_keys(kind):
            name = f"{kind}/{key}"
            try:
                _verify_source(cache, name, rows, C, report)
            except SourcesNotCopiedError as exc:
                report.problems.append(str(exc))
                return
            except (KeyError, OSError, DamagedSourceError) as exc:
                found = exc if isinstance(exc, DamagedSourceError) else damaged(
                    cache.path, name, f"{type(exc).__name__}: {str(exc)[:100]}")
                report.problems.append(
                    f"{found.finding}; `vea-bench cache repair {cache.path}` drops it so `extract` can recompute it")


def _verify_source(cache: FeatureCache, name: str, rows: dict[str, int], C: int, report: VerifyReport) -> None:
    p = report.problems
    g = cache.source_group(name)
    try:
        fields = field_specs(g)
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
        step = rows_per_block({fname: spec}, n)
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
