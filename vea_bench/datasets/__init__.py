"""The dataset layer: read the five VEA datasets (and any folder or CSV) where they lie.

    from vea_bench.datasets import load_dataset
    index = load_dataset("fi", "/data/FI")          # DatasetIndex: splits, label space, skipped
    index.split("test")[0].path, index.manifest_hash("test")

Each dataset is one module registering its loader in `DATASETS` (name, label space, native
layout, split rule) and, next to it, its synthetic writer in `synthetic.SYNTHETIC` (same name);
importing this package fills both registries.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

# Registration order is the order `datasets list` shows.
from vea_bench.datasets import emoset, fi, emotion6, katsurai, imagefolder, manifest, hf  # noqa: F401,I001
from vea_bench.datasets.base import DATASETS, SPLITS, DatasetEntry, DatasetIndex, Sample, Skipped, register_dataset
from vea_bench.datasets.check import CheckReport, DuplicateGroup, check_dataset, inspect_index
from vea_bench.datasets.images import IMAGE_EXTENSIONS, decode_image, open_image
from vea_bench.errors import ConfigError, DatasetError, UnknownLabelError

log = logging.getLogger("vea_bench.datasets")

__all__ = [
    "DATASETS",
    "SPLITS",
    "CheckReport",
    "DatasetEntry",
    "DatasetError",
    "DatasetIndex",
    "DuplicateGroup",
    "IMAGE_EXTENSIONS",
    "Sample",
    "Skipped",
    "UnknownLabelError",
    "check_dataset",
    "decode_image",
    "get_dataset",
    "inspect_index",
    "list_datasets",
    "load_dataset",
    "loader_options",
    "open_image",
    "read_dataset",
    "register_dataset",
]


def get_dataset(name: str) -> DatasetEntry:
    """The registry entry for ``name`` (aliases accepted; unknown names get "did you mean")."""
    return DATASETS.get(name)


def list_datasets() -> list[DatasetEntry]:
    """Every registered dataset in registration order."""
    return [entry for _, entry in DATASETS.items()]


def loader_options(name: str) -> dict[str, Any]:
    """The keyword options a dataset's loader takes, with their defaults (for `--help` and checks)."""
    sig = inspect.signature(get_dataset(name).loader)
    return {
        n: (None if p.default is inspect.Parameter.empty else p.default)
        for n, p in sig.parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }


def load_dataset(
    name: str,
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    allow_outside_root: bool = False,
    strict: bool = False,
    **options: Any,
) -> DatasetIndex:
    """Load dataset ``name`` from ``root`` in its native layout.

    ``seed`` drives the stratified split where a dataset has none of its own (and is recorded in
    ``DatasetIndex.split_seed``); ``label_space`` forces one (e.g. ``"binary"`` for EmoSet/FI);
    ``on_error="skip"`` records unknown labels and malformed rows in ``DatasetIndex.skipped``
    instead of raising. Image paths are confined to ``root`` (taken as an absolute path, whatever
    form it has): a row or symlink that resolves outside it is skipped as ``outside-root`` and
    never read, like a missing or zero-byte image, unless ``allow_outside_root``. Skipped rows are
    logged as one warning line (count per kind, the first path); ``strict`` makes any of them
    (ties and neutral votes apart: the labelling rule excludes those) a one-line `DatasetError`.
    Other options are the loader's own (see `loader_options`); a misspelt option is a one-line
    `ConfigError`, not silently ignored.
    """
    index = read_dataset(name, root, seed=seed, label_space=label_space, allow_outside_root=allow_outside_root,
                         **options)
    summary = index.skip_summary()
    if summary is not None:
        if strict:
            raise DatasetError(f"{summary}; refused by --strict (fix or remove these rows, or drop --strict to skip them)")
        log.warning("%s; these rows are not read (--strict refuses them)", summary)
    return index


def read_dataset(
    name: str,
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    allow_outside_root: bool = False,
    **options: Any,
) -> DatasetIndex:
    """`load_dataset` without the skipped-rows policy: the index, skips recorded, nothing logged
    (`check_dataset` reports them itself)."""
    from vea_bench.datasets._common import absolute_root, outside_root

    entry = get_dataset(name)
    allowed = loader_options(entry.name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset '{entry.name}' has no option {', '.join(repr(u) for u in unknown)} "
            f"(options: {', '.join(sorted(set(allowed) - {'seed', 'label_space'}))})"
        )
    with outside_root(allow_outside_root):
        return entry.loader(absolute_root(root), seed=seed, label_space=label_space, **options)
