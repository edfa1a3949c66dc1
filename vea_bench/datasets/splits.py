"""Deterministic stratified splits for datasets that ship without one (FI, Emotion6, Flickr...).

The split depends only on the seed and the set of (path, label) pairs, never on the order files
were listed in: each class is sorted by path, then shuffled by a `random.Random` seeded with a
string of the seed and the class (stable across Python versions and platforms).
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

from vea_bench.errors import ConfigError

T = TypeVar("T")

# FI, Emotion6, Flickr, Instagram and CSV manifests without a split column.
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.80, "val": 0.05, "test": 0.15}
# A missing val split is carved from train (SPEC: 10 %, stratified, seed 42).
VAL_FROM_TRAIN = 0.10


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _class_counts(n: int, fractions: Mapping[str, float], first: str) -> dict[str, int]:
    """Per-split counts for a class of ``n``; ``first`` gets the remainder.

    Every other split with a positive fraction gets at least one image when the class has at least
    one image per split, so tiny classes still appear in val and test; ``first`` keeps at least one.
    """
    others = [s for s in fractions if s != first]
    counts = {s: _round_half_up(n * fractions[s]) for s in others}
    if n >= len(fractions):
        for s in others:
            if fractions[s] > 0 and counts[s] == 0:
                counts[s] = 1
    # Never take the last image away from the remainder split.
    while sum(counts.values()) > max(n - 1, 0) and any(counts.values()):
        biggest = max(others, key=lambda s: counts[s])
        counts[biggest] -= 1
    counts[first] = n - sum(counts[s] for s in others)
    return counts


def stratified_split(
    items: Sequence[T],
    labels: Sequence[Hashable],
    *,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 42,
    key: Callable[[T], str] = str,
) -> dict[str, list[T]]:
    """Split ``items`` per class in ``fractions`` (names -> shares summing to 1), deterministically.

    The first split named in ``fractions`` takes each class's remainder (usually train). Within a
    returned split, items are sorted by ``key`` (the relative path).
    """
    if not fractions:
        raise ConfigError("split fractions are empty")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")
    if len(items) != len(labels):
        raise ConfigError(f"{len(items)} items but {len(labels)} labels")
    first = next(iter(fractions))
    by_class: dict[Hashable, list[T]] = defaultdict(list)
    for item, lab in zip(items, labels):
        by_class[lab].append(item)
    out: dict[str, list[T]] = {s: [] for s in fractions}
    for lab in sorted(by_class, key=str):
        members = sorted(by_class[lab], key=key)
        random.Random(f"vea-bench-split:{seed}:{lab}").shuffle(members)
        counts = _class_counts(len(members), fractions, first)
        pos = 0
        # Non-remainder splits take their share from the front of the shuffled class, in order.
        for s in [s for s in fractions if s != first] + [first]:
            out[s].extend(members[pos : pos + counts[s]])
            pos += counts[s]
    return {s: sorted(v, key=key) for s, v in out.items()}


def carve_val(
    train: Sequence[T],
    labels: Sequence[Hashable],
    *,
    fraction: float = VAL_FROM_TRAIN,
    seed: int = 42,
    key: Callable[[T], str] = str,
) -> tuple[list[T], list[T]]:
    """Take a stratified ``fraction`` of ``train`` as val (for layouts that ship without val)."""
    parts = stratified_split(train, labels, fractions={"train": 1 - fraction, "val": fraction}, seed=seed, key=key)
    return parts["train"], parts["val"]


def parse_fractions(spec: str | Sequence[float] | Mapping[str, float] | None) -> dict[str, float]:
    """Accept ``"80/5/15"``, ``(0.8, 0.05, 0.15)`` or a mapping; percentages are rescaled."""
    if spec is None:
        return dict(DEFAULT_FRACTIONS)
    if isinstance(spec, Mapping):
        vals = dict(spec)
    else:
        parts = [float(x) for x in spec.replace(",", "/").split("/")] if isinstance(spec, str) else list(spec)
        if len(parts) != 3:
            raise ConfigError(f"split fractions need three numbers train/val/test, got {spec!r}")
        vals = dict(zip(("train", "val", "test"), parts))
    total = sum(vals.values())
    if total <= 0:
        raise ConfigError(f"split fractions must sum to a positive number, got {spec!r}")
    return {k: v / total for k, v in vals.items()}


def describe_fractions(fractions: Mapping[str, float]) -> str:
    """'80/5/15' for the split-rule line of a dataset index."""
    return "/".join(f"{100 * f:g}" for f in fractions.values())
