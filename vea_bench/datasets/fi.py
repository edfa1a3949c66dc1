"""FI (You et al., AAAI 2016): one folder per Mikels emotion, files ``<emotion>_<n>.jpg``.

No official split: a deterministic stratified 80/5/15 split with the seed recorded. A root that
already has ``train/`` and ``test/`` folders is read as given (the imagefolder layout).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vea_bench.datasets._common import Collector, mikels_space, require_root, split_pool
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.datasets.images import is_image_name, list_images
from vea_bench.datasets.folders import has_split_dirs, read_imagefolder
from vea_bench.datasets.splits import parse_fractions
from vea_bench.labels import MIKELS8, LabelSpace, normalise
from vea_bench.datasets.synthetic import SetWriter, folder_per_class, register_synthetic


def _emotion(spelling: str) -> str:
    """Canonical Mikels name of a folder spelling, so 'sad' and 'sadness' are one stratum."""
    idx = MIKELS8.lookup(spelling)
    return MIKELS8.labels[idx] if idx is not None else spelling


@register_dataset(
    "fi",
    label_space="mikels8",
    layout="ROOT/<emotion>/<emotion>_<n>.jpg (label = folder, or file-name prefix); or ROOT/{train,val,test}/<emotion>/*",
    split_rule="stratified 80/5/15, seed recorded; explicit split folders used as given",
)
def load_fi(
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
    binary: bool = False,
    fractions: str | Sequence[float] | Mapping[str, float] | None = None,
) -> DatasetIndex:
    """Load FI where it lies; ``binary=True`` maps the four positive emotions to positive."""
    r = require_root("fi", root)
    space = mikels_space(label_space, binary)
    if has_split_dirs(r):
        return read_imagefolder("fi", r, space=space, seed=seed, on_error=on_error)
    col = Collector("fi", r, space, on_error)
    pool: list[tuple[str, int, dict[str, Any]]] = []
    fine: list[str] = []  # the Mikels emotion of each pool entry: the split's strata in every view
    for entry in sorted(r.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            files = list_images(entry, recursive=True)
            if not files:
                continue
            lab = col.label(entry.name, col.rel(files[0]))
            if lab is None:
                for f in files[1:]:
                    col.skip(col.rel(f), f"unknown label '{entry.name}' for {space.name}", "unknown-label")
                continue
            for f in files:
                rel = col.rel(f)
                if col.file_ok(rel, f):
                    pool.append((rel, lab, {}))
                    fine.append(normalise(entry.name))
        elif entry.is_file() and is_image_name(entry.name):
            # Flat copies: the label is the file-name prefix before the last underscore.
            rel = col.rel(entry)
            prefix = entry.stem.rsplit("_", 1)[0] if "_" in entry.stem else entry.stem
            lab = col.label(prefix, rel)
            if lab is not None and col.file_ok(rel, entry):
                pool.append((rel, lab, {}))
                fine.append(normalise(prefix))
    fr = parse_fractions(fractions)
    rule = split_pool(col, pool, fractions=fr, seed=seed, strata=[_emotion(f) for f in fine])
    return col.build(split_rule=rule, split_seed=seed, meta={"layout": "fi", "fractions": fr})


# --- synthetic writer: this layout with planted faults (vea-bench datasets make-synthetic) ---------

@register_synthetic("fi", stream=1, label_space=MIKELS8, spellings={"contentment": "content", "sadness": "sad"})
def write_synthetic_fi(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    folder_per_class(w, space, n, faults, lambda folder, i: f"{folder}_{i}.jpg")
