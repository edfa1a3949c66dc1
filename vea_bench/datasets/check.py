"""`check_dataset`: everything wrong with a dataset on disk, in one report, without crashing.

Loading runs with ``on_error="skip"`` so unknown labels and malformed rows are collected rather
than raised; then every image is read once, hashed (duplicate detection across splits) and fully
decoded (truncated or corrupt files). This is the slow, thorough pass; loaders stay fast.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.datasets.base import DatasetIndex, Skipped
from vea_bench.datasets.images import decode_image
from vea_bench.errors import DatasetError
from vea_bench.progress import NullProgress, Progress


@dataclass
class DuplicateGroup:
    """Files that are the same image: by relative path (listed in two splits) or by content."""

    kind: str  # "path" or "content"
    members: list[tuple[str, str]]  # (split, relative path)

    @property
    def cross_split(self) -> bool:
        return len({s for s, _ in self.members}) > 1


@dataclass
class CheckReport:
    """What `vea-bench datasets check` shows; `to_dict` is its ``--json`` form."""

    name: str
    root: str
    label_space: str
    labels: list[str]
    split_rule: str
    split_seed: int | None
    counts: dict[str, dict[str, int]]
    manifest_hashes: dict[str, str]
    skipped: list[Skipped] = field(default_factory=list)
    unreadable: list[Skipped] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    decoded: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def unknown_labels(self) -> list[Skipped]:
        return [s for s in self.skipped if s.kind == "unknown-label"]

    @property
    def zero_byte(self) -> list[Skipped]:
        return [s for s in self.skipped if s.kind == "zero-byte"]

    @property
    def cross_split_duplicates(self) -> list[DuplicateGroup]:
        return [d for d in self.duplicates if d.cross_split]

    def skipped_by_kind(self) -> Counter[str]:
        return Counter(s.kind for s in self.skipped)

    @property
    def n_faults(self) -> int:
        """Problems a user should act on (excluded ties/neutral votes are data, not faults)."""
        faults = [s for s in self.skipped if s.kind not in ("tie", "neutral")]
        return len(faults) + len(self.unreadable) + len(self.cross_split_duplicates)

    @property
    def ok(self) -> bool:
        return self.n_faults == 0

    def summary(self) -> str:
        """One line: images, splits, and the count of each kind of problem."""
        parts = [f"{self.n_images} images in {len(self.counts)} splits"]
        kinds = self.skipped_by_kind()
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable")
        for kind, n in sorted(kinds.items()):
            parts.append(f"{n} skipped ({kind})")
        if self.cross_split_duplicates:
            parts.append(f"{len(self.cross_split_duplicates)} duplicate groups across splits")
        if not self.decoded:
            parts.append("images not decoded")
        return f"{self.name}: " + ", ".join(parts) + (" - no faults" if self.ok else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": self.root,
            "label_space": self.label_space,
            "labels": self.labels,
            "split_rule": self.split_rule,
            "split_seed": self.split_seed,
            "counts": self.counts,
            "manifest_hashes": self.manifest_hashes,
            "n_images": self.n_images,
            "ok": self.ok,
            "n_faults": self.n_faults,
            "skipped": [{"path": s.path, "reason": s.reason, "kind": s.kind} for s in self.skipped],
            "unreadable": [{"path": s.path, "reason": s.reason} for s in self.unreadable],
            "duplicates": [
                {"kind": d.kind, "cross_split": d.cross_split, "members": [{"split": s, "path": p} for s, p in d.members]}
                for d in self.duplicates
            ],
            "decoded": self.decoded,
            "meta": self.meta,
        }


def inspect_index(index: DatasetIndex, *, decode: bool = True, progress: Progress | None = None) -> CheckReport:
    """Read, hash and decode every image of a loaded index; group duplicates."""
    progress = progress or NullProgress()
    counts = {s: {lab: n for lab, n in sorted(c.items())} for s, c in index.counts().items()}
    unreadable: list[Skipped] = []
    by_path: dict[str, list[str]] = defaultdict(list)
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, samples in index.splits.items():
        for s in samples:
            by_path[s.path].append(split)
    if decode:
        total = sum(len(v) for v in index.splits.values())
        progress.start(f"checking {index.name}", total=total)
        for split, samples in index.splits.items():
            for s in samples:
                path = index.abspath(s)
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    unreadable.append(Skipped(s.path, f"cannot read ({exc.strerror or exc})", "unreadable"))
                    progress.advance(1, failed=len(unreadable))
                    continue
                by_hash[hashlib.sha256(data).hexdigest()].append((split, s.path))
                try:
                    decode_image(data)
                except DatasetError as exc:
                    unreadable.append(Skipped(s.path, str(exc), "unreadable"))
                progress.advance(1, failed=len(unreadable))
        progress.finish()
    dups = [DuplicateGroup("path", [(sp, p) for sp in splits]) for p, splits in sorted(by_path.items()) if len(splits) > 1]
    # Same bytes under different paths (a path listed twice is already a "path" group).
    for members in by_hash.values():
        if len({p for _, p in members}) > 1:
            dups.append(DuplicateGroup("content", sorted(members)))
    return CheckReport(
        name=index.name,
        root=str(index.root),
        label_space=index.label_space.name,
        labels=list(index.label_space.labels),
        split_rule=index.split_rule,
        split_seed=index.split_seed,
        counts=counts,
        manifest_hashes=index.manifest_hashes(),
        skipped=list(index.skipped),
        unreadable=unreadable,
        duplicates=dups,
        decoded=decode,
        meta=dict(index.meta),
    )


def check_dataset(
    name: str,
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    decode: bool = True,
    progress: Progress | None = None,
    **options: Any,
) -> CheckReport:
    """Load ``name`` at ``root`` leniently and inspect every image: the report behind `datasets check`.

    A root that cannot be read at all still raises `DatasetError` (nothing to report on).
    """
    from vea_bench.datasets import read_dataset

    options.setdefault("on_error", "skip")
    index = read_dataset(name, root, seed=seed, label_space=label_space, **options)
    return inspect_index(index, decode=decode, progress=progress)
