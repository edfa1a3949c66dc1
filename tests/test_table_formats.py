"""Every registered table format renders the paper's tables from a full results folder, and is reachable everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _report_helpers import write_realistic_results
from vea_bench.errors import ConfigError
from vea_bench.report.formats import TABLE_FORMATS, render, table_format
from vea_bench.report.tables import build_tables, load_results
from vea_bench_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("formats")
    write_realistic_results(root, seeds=(0, 1))
    res = load_results(root)
    return root, build_tables(res, "all", dataset="fi")


@pytest.mark.parametrize("name", TABLE_FORMATS.names())
def test_every_format_renders_every_table_with_our_numbers(results, name: str) -> None:
    _, tables = results
    fmt = table_format(name)
    text = fmt.render(tables, compare=True)
    assert text == render(tables, name, compare=True)
    t4 = next(t for t in tables if t.id == "4")
    cell = t4.cell("(1) Concat & Linear", "acc")
    v = cell.value
    assert isinstance(v, float) and any(s in text for s in (f"{v:.2f}", f"{v:.4f}", json.dumps(v)))
    for t in tables:   # every table's rows reach the output (labels escaped for LaTeX aside)
        assert any(r.label.split(" ")[0] in text for r in t.rows)


def test_format_suffixes_are_distinct_and_unknown_names_are_one_line() -> None:
    suffixes = [TABLE_FORMATS.get(n).suffix for n in TABLE_FORMATS.names()]
    assert len(set(suffixes)) == len(suffixes)
    with pytest.raises(ConfigError) as ei:
        table_format("xlsx", where="[report].formats")
    assert "\n" not in str(ei.value) and "[report].formats" in str(ei.value) and "json-leaderboard" in str(ei.value)


def test_json_leaderboard_ranks_rows_and_names_their_runs(results) -> None:
    root, tables = results
    doc = json.loads(render(tables, "json-leaderboard"))
    assert doc["schema"] == "vea-bench/leaderboard/1" and [t["id"] for t in doc["tables"]] == [t.id for t in tables]
    run_ids = {p.stem for p in root.rglob("*.json") if "artifacts" not in p.parts}
    t4 = next(t for t in doc["tables"] if t["id"] == "4")
    col = next(c for c in t4["columns"] if c["key"] == "acc")
    values = [e["value"] for e in col["entries"]]
    assert values == sorted(values, reverse=True) and [e["rank"] for e in col["entries"]] == list(range(1, len(values) + 1))
    ours = [e for e in col["entries"] if not e["reported"]]
    assert ours and all(e["n"] == 2 and set(e["run_ids"]) <= run_ids and len(e["run_ids"]) == 2 for e in ours)
    table = next(t for t in tables if t.id == "4")
    best = max((r for r in table.rows if isinstance(r.cells["acc"].value, float)), key=lambda r: r.cells["acc"].value)
    assert col["entries"][0]["row"] == best.label
    assert all(m["note"] for m in col["missing"])


def test_the_cli_offers_every_format_and_writes_the_leaderboard(results, tmp_path: Path) -> None:
    root, _ = results
    out = tmp_path / "board.json"
    res = runner.invoke(app, ["table", "--results", str(root), "--format", "json-leaderboard", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["tables"]
    bad = runner.invoke(app, ["table", "--results", str(root), "--format", "xlsx"])
    assert bad.exit_code != 0 and "json-leaderboard" in bad.output + bad.stderr
