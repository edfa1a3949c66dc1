"""Shared test setup: one CPU thread for torch, and tiny synthetic datasets in every native layout.

`synthetic_root(layout, **options)` returns the root of a synthetic set built once per session
for that layout and options (defaults: 6 images per class, 32 px). The returned folder is shared:
tests that modify files must build their own with `make_synthetic(..., tmp_path)`.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)

SYNTHETIC_DEFAULTS: dict[str, Any] = {"per_class": 6, "size": 32, "seed": 0}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``synthetic_root("fi", faults=("corrupt",))`` -> Path of a cached synthetic set."""
    from vea_bench.datasets.synthetic import make_synthetic

    cache: dict[tuple[Any, ...], Path] = {}

    def make(layout: str, **options: Any) -> Path:
        opts = {**SYNTHETIC_DEFAULTS, **options}
        opts["faults"] = tuple(sorted(opts.get("faults", ())))
        key = (layout, tuple(sorted(opts.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"synthetic-{layout}")
            cache[key] = make_synthetic(layout, out, **opts)
        return cache[key]

    return make


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test on one torch thread (fast and deterministic on shared 2-core machines), restored after."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults",
        action="store_true",
        default=False,
        help="Run the full fault suite (tests/test_faults.py: 20+ kills per signal, more fill levels "
             "and truncation offsets); without it only a fast subset runs.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults_full: part of the full fault suite only (run with --faults)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--faults"):
        return
    skip = pytest.mark.skip(reason="full fault suite: run with --faults")
    for item in items:
        if "faults_full" in item.keywords:
            item.add_marker(skip)
