"""Emotion6 (Peng et al., CVPR 2015): ``images/<emotion>/<n>.jpg`` + ``ground_truth.txt``.

The label is the folder's emotion (as in the paper). ``ground_truth.txt`` adds valence, arousal
and the 7-way vote distribution (Ekman's 6 + neutral), kept in ``Sample.meta`` for
distribution-aware metrics. No official split: stratified 80/5/15, seed recorded; a root with
``train/`` and ``test/`` folders (the reference layout) is read as given.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from vea_bench.datasets._common import Collector, fixed_space, log, require_root, split_pool
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.datasets.images import list_images
from vea_bench.datasets.folders import has_split_dirs, read_imagefolder
from vea_bench.datasets.splits import parse_fractions
from vea_bench.errors import DatasetError
from vea_bench.labels import EKMAN6, LabelSpace
from vea_bench.datasets.synthetic import SetWriter, folder_per_class, register_synthetic

DISTRIBUTION_LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


def read_ground_truth(path: Path, col: Collector) -> dict[str, dict[str, Any]]:
    """``{"disgust/1.jpg": {"valence", "arousal", "distribution"}}``; bad rows raise or are skipped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"emotion6: cannot read {path} ({exc.strerror or exc})") from None
    out: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(lines[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip() != ""]
        where = f"{path.name} line {lineno}"
        if len(fields) != 10:
            col.problem(where, f"expected 10 tab-separated fields (file, valence, arousal, 7 probabilities), got {len(fields)}")
            continue
        try:
            nums = [float(x) for x in fields[1:]]
        except ValueError:
            col.problem(where, "valence, arousal and probabilities must be numbers")
            continue
        key = PurePosixPath(fields[0].replace("\\", "/")).as_posix().lower()
        out[key] = {"valence": nums[0], "arousal": nums[1], "distribution": tuple(nums[2:])}
    return out


@register_dataset(
    "emotion6",
    label_space="ekman6",
    layout="ROOT/images/<emotion>/<n>.jpg + ROOT/ground_truth.txt; or ROOT/{train,val,test}/<emotion>/*",
    split_rule="stratified 80/5/15, seed recorded; explicit split folders used as given",
)
def load_emotion6(
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
    fractions: str | Sequence[float] | Mapping[str, float] | None = None,
) -> DatasetIndex:
    """Load Emotion6 with its valence, arousal and vote distribution in each sample's meta."""
    r = require_root("emotion6", root)
    space = fixed_space(EKMAN6, label_space)
    if has_split_dirs(r):
        return read_imagefolder("emotion6", r, space=space, seed=seed, on_error=on_error)
    images = r / "images" if (r / "images").is_dir() else r
    col = Collector("emotion6", r, space, on_error)
    gt_path = next((p for p in (r / "ground_truth.txt", images / "ground_truth.txt") if p.is_file()), None)
    if gt_path is None:
        log.warning("emotion6: no ground_truth.txt under %s; valence/arousal/distribution unavailable", r)
        gt: dict[str, dict[str, Any]] = {}
    else:
        gt = read_ground_truth(gt_path, col)
    pool: list[tuple[str, int, dict[str, Any]]] = []
    without_gt = 0
    for cdir in sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = list_images(cdir, recursive=True)
        if not files:
            continue
        lab = col.folder_label(cdir, files)
        if lab is None:
            continue
        for f in files:
            rel = col.rel(f)
            if not col.file_ok(rel, f):
                continue
            meta = dict(gt.get(f.relative_to(images).as_posix().lower(), {}))
            without_gt += not meta
            pool.append((rel, lab, meta))
    if not pool and not col.skipped:
        raise DatasetError(f"emotion6: {images} has no <emotion>/ image folders")
    fr = parse_fractions(fractions)
    rule = split_pool(col, pool, fractions=fr, seed=seed)
    return col.build(
        split_rule=rule,
        split_seed=seed,
        meta={
            "layout": "emotion6",
            "fractions": fr,
            "ground_truth": gt_path is not None,
            "distribution_labels": DISTRIBUTION_LABELS,
            "images_without_ground_truth": without_gt,
        },
    )


# --- synthetic writer: this layout with planted faults (vea-bench datasets make-synthetic) ---------

@register_synthetic("emotion6", stream=2, label_space=EKMAN6)
def write_synthetic_emotion6(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    w.out.joinpath("images").mkdir()
    sub = w.under("images")
    folder_per_class(sub, space, n, faults, lambda folder, i: f"{i + 1}.jpg")
    rnd = random.Random(f"{w.seed}:emotion6")
    lines = ["[image_filename]\t[valence]\t[arousal]\t" + "\t".join(f"[prob. {d}]" for d in DISTRIBUTION_LABELS)]
    for folder in sorted(d.name for d in (w.out / "images").iterdir() if d.is_dir()):
        for f in sorted((w.out / "images" / folder).iterdir(), key=lambda p: int(p.stem)):
            dist = [rnd.random() * 0.3 for _ in DISTRIBUTION_LABELS]
            if folder in DISTRIBUTION_LABELS:
                dist[DISTRIBUTION_LABELS.index(folder)] = 1.0 + rnd.random()
            total = sum(dist)
            probs = "\t".join(f"{d / total:.6g}" for d in dist)
            lines.append(f"{folder}/{f.name}\t{rnd.uniform(1, 9):.1f}\t{rnd.uniform(1, 9):.1f}\t{probs}")
    (w.out / "ground_truth.txt").write_text("\n".join(lines) + "\n")
