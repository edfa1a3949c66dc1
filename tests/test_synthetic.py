"""Synthetic sets: every layout is written fast and deterministically, and its classes are learnable."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from vea_bench.datasets import DATASETS, load_dataset, open_image
from vea_bench.datasets.synthetic import (
    FAULTS,
    LAYOUTS,
    SYNTHETIC,
    make_synthetic,
    make_synthetic_all,
    render,
    supported_faults,
)
from vea_bench.errors import ConfigError, DatasetError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_all_layouts_written_in_a_couple_of_seconds(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    paths = make_synthetic_all(tmp_path, per_class=10, size=64, faults=FAULTS)
    elapsed = time.perf_counter() - t0
    assert set(paths) == set(LAYOUTS)
    assert elapsed < 6.0, f"7 synthetic layouts took {elapsed:.1f}s"
    for layout, root in paths.items():
        if layout == "hf":  # images inside Arrow files: the loader writes them out byte for byte
            root = load_dataset(layout, root).root
        jpgs = [p for p in root.rglob("*.jp*g") if p.stat().st_size > 0]
        assert len(jpgs) >= 20, layout
        # Real JPEG files (JFIF/Exif magic), not PNGs under a .jpg name.
        assert all(p.read_bytes()[:3] == b"\xff\xd8\xff" for p in jpgs[:10])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = make_synthetic("fi", tmp_path / "a", per_class=3, size=24, seed=5)
    b = make_synthetic("fi", tmp_path / "b", per_class=3, size=24, seed=5)
    c = make_synthetic("fi", tmp_path / "c", per_class=3, size=24, seed=6)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert sum(fa[k] != fc[k] for k in fa if k.endswith(".jpg")) == len([k for k in fa if k.endswith(".jpg")])


def test_images_vary_within_a_class_and_are_not_swatches() -> None:
    imgs = [render(3, 8, np.random.default_rng(i), 48).astype(float) for i in range(6)]
    # Within-image texture: far from a flat colour swatch.
    assert all(im.std(axis=(0, 1)).mean() > 15 for im in imgs)
    # Between images of one class: backgrounds, placement and noise differ.
    diffs = [np.abs(imgs[0] - im).mean() for im in imgs[1:]]
    assert min(diffs) > 10


def test_learnable_from_pixels_by_a_linear_model(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    root = make_synthetic("imagefolder", tmp_path / "if", per_class=30, size=32, seed=1)
    index = load_dataset("imagefolder", root)

    def xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        samples = index.split(split)
        x = np.stack([np.asarray(open_image(index.abspath(s)).resize((8, 8))).ravel() / 255.0 for s in samples])
        return x, np.array([s.label for s in samples])

    xtr, ytr = xy("train")
    xte, yte = xy("test")
    acc = LogisticRegression(max_iter=2000).fit(xtr, ytr).score(xte, yte)
    chance = 1 / index.label_space.num_classes
    assert acc > 3 * chance, f"accuracy {acc:.2f} vs chance {chance:.2f}"


def test_label_space_option_for_generic_layouts(tmp_path: Path) -> None:
    e6 = make_synthetic("imagefolder", tmp_path / "e6", per_class=3, size=16, label_space="ekman6")
    assert load_dataset("imagefolder", e6).label_space.name == "ekman6"
    custom = make_synthetic("manifest", tmp_path / "c", per_class=3, size=16, label_space="custom:cat,dog,owl")
    idx = load_dataset("manifest", custom)
    assert idx.label_space.labels == ("cat", "dog", "owl")
    with pytest.raises(ConfigError, match="ekman6"):
        make_synthetic("fi", tmp_path / "x", label_space="ekman6")


def test_bad_requests_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown synthetic layout 'coco'"):
        make_synthetic("coco", tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown fault"):
        make_synthetic("fi", tmp_path / "b", faults=["melted"])
    assert "unknown-label" not in supported_faults("flickr")
    with pytest.raises(ConfigError, match="flickr"):
        make_synthetic("flickr", tmp_path / "c", faults=["unknown-label"])
    with pytest.raises(ConfigError, match="per_class"):
        make_synthetic("fi", tmp_path / "d", per_class=2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an empty folder"):
        make_synthetic("fi", tmp_path / "full")
    assert (tmp_path / "full" / "x.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_writes_a_synthetic_set_its_own_loader_reads(name: str, tmp_path: Path) -> None:
    """Each dataset module registers its loader and its synthetic writer together: the set (with
    every fault the layout can hold) loads in the dataset's label space, every class present."""
    assert set(SYNTHETIC.names()) == set(DATASETS.names()) and name in LAYOUTS
    root = make_synthetic(name, tmp_path / name, per_class=3, size=16, faults=supported_faults(name))
    index = load_dataset(name, root, on_error="skip")
    assert index.label_space.name == (DATASETS.get(name).label_space or "mikels8")
    seen = {s.label for split in ("train", "val", "test") for s in index.split(split)}
    assert seen == set(range(index.label_space.num_classes))
    assert index.skipped                          # the planted unknown-label / unreadable rows are reported


def test_a_second_writer_on_a_taken_seed_stream_is_refused() -> None:
    """Streams seed a layout's images: sharing one would give two layouts the same pictures."""
    from vea_bench.datasets.synthetic import register_synthetic

    taken = SYNTHETIC.get("fi").stream
    with pytest.raises(ValueError, match="already used by 'fi'"):
        register_synthetic("fi-copy", stream=taken, label_space=None)(lambda *a: None)
