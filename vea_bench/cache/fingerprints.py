"""Per-image content fingerprints: a changed image under the same path is found and recomputed.

The manifest hash covers paths and labels only, so a cache built on one copy of a dataset would
otherwise be reused for another copy whose pixels differ. Every source stores, per row, the
fingerprint of the image file it was computed from (``<split>/_fp``, uint64; 0 = not recorded,
e.g. rows of caches written before fingerprints existed). The fingerprint is blake2b (8 bytes)
over the file size, its first 64 KiB and its last 64 KiB: one bounded read per image, which
catches replaced, re-encoded, resized and truncated files; an edit of the same size confined to
the middle of a file larger than 128 KiB is not seen (hash whole files where that matters).

`changed_rows` lists rows whose image no longer matches (for `vea-bench cache changed`);
extraction marks those rows missing (`stale_rows`) and recomputes them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vea_bench.cache.store import ROW_MISSING, FeatureCache
from vea_bench.errors import CacheError

_EDGE = 64 << 10


def file_fingerprint(path: Path) -> int:
    """Fingerprint of one file (never 0); 0 when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(0)
            head = f.read(_EDGE)
            tail = b""
            if size > _EDGE:
                f.seek(max(_EDGE, size - _EDGE))
                tail = f.read(_EDGE)
    except OSError:
        return 0
    h = hashlib.blake2b(digest_size=8)
    h.update(size.to_bytes(8, "little"))
    h.update(head)
    h.update(tail)
    return int.from_bytes(h.digest(), "little") or 1


def fingerprints(root: Path, paths: Sequence[str], rows: np.ndarray | None = None) -> np.ndarray:
    """Fingerprints (uint64) of ``paths`` under ``root`` (only at ``rows`` if given, 0 elsewhere);
    0 for unreadable files and files outside the root."""
    root = Path(root)
    base = root.resolve()
    out = np.zeros(len(paths), dtype=np.uint64)
    for i in range(len(paths)) if rows is None else (int(r) for r in rows):
        full = root / paths[i]
        try:
            inside = full.resolve().is_relative_to(base)
        except OSError:
            inside = False
        if inside:  # never read outside the dataset root just to fingerprint it
            out[i] = file_fingerprint(full)
    return out


def stale_rows(stored: np.ndarray | None, status: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rows resolved from an image whose fingerprint was recorded and differs now."""
    if stored is None:
        return np.zeros(0, dtype=np.int64)
    mask = (status != ROW_MISSING) & (stored != 0) & (stored != current)
    return np.flatnonzero(mask)


@dataclass
class ChangedRow:
    """One cached row whose image changed since it was computed, and the sources holding it."""

    split: str
    row: int
    id: str
    sources: list[str] = field(default_factory=list)


def changed_rows(cache_path: str | Path, root: str | Path, splits: Sequence[str] | None = None) -> list[ChangedRow]:
    """Rows of ``cache_path`` whose image under ``root`` differs from the one they were computed from.

    Rows without a recorded fingerprint (older caches) are not listed. Raises `CacheError` for an
    unreadable cache.
    """
    root = Path(root)
    if not root.is_dir():
        raise CacheError(f"{root}: dataset root is not a folder")
    out: list[ChangedRow] = []
    with FeatureCache.open(cache_path) as cache:
        for split in splits or cache.splits:
            ids = cache.ids(split)
            current = fingerprints(root, ids)
            by_row: dict[int, ChangedRow] = {}
            for info in cache.sources():
                stored, status = cache.fingerprints(info.kind, info.key, split)
                for r in stale_rows(stored, status, current):
                    row = by_row.setdefault(int(r), ChangedRow(split, int(r), ids[int(r)]))
                    row.sources.append(info.name)
            out.extend(by_row[r] for r in sorted(by_row))
    return out


__all__ = ["ChangedRow", "changed_rows", "file_fingerprint", "fingerprints", "stale_rows"]
