"""What every dataset loader returns: samples in stable split order, with skipped files and why.

Loaders read a dataset where it lies, in its native layout, map label spellings to the canonical
label space, and never crash on a broken file: they skip it and say why (`DatasetIndex.skipped`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.hashing import manifest_hash
from vea_bench.labels import LabelSpace
from vea_bench.registry import Registry
from vea_bench.splits import SplitSpec

SPLITS = ("train", "val", "test")
# Rows a labelling rule excludes (Katsurai's ties and neutral majorities): data, not faults.
EXCLUDED_KINDS = frozenset({"tie", "neutral"})


@dataclass(frozen=True)
class Sample:
    """One image: ``path`` relative to the dataset root (the cache id), canonical label index."""

    path: str
    label: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Skipped:
    """A file or row a loader passed over, and why (unreadable, zero-byte, unknown label...)."""

    path: str
    reason: str
    kind: str = "other"  # zero-byte, missing, outside-root, unknown-label, duplicate, tie, neutral, malformed, unreadable


@dataclass
class DatasetIndex:
    """A loaded dataset: its label space, its splits in stable order, and what was skipped."""

    name: str
    root: Path
    label_space: LabelSpace
    splits: dict[str, list[Sample]]
    skipped: list[Skipped] = field(default_factory=list)
    split_seed: int | None = None
    split_rule: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        from vea_bench.errors import DatasetError

        if name not in self.splits:
            raise DatasetError(f"{self.name} at {self.root}: no split '{name}' (has {', '.join(self.splits)})")
        return self.splits[name]

    def manifest_hash(self, split: str) -> str:
        """sha256 of the split's sorted (relative path, label name) pairs: cache provenance."""
        samples = self.split(split)
        return manifest_hash([s.path for s in samples], [self.label_space.labels[s.label] for s in samples])

    def manifest_hashes(self) -> dict[str, str]:
        return {s: self.manifest_hash(s) for s in self.splits}

    def split_specs(self) -> dict[str, SplitSpec]:
        """What `FeatureCache.create` needs to lay out this dataset's splits."""
        import numpy as np

        return {
            s: SplitSpec(
                ids=[x.path for x in samples],
                labels=np.asarray([x.label for x in samples], dtype=np.int64),
                manifest_hash=self.manifest_hash(s),
            )
            for s, samples in self.splits.items()
        }

    def counts(self) -> dict[str, Counter[str]]:
        """Per split, images per canonical label name."""
        return {
            s: Counter(self.label_space.labels[x.label] for x in samples) for s, samples in self.splits.items()
        }

    def abspath(self, sample: Sample) -> Path:
        return self.root / sample.path

    def faults(self) -> list[Skipped]:
        """Skipped rows a user should know about: all but those a labelling rule excludes (ties, neutral)."""
        return [s for s in self.skipped if s.kind not in EXCLUDED_KINDS]

    def skip_summary(self) -> str | None:
        """One line: how many rows were skipped, of which kinds, and the first one with why; None if none."""
        faults = self.faults()
        if not faults:
            return None
        kinds = Counter(s.kind for s in faults)
        first = faults[0]
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return (f"{self.name}: {len(faults)} row{'s' if len(faults) != 1 else ''} skipped ({counts}), "
                f"first {first.path}: {first.reason}")


# A loader: (root, **options) -> DatasetIndex. Registered with DATASETS.register("name").
Loader = Callable[..., DatasetIndex]


@dataclass(frozen=True)
class DatasetEntry:
    """Registry entry: the loader plus what `datasets list` shows (label space, layout, split rule)."""

    name: str
    label_space: str | None  # None: inferred from the data (imagefolder, manifest)
    layout: str
    split_rule: str
    loader: Loader


DATASETS: Registry[DatasetEntry] = Registry("dataset", plugins="vea_bench.datasets")


def register_dataset(
    name: str,
    *,
    label_space: str | None,
    layout: str,
    split_rule: str,
    aliases: tuple[str, ...] = (),
) -> Callable[[Loader], Loader]:
    """Decorator: register a loader function as a `DatasetEntry` (one place to add a dataset)."""

    def deco(fn: Loader) -> Loader:
        DATASETS.add(
            name,
            DatasetEntry(name=name, label_space=label_space, layout=layout, split_rule=split_rule, loader=fn),
            aliases=aliases,
        )
        return fn

    return deco
