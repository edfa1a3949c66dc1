"""LaTeX: one booktabs ``table`` environment per table (needs ``\\usepackage{booktabs}``)."""
from __future__ import annotations

from collections.abc import Sequence

from vea_bench.report.formats.base import TABLE_FORMATS, TableFormat
from vea_bench.report.formats.text import header_and_rows, tex_escape
from vea_bench.report.table_model import Table


def to_latex(table: Table, *, compare: bool = False) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    header, body, groups = header_and_rows(table, "latex", compare)
    ncol = len(header)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + tex_escape(table.title) + "}",
           r"\begin{tabular}{l" + "r" * (ncol - 1) + "}", r"\toprule",
           " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
    last = None
    first = True
    for line, g in zip(body, groups):
        if g != last and g in table.groups:
            if not first:
                out.append(r"\midrule")
            out.append(r"\multicolumn{%d}{l}{\textit{%s}} \\" % (ncol, tex_escape(table.groups[g])))
        last = g
        first = False
        # Cells are already LaTeX (notes, pm); only labels need escaping.
        out.append(" & ".join([tex_escape(line[0])] + line[1:]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        out.append(r"\par\smallskip{\footnotesize " + " ".join(tex_escape(n) for n in table.notes) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


@TABLE_FORMATS.register("latex", aliases=("tex",))
class Latex(TableFormat):
    """booktabs tables, one after another."""

    suffix = "tex"
    help = "LaTeX (booktabs)"

    def render(self, tables: Sequence[Table], *, compare: bool = False) -> str:
        return "\n".join(to_latex(t, compare=compare) for t in tables)
