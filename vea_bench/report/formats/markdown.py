"""GitHub Markdown: one pipe table per table, group titles as bold rows, notes as a list."""
from __future__ import annotations

from collections.abc import Sequence

from vea_bench.report.formats.base import TABLE_FORMATS, TableFormat
from vea_bench.report.formats.text import header_and_rows
from vea_bench.report.table_model import Table


def to_markdown(table: Table, *, compare: bool = False) -> str:
    """GitHub Markdown; group titles become bold rows."""
    header, body, groups = header_and_rows(table, "md", compare)
    out = [f"**{table.title}**", "", "| " + " | ".join(header) + " |",
           "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    last = None
    for line, g in zip(body, groups):
        if g != last and g in table.groups:
            out.append("| " + " | ".join([f"**{table.groups[g]}**"] + [""] * (len(header) - 1)) + " |")
        last = g
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in line) + " |")
    out.append("")
    out += [f"- {n}" for n in table.notes]
    return "\n".join(out) + "\n"


@TABLE_FORMATS.register("md", aliases=("markdown",))
class Markdown(TableFormat):
    """Markdown tables, one after another."""

    suffix = "md"
    help = "Markdown"

    def render(self, tables: Sequence[Table], *, compare: bool = False) -> str:
        return "\n".join(to_markdown(t, compare=compare) for t in tables)
