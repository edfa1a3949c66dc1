"""Pytest fixtures shared by the cache test modules (import the fixture into the module to use it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _cache_helpers import make_cache, write_all


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every toy source written in one go, as ``fi.h5``: what copies, packs and resumed runs must
    equal. Read only: copy it before changing it."""
    path = tmp_path_factory.mktemp("full") / "fi.h5"
    with make_cache(path) as cache:
        write_all(cache)
    return path
