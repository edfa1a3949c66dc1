"""The terminal: rich tables, reported rows dimmed, missing cells in italics."""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from vea_bench.report.formats.base import TABLE_FORMATS, TableFormat
from vea_bench.report.formats.text import header_and_rows
from vea_bench.report.table_model import Table


def to_rich(table: Table, *, compare: bool = False) -> Any:
    """A rich renderable (the CLI prints it); reported rows dimmed, missing cells in italics."""
    from rich.table import Table as RichTable

    header, body, groups = header_and_rows(table, "rich", compare)
    rt = RichTable(title=table.title, caption="\n".join(table.notes), caption_justify="left", title_justify="left")
    label_width = max(len(line[0]) for line in body) if body else 8
    for i, h in enumerate(header):
        if i == 0:
            rt.add_column(h, justify="left", no_wrap=True, min_width=min(label_width, 40))
        else:
            rt.add_column(h, justify="right", overflow="fold")
    last = None
    for line, g, row in zip(body, groups, table.rows):
        if g != last and g in table.groups:
            if last is not None:
                rt.add_section()
            rt.add_row(f"[bold]{table.groups[g]}[/]", *[""] * (len(header) - 1))
        last = g
        styled = [line[0]]
        for j, text in enumerate(line[1:]):
            styled.append(f"[italic dim]{text}[/]" if text and not any(ch.isdigit() for ch in text) else text)
        rt.add_row(*styled, style="dim" if row.reported else None)
    return rt


@TABLE_FORMATS.register("rich")
class Rich(TableFormat):
    """Printed as rich tables on a terminal; as their plain text (200 columns) anywhere else."""

    suffix = "txt"
    help = "terminal"

    def render(self, tables: Sequence[Table], *, compare: bool = False) -> str:
        from rich.console import Console

        con = Console(width=200, record=True, file=io.StringIO())
        for t in tables:
            con.print(to_rich(t, compare=compare))
        return con.export_text()

    def renderables(self, tables: Sequence[Table], *, compare: bool = False) -> list[Any] | None:
        return [to_rich(t, compare=compare) for t in tables]
