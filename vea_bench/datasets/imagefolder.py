"""`imagefolder`: ``ROOT/{train,val,test}/<class>/<image>``, the reference implementation's layout.

FI, Emotion6, Flickr and Instagram users who already have this layout point the dataset's own
loader at it (it delegates to `folders.read_imagefolder` with the dataset's label space); anything
else uses `imagefolder` directly and the label space is inferred from the train class folders.
"""
from __future__ import annotations

from pathlib import Path

from vea_bench.datasets._common import require_root, resolve_space
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.datasets.folders import read_imagefolder


@register_dataset(
    "imagefolder",
    label_space=None,
    layout="ROOT/{train,val,test}/<class>/<image>",
    split_rule="own train/test folders; no val -> stratified 10 % of train, seed",
    aliases=("image-folder", "folder"),
)
def load_imagefolder(
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
) -> DatasetIndex:
    """Any dataset in the reference layout; the label space is inferred (canonical if the class
    folders map onto one via synonyms, else custom) unless ``label_space`` forces it."""
    r = require_root("imagefolder", root)
    return read_imagefolder("imagefolder", r, space=resolve_space(label_space), seed=seed, on_error=on_error)
