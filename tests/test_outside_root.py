"""Dataset paths are confined to the root: `..`, absolute paths and escaping symlinks (issue 15)."""
from __future__ import annotations

import json
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


def test_emoset_rows_escaping_the_root_are_refused_reported_or_allowed(tmp_path: Path) -> None:
    root, outside = _emoset_with_escapes(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_dataset("emoset", root)
    msg = str(err.value)
    assert "\n" not in msg and "../outside/x.jpg" in msg and "--allow-outside-root" in msg

    skipped = load_dataset("emoset", root, on_error="skip")
    bad = sorted(s.path for s in skipped.skipped if s.kind == "outside-root")
    assert bad == sorted(["../outside/x.jpg", str(outside)])
    assert not any(p.startswith("..") or p.startswith("/") for p in _all_paths(skipped))

    allowed = load_dataset("emoset", root, allow_outside_root=True)
    assert {"../outside/x.jpg", str(outside)} <= _all_paths(allowed)
    assert allowed.meta["outside_root_allowed"] is True
    # The annotation outside the root is read only when allowed.
    by_path = {s.path: s for v in allowed.splits.values() for s in v}
    assert by_path["../outside/x.jpg"].meta.get("brightness") == 0.5


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
    with pytest.raises(DatasetError, match="outside the dataset root.*--allow-outside-root"):
        load_dataset("manifest", root)
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
        load_dataset("imagefolder", root)
    idx = load_dataset("imagefolder", root, on_error="skip")
    bad = {s.path for s in idx.skipped if s.kind == "outside-root"}
    assert bad == {"train/awe/link.jpg", "train/fear/sub/x.jpg"}
    assert "train/awe/ok.jpg" in _all_paths(idx)  # a link that stays inside is fine
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


def test_cli_check_reports_and_extract_refuses_in_one_line(tmp_path: Path) -> None:
    root, outside = _emoset_with_escapes(tmp_path)
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(root), "--no-decode", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert sorted(s["path"] for s in report["skipped"] if s["kind"] == "outside-root") == sorted(
        ["../outside/x.jpg", str(outside)])
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(root), "--no-decode", "--json",
                              "--allow-outside-root"])
    assert not [s for s in json.loads(res.stdout)["skipped"] if s["kind"] == "outside-root"]

    res = runner.invoke(app, ["extract", "emoset", "--root", str(root), "--teacher", str(tmp_path / "none"),
                              "--cache", str(tmp_path / "c.h5")])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "../outside/x.jpg" in lines[0] and "--allow-outside-root" in lines[0]
    assert "Traceback" not in res.output and not (tmp_path / "c.h5").exists()
    # With the option the dataset opens; the run then stops at the (missing) teacher, not at the paths.
    res = runner.invoke(app, ["extract", "emoset", "--root", str(root), "--teacher", str(tmp_path / "none"),
                              "--cache", str(tmp_path / "c.h5"), "--allow-outside-root"])
    assert res.exit_code != 0 and "teacher checkpoint" in res.output
