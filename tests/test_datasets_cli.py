"""`vea-bench datasets list | check | make-synthetic` through Typer's CliRunner on the real app."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vea_bench.datasets.synthetic import FAULTS, LAYOUTS
from vea_bench_cli.main import app

runner = CliRunner()


def test_list_table_and_json() -> None:
    res = runner.invoke(app, ["datasets", "list"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in LAYOUTS:
        assert name in res.output
    assert "mikels8" in res.output and "ekman6" in res.output and "inferred" in res.output
    res = runner.invoke(app, ["datasets", "list", "--json"])
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == list(LAYOUTS)
    assert {r["name"]: r["label_space"] for r in rows}["flickr"] == "binary"
    assert "binary" in {r["name"]: r["options"] for r in rows}["emoset"]


def test_make_synthetic_then_check_reports_faults(tmp_path: Path) -> None:
    out = tmp_path / "fi"
    res = runner.invoke(
        app,
        ["datasets", "make-synthetic", "fi", str(out), "--per-class", "4", "--size", "16",
         "--fault", "corrupt", "--fault", "zero-byte", "--fault", "unknown-label"],
    )
    assert res.exit_code == 0, res.output
    assert (out / "content").is_dir() and (out / "boredom").is_dir()

    res = runner.invoke(app, ["datasets", "check", "fi", "--root", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output  # faults are reported, not fatal
    for word in ("unreadable", "zero-byte", "unknown-label", "contentment", "boredom"):
        assert word in res.output, word

    res = runner.invoke(app, ["datasets", "check", "fi", "--root", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["n_images"] == 8 * 4 + 1  # the corrupt file is listed until decoded
    assert {s["kind"] for s in report["skipped"]} == {"zero-byte", "unknown-label"}
    assert len(report["unreadable"]) == 1 and not report["ok"]
    assert set(report["counts"]) == {"train", "val", "test"}


def test_check_options_and_no_decode(tmp_path: Path) -> None:
    out = tmp_path / "emoset"
    assert runner.invoke(app, ["datasets", "make-synthetic", "emoset", str(out), "-n", "3", "--size", "16", "-f", "corrupt"]).exit_code == 0
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(out), "-o", "binary=true", "--no-decode", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["label_space"] == "binary" and report["decoded"] is False
    assert report["unreadable"] == []  # not decoded, so the corrupt file is not found
    res = runner.invoke(app, ["datasets", "check", "emoset", "--root", str(out), "-o", "binray=true"])
    assert res.exit_code != 0 and "binray" in res.output and "Traceback" not in res.output


def test_check_unreadable_root_exits_1_with_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["datasets", "check", "fi", "--root", str(tmp_path / "missing")])
    assert res.exit_code == 1
    assert "does not exist" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["datasets", "check", "fii", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'fi'" in res.output


def test_make_synthetic_all_and_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["datasets", "make-synthetic", "all", str(tmp_path / "all"), "-n", "3", "--size", "16", "-q", "-f", "unknown-label"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(LAYOUTS)
    res = runner.invoke(app, ["datasets", "make-synthetic", "coco", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown synthetic layout" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["datasets", "make-synthetic", "fi", str(tmp_path / "all")])
    assert res.exit_code != 0 and "not an empty folder" in res.output


def test_help_texts_point_to_the_layouts_and_name_every_fault() -> None:
    res = runner.invoke(app, ["datasets", "make-synthetic", "--help"], terminal_width=300)
    assert res.exit_code == 0 and "datasets list" in res.output
    for name in FAULTS:
        assert name in res.output, name
    res = runner.invoke(app, ["datasets", "check", "--help"], terminal_width=300)
    assert "Examples" in res.output and "--no-decode" in res.output
