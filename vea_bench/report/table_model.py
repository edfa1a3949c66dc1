"""The table model every format renders: a `Table` of `Column`s and `Row`s of `Cell`s, built by `report.tables`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cell:
    """One table cell: an accuracy (percent), a count or text, or a note saying why it is empty."""

    kind: str = "acc"                # "acc" | "count" | "text"
    value: float | int | str | None = None
    std: float | None = None
    n: int = 0
    note: str = ""                   # why empty: "not run", "reported only", "— in paper"
    reported: bool = False
    paper: float | int | None = None
    paper_note: str = ""
    run_ids: list[str] = field(default_factory=list)
    ci: tuple[float, float] | None = None   # 95 % interval (percent), filled by `report.compare.annotate_tables`
    mark: str = ""                          # "best" | "tie" (not significantly different from the best)

    @property
    def delta(self) -> float | int | None:
        if isinstance(self.value, (int, float)) and isinstance(self.paper, (int, float)) and not self.reported:
            return self.value - self.paper
        return None


@dataclass
class Column:
    key: str
    title: str
    kind: str = "acc"
    compare: bool = True             # gets paper and Δ columns with --compare-paper


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    group: str | None = None
    reported: bool = False
    key: str = ""


@dataclass
class Table:
    """A rendered-to-be table: columns, rows (optionally grouped) and notes printed under it."""

    id: str
    title: str
    columns: list[Column]
    rows: list[Row]
    groups: dict[str, str] = field(default_factory=dict)   # group key -> title, in order
    notes: list[str] = field(default_factory=list)

    def cell(self, row_label: str, col: str) -> Cell:
        for r in self.rows:
            if r.label == row_label or r.key == row_label:
                return r.cells[col]
        raise KeyError(row_label)
