"""Long-format CSV: one line per cell, machine-readable numbers."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from vea_bench.report.formats.base import TABLE_FORMATS, TableFormat
from vea_bench.report.table_model import Table


def to_csv(tables: Sequence[Table], *, compare: bool = False) -> str:
    """Long-format CSV, one line per cell: machine-readable numbers (percent), std, n, notes, paper, Δ."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "group", "row", "reported", "column", "kind", "value", "std", "n", "note"]
    if compare:
        head += ["paper", "delta"]
    # Intervals and significance marks (`report.compare.annotate_tables`) get columns when present.
    annotated = any(c.ci is not None or c.mark for t in tables for r in t.rows for c in r.cells.values())
    if annotated:
        head += ["ci_low", "ci_high", "mark"]
    w.writerow(head)
    for t in tables:
        for r in t.rows:
            for c in t.columns:
                cell = r.cells[c.key]
                v = "" if cell.value is None else (f"{cell.value:.4f}" if cell.kind == "acc" else cell.value)
                line = [t.id, t.groups.get(r.group or "", r.group or ""), r.label, int(r.reported), c.key, cell.kind, v,
                        "" if cell.std is None else f"{cell.std:.4f}", cell.n or "", cell.note]
                if compare:
                    d = cell.delta
                    line += ["" if cell.paper is None else cell.paper,
                             "" if d is None else (f"{d:.4f}" if cell.kind == "acc" else d)]
                if annotated:
                    line += ["" if cell.ci is None else f"{cell.ci[0]:.4f}",
                             "" if cell.ci is None else f"{cell.ci[1]:.4f}", cell.mark]
                w.writerow(line)
    return buf.getvalue()


@TABLE_FORMATS.register("csv")
class Csv(TableFormat):
    """Every table's cells in one CSV."""

    suffix = "csv"
    help = "CSV, one line per cell"

    def render(self, tables: Sequence[Table], *, compare: bool = False) -> str:
        return to_csv(tables, compare=compare)
