"""Reading ``ROOT/{train,val,test}/<class>/<image>``: shared by `imagefolder` and by the FI,
Emotion6, Flickr and Instagram loaders when their users already have this layout.
"""
from __future__ import annotations

from pathlib import Path

from vea_bench.datasets._common import Collector, carve_missing_val, infer_space
from vea_bench.datasets.base import DatasetIndex
from vea_bench.datasets.images import is_image_name, list_images
from vea_bench.errors import DatasetError
from vea_bench.labels import LabelSpace

# Folder spellings for the three splits (case-insensitive).
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


def find_split_dirs(root: Path) -> dict[str, Path]:
    """``{"train": ROOT/train, ...}`` for the split folders present under ``root``."""
    found: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split and d.is_dir() and split not in found:
            found[split] = d
    return found


def has_split_dirs(root: Path) -> bool:
    return "train" in find_split_dirs(root)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_imagefolder(
    name: str,
    root: Path,
    *,
    space: LabelSpace | None,
    seed: int,
    on_error: str,
) -> DatasetIndex:
    """Read ``root/{train,val,test}/<class>/*``; ``space`` None infers it from train's folders.

    Inferring from train only means a class folder that appears only in val or test is reported as
    an unknown label (a class with no training images is a mistake, not a new class).
    """
    dirs = find_split_dirs(root)
    if "train" not in dirs or "test" not in dirs:
        have = ", ".join(sorted(dirs)) or "none"
        raise DatasetError(
            f"{name}: {root} needs train/ and test/ folders (ROOT/{{train,val,test}}/<class>/<image>); found: {have}"
        )
    inferred = space is None
    if space is None:
        train_classes = [d.name for d in _class_dirs(dirs["train"])]
        if not train_classes:
            raise DatasetError(f"{name}: {dirs['train']} has no class folders")
        space = infer_space(train_classes)
    col = Collector(name, root, space, on_error)
    for split in ("train", "val", "test"):
        if split not in dirs:
            continue
        col.splits.setdefault(split, [])
        for f in sorted(dirs[split].iterdir()):
            if f.is_file() and is_image_name(f.name):
                col.problem(col.rel(f), "image outside a class folder", "malformed")
        for cdir in _class_dirs(dirs[split]):
            files = list_images(cdir, recursive=True)
            if not files:
                continue
            lab = col.folder_label(cdir, files)
            if lab is None:
                continue
            for f in files:
                rel = col.rel(f)
                if col.file_ok(rel, f):
                    col.add(split, rel, lab)
    carved = carve_missing_val(col, seed)
    rule = "own train/val/test folders" if not carved else f"own train/test folders; val = stratified 10 % of train, seed {seed}"
    return col.build(
        split_rule=rule,
        split_seed=seed if carved else None,
        meta={"layout": "imagefolder", "label_space_inferred": inferred, "val_from_train": carved},
    )
