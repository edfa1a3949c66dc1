"""Whole-cache operations, built on `FeatureCache`'s public methods: shard helpers, summaries for
`vea-bench cache info`, repair, deletion; merging (`vea_bench.cache.merge`), verification
(`vea_bench.cache.verify`) and the portable forms (`vea_bench.cache.portable`: pack, copy, move)
are re-exported here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.cache.layout import first_line, split_name
from vea_bench.cache.merge import MergeReport, merge_caches
from vea_bench.cache.portable import PortableReport, copy_cache, move_cache, pack_cache
from vea_bench.cache.store import (
    SCHEMA_VERSION,
    SOURCE_KINDS,
    VOLATILE_PROVENANCE,
    DamagedSourceError,
    FeatureCache,
    cache_files,
    remove_cache,
)
from vea_bench.cache.verify import VerifyReport, verify_cache
from vea_bench.errors import CacheError, ConfigError

__all__ = [
    "MergeReport",
    "PortableReport",
    "RepairReport",
    "VerifyReport",
    "cache_summary",
    "copy_cache",
    "damaged_sources",
    "delete_cache_files",
    "merge_caches",
    "move_cache",
    "pack_cache",
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


# ------------------------------------------------------------------------------------ summary
def cache_summary(path: str | Path) -> dict[str, Any]:
    """Everything `vea-bench cache info` shows, as plain JSON-able values."""
    p = Path(path)
    with FeatureCache.open(p) as cache:
        attrs = cache.attrs()
        files = cache.source_files()
        layout = "packed" if files and all(f is None for f in files.values()) else "per-source files"
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
        "layout": layout,
        "created_at": str(attrs.get("created_at", "")),
        "extra": attrs.get("extra", {}),
        "splits": splits,
        "sources": sources,
        "damaged": damaged,
        "volatile_provenance_keys": sorted(VOLATILE_PROVENANCE),
    }


# ------------------------------------------------------------------------------------ repair
def damaged_sources(cache: FeatureCache) -> dict[str, str]:
    """Sources that cannot be read, with the reason: file missing or unopenable, datasets lost,
    or data that does not read back in full (truncation). An index whose sources folder was not
    copied with it raises `SourcesNotCopiedError` (one line): that is no damage, nothing is dropped."""
    out: dict[str, str] = {}
    for name in cache.source_files():
        kind, key = split_name(name)
        try:
            info = cache.source(kind, key)
            g = cache.source_group(name)
            for split in info.counts:
                for fname in (*info.fields, "_status", "_error"):
                    ds = g[f"{split}/{fname}"]
                    step = max(1, min(ds.shape[0] or 1, 8192))
                    for lo in range(0, ds.shape[0], step):
                        ds[lo : lo + step]
        except DamagedSourceError as exc:
            out[name] = exc.reason
        except CacheError:
            raise  # in use by another process, or the folder was not copied: not damage
        except Exception as exc:  # noqa: BLE001 - unreadable data is the damage being looked for
            out[name] = f"{type(exc).__name__}: {first_line(exc)[:100]}"
    return out


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
    line: its splits cannot be rebuilt from the sources), and an index whose sources folder was not
    copied with it is refused in one line saying so: a source is never dropped for that.
    """
    p = Path(path)
    with FeatureCache.open(p, "a") as cache:
        report = RepairReport(p)
        report.dropped = damaged_sources(cache)
        for name in report.dropped:
            cache.delete_source(*name.split("/", 1))
        report.kept = [s.name for s in cache.sources()]
    return report


def delete_cache_files(path: str | Path) -> None:
    """Remove a cache with its source folder and lock file (e.g. merged shards)."""
    remove_cache(path)
