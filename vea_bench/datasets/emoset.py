"""EmoSet-118K (Yang et al., ICCV 2023): ``info.json`` + ``{train,val,test}.json`` split files.

Split rows come in two shapes, both accepted: ``[label, image_id, image_path, annotation_path]``
(the dataset's README) and ``[label, image_path, annotation_path]`` (later redistributions).
EmoSet orders its emotions positive-first; labels are mapped by name to the canonical Mikels'
order so every EmoSet cache shares index order with FI. Per-image attributes (brightness,
colorfulness, scene, object, facial expression, human action) are kept in ``Sample.meta``.
"""
from __future__ import annotations

import json
import random
from pathlib import Path, PurePosixPath
from typing import Any

from vea_bench.datasets._common import Collector, carve_missing_val, log, mikels_space, require_root
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.errors import DatasetError
from vea_bench.datasets.synthetic import SetWriter, UNKNOWN_LABEL, explicit_counts, register_synthetic
from vea_bench.labels import MIKELS8, LabelSpace

# EmoSet's own label2idx order (info.json), used only when a row gives an integer label.
EMOSET_ORDER = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
ATTRIBUTES = ("brightness", "colorfulness", "scene", "object", "facial_expression", "human_action")


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"emoset: {what} {path} not found") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"emoset: {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"emoset: cannot read {path} ({exc})") from None


def _idx2label(root: Path) -> tuple[dict[int, str], bool]:
    """EmoSet's integer -> emotion map from info.json (its default order when info.json is absent)."""
    path = root / "info.json"
    if not path.exists():
        log.warning("emoset: %s has no info.json; integer labels use EmoSet's published order", root)
        return dict(enumerate(EMOSET_ORDER)), False
    info = _read_json(path, "info file")
    try:
        emo = info["emotion"]
        if "idx2label" in emo:
            return {int(k): str(v) for k, v in emo["idx2label"].items()}, True
        return {int(v): str(k) for k, v in emo["label2idx"].items()}, True
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DatasetError(f"emoset: {path} has no emotion label2idx/idx2label map") from None


def _attributes(root: Path, ann_rel: str) -> tuple[dict[str, Any], str | None]:
    """Known attributes present in an annotation JSON, and a problem ('missing', 'malformed') if any."""
    path = root / ann_rel
    try:
        with open(path, encoding="utf-8") as f:
            ann = json.load(f)
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}, "malformed"
    if not isinstance(ann, dict):
        return {}, "malformed"
    return {k: ann[k] for k in ATTRIBUTES if k in ann and ann[k] is not None}, None


def _clean(p: str) -> str:
    return PurePosixPath(str(p).replace("\\", "/").removeprefix("./")).as_posix()


@register_dataset(
    "emoset",
    label_space="mikels8",
    layout="ROOT/info.json, {train,val,test}.json, image/<emotion>/*.jpg, annotation/<emotion>/*.json",
    split_rule="own train/val/test split files (no val.json -> stratified 10 % of train, seed)",
    aliases=("emoset118k", "emoset-118k"),
)
def load_emoset(
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
    binary: bool = False,
    attributes: bool = True,
) -> DatasetIndex:
    """Load EmoSet; ``binary=True`` maps amusement/awe/contentment/excitement to positive.

    ``attributes=False`` skips reading the 118k per-image annotation files when only labels are
    needed (the annotation path stays in ``meta['annotation']``).
    """
    r = require_root("emoset", root)
    for required in ("train.json", "test.json"):
        if not (r / required).is_file():
            raise DatasetError(f"emoset: split file {r / required} not found (EmoSet roots hold info.json, train/val/test.json)")
    space = mikels_space(label_space, binary)
    idx2label, has_info = _idx2label(r)
    col = Collector("emoset", r, space, on_error)
    ann_problems = {"missing": 0, "malformed": 0, "outside_root": 0}
    shapes: dict[str, int] = {}
    for split in ("train", "val", "test"):
        path = r / f"{split}.json"
        if split == "val" and not path.exists():
            continue
        rows = _read_json(path, "split file")
        if not isinstance(rows, list):
            raise DatasetError(f"emoset: {path} must hold a JSON list of rows, got {type(rows).__name__}")
        col.splits.setdefault(split, [])
        for i, row in enumerate(rows):
            where = f"{split}.json row {i}"
            if not isinstance(row, (list, tuple)) or len(row) not in (3, 4):
                col.problem(where, "expected [label, image_id, image_path, annotation_path] or [label, image_path, annotation_path]")
                continue
            shapes[str(len(row))] = shapes.get(str(len(row)), 0) + 1
            if len(row) == 4:
                raw, image_id, img, ann = row
            else:
                raw, img, ann = row
                image_id = PurePosixPath(str(img)).stem
            if not isinstance(img, str) or not img:
                col.problem(where, f"image path {img!r} is not a string")
                continue
            rel = _clean(img)
            if isinstance(raw, int) and not isinstance(raw, bool):
                if raw not in idx2label:
                    col.label(str(raw), rel)
                    continue
                raw = idx2label[raw]
            lab = col.label(str(raw), rel)
            if lab is None or not col.file_ok(rel):
                continue
            meta: dict[str, Any] = {"image_id": str(image_id)}
            if isinstance(ann, str) and ann:
                meta["annotation"] = _clean(ann)
                if attributes and not col.inside(r / meta["annotation"]):
                    ann_problems["outside_root"] += 1  # never read a file outside the root
                elif attributes:
                    attrs, problem = _attributes(r, meta["annotation"])
                    meta.update(attrs)
                    if problem:
                        ann_problems[problem] += 1
            col.add(split, rel, lab, meta)
    carved = carve_missing_val(col, seed)
    rule = "own train/val/test split files" if not carved else f"own train/test split files; val = stratified 10 % of train, seed {seed}"
    return col.build(
        split_rule=rule,
        split_seed=seed if carved else None,
        meta={
            "layout": "emoset",
            "info_json": has_info,
            "row_shapes": shapes,
            "annotations_missing": ann_problems["missing"],
            "annotations_malformed": ann_problems["malformed"],
            "annotations_outside_root": ann_problems["outside_root"],
            "attributes": list(ATTRIBUTES) if attributes else [],
            "binary": space.name == "binary",
        },
    )


# --- synthetic writer: this layout with planted faults (vea-bench datasets make-synthetic) ---------

@register_synthetic("emoset", stream=0, label_space=MIKELS8)
def write_synthetic_emoset(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    counts = explicit_counts(n, with_val=True)
    rows: dict[str, list[list[Any]]] = {"train": [], "val": [], "test": []}
    rnd = random.Random(f"{w.seed}:emoset")
    serial: dict[str, int] = {}

    def add(split: str, emo: str, cls: int, i: int, kind: str = "image", annotate: bool = True) -> str:
        k = serial.get(emo, 0)
        serial[emo] = k + 1
        stem = f"{emo}_{k:05d}"
        img, ann = f"image/{emo}/{stem}.jpg", f"annotation/{emo}/{stem}.json"
        if kind == "image":
            w.image(img, cls, i)
        elif kind == "corrupt":
            w.corrupt(img)
        elif kind == "zero":
            w.zero(img)
        if annotate:
            attrs: dict[str, Any] = {
                "emotion": emo, "image_id": stem,
                "brightness": round(rnd.random(), 3), "colorfulness": round(rnd.random(), 3),
                "scene": rnd.choice(["beach", "street", "forest", "kitchen"]),
                "object": rnd.sample(["person", "dog", "car", "tree", "cake"], 2),
            }
            if rnd.random() < 0.5:
                attrs["facial_expression"] = rnd.choice(["happy", "sad", "neutral"])
            if rnd.random() < 0.5:
                attrs["human_action"] = rnd.choice(["running", "sitting", "eating"])
            (w.out / ann).parent.mkdir(parents=True, exist_ok=True)
            (w.out / ann).write_text(json.dumps(attrs))
        # The README's 4-field rows in train; the 3-field redistributed rows in val and test.
        rows[split].append([emo, stem, img, ann] if split == "train" else [emo, img, ann])
        return img

    first_train: str | None = None
    for cls, emo in enumerate(space.labels):
        i = 0
        for split in ("train", "val", "test"):
            for _ in range(counts[split]):
                # The last class's first image has no annotation file (tolerated, counted).
                img = add(split, emo, cls, i, annotate=not (cls == len(space.labels) - 1 and i == 0))
                if cls == 2 and first_train is None:
                    first_train = img
                i += 1
    if "corrupt" in faults:
        add("train", space.labels[0], 0, 9000, kind="corrupt")
    if "zero-byte" in faults:
        add("train", space.labels[1], 1, 9001, kind="zero")
    if "unknown-label" in faults:
        add("train", UNKNOWN_LABEL, 0, 9002)
    if "duplicate" in faults and first_train is not None:
        emo = space.labels[2]
        k = serial.get(emo, 0)
        serial[emo] = k + 1
        img = w.copy(first_train, f"image/{emo}/{emo}_{k:05d}.jpg")
        rows["test"].append([emo, img, f"annotation/{emo}/{emo}_{k:05d}.json"])
    info = {
        "emotion": {"label2idx": {e: i for i, e in enumerate(EMOSET_ORDER)}, "idx2label": {str(i): e for i, e in enumerate(EMOSET_ORDER)}},
        "scene": {"label2idx": {"beach": 0, "street": 1, "forest": 2, "kitchen": 3}, "idx2label": {"0": "beach", "1": "street", "2": "forest", "3": "kitchen"}},
    }
    (w.out / "info.json").write_text(json.dumps(info, indent=1))
    for split, r in rows.items():
        rnd.shuffle(r)  # the real files are not sorted either
        (w.out / f"{split}.json").write_text(json.dumps(r))
