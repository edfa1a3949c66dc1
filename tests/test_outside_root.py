"""Dataset paths are confined to the root: `..`, absolute paths and escaping symlinks (issue 15)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vea_bench.datasets import check_dataset, load_dataset
from vea_bench.datasets.synthetic import make_synthetic
from vea_bench.errors import DatasetError
from vea_bench_cli.main import app

runner = CliRunner()


def _outside(tmp_path: Path) -> Path:
    """An image that lies outside every dataset root of the test."""
    d = tmp_path / "outside"
    d.mkdir(exist_ok=True)
    p = d / "x.jpg"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(p)
    return p


def _all_paths(index) -> set[str]:
    return {s.path for v in index.splits.values() for s in v}


def _emoset_with_escapes(tmp_path: Path) -> tuple[Path, Path]:
    root = make_synthetic("emoset", tmp_path / "emoset", per_class=3, size=16)
    outside = _outside(tmp_path)
    rows = json.loads((root / "train.json").read_text())
    rows.append(["awe", "esc1", "../outside/x.jpg", "../outside/x.json"])
    rows.append(["fear", "esc2", str(outside), "annotation/fear/none.json"])
    (root / "train.json").write_text(json.dumps(rows))
    (tmp_path / "outside" / "x.json").write_text(json.dumps({"brightness": 0.5}))
    return root, outside


def test_emoset_rows_escaping_the_root_are_skipped_refused_by_strict_or_allowed(tmp_path: Path, caplog) -> None:
    root, outside = _emoset_with_escapes(tmp_path)
    good = _all_paths(make_synthetic_index(tmp_path))
    with caplog.at_level(logging.WARNING, logger="vea_bench"):
        index = load_dataset("emoset", root)
    bad = sorted(s.path for s in index.skipped if s.kind == "outside-root")
    assert bad == sorted(["../outside/x.jpg", str(outside)])
    assert _all_paths(index) == good  # every good image is kept; neither escaping row is
    (line,) = [r.getMessage() for r in caplog.records if "outside-root" in r.getMessage()]
    assert "2 rows skipped (2 outside-root)" in line and "../outside/x.jpg" in line and "\n" not in line

    with pytest.raises(DatasetError) as err:
        load_dataset("emoset", root, strict=True)
    msg = str(err.value)
    assert "\n" not in msg and "../outside/x.jpg" in msg and "--strict" in msg

    allowed = load_dataset("emoset", root, allow_outside_root=True)
    assert {"../outside/x.jpg", str(outside)} <= _all_paths(allowed)
    assert allowed.meta["outside_root_allowed"] is True
    # The annotation outside the root is read only when allowed.
    by_path = {s.path: s for v in allowed.splits.values() for s in v}
    assert by_path["../outside/x.jpg"].meta.get("brightness") == 0.5


def make_synthetic_index(tmp_path: Path):
    """The same synthetic EmoSet without the escaping rows."""
    return load_dataset("emoset", make_synthetic("emoset", tmp_path / "plain", per_class=3, size=16))


def test_annotation_outside_the_root_is_not_read(tmp_path: Path) -> None:
    root = make_synthetic("emoset", tmp_path / "emoset", per_class=3, size=16)
    (tmp_path / "secret.json").write_text(json.dumps({"brightness": 0.9}))
    rows = json.loads((root / "train.json").read_text())
    rows[0][3] = "../secret.json"
    (root / "train.json").write_text(json.dumps(rows))
    index = load_dataset("emoset", root)
    assert index.meta["annotations_outside_root"] == 1
    s = next(s for v in index.splits.values() for s in v if s.path == rows[0][2])
    assert "brightness" not in s.meta


def test_manifest_absolute_and_dotdot_rows(tmp_path: Path) -> None:
    root = make_synthetic("manifest", tmp_path / "m", per_class=3, size=16)
    outside = _outside(tmp_path)
    csv = root / "manifest.csv"
    csv.write_text(csv.read_text() + f"{outside},awe,train\n../outside/x.jpg,fear,train\n")
    idx = load_dataset("manifest", root)
    assert {s.path for s in idx.skipped if s.kind == "outside-root"} == {str(outside), "../outside/x.jpg"}
    with pytest.raises(DatasetError, match="outside the dataset root.*--strict"):
        load_dataset("manifest", root, strict=True)
    report = check_dataset("manifest", root, decode=False)
    assert report.skipped_by_kind()["outside-root"] == 2 and not report.ok
    assert "outside-root" in report.summary()
    assert str(outside) in _all_paths(load_dataset("manifest", root, allow_outside_root=True))
    # An absolute path that lies under the root is fine.
    lines = [ln for ln in csv.read_text().splitlines() if ln.startswith("data/")]
    first = lines[0].split(",")
    csv.write_text("path,label,split\n" + "\n".join([f"{root / first[0]},{first[1]},{first[2]}"] + lines[1:]) + "\n")
    idx = load_dataset("manifest", root)
    assert first[0] in _all_paths(idx) and not idx.skipped


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlinks_escaping_the_root(tmp_path: Path) -> None:
    root = make_synthetic("imagefolder", tmp_path / "i", per_class=3, size=16)
    outside = _outside(tmp_path)
    (root / "train" / "awe" / "link.jpg").symlink_to(outside)          # a file link out
    (root / "train" / "awe" / "ok.jpg").symlink_to(root / "test" / "awe" / os.listdir(root / "test" / "awe")[0])
    (root / "train" / "fear" / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)  # a folder link out
    with pytest.raises(DatasetError, match="train/awe/link.jpg.*outside the dataset root"):
        load_dataset("imagefolder", root, strict=True)
    idx = load_dataset("imagefolder", root)
    bad = {s.path for s in idx.skipped if s.kind == "outside-root"}
    assert bad == {"train/awe/link.jpg", "train/fear/sub/x.jpg"}
    assert "train/awe/ok.jpg" in _all_paths(idx)  # a link that stays inside is fine
    (root / "train" / "awe" / "gone.jpg").symlink_to(root / "train" / "awe" / "never.jpg")  # dangles inside
    (gone,) = [s for s in load_dataset("imagefolder", root).skipped if s.path == "train/awe/gone.jpg"]
    assert gone.kind == "missing" and "dangling symlink" in gone.reason
    assert bad <= _all_paths(load_dataset("imagefolder", root, allow_outside_root=True))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_a_symlinked_root_is_not_an_escape(tmp_path: Path) -> None:
    real = make_synthetic("fi", tmp_path / "real", per_class=3, size=16)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert len(_all_paths(load_dataset("fi", link))) == len(_all_paths(load_dataset("fi", real)))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_katsurai_image_linked_outside(tmp_path: Path) -> None:
    root = make_synthetic("flickr", tmp_path / "f", per_class=3, size=16)
    img = sorted((root / "images").iterdir())[0]
    img.unlink()
    img.symlink_to(_outside(tmp_path))
    idx = load_dataset("flickr", root, on_error="skip")
    assert [s.path for s in idx.skipped if s.kind == "outside-root"] == [f"images/{img.name}"]


def test_cli_check_reports_and_strict_fails(tmp_path: Path) -> None:
    root, outside = _emoset_with_escapes(tmp_path)
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(root), "--no-decode", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert sorted(s["path"] for s in report["skipped"] if s["kind"] == "outside-root") == sorted(
        ["../outside/x.jpg", str(outside)])
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(root), "--no-decode", "--json",
                              "--allow-outside-root"])
    assert not [s for s in json.loads(res.stdout)["skipped"] if s["kind"] == "outside-root"]
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(root), "--no-decode", "--strict"])
    assert res.exit_code == 1 and "2 skipped (outside-root)" in res.stdout


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vea_bench.models.tiny import make_tiny

    return make_tiny("teacher", tmp_path_factory.mktemp("teacher") / "vit", seed=1, num_classes=8)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_extract_writes_the_good_images_and_skips_escaping_and_dangling_links(tmp_path: Path, tiny_teacher) -> None:
    """24 good images, one symlink out of the root and one dangling: 24 rows extracted, 2 skipped."""
    from vea_bench.cache import FeatureCache

    root = make_synthetic("fi", tmp_path / "fi", per_class=3, size=16)
    (root / "awe" / "awe_900.jpg").symlink_to(_outside(tmp_path))
    (root / "fear" / "fear_901.jpg").symlink_to(tmp_path / "gone" / "x.jpg")
    cache = tmp_path / "c.h5"
    args = ["extract", "fi", "--root", str(root), "--teacher", str(tiny_teacher), "--cache", str(cache),
            "--device", "cpu", "--workers", "0", "--batch-size", "8"]
    res = runner.invoke(app, args + ["--strict"])
    assert res.exit_code != 0 and not cache.exists()
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "2 rows skipped (2 outside-root)" in lines[0] and "--strict" in lines[0], res.stderr

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if "skipped" in ln]
    assert len(warn) == 1 and "2 rows skipped (2 outside-root)" in warn[0]
    assert "awe/awe_900.jpg" in warn[0] or "fear/fear_901.jpg" in warn[0]
    with FeatureCache.open(cache) as c:
        ids = [i for s in c.splits for i in c.ids(s)]
        assert len(ids) == 24 and not {"awe/awe_900.jpg", "fear/fear_901.jpg"} & set(ids)
        for s in c.splits:
            assert (c.read("teacher", c.source_keys("teacher")[0], s).status == 1).all()


def test_relative_root_resolves_dotdot_rows_against_the_absolute_root(tmp_path: Path, monkeypatch) -> None:
    """--root m with a row ../elsewhere/x.jpg is outside-root, never m/elsewhere/x.jpg (which exists here)."""
    root = make_synthetic("manifest", tmp_path / "m", per_class=3, size=16)
    decoy = root / "elsewhere" / "x.jpg"
    decoy.parent.mkdir()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(decoy)
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (16, 16), (200, 9, 9)).save(tmp_path / "elsewhere" / "x.jpg")
    csv = root / "manifest.csv"
    csv.write_text(csv.read_text() + "../elsewhere/x.jpg,awe,train\n")
    monkeypatch.chdir(tmp_path)
    for given in ("m", "./m", "m/", "m/../m"):
        idx = load_dataset("manifest", given)
        assert idx.root.is_absolute()
        assert [(s.path, s.kind) for s in idx.skipped] == [("../elsewhere/x.jpg", "outside-root")], given
        assert "elsewhere/x.jpg" not in _all_paths(idx)
    res = runner.invoke(app, ["datasets", "check", "manifest", "--root", "m", "--no-decode", "--json"])
    assert res.exit_code == 0, res.output
    skipped = json.loads(res.stdout)["skipped"]
    assert [(s["path"], s["kind"]) for s in skipped] == [("../elsewhere/x.jpg", "outside-root")]
    # With outside reads allowed the row reads the image it names, not the decoy under the root.
    idx = load_dataset("manifest", "m", allow_outside_root=True)
    (row,) = [s for s in idx.splits["train"] if "elsewhere" in s.path]
    assert idx.abspath(row).resolve() == (tmp_path / "elsewhere" / "x.jpg").resolve()


def test_experiment_file_strict_refuses_skipped_rows(tmp_path: Path) -> None:
    from vea_bench.pipeline.experiment import parse_experiment
    from vea_bench.pipeline.stages import _load_index

    root = make_synthetic("fi", tmp_path / "fi", per_class=3, size=16)
    (root / "awe" / "awe_900.jpg").symlink_to(_outside(tmp_path))
    data = {"dataset": {"name": "fi", "root": str(root)}, "vlm": {"model": "Qwen/Qwen2-VL-7B-Instruct"}}
    assert len(_all_paths(_load_index(parse_experiment(data, base=tmp_path)))) == 24
    data["dataset"]["options"] = {"strict": True}
    with pytest.raises(DatasetError, match="awe/awe_900.jpg.*--strict"):
        _load_index(parse_experiment(data, base=tmp_path))
