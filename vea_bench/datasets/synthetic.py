"""Small synthetic image sets in every native layout, learnable from pixels, with planted faults.

Tests and the demo need datasets that behave like the real ones without downloading anything:
the same folder and file layouts, the datasets' own label spellings ('content', 'sad', 'Amusement'),
both EmoSet row shapes, Katsurai vote files with ties and neutral majorities, and classes that a
model can actually learn. Each class has its own hue, texture (stripes or checker, with a class
frequency and orientation) and shape, blurred by noise, jitter and random backgrounds, so the task
is learnable but not a colour lookup.

Each dataset module writes its own layout: it registers a writer next to its loader with
`register_synthetic` (its label space, on-disk spellings, seed stream and the faults its files
cannot hold); this module holds what they share (`render`, `SetWriter`, `make_synthetic`).

Faults (``faults=``) are planted on top of the ``per_class`` good images:
``corrupt`` (garbage bytes named .jpg), ``zero-byte``, ``unknown-label`` (an image or row whose label
is outside the space) and ``duplicate`` (a byte copy of a train image placed in another split).
"""
from __future__ import annotations

import colorsys
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vea_bench.errors import ConfigError, DatasetError
from vea_bench.labels import MIKELS8, LabelSpace, get_label_space
from vea_bench.registry import Registry

FAULTS: tuple[str, ...] = ("corrupt", "zero-byte", "unknown-label", "duplicate")
UNKNOWN_LABEL = "boredom"

# Writes one synthetic set: (writer, label space, good images per class, faults to plant).
WriteFn = Callable[["SetWriter", LabelSpace, int, set[str]], None]


@dataclass(frozen=True)
class SyntheticLayout:
    """How a dataset's native layout is synthesised; registered by the dataset's own module next
    to its loader (`register_synthetic`), under the dataset's registry name."""

    name: str
    write: WriteFn
    stream: int                          # this layout's fixed seed stream: images differ across layouts
    label_space: LabelSpace | None       # the dataset's own space; None: any, default mikels8
    spellings: Mapping[str, str] = field(default_factory=dict)   # canonical label -> on-disk spelling
    unsupported_faults: Mapping[str, str] = field(default_factory=dict)  # fault -> why it cannot be planted

    @property
    def faults(self) -> tuple[str, ...]:
        return tuple(f for f in FAULTS if f not in self.unsupported_faults)


SYNTHETIC: Registry[SyntheticLayout] = Registry("synthetic layout", plugins="vea_bench.datasets")


def register_synthetic(name: str, *, stream: int, label_space: LabelSpace | None,
                       spellings: Mapping[str, str] | None = None,
                       unsupported_faults: Mapping[str, str] | None = None) -> Callable[[WriteFn], WriteFn]:
    """Decorator: register ``fn`` as the synthetic writer of dataset ``name`` (its registry name).

    ``stream`` must be unique: it seeds every image of the layout, so it stays fixed once chosen
    (the same seed gives byte-identical sets release after release).
    """
    def deco(fn: WriteFn) -> WriteFn:
        taken = {spec.stream: n for n, spec in SYNTHETIC.items()}
        if stream in taken:
            raise ValueError(f"synthetic stream {stream} of '{name}' is already used by '{taken[stream]}'")
        SYNTHETIC.add(name, SyntheticLayout(name, fn, stream, label_space, dict(spellings or {}),
                                            dict(unsupported_faults or {})))
        return fn
    return deco


def _layouts() -> Registry[SyntheticLayout]:
    import vea_bench.datasets  # noqa: F401  (every dataset module registers its writer)

    return SYNTHETIC


def __getattr__(name: str) -> Any:
    """``LAYOUTS``: every registered synthetic layout, in dataset registration order."""
    if name == "LAYOUTS":
        return tuple(_layouts().names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _spec(layout: str) -> SyntheticLayout:
    reg = _layouts()
    if layout not in reg:
        raise ConfigError(f"unknown synthetic layout '{layout}' (choices: {', '.join(reg.names())})")
    return reg.get(layout)


def supported_faults(layout: str) -> tuple[str, ...]:
    """The faults ``make_synthetic`` can plant in ``layout``."""
    return _spec(layout).faults


def layout_space(layout: str, label_space: str | None = None) -> LabelSpace:
    """The label space a synthetic ``layout`` is written in (imagefolder/manifest: default mikels8)."""
    own = _spec(layout).label_space
    if own is not None:
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


class SetWriter:
    """Writes the files of one synthetic set, keeping per-image seeds independent of write order."""

    def __init__(self, out: Path, n_classes: int, size: int, seed: int, spec: SyntheticLayout) -> None:
        self.out = out
        self.n_classes = n_classes
        self.size = size
        self.seed = seed
        self.spec = spec
        self.layout_id = spec.stream

    def under(self, sub: str) -> "SetWriter":
        """A writer for the subfolder ``sub`` with the same seed stream."""
        return SetWriter(self.out / sub, self.n_classes, self.size, self.seed, self.spec)

    def spell(self, label: str) -> str:
        """How this layout writes canonical ``label`` on disk (exercises the loaders' synonym maps)."""
        return self.spec.spellings.get(label, label)

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


def explicit_counts(n: int, with_val: bool) -> dict[str, int]:
    """Per-class split sizes for layouts that ship their own split."""
    test = max(1, round(0.2 * n))
    val = max(1, round(0.1 * n)) if with_val else 0
    return {"train": n - test - val, "val": val, "test": test}


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
    spec = _spec(layout)
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise ConfigError(f"unknown fault {', '.join(bad)} (choices: {', '.join(FAULTS)})")
    unsupported = [f for f in faults if f in spec.unsupported_faults]
    if unsupported:
        why = "; ".join(dict.fromkeys(spec.unsupported_faults[f] for f in unsupported))
        raise ConfigError(f"fault {', '.join(unsupported)} cannot be planted in synthetic {layout} ({why})")
    if per_class < 3:
        raise ConfigError(f"per_class must be at least 3 (one image per split), got {per_class}")
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    space = layout_space(layout, label_space)
    root = Path(out).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"synthetic output {root} exists and is not an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    w = SetWriter(root, space.num_classes, size, seed, spec)
    fset = set(faults)
    spec.write(w, space, per_class, fset)
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
        for layout in _layouts().names()
    }


# --- shared by the layouts' writers (each in its dataset's module) ---------------------------------


def folder_per_class(w: SetWriter, space: LabelSpace, n: int, faults: set[str], name: Any) -> None:
    """FI-style: ``<folder>/<file>`` for every image, ``name(folder, k)`` giving the file name."""
    first: str | None = None
    for cls, lab in enumerate(space.labels):
        folder = w.spell(lab)
        for i in range(n):
            rel = w.image(f"{folder}/{name(folder, i)}", cls, i)
            if cls == 2 and i == 0:
                first = rel
    if "corrupt" in faults:
        folder = w.spell(space.labels[0])
        w.corrupt(f"{folder}/{name(folder, n)}")
    if "zero-byte" in faults:
        folder = w.spell(space.labels[1])
        w.zero(f"{folder}/{name(folder, n)}")
    if "unknown-label" in faults:
        w.image(f"{UNKNOWN_LABEL}/{name(UNKNOWN_LABEL, 0)}", 0, 9002)
    if "duplicate" in faults and first is not None:
        folder = w.spell(space.labels[2])
        w.copy(first, f"{folder}/{name(folder, n + 1)}")


