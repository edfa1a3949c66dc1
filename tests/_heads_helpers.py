"""Shared fixtures for the heads tests: tiny real caches built through the cache API."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.cache.store import FeatureCache, SplitSpec
from vea_bench.hashing import manifest_hash
from vea_bench.labels import MIKELS8


def complementary_data(path: Path, **kwargs: Any) -> Any:
    """`make_complementary_cache(path, **kwargs)` read back as `HeadData` with every source (cache closed)."""
    from vea_bench.heads.data import load_head_data
    from vea_bench.heads.synthetic_cache import make_complementary_cache

    with FeatureCache.open(make_complementary_cache(path, **kwargs)) as c:
        return load_head_data(c, need=("visual", "teacher", "vlm"))


def tiny_cache(path: Path, *, n: int = 40, dim: int = 8, teacher_width: int = 8, nan_row: int | None = None,
               with_teacher: bool = True, with_vlm: bool = True, vlm_width: int = 8) -> Path:
    """An 8-class cache with random sources; knobs break one thing at a time for error tests."""
    names = list(MIKELS8.labels)
    rng = np.random.default_rng(0)
    splits = {}
    for s in ("train", "val", "test"):
        ids = [f"{s}/{i}.jpg" for i in range(n)]
        y = rng.integers(0, 8, n)
        splits[s] = SplitSpec(ids, y, manifest_hash(ids, [names[k] for k in y]))
    with FeatureCache.create(path, dataset="tiny", label_space="mikels8", label_names=names, splits=splits) as c:
        vis = c.writer("visual", "v", {"emb": ((dim,), "float16")}, {"model": "test"})
        tea = c.writer("teacher", "t", {"logits": ((teacher_width,), "float32")}, {"model": "test"}) if with_teacher else None
        vlm = c.writer("vlm", "q", {"onehot": ((vlm_width,), "uint8")}, {"model": "test"}) if with_vlm else None
        for s in ("train", "val", "test"):
            emb = rng.standard_normal((n, dim)).astype(np.float16)
            if nan_row is not None and s == "train":
                emb[nan_row, 0] = np.nan
            vis.write(s, np.arange(n), emb=emb)
            if tea is not None:
                tea.write(s, np.arange(n), logits=rng.standard_normal((n, teacher_width)).astype(np.float32))
            if vlm is not None:
                oh = np.eye(vlm_width, dtype=np.uint8)[rng.integers(0, vlm_width, n)]
                vlm.write(s, np.arange(n), onehot=oh)
    return path
