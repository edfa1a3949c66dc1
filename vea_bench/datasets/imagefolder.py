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
from vea_bench.datasets.synthetic import SetWriter, UNKNOWN_LABEL, explicit_counts, register_synthetic
from vea_bench.labels import LabelSpace


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


# --- synthetic writer: this layout with planted faults (vea-bench datasets make-synthetic) ---------

@register_synthetic("imagefolder", stream=5, label_space=None, spellings={
    "amusement": "Amusement", "anger": "angry", "disgust": "disgusted", "excitement": "excited",
    "joy": "happy", "surprise": "Surprised", "positive": "Positive", "negative": "neg"})
def write_synthetic_imagefolder(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    counts = explicit_counts(n, with_val=False)
    first: str | None = None
    for cls, lab in enumerate(space.labels):
        folder = w.spell(lab)
        i = 0
        for split in ("train", "test"):
            for _ in range(counts[split]):
                rel = w.image(f"{split}/{folder}/{i:04d}.jpg", cls, i)
                if cls == 2 % space.num_classes and first is None:
                    first = rel
                i += 1
    if "corrupt" in faults:
        w.corrupt(f"train/{w.spell(space.labels[0])}/{n:04d}.jpg")
    if "zero-byte" in faults:
        w.zero(f"train/{w.spell(space.labels[1])}/{n:04d}.jpg")
    if "unknown-label" in faults:
        w.image(f"test/{UNKNOWN_LABEL}/0000.jpg", 0, 9002)
    if "duplicate" in faults and first is not None:
        w.copy(first, f"test/{w.spell(space.labels[2 % space.num_classes])}/{n + 1:04d}.jpg")
