"""Table formats, each one class in one module, found through `TABLE_FORMATS` (`vea_bench.registry`).

`render(tables, "md")` gives a format's text; `table_format(name)` the format itself (its file
``suffix``, and for the terminal its rich renderables). Built in: ``rich``, ``md``, ``latex``,
``csv`` and ``json-leaderboard``; docs/extending.md adds one in a file of its own.
"""
from __future__ import annotations

from collections.abc import Sequence

from vea_bench.report.formats.base import TABLE_FORMATS, TableFormat, table_format

# The built-in formats, registered on import in the order `--format` lists them.
from vea_bench.report.formats.terminal import Rich, to_rich  # noqa: I001
from vea_bench.report.formats.markdown import Markdown, to_markdown
from vea_bench.report.formats.latex import Latex, to_latex
from vea_bench.report.formats.csv_cells import Csv, to_csv
from vea_bench.report.formats.json_leaderboard import JsonLeaderboard
from vea_bench.report.table_model import Table


def render(tables: Sequence[Table], fmt: str = "md", *, compare: bool = False) -> str:
    """Text of ``tables`` in the registered format ``fmt``; an unknown one is a one-line `ConfigError`."""
    return table_format(fmt).render(tables, compare=compare)


__all__ = ["TABLE_FORMATS", "Csv", "JsonLeaderboard", "Latex", "Markdown", "Rich", "TableFormat", "render",
           "table_format", "to_csv", "to_latex", "to_markdown", "to_rich"]
