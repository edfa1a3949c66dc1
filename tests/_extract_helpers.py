"""Shared setup for the extraction tests: tiny real models and a small synthetic set, built once per session."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Qwen2-VL, a tiny 8-class teacher and a tiny 6-class (Ekman) teacher, saved like real ones."""
    from vea_bench.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "qwen": make_tiny("qwen2-vl", root / "qwen", seed=0),
        "teacher": make_tiny("teacher", root / "vit-fi", seed=1, num_classes=8),
        "teacher6": make_tiny("teacher", root / "vit-e6", seed=2, num_classes=6),
    }


@pytest.fixture(scope="session")
def fi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic FI (8 classes x 3 images, 32 px) with one corrupt image planted."""
    from vea_bench.datasets.synthetic import make_synthetic

    return make_synthetic("fi", tmp_path_factory.mktemp("fi") / "fi", per_class=3, size=32, seed=0,
                          faults=("corrupt",))


@pytest.fixture(scope="module")
def index(fi_root: Path) -> Any:
    """The synthetic FI set, loaded."""
    from vea_bench.datasets import load_dataset

    return load_dataset("fi", fi_root)


@pytest.fixture(scope="module")
def backend(tiny_dir: dict[str, Path]) -> Any:
    """The tiny Qwen2-VL, loaded on the CPU."""
    from vea_bench.models import load_vlm
    from vea_bench.models.base import LoadOptions

    return load_vlm(LoadOptions(str(tiny_dir["qwen"]), device="cpu"))


def cache_arrays(path: Path) -> dict[str, Any]:
    """Every source dataset of a cache file (values and status), for exact comparisons."""
    out: dict[str, Any] = {}
    from _cache_helpers import walk_datasets

    with h5py.File(path, "r") as h5:
        for kind in ("visual", "vlm", "teacher", "backbone"):
            if kind not in h5:
                continue
            for name, ds in walk_datasets(h5[kind]):
                v = ds[()]
                if v.dtype.kind in ("O", "S"):
                    v = np.array([x.decode() if isinstance(x, bytes) else x for x in v], dtype=object)
                out[f"{kind}/{name}"] = v
    return out
