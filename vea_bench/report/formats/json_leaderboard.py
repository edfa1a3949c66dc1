"""A JSON leaderboard: per table and column, the rows ranked by their value, with the runs behind each.

For a site or a script that ranks methods: every number is a percent (or a count) as the tables
show it, with its spread over seeds, its seed count and the run ids that produced it, so each
entry links back to its records. Literature rows keep ``"reported": true``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vea_bench.report.formats.base import TABLE_FORMATS, TableFormat
from vea_bench.report.table_model import Cell, Table

SCHEMA = "vea-bench/leaderboard/1"


def _entry(label: str, group: str, reported: bool, cell: Cell, compare: bool) -> dict[str, Any]:
    e: dict[str, Any] = {"row": label, "group": group, "reported": reported, "value": cell.value, "std": cell.std,
                         "n": cell.n, "run_ids": list(cell.run_ids)}
    if cell.ci is not None:
        e["ci"] = list(cell.ci)
    if compare:
        e.update(paper=cell.paper, delta=cell.delta)
    return e


def leaderboard(table: Table, *, compare: bool = False) -> dict[str, Any]:
    """One table as ranked columns; cells without a number are listed under ``missing`` with why."""
    columns = []
    for col in table.columns:
        ranked, missing = [], []
        for row in table.rows:
            cell = row.cells[col.key]
            group = table.groups.get(row.group or "", row.group or "")
            if isinstance(cell.value, (int, float)):
                ranked.append(_entry(row.label, group, row.reported, cell, compare))
            else:
                missing.append({"row": row.label, "note": cell.note or "—"})
        ranked.sort(key=lambda e: -e["value"])   # stable: ties keep the table's order
        for i, e in enumerate(ranked, start=1):
            e["rank"] = i
        columns.append({"key": col.key, "title": col.title, "kind": col.kind, "entries": ranked, "missing": missing})
    return {"id": table.id, "title": table.title, "columns": columns, "notes": list(table.notes)}


@TABLE_FORMATS.register("json-leaderboard", aliases=("leaderboard",))
class JsonLeaderboard(TableFormat):
    """Every table's columns ranked, as one JSON document."""

    suffix = "leaderboard.json"
    help = "JSON leaderboard (rows ranked per column)"

    def render(self, tables: Sequence[Table], *, compare: bool = False) -> str:
        doc = {"schema": SCHEMA, "tables": [leaderboard(t, compare=compare) for t in tables]}
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
