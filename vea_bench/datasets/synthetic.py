"""Small synthetic image sets in every native layout, learnable from pixels, with planted faults.

Tests and the demo need datasets that behave like the real ones without downloading anything:
the same folder and file layouts, the datasets' own label spellings ('content', 'sad', 'Amusement'),
both EmoSet row shapes, Katsurai vote files with ties and neutral majorities, and classes that a
model can actually learn. Each class has its own hue, texture (stripes or checker, with a class
frequency and orientation) and shape, blurred by noise, jitter and random backgrounds, so the task
is learnable but not a colour lookup.

Faults (``faults=``) are planted on top of the ``per_class`` good images:
``corrupt`` (garbage bytes named .jpg), ``zero-byte``, ``unknown-label`` (an image or row whose label
is outside the space) and ``duplicate`` (a byte copy of a train image placed in another split).
"""
from __future__ import annotations

import colorsys
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vea_bench.datasets.emoset import EMOSET_ORDER
from vea_bench.datasets.emotion6 import DISTRIBUTION_LABELS
from vea_bench.errors import ConfigError, DatasetError
from vea_bench.labels import BINARY, EKMAN6, MIKELS8, LabelSpace, get_label_space

LAYOUTS: tuple[str, ...] = ("emoset", "fi", "emotion6", "flickr", "instagram", "imagefolder", "manifest")
FAULTS: tuple[str, ...] = ("corrupt", "zero-byte", "unknown-label", "duplicate")
# Flickr's synthetic file holds vote counts, where a label outside the space cannot be written.
UNSUPPORTED_FAULTS: dict[str, frozenset[str]] = {"flickr": frozenset({"unknown-label"})}
UNKNOWN_LABEL = "boredom"

_FIXED_SPACE: dict[str, LabelSpace] = {
    "emoset": MIKELS8, "fi": MIKELS8, "emotion6": EKMAN6, "flickr": BINARY, "instagram": BINARY,
}
# How each layout spells canonical labels on disk (exercises the synonym map).
_SPELLINGS: dict[str, dict[str, str]] = {
    "fi": {"contentment": "content", "sadness": "sad"},
    "imagefolder": {
        "amusement": "Amusement", "anger": "angry", "disgust": "disgusted", "excitement": "excited",
        "joy": "happy", "surprise": "Surprised", "positive": "Positive", "negative": "neg",
    },
    "manifest": {"contentment": "content", "sadness": "Sad", "fear": "scared", "joy": "Joy", "positive": "pos"},
    "instagram": {"positive": "Positive", "negative": "neg"},
}


def supported_faults(layout: str) -> tuple[str, ...]:
    """The faults ``make_synthetic`` can plant in ``layout``."""
    return tuple(f for f in FAULTS if f not in UNSUPPORTED_FAULTS.get(layout, frozenset()))


def layout_space(layout: str, label_space: str | None = None) -> LabelSpace:
    """The label space a synthetic ``layout`` is written in (imagefolder/manifest: default mikels8)."""
    if layout in _FIXED_SPACE:
        own = _FIXED_SPACE[layout]
        if label_space not in (None, own.name):
            raise ConfigError(f"synthetic {layout} is written in {own.name}; label space '{label_space}' does not apply")
        return own
    if label_space is None:
        return MIKELS8
    if label_space.startswith("custom:"):
        from vea_bench.datasets._common import resolve_space

        space = resolve_space(label_space)
        assert space is not None
        return space
    return get_label_space(label_space)


def render(cls: int, n_classes: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One ``size`` x ``size`` RGB image (uint8) of class ``cls``: hue + texture + shape + clutter."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Background: a random low-saturation colour with a gradient and its own faint texture.
    bh, bs, bv = rng.random(), 0.35 * rng.random(), 0.25 + 0.6 * rng.random()
    bg = np.array(colorsys.hsv_to_rgb(bh, bs, bv), dtype=np.float32)
    ga = rng.uniform(0, 2 * np.pi)
    grad = 0.75 + 0.5 * ((xx * np.cos(ga) + yy * np.sin(ga)) % 1.0)
    bf = rng.uniform(1, 6)
    btex = 0.9 + 0.1 * np.sin(2 * np.pi * bf * (xx + rng.random() * yy) + rng.uniform(0, 6.3))
    img = bg[None, None, :] * (grad * btex)[..., None]
    # Object: class hue (jittered), class texture, class shape at a jittered place and size.
    hue = (cls / n_classes + rng.normal(0, 0.035)) % 1.0
    color = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95)), dtype=np.float32)
    theta = np.pi * cls / max(n_classes, 1) + rng.normal(0, 0.12)
    freq = (3 + 2 * (cls % 3)) * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if cls % 2 == 0:
        tex = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + phase)
    else:
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        tex = (np.sign(np.sin(2 * np.pi * freq * u + phase) * np.sin(2 * np.pi * freq * v)) + 1) / 2
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    r = rng.uniform(0.2, 0.34)
    shape = cls % 3
    if shape == 0:  # disc
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == 1:  # square
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    else:  # triangle pointing up
        mask = (yy <= cy + r * 0.8) & (yy >= cy - r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.6)
    obj = color[None, None, :] * (0.45 + 0.55 * tex)[..., None]
    img = np.where(mask[..., None], obj, img)
    img = img + rng.normal(0, 0.07, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


class _Writer:
    """Writes images for one synthetic set, keeping per-image seeds independent of write order."""

    def __init__(self, out: Path, n_classes: int, size: int, seed: int, layout: str) -> None:
        self.out = out
        self.n_classes = n_classes
        self.size = size
        self.seed = seed
        self.layout_id = LAYOUTS.index(layout)

    def image(self, rel: str, cls: int, i: int) -> str:
        rng = np.random.default_rng([self.seed, self.layout_id, cls, i])
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(cls, self.n_classes, rng, self.size)).save(path, "JPEG", quality=90)
        return rel

    def corrupt(self, rel: str) -> str:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(f"{self.seed}:corrupt")
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(rnd.getrandbits(8) for _ in range(200)))  # JPEG magic, then junk
        return rel

    def zero(self, rel: str) -> str:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return rel

    def copy(self, src: str, rel: str) -> str:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((self.out / src).read_bytes())
        return rel


def _explicit_counts(n: int, with_val: bool) -> dict[str, int]:
    """Per-class split sizes for layouts that ship their own split."""
    test = max(1, round(0.2 * n))
    val = max(1, round(0.1 * n)) if with_val else 0
    return {"train": n - test - val, "val": val, "test": test}


def _spell(layout: str, label: str) -> str:
    return _SPELLINGS.get(layout, {}).get(label, label)


def make_synthetic(
    layout: str,
    out: str | Path,
    *,
    per_class: int = 10,
    size: int = 64,
    seed: int = 0,
    faults: Sequence[str] = (),
    label_space: str | None = None,
) -> Path:
    """Write a synthetic set in ``layout``'s native format under ``out`` (created; must be empty).

    ``per_class`` good images per class; layouts with their own split put about 70/10/20 % of
    them in train/val/test (imagefolder: 80/20, val left to the loader). Returns ``out``.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown synthetic layout '{layout}' (choices: {', '.join(LAYOUTS)})")
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise ConfigError(f"unknown fault {', '.join(bad)} (choices: {', '.join(FAULTS)})")
    unsupported = [f for f in faults if f in UNSUPPORTED_FAULTS.get(layout, frozenset())]
    if unsupported:
        raise ConfigError(f"fault {', '.join(unsupported)} cannot be planted in synthetic {layout} (its file holds vote counts)")
    if per_class < 3:
        raise ConfigError(f"per_class must be at least 3 (one image per split), got {per_class}")
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    space = layout_space(layout, label_space)
    root = Path(out).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"synthetic output {root} exists and is not an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root, space.num_classes, size, seed, layout)
    fset = set(faults)
    writer = {
        "emoset": _emoset, "fi": _fi, "emotion6": _emotion6, "flickr": _flickr, "instagram": _instagram,
        "imagefolder": _imagefolder, "manifest": _manifest,
    }[layout]
    writer(w, space, per_class, fset)
    (root / "synthetic.json").write_text(
        json.dumps(
            {"layout": layout, "label_space": space.name, "per_class": per_class, "size": size, "seed": seed, "faults": sorted(fset)},
            indent=2,
        )
    )
    return root


def make_synthetic_all(out: str | Path, **kwargs: Any) -> dict[str, Path]:
    """Every layout under ``out/<layout>``; faults a layout cannot hold are left out for it."""
    faults = tuple(kwargs.pop("faults", ()))
    return {
        layout: make_synthetic(layout, Path(out) / layout, faults=[f for f in faults if f in supported_faults(layout)], **kwargs)
        for layout in LAYOUTS
    }


# --- layouts -------------------------------------------------------------------------------------


def _emoset(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    counts = _explicit_counts(n, with_val=True)
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


def _folder_per_class(w: _Writer, space: LabelSpace, n: int, faults: set[str], layout: str, name: Any) -> None:
    """FI-style: ``<folder>/<file>`` for every image, ``name(folder, k)`` giving the file name."""
    first: str | None = None
    for cls, lab in enumerate(space.labels):
        folder = _spell(layout, lab)
        for i in range(n):
            rel = w.image(f"{folder}/{name(folder, i)}", cls, i)
            if cls == 2 and i == 0:
                first = rel
    if "corrupt" in faults:
        folder = _spell(layout, space.labels[0])
        w.corrupt(f"{folder}/{name(folder, n)}")
    if "zero-byte" in faults:
        folder = _spell(layout, space.labels[1])
        w.zero(f"{folder}/{name(folder, n)}")
    if "unknown-label" in faults:
        w.image(f"{UNKNOWN_LABEL}/{name(UNKNOWN_LABEL, 0)}", 0, 9002)
    if "duplicate" in faults and first is not None:
        folder = _spell(layout, space.labels[2])
        w.copy(first, f"{folder}/{name(folder, n + 1)}")


def _fi(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    _folder_per_class(w, space, n, faults, "fi", lambda folder, i: f"{folder}_{i}.jpg")


def _emotion6(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    w.out.joinpath("images").mkdir()
    sub = _Writer(w.out / "images", w.n_classes, w.size, w.seed, "emotion6")
    _folder_per_class(sub, space, n, faults, "emotion6", lambda folder, i: f"{i + 1}.jpg")
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


def _katsurai_images(w: _Writer, space: LabelSpace, n: int, faults: set[str], idgen: Any) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Images named by id; returns (id, kind, extension) rows and ids of tie/neutral extras."""
    rows: list[tuple[str, str, str]] = []
    for cls in range(space.num_classes):
        for i in range(n):
            ident = idgen()
            ext = ".jpeg" if i % 4 == 3 else ".jpg"
            w.image(f"images/{ident}{ext}", cls, i)
            rows.append((ident, space.labels[cls], ext))
    extras = []
    for j in range(4):  # two ties and two neutral majorities (votes) / neutral labels
        ident = idgen()
        w.image(f"images/{ident}.jpg", j % 2, 5000 + j)
        extras.append(ident)
    if "corrupt" in faults:
        ident = idgen()
        w.corrupt(f"images/{ident}.jpg")
        rows.append((ident, space.labels[0], ".jpg"))
    if "zero-byte" in faults:
        ident = idgen()
        w.zero(f"images/{ident}.jpg")
        rows.append((ident, space.labels[1], ".jpg"))
    if "duplicate" in faults:
        ident = idgen()
        src = next(r for r in rows if r[1] == space.labels[0])
        w.copy(f"images/{src[0]}{src[2]}", f"images/{ident}{src[2]}")
        rows.append((ident, space.labels[0], src[2]))
    rows.append((idgen(), space.labels[0], ""))  # labelled, but the user could not fetch the image
    return rows, extras


def _flickr(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    rnd = random.Random(f"{w.seed}:flickr")
    rows, extras = _katsurai_images(w, space, n, faults, lambda: str(rnd.randrange(10**9, 10**10)))
    majority = [(3, 0, 0), (2, 1, 0), (2, 0, 1)]
    lines = ["id,positive,neutral,negative"]
    body = []
    for ident, lab, _ in rows:
        p, u, g = rnd.choice(majority)
        votes = (p, u, g) if lab == "positive" else (g, u, p)
        body.append(f"{ident},{votes[0]},{votes[1]},{votes[2]}")
    for j, ident in enumerate(extras):
        votes = (1, 1, 1) if j < 2 else ((0, 2, 1) if j == 2 else (1, 2, 0))
        body.append(f"{ident},{votes[0]},{votes[1]},{votes[2]}")
    rnd.shuffle(body)
    (w.out / "labels.csv").write_text("\n".join(lines + body) + "\n")


def _instagram(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    rnd = random.Random(f"{w.seed}:instagram")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    rows, extras = _katsurai_images(w, space, n, faults, lambda: "".join(rnd.choice(alphabet) for _ in range(11)))
    body = [f"{ident}\t{_spell('instagram', lab)}" for ident, lab, _ in rows]
    body += [f"{ident}\tneutral" for ident in extras]
    if "unknown-label" in faults:
        ident = "".join(rnd.choice(alphabet) for _ in range(11))
        w.image(f"images/{ident}.jpg", 0, 9002)
        body.append(f"{ident}\t{UNKNOWN_LABEL}")
    rnd.shuffle(body)
    (w.out / "labels.txt").write_text("\n".join(["id\tlabel"] + body) + "\n")


def _imagefolder(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    counts = _explicit_counts(n, with_val=False)
    first: str | None = None
    for cls, lab in enumerate(space.labels):
        folder = _spell("imagefolder", lab)
        i = 0
        for split in ("train", "test"):
            for _ in range(counts[split]):
                rel = w.image(f"{split}/{folder}/{i:04d}.jpg", cls, i)
                if cls == 2 % space.num_classes and first is None:
                    first = rel
                i += 1
    if "corrupt" in faults:
        w.corrupt(f"train/{_spell('imagefolder', space.labels[0])}/{n:04d}.jpg")
    if "zero-byte" in faults:
        w.zero(f"train/{_spell('imagefolder', space.labels[1])}/{n:04d}.jpg")
    if "unknown-label" in faults:
        w.image(f"test/{UNKNOWN_LABEL}/0000.jpg", 0, 9002)
    if "duplicate" in faults and first is not None:
        w.copy(first, f"test/{_spell('imagefolder', space.labels[2 % space.num_classes])}/{n + 1:04d}.jpg")


def _manifest(w: _Writer, space: LabelSpace, n: int, faults: set[str]) -> None:
    counts = _explicit_counts(n, with_val=True)
    lines = ["path,label,split"]
    first: str | None = None
    for cls, lab in enumerate(space.labels):
        i = 0
        for split in ("train", "val", "test"):
            for _ in range(counts[split]):
                rel = w.image(f"data/{cls}_{i:04d}.jpg", cls, i)
                lines.append(f"{rel},{_spell('manifest', lab)},{split}")
                if cls == 2 % space.num_classes and first is None:
                    first = rel
                i += 1
    if "corrupt" in faults:
        lines.append(f"{w.corrupt(f'data/0_{n:04d}.jpg')},{_spell('manifest', space.labels[0])},train")
    if "zero-byte" in faults:
        lines.append(f"{w.zero(f'data/1_{n:04d}.jpg')},{_spell('manifest', space.labels[1])},train")
    if "unknown-label" in faults:
        lines.append(f"{w.image('data/x_0000.jpg', 0, 9002)},{UNKNOWN_LABEL},test")
    if "duplicate" in faults and first is not None:
        lab = space.labels[2 % space.num_classes]
        lines.append(f"{w.copy(first, f'data/dup_{n:04d}.jpg')},{_spell('manifest', lab)},test")
    (w.out / "manifest.csv").write_text("\n".join(lines) + "\n")
