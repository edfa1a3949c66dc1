"""The `hf` layout: a DatasetDict of synthetic images saved by `datasets` (Arrow and parquet) goes
through `datasets check`, `extract`, `train distill` and `table` exactly as the same images do as an
image folder; malformed sets get one-line errors or skipped rows."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("datasets")

from _extract_helpers import cache_arrays  # noqa: E402

from vea_bench.cache import FeatureCache  # noqa: E402
from vea_bench.datasets import check_dataset, load_dataset  # noqa: E402
from vea_bench.datasets.hf import write_datasetdict  # noqa: E402
from vea_bench.errors import DatasetError  # noqa: E402
from vea_bench.results import RunRecord  # noqa: E402
from vea_bench_cli.main import app  # noqa: E402

runner = CliRunner()
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0 and "Traceback" not in result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One synthetic image folder, and the same images (same splits, same order) as a DatasetDict
    saved with ``save_to_disk`` and as hub-style parquet shards."""
    from vea_bench.datasets.synthetic import make_synthetic

    tmp = tmp_path_factory.mktemp("hf")
    folder = make_synthetic("imagefolder", tmp / "folder", per_class=4, size=24, seed=3)
    index = load_dataset("imagefolder", folder)
    rows = {SPLIT_NAMES[s]: [(index.abspath(x).read_bytes(), x.label) for x in xs] for s, xs in index.splits.items()}
    labels = list(index.label_space.labels)
    return {
        "imagefolder": folder,
        "arrow": write_datasetdict(tmp / "arrow", rows, labels, fmt="arrow"),
        "parquet": write_datasetdict(tmp / "parquet", rows, labels, fmt="parquet"),
    }


def _name(kind: str) -> str:
    return "imagefolder" if kind == "imagefolder" else "hf"


@pytest.fixture(scope="module")
def pipeline(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """check -> extract (tiny Qwen2-VL + tiny teacher) -> train distill -> table, for each of the three sets."""
    from vea_bench.models.tiny import make_tiny

    tmp = tmp_path_factory.mktemp("hf-pipeline")
    qwen = make_tiny("qwen2-vl", tmp / "qwen", seed=0)
    teacher = make_tiny("teacher", tmp / "teacher", seed=1, num_classes=8)
    out: dict[str, dict[str, object]] = {}
    for kind, root in sets.items():
        check = _invoke("datasets", "check", _name(kind), "--root", root, "--json")
        assert check.exit_code == 0, check.output
        cache = tmp / f"{kind}.h5"
        ext = _invoke("extract", _name(kind), "--root", root, "--cache", cache, "--vlm", qwen, "--teacher", teacher,
                      "--key", f"{teacher}=vit", "--answer", "generate", "--max-new-tokens", "2", "--batch-size", "16",
                      "--workers", "0", "--device", "cpu", "--quiet")
        assert ext.exit_code == 0, ext.output
        results = tmp / f"results-{kind}"
        dist = _invoke("train", "distill", "--cache", cache, "--lr", "1e-3", "--epochs", "2", "--device", "cpu",
                       "--results", results, "--quiet")
        assert dist.exit_code == 0, dist.output
        table = _invoke("table", "--results", results, "--format", "csv", "--table", "ext", "--dataset", _name(kind))
        assert table.exit_code == 0, table.output
        out[kind] = {"check": json.loads(check.stdout), "cache": cache, "table": table.stdout,
                     "record": RunRecord.load(dist.stdout.strip().splitlines()[-1])}
    return out


@pytest.mark.parametrize("kind", ["arrow", "parquet"])
def test_hf_set_matches_the_image_folder_through_check_extract_distill_table(kind: str, pipeline) -> None:
    ref, got = pipeline["imagefolder"], pipeline[kind]
    assert got["check"]["counts"] == ref["check"]["counts"]
    assert got["check"]["ok"] and got["check"]["n_images"] == ref["check"]["n_images"] == 32
    assert got["check"]["meta"]["image_column"] == "image" and got["check"]["meta"]["label_column"] == "label"
    # The same cache rows: every source's values (features, logits, answers, per-image fingerprints).
    a, b = cache_arrays(ref["cache"]), cache_arrays(got["cache"])
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].shape == b[key].shape, key
        if a[key].dtype == object:
            assert list(a[key]) == list(b[key]), key
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with FeatureCache.open(ref["cache"]) as c1, FeatureCache.open(got["cache"]) as c2:
        for split in ("train", "val", "test"):
            assert c1.num_rows(split) == c2.num_rows(split)
            assert all(i.startswith(f"{SPLIT_NAMES[split] if split != 'val' else 'validation'}/") for i in c2.ids(split))
    # The distill head trained on either cache reaches the same figures, and the table shows them.
    ra, rb = ref["record"], got["record"]
    assert ra.metrics["test"]["accuracy"] == rb.metrics["test"]["accuracy"]
    assert ra.metrics["val"]["macro_f1"] == rb.metrics["val"]["macro_f1"]
    assert f"{rb.metrics['test']['accuracy'] * 100:.2f}" in got["table"]


def test_row_ids_fingerprints_and_manifest_hash(sets: dict[str, Path], tmp_path: Path) -> None:
    a = load_dataset("hf", sets["arrow"])
    b = load_dataset("hf", sets["arrow"])
    assert a.manifest_hashes() == b.manifest_hashes()
    assert [s.path for s in a.split("test")] == [s.path for s in b.split("test")]
    assert a.split("test")[0].path == "test/000000.jpg"
    # Files in the image store hold the stored bytes, byte for byte.
    folder = load_dataset("imagefolder", sets["imagefolder"])
    for x, y in zip(folder.split("val"), a.split("val")):
        assert (folder.abspath(x).read_bytes() == a.abspath(y).read_bytes()) and x.label == y.label
    # Same rows and labels, another dataset fingerprint (parquet): another manifest hash.
    p = load_dataset("hf", sets["parquet"])
    assert [s.path for s in p.split("train")] == [s.path for s in a.split("train")]
    assert p.manifest_hash("train") != a.manifest_hash("train")
    assert a.meta["fingerprint"] != p.meta["fingerprint"]
    # The store is written once and listed; a file removed from it is written again from the dataset.
    assert list(a.root.glob(".rows-*.json"))
    victim = a.abspath(a.split("test")[0])
    data = victim.read_bytes()
    victim.unlink()
    again = load_dataset("hf", sets["arrow"])
    assert victim.read_bytes() == data and again.manifest_hashes() == a.manifest_hashes()
    # Another image store (-o images_dir) gives the same ids and hashes.
    c = load_dataset("hf", sets["arrow"], images_dir=tmp_path / "store")
    assert c.root.parent == tmp_path / "store" and c.manifest_hashes() == a.manifest_hashes()


def _bytes_of(root: Path, n: int) -> list[tuple[bytes, int]]:
    index = load_dataset("imagefolder", root)
    return [(index.abspath(s).read_bytes(), s.label) for s in index.split("train")[:n]]


def test_no_val_split_is_carved_from_train_and_a_bare_dataset_is_split(sets: dict[str, Path], tmp_path: Path) -> None:
    import datasets

    src = load_dataset("hf", sets["arrow"])
    dd = datasets.load_from_disk(str(sets["arrow"]))
    dd2 = datasets.DatasetDict({"train": datasets.concatenate_datasets([dd["train"], dd["validation"]]), "test": dd["test"]})
    dd2.save_to_disk(str(tmp_path / "noval"))
    idx = load_dataset("hf", tmp_path / "noval")
    assert idx.meta["val_from_train"] and "10 %" in idx.split_rule and idx.split_seed == 42
    assert {s: sum(c.values()) for s, c in idx.counts().items()} == {s: sum(c.values()) for s, c in src.counts().items()}
    dd["train"].save_to_disk(str(tmp_path / "bare"))
    bare = load_dataset("hf", tmp_path / "bare", seed=7)
    assert set(bare.splits) == {"train", "val", "test"} and "80/5/15" in bare.split_rule and bare.split_seed == 7


def test_malformed_sets_get_one_line_errors_or_skipped_rows(sets: dict[str, Path], tmp_path: Path) -> None:
    import datasets

    good = _bytes_of(sets["imagefolder"], 16)
    # No image column.
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})}).save_to_disk(
        str(tmp_path / "noimg"))
    _one_line_error(_invoke("datasets", "check", "hf", "--root", tmp_path / "noimg"), "no image column")
    # Two label candidates; --label-column settles it.
    feats = datasets.Features({"image": datasets.Image(), "emotion": datasets.ClassLabel(names=["awe", "fear"]),
                               "sentiment": datasets.ClassLabel(names=["positive", "negative"])})
    rows = {"image": [{"bytes": b, "path": None} for b, _ in good], "emotion": [i % 2 for i in range(16)],
            "sentiment": [i % 2 for i in range(16)]}
    ds = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(tmp_path / "two"))
    _one_line_error(_invoke("datasets", "check", "hf", "--root", tmp_path / "two"), "2 label candidates (emotion, sentiment)")
    ok = _invoke("datasets", "check", "hf", "--root", tmp_path / "two", "--label-column", "sentiment", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["label_space"] == "binary"
    _one_line_error(_invoke("datasets", "check", "hf", "--root", tmp_path / "two", "--label-column", "mood"),
                    "no column 'mood'")
    # An undecodable image is reported by check and skipped; the other rows stay.
    bad = [*good[:7], (b"\xff\xd8\xff\xe0" + bytes(range(200)), 0), *good[7:]]
    write_datasetdict(tmp_path / "bad", {"train": bad, "test": good[:4]}, ["amusement", "awe", "contentment", "excitement",
                                                                            "anger", "disgust", "fear", "sadness"], fmt="parquet")
    report = check_dataset("hf", tmp_path / "bad")
    assert [u.path for u in report.unreadable] == ["train/000007.jpg"] and "cannot decode" in report.unreadable[0].reason
    assert report.n_images == 21
    # Not a dataset at all.
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a save_to_disk dataset"):
        load_dataset("hf", tmp_path / "empty")
    # The column options belong to the hf layout only.
    _one_line_error(_invoke("datasets", "check", "fi", "--root", sets["imagefolder"], "--image-column", "x"),
                    "has no option 'image_column'")


def test_missing_datasets_package_is_one_line_naming_the_extra(sets: dict[str, Path], monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)   # what an environment without the package sees
    res = _invoke("datasets", "check", "hf", "--root", sets["arrow"])
    _one_line_error(res, "vea-bench[hf]")


def test_image_store_is_content_addressed(sets: dict[str, Path]) -> None:
    idx = load_dataset("hf", sets["parquet"])
    digest = {hashlib.sha256(idx.abspath(s).read_bytes()).hexdigest() for s in idx.split("test")}
    folder = load_dataset("imagefolder", sets["imagefolder"])
    assert digest == {hashlib.sha256(folder.abspath(s).read_bytes()).hexdigest() for s in folder.split("test")}
    assert idx.root.parent.name == ".vea-bench-images" and idx.root.parent.parent == sets["parquet"]
