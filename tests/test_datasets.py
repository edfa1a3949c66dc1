"""The dataset layer: every native layout loads with the right counts, labels, splits and hashes;
spellings map; faults are reported by `check_dataset` and skipped (with reasons) by loaders."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vea_bench.datasets import (
    DATASETS,
    check_dataset,
    list_datasets,
    load_dataset,
    open_image,
)
from vea_bench.datasets.splits import stratified_split
from vea_bench.datasets.synthetic import LAYOUTS, make_synthetic, supported_faults
from vea_bench.errors import ConfigError, DatasetError, UnknownLabelError
from vea_bench.labels import BINARY, EKMAN6, MIKELS8
from vea_bench.registry import RegistryError

SPACE = {
    "emoset": MIKELS8, "fi": MIKELS8, "emotion6": EKMAN6, "flickr": BINARY, "instagram": BINARY,
    "imagefolder": MIKELS8, "manifest": MIKELS8, "hf": MIKELS8,
}
# With 6 images per class every layout ends up 4 / 1 / 1 per class: EmoSet and manifest by their
# own split, imagefolder by 5/1 folders + 10 % of train carved, the others by stratified 80/5/15.
PER_CLASS = {"train": 4, "val": 1, "test": 1}


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


# --- every layout ------------------------------------------------------------------------------


def test_registry_lists_every_layout() -> None:
    names = [e.name for e in list_datasets()]
    assert names == list(LAYOUTS)
    for e in list_datasets():
        assert e.layout and e.split_rule
        assert e.label_space == (SPACE[e.name].name if e.name not in ("imagefolder", "manifest", "hf") else None)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_loads_with_counts_labels_splits(layout: str, synthetic_root) -> None:
    root = synthetic_root(layout)
    index = load_dataset(layout, root)
    assert index.label_space == SPACE[layout]
    assert list(index.splits) == ["train", "val", "test"]
    for split, counts in index.counts().items():
        assert counts == Counter({lab: PER_CLASS[split] for lab in SPACE[layout].labels}), (layout, split)
    for split, samples in index.splits.items():
        paths = [s.path for s in samples]
        assert paths == sorted(paths), "splits are sorted by relative path"
        assert all((index.root / p).is_file() and not Path(p).is_absolute() for p in paths)
    all_paths = [s.path for v in index.splits.values() for s in v]
    assert len(all_paths) == len(set(all_paths)), "no image in two splits"
    # Ties / neutral majorities / unfetched images are the only skips of a clean set.
    assert {s.kind for s in index.skipped} <= {"tie", "neutral", "missing"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_manifest_hash_stable_and_split_specs_align(layout: str, synthetic_root) -> None:
    a = load_dataset(layout, synthetic_root(layout))
    b = load_dataset(layout, synthetic_root(layout))
    assert a.manifest_hashes() == b.manifest_hashes()
    assert len(set(a.manifest_hashes().values())) == 3
    specs = a.split_specs()
    for split, spec in specs.items():
        assert list(spec.ids) == [s.path for s in a.split(split)]
        assert spec.labels.tolist() == [s.label for s in a.split(split)]
        assert spec.manifest_hash == a.manifest_hash(split)


def test_manifest_hash_changes_when_a_label_changes(tmp_path: Path) -> None:
    root = make_synthetic("manifest", tmp_path / "m", per_class=4, size=16)
    before = load_dataset("manifest", root).manifest_hashes()
    csv = root / "manifest.csv"
    lines = csv.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.endswith(",test") and ",awe," in ln)
    lines[i] = lines[i].replace(",awe,", ",anger,")
    csv.write_text("\n".join(lines) + "\n")
    after = load_dataset("manifest", root).manifest_hashes()
    assert after["test"] != before["test"]
    assert after["train"] == before["train"]


def test_imagefolder_moved_file_changes_hash(tmp_path: Path) -> None:
    root = make_synthetic("imagefolder", tmp_path / "f", per_class=4, size=16)
    before = load_dataset("imagefolder", root).manifest_hash("test")
    src = next((root / "test" / "awe").iterdir())
    shutil.move(src, root / "test" / "fear" / "moved.jpg")
    assert load_dataset("imagefolder", root).manifest_hash("test") != before


# --- spellings and label spaces -----------------------------------------------------------------


def test_fi_folder_spellings_map_to_mikels(synthetic_root) -> None:
    index = load_dataset("fi", synthetic_root("fi"))
    by_folder = {s.path.split("/")[0]: MIKELS8.labels[s.label] for v in index.splits.values() for s in v}
    assert by_folder["content"] == "contentment"
    assert by_folder["sad"] == "sadness"
    assert by_folder["amusement"] == "amusement"


def test_imagefolder_infers_canonical_space_through_synonyms(synthetic_root) -> None:
    index = load_dataset("imagefolder", synthetic_root("imagefolder"))
    assert index.label_space == MIKELS8 and index.meta["label_space_inferred"]
    folders = {s.path.split("/")[1]: MIKELS8.labels[s.label] for s in index.split("train")}
    assert folders["Amusement"] == "amusement" and folders["angry"] == "anger" and folders["excited"] == "excitement"


def test_imagefolder_custom_and_forced_space(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for split in ("train", "test"):
        for cls in ("Dog", "cat"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / cls / "a.jpg")
            Image.new("RGB", (8, 8), "red").save(root / split / cls / "b.jpg")
    index = load_dataset("imagefolder", root)
    assert index.label_space.labels == ("cat", "dog")
    assert index.label_space.name == "custom:cat,dog"
    with pytest.raises(UnknownLabelError, match="'Dog'") as err:
        load_dataset("imagefolder", root, label_space="mikels8")
    assert "train/Dog/a.jpg" in _one_line(err.value)
    skipped = load_dataset("imagefolder", root, label_space="custom:dog,cat,owl", on_error="skip")
    assert skipped.label_space.labels == ("dog", "cat", "owl") and not skipped.skipped


def test_emoset_binary_maps_positive_emotions(synthetic_root) -> None:
    root = synthetic_root("emoset")
    full = load_dataset("emoset", root)
    binary = load_dataset("emoset", root, binary=True)
    assert binary.label_space == BINARY
    assert load_dataset("emoset", root, label_space="binary").manifest_hashes() == binary.manifest_hashes()
    fine = {s.path: MIKELS8.labels[s.label] for s in full.split("train")}
    for s in binary.split("train"):
        want = "positive" if fine[s.path] in ("amusement", "awe", "contentment", "excitement") else "negative"
        assert BINARY.labels[s.label] == want
    assert binary.counts()["train"] == Counter({"positive": 16, "negative": 16})


def test_fi_binary_option(synthetic_root) -> None:
    fine = load_dataset("fi", synthetic_root("fi"))
    index = load_dataset("fi", synthetic_root("fi"), binary=True)
    assert index.label_space == BINARY
    # The binary view keeps the 8-class split (stratified on the emotion), relabelled.
    for split in ("train", "val", "test"):
        assert [s.path for s in index.split(split)] == [s.path for s in fine.split(split)]
    assert index.counts()["train"] == Counter({"positive": 16, "negative": 16})


# --- EmoSet specifics ---------------------------------------------------------------------------


def test_emoset_both_row_shapes_canonical_order_and_attributes(synthetic_root) -> None:
    root = synthetic_root("emoset")
    assert len(json.loads((root / "train.json").read_text())[0]) == 4
    assert len(json.loads((root / "test.json").read_text())[0]) == 3
    index = load_dataset("emoset", root)
    assert set(index.meta["row_shapes"]) == {"3", "4"}
    # EmoSet's own index of awe is 1; the canonical Mikels index is 2.
    awe = [s for s in index.split("test") if s.path.startswith("image/awe/")]
    assert awe and all(s.label == MIKELS8.labels.index("awe") == 2 for s in awe)
    s0 = index.split("train")[0]
    assert s0.meta["image_id"] == Path(s0.path).stem
    assert s0.meta["annotation"].startswith("annotation/")
    with_attrs = [s for v in index.splits.values() for s in v if "scene" in s.meta]
    assert len(with_attrs) == 47  # 48 images, one annotation file deliberately missing
    assert index.meta["annotations_missing"] == 1
    assert all(isinstance(s.meta["object"], list) for s in with_attrs)
    assert any("facial_expression" not in s.meta for s in with_attrs), "missing attributes tolerated"
    lean = load_dataset("emoset", root, attributes=False)
    assert "scene" not in lean.split("train")[0].meta
    assert lean.manifest_hashes() == index.manifest_hashes()


def test_emoset_integer_labels_use_info_json_order(tmp_path: Path) -> None:
    root = make_synthetic("emoset", tmp_path / "e", per_class=3, size=16)
    rows = json.loads((root / "test.json").read_text())
    info = json.loads((root / "info.json").read_text())
    as_int = [[info["emotion"]["label2idx"][r[0]], *r[1:]] for r in rows]
    before = load_dataset("emoset", root).manifest_hash("test")
    (root / "test.json").write_text(json.dumps(as_int))
    assert load_dataset("emoset", root).manifest_hash("test") == before


def test_emoset_without_val_json_carves_ten_percent(tmp_path: Path) -> None:
    root = make_synthetic("emoset", tmp_path / "e", per_class=12, size=16)
    (root / "val.json").unlink()
    index = load_dataset("emoset", root, seed=3)
    assert index.split_seed == 3 and "10 %" in index.split_rule
    # 12 per class: test 2, val.json rows dropped (1), train 9 -> val 1, train 8.
    assert index.counts()["val"] == Counter({lab: 1 for lab in MIKELS8.labels})
    assert index.counts()["train"] == Counter({lab: 8 for lab in MIKELS8.labels})


# --- Emotion6 and Katsurai specifics ------------------------------------------------------------


def test_emotion6_keeps_valence_arousal_distribution(synthetic_root) -> None:
    index = load_dataset("emotion6", synthetic_root("emotion6"))
    assert index.meta["distribution_labels"][-1] == "neutral"
    for s in index.split("train"):
        assert set(s.meta) == {"valence", "arousal", "distribution"}
        dist = s.meta["distribution"]
        assert len(dist) == 7 and abs(sum(dist) - 1) < 1e-3
        assert int(np.argmax(dist)) == s.label  # the synthetic votes agree with the folder


def test_katsurai_votes_exclude_and_count_ties_and_neutral(synthetic_root) -> None:
    flickr = load_dataset("flickr", synthetic_root("flickr"))
    assert flickr.meta["label_mode"] == "vote counts"
    assert (flickr.meta["excluded_ties"], flickr.meta["excluded_neutral"], flickr.meta["missing_images"]) == (2, 2, 1)
    kinds = Counter(s.kind for s in flickr.skipped)
    assert kinds == Counter({"tie": 2, "neutral": 2, "missing": 1})
    s = flickr.split("train")[0]
    v = s.meta["votes"]
    assert (v["positive"] > v["negative"]) == (s.label == 0)
    insta = load_dataset("instagram", synthetic_root("instagram"))
    assert insta.meta["label_mode"] == "label column" and insta.meta["excluded_neutral"] == 4
    assert any(s.path.endswith(".jpeg") for v in insta.splits.values() for s in v)


def test_katsurai_headerless_whitespace_votes_and_label_csv(tmp_path: Path) -> None:
    root = tmp_path / "k"
    (root / "photos").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "photos" / f"{100 + i}.png")
    # Headerless "id pos neu neg"; 107 is a tie, 106 a neutral majority.
    votes = ["100 3 0 0", "101 2 0 1", "102 2 1 0", "103 0 0 3", "104 1 0 2", "105 0 1 2", "106 0 2 1", "107 1 1 1"]
    (root / "votes.txt").write_text("\n".join(votes) + "\n")
    idx = load_dataset("flickr", root)
    assert (idx.meta["excluded_ties"], idx.meta["excluded_neutral"]) == (1, 1)
    labels = {Path(s.path).stem: BINARY.labels[s.label] for v in idx.splits.values() for s in v}
    assert labels == {"100": "positive", "101": "positive", "102": "positive", "103": "negative", "104": "negative", "105": "negative"}
    # The same ids as a CSV label column; two candidate files need labels_file=.
    (root / "labels.csv").write_text("photo_id,sentiment\n" + "\n".join(f"{100 + i},{'pos' if i < 4 else 'negative'}" for i in range(8)))
    with pytest.raises(DatasetError, match="labels_file"):
        load_dataset("instagram", root)
    idx2 = load_dataset("instagram", root, labels_file="labels.csv")
    assert sum(len(v) for v in idx2.splits.values()) == 8


def test_fi_flat_files_label_from_prefix_and_explicit_split_folders(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for emo in ("amusement", "sad", "content"):
        for i in range(4):
            Image.new("RGB", (8, 8), (i, 9, 9)).save(flat / f"{emo}_{i}.jpg")
    idx = load_dataset("fi", flat)
    assert {MIKELS8.labels[s.label] for v in idx.splits.values() for s in v} == {"amusement", "sadness", "contentment"}
    # Explicit split folders: read as given, val optional.
    split_root = tmp_path / "split"
    for split in ("train", "test"):
        for emo in ("awe", "fear"):
            (split_root / split / emo).mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(split_root / split / emo / f"{i}.jpg")
    idx = load_dataset("fi", split_root)
    assert idx.label_space == MIKELS8
    assert idx.counts()["test"] == Counter({"awe": 5, "fear": 5})
    assert idx.meta["val_from_train"] and len(idx.split("val")) == 2


def test_manifest_without_split_column_is_stratified(tmp_path: Path) -> None:
    root = make_synthetic("manifest", tmp_path / "m", per_class=20, size=16)
    lines = (root / "manifest.csv").read_text().splitlines()
    (root / "nosplit.csv").write_text("\n".join(",".join(ln.split(",")[:2]) for ln in lines) + "\n")
    (root / "manifest.csv").unlink()
    index = load_dataset("manifest", root / "nosplit.csv", seed=7)
    assert index.split_seed == 7 and "80/5/15" in index.split_rule
    for split, n in {"train": 16, "val": 1, "test": 3}.items():
        assert index.counts()[split] == Counter({lab: n for lab in MIKELS8.labels})


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_reports_planted_faults(layout: str, synthetic_root) -> None:
    faults = supported_faults(layout)
    report = check_dataset(layout, synthetic_root(layout, faults=faults))
    kinds = report.skipped_by_kind()
    assert kinds["zero-byte"] == 1
    assert len(report.zero_byte) == 1
    assert len(report.unreadable) == 1 and "cannot decode" in report.unreadable[0].reason
    if "unknown-label" in faults:
        assert [s.path for s in report.unknown_labels] and "boredom" in report.unknown_labels[0].reason
    content = [d for d in report.duplicates if d.kind == "content"]
    assert len(content) == 1 and len(content[0].members) == 2
    assert not report.ok and report.n_faults >= 3
    d = report.to_dict()
    assert json.loads(json.dumps(d))["n_faults"] == report.n_faults


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loaders_skip_faults_without_losing_other_rows(layout: str, synthetic_root) -> None:
    faults = supported_faults(layout)
    index = load_dataset(layout, synthetic_root(layout, faults=faults), on_error="skip")
    space = SPACE[layout]
    totals = Counter()
    for c in index.counts().values():
        totals.update(c)
    # Every good image is kept; the corrupt file (class 0) is only found by decoding, the duplicate
    # copy (class 2) is a valid image: both stay in the index.
    for k, lab in enumerate(space.labels):
        extra = (k == 0) + (k == 2 % space.num_classes)
        assert totals[lab] == 6 + extra, (layout, lab)
    kinds = Counter(s.kind for s in index.skipped)
    assert kinds["zero-byte"] == 1
    assert kinds["unknown-label"] == (1 if "unknown-label" in faults else 0)
    assert all(s.reason for s in index.skipped)


@pytest.mark.parametrize("layout", [x for x in LAYOUTS if "unknown-label" in supported_faults(x)])
def test_unknown_label_raises_naming_file_and_label(layout: str, synthetic_root) -> None:
    root = synthetic_root(layout, faults=("unknown-label",))
    with pytest.raises(UnknownLabelError) as err:
        load_dataset(layout, root)
    msg = _one_line(err.value)
    assert "'boredom'" in msg and layout in msg
    assert ".jpg" in msg  # names the file


def test_zero_byte_is_skipped_even_when_raising(synthetic_root) -> None:
    index = load_dataset("fi", synthetic_root("fi", faults=("zero-byte",)))
    assert [s.kind for s in index.skipped] == ["zero-byte"]
    assert sum(len(v) for v in index.splits.values()) == 48


def test_check_duplicate_path_across_splits(tmp_path: Path) -> None:
    root = make_synthetic("emoset", tmp_path / "e", per_class=3, size=16)
    train = json.loads((root / "train.json").read_text())
    test = json.loads((root / "test.json").read_text())
    test.append([train[0][0], train[0][2], train[0][3]])
    (root / "test.json").write_text(json.dumps(test))
    report = check_dataset("emoset", root)
    cross = report.cross_split_duplicates
    assert len(cross) == 1 and cross[0].kind == "path"
    assert {s for s, _ in cross[0].members} == {"train", "test"}


# --- splits -------------------------------------------------------------------------------------


def test_split_deterministic_seeded_and_stratified(synthetic_root) -> None:
    root = synthetic_root("fi", per_class=40)
    a = load_dataset("fi", root, seed=1)
    b = load_dataset("fi", root, seed=1)
    c = load_dataset("fi", root, seed=2)
    assert a.manifest_hashes() == b.manifest_hashes()
    assert a.manifest_hash("test") != c.manifest_hash("test")
    assert a.split_seed == 1 and "seed 1" in a.split_rule
    for split, n in {"train": 32, "val": 2, "test": 6}.items():
        assert a.counts()[split] == Counter({lab: n for lab in MIKELS8.labels})


def test_stratified_split_ignores_listing_order() -> None:
    items = [f"img_{i:03d}.jpg" for i in range(100)]
    labels = [i % 3 for i in range(100)]
    one = stratified_split(items, labels, seed=9)
    order = np.random.default_rng(0).permutation(100)
    two = stratified_split([items[i] for i in order], [labels[i] for i in order], seed=9)
    assert one == two
    assert sorted(sum(one.values(), [])) == items
    with pytest.raises(ConfigError):
        stratified_split(items, labels, fractions={"train": 0.5, "test": 0.2})


# --- errors -------------------------------------------------------------------------------------


def test_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as e1:
        load_dataset("fi", tmp_path / "nope")
    _one_line(e1.value)
    with pytest.raises(RegistryError, match="did you mean 'emoset'"):
        load_dataset("emosett", tmp_path)
    with pytest.raises(ConfigError, match="'binray'"):
        load_dataset("fi", tmp_path, binray=True)
    with pytest.raises(ConfigError, match="not supported"):
        load_dataset("emotion6", tmp_path, label_space="mikels8")

    root = make_synthetic("emoset", tmp_path / "e", per_class=3, size=16)
    (root / "val.json").write_text('[["awe", "image/awe/awe_00000.jpg"')
    with pytest.raises(DatasetError, match="val.json is not valid JSON") as e2:
        load_dataset("emoset", root)
    _one_line(e2.value)
    (root / "val.json").write_text('{"rows": []}')
    with pytest.raises(DatasetError, match="JSON list"):
        load_dataset("emoset", root)
    (root / "val.json").write_text('[["awe"]]')
    with pytest.raises(DatasetError, match="val.json row 0"):
        load_dataset("emoset", root)
    assert load_dataset("emoset", root, on_error="skip").skipped[0].kind == "malformed"
    (root / "test.json").unlink()
    with pytest.raises(DatasetError, match="test.json not found"):
        load_dataset("emoset", root)

    e6 = make_synthetic("emotion6", tmp_path / "e6", per_class=3, size=16)
    with open(e6 / "ground_truth.txt", "a") as f:
        f.write("joy/1.jpg\t5.0\tlots\n")
    with pytest.raises(DatasetError, match="ground_truth.txt line"):
        load_dataset("emotion6", e6)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="train/ and test/"):
        load_dataset("imagefolder", empty)
    with pytest.raises(DatasetError, match="manifest.csv"):
        load_dataset("manifest", empty)


def test_open_image(tmp_path: Path) -> None:
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(rgba)
    im = open_image(rgba)
    assert im.mode == "RGB" and im.size == (5, 4)
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), "blue").save(good, quality=95)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:200])
    for name, what in [("missing.jpg", "not found"), ("zero.jpg", "zero-byte"), ("bad.jpg", "cannot decode"), ("cut.jpg", "cannot decode")]:
        with pytest.raises(DatasetError, match=what) as err:
            open_image(tmp_path / name)
        assert name in _one_line(err.value)


def test_registry_aliases() -> None:
    assert DATASETS.canonical("EmoSet-118K") == "emoset"
    assert DATASETS.canonical("csv") == "manifest"


def test_katsurai_votes_with_spaces_and_tabs_mixed(tmp_path: Path) -> None:
    # Issue 15: a hand-edited votes file mixing tabs and spaces gave "no usable images found".
    root = tmp_path / "k"
    (root / "images").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "images" / f"{200 + i}.jpg")
    rows = ["200\t3 0 0", "201 2\t0\t1", "202\t2\t1\t0", "203  0 0\t3", "204 1 0 2", "205\t0 1  2", "206\t0\t2\t1",
            "207 1 1 1"]
    for header in ("id\tpositive neutral negative", "id\tpositive\tneutral\tnegative", None):
        (root / "votes.txt").write_text("\n".join(([header] if header else []) + rows) + "\n")
        idx = load_dataset("instagram", root)
        labels = {Path(s.path).stem: BINARY.labels[s.label] for v in idx.splits.values() for s in v}
        assert labels == {"200": "positive", "201": "positive", "202": "positive", "203": "negative",
                          "204": "negative", "205": "negative"}, header
        assert (idx.meta["excluded_ties"], idx.meta["excluded_neutral"]) == (1, 1)
    # Tab-separated names with spaces still read as columns when every line uses tabs.
    (root / "votes.txt").write_text("image id\thighly positive\tnegative\n" + "\n".join(
        f"{200 + i}\t{3 if i < 4 else 0}\t{0 if i < 4 else 3}" for i in range(8)) + "\n")
    idx = load_dataset("flickr", root)
    assert sum(len(v) for v in idx.splits.values()) == 8 and idx.meta["label_mode"] == "vote counts"


VOTES = {"300": (3, 0, 0), "301": (2, 0, 1), "302": (2, 1, 0), "303": (0, 0, 3), "304": (1, 0, 2), "305": (0, 1, 2),
         "306": (0, 2, 1), "307": (1, 1, 1)}
EXPECTED = {"300": "positive", "301": "positive", "302": "positive", "303": "negative", "304": "negative",
            "305": "negative"}


@pytest.mark.parametrize("fmt", [
    "{i}\t{p} {u} {n}",          # a tab after the id, spaces between the counts, on every line
    "{i} {p}\t{u}  {n}",         # spaces, then a tab, on every line
    " {i} \t {p}\t{u} {n} \r",   # stray leading/trailing whitespace and CRLF line ends
    "{i}\t\t{p}   {u}\t{n}",     # runs of tabs and spaces
])
@pytest.mark.parametrize("header", [None, "id\tpositive neutral negative", "photo_id pos neu neg",
                                    "image_name\tpos\tneu\tneg", "image id\thighly positive\tneutral\tnegative"])
def test_katsurai_votes_any_whitespace_with_or_without_header(tmp_path: Path, fmt: str, header: str | None) -> None:
    root = tmp_path / "k"
    (root / "images").mkdir(parents=True)
    for i, ident in enumerate(VOTES):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "images" / f"{ident}.jpg")
    body = [fmt.format(i=k, p=p, u=u, n=n) for k, (p, u, n) in VOTES.items()]
    (root / "votes.txt").write_text("\n".join(([header] if header else []) + body) + "\n")
    idx = load_dataset("instagram", root)
    labels = {Path(s.path).stem: BINARY.labels[s.label] for v in idx.splits.values() for s in v}
    assert labels == EXPECTED
    assert (idx.meta["excluded_ties"], idx.meta["excluded_neutral"]) == (1, 1) and not idx.faults()


@pytest.mark.parametrize("header", [None, "id label", "id\tlabel"])
def test_katsurai_label_column_any_whitespace(tmp_path: Path, header: str | None) -> None:
    root = tmp_path / "k"
    (root / "images").mkdir(parents=True)
    for i, ident in enumerate(EXPECTED):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "images" / f"{ident}.jpg")
    seps = [" \t", "\t ", "  ", "\t\t", " ", "\t"]
    body = [f"{k}{seps[j]}{'Positive' if v == 'positive' else 'neg'}" for j, (k, v) in enumerate(EXPECTED.items())]
    (root / "labels.txt").write_text("\n".join(([header] if header else []) + body) + "\n")
    idx = load_dataset("instagram", root)
    assert {Path(s.path).stem: BINARY.labels[s.label] for v in idx.splits.values() for s in v} == EXPECTED
