"""Cell text shared by the formats: values with their spread, paper numbers, differences, header and rows."""
from __future__ import annotations

from vea_bench.report.table_model import Cell, Table


def num_text(cell: Cell, v: float | int | None) -> str:
    if v is None:
        return ""
    return f"{int(v):,}" if cell.kind == "count" else f"{v:.2f}"


def value_text(cell: Cell, fmt: str) -> str:
    """Our value of a cell as text (pm sign per format), or the reason it is empty."""
    if cell.value is None:
        note = cell.note or "—"
        return {"md": f"_{note}_", "latex": r"\textit{" + tex_escape(note) + "}"}.get(fmt, note)
    if cell.kind == "text":
        return str(cell.value)
    s = num_text(cell, cell.value)  # type: ignore[arg-type]
    if cell.std is not None:
        pm = {"latex": r" $\pm$ "}.get(fmt, " ± ")
        s += f"{pm}{cell.std:.2f}"
    if cell.n >= 2:
        s += r" {\scriptsize (n=%d)}" % cell.n if fmt == "latex" else f" (n={cell.n})"
    if cell.ci is not None:
        s += r" {\scriptsize [%.2f, %.2f]}" % cell.ci if fmt == "latex" else f" [{cell.ci[0]:.2f}, {cell.ci[1]:.2f}]"
    if cell.mark:
        s += MARKS[cell.mark].get(fmt, MARKS[cell.mark]["text"])
    return s


MARKS = {"best": {"text": " ▲", "latex": r" $^{\ast}$"}, "tie": {"text": " ≈", "latex": r" $^{\approx}$"}}


def paper_text(cell: Cell, fmt: str) -> str:
    if cell.paper is None:
        note = cell.paper_note or "—"
        return {"md": f"_{note}_", "latex": r"\textit{" + tex_escape(note) + "}"}.get(fmt, note)
    return num_text(cell, cell.paper)


def delta_text(cell: Cell) -> str:
    d = cell.delta
    if d is None:
        return ""
    return f"{int(d):+,}" if cell.kind == "count" else f"{d:+.2f}"


def header_and_rows(table: Table, fmt: str, compare: bool) -> tuple[list[str], list[list[str]], list[str | None]]:
    header = ["Model" if table.id in ("1", "ext") else ("Gate" if table.id == "4" else ("Hidden dims" if table.id == "3" else "Module"))]
    for c in table.columns:
        header.append(c.title)
        if compare and c.compare:
            header += [f"{c.title} (paper)", f"{c.title} Δ"]
    body, groups = [], []
    for r in table.rows:
        line = [r.label]
        for c in table.columns:
            cell = r.cells[c.key]
            if compare and cell.reported:
                line.append(value_text(Cell(kind=cell.kind, note="reported only"), fmt))
            else:
                line.append(value_text(cell, fmt))
            if compare and c.compare:
                d = delta_text(cell)
                line += [paper_text(cell, fmt), f"${d}$" if d and fmt == "latex" else d]
        body.append(line)
        groups.append(r.group)
    return header, body, groups


TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "±": r"$\pm$", "—": "---"}


TEX.update({"▲": r"$^{\ast}$", "≈": r"$^{\approx}$", "≥": r"$\geq$"})  # significance marks' notes


def tex_escape(s: str) -> str:
    return "".join(TEX.get(ch, ch) for ch in s)
