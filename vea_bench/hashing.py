"""Stable hashes that tie caches and run records to exactly the data and config they came from."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def manifest_hash(ids: Sequence[str], labels: Iterable[str]) -> str:
    """sha256 over the sorted ``relative_path<TAB>label_name`` lines of a split.

    Label *names* (not indices) go in, so the hash is independent of class-index order.
    """
    lines = sorted(f"{i}\t{lab}" for i, lab in zip(ids, labels, strict=True))
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def config_hash(cfg: dict[str, Any]) -> str:
    """sha256 of a JSON config with sorted keys: the identity of a run or a stage's outputs."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (weights provenance when no hub revision is known)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
