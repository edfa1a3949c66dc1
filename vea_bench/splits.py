"""What a dataset hands the cache for one split: the contract between the two layers.

It lives below both, so a dataset can describe its splits without importing the cache.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SplitSpec:
    """What a split contributes to a new cache: its ids, label indices and manifest hash."""

    ids: Sequence[str]
    labels: np.ndarray
    manifest_hash: str
