"""What a table format is: the `TableFormat` contract and its registry `TABLE_FORMATS`.

A format turns the table model (`vea_bench.report.table_model`) into text: `vea-bench table
--format NAME` prints or writes it, and an experiment's ``[report].formats`` writes
``tables.<suffix>`` into its tables folder. One class in one file, registered here, is a new format
everywhere (docs/extending.md); a package of your own adds one under the ``vea_bench.table_formats``
entry point.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from vea_bench.errors import ConfigError
from vea_bench.registry import Registry, RegistryError
from vea_bench.report.table_model import Table


class TableFormat:
    """Render tables as text. ``suffix`` names the file an experiment writes (``tables.<suffix>``)."""

    suffix: ClassVar[str] = "txt"
    help: ClassVar[str] = ""

    def render(self, tables: Sequence[Table], *, compare: bool = False) -> str:
        """The text of ``tables``; ``compare`` adds the paper's numbers and the difference (Δ)."""
        raise NotImplementedError

    def renderables(self, tables: Sequence[Table], *, compare: bool = False) -> list[Any] | None:
        """What a terminal prints instead of the text (rich objects), or None to print the text."""
        return None


TABLE_FORMATS: Registry[type[TableFormat]] = Registry("table format", plugins="vea_bench.table_formats")


def table_format(name: str, *, where: str = "") -> TableFormat:
    """The registered format ``name``, ready to render; an unknown name is a one-line `ConfigError`."""
    try:
        return TABLE_FORMATS.get(name)()
    except RegistryError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
