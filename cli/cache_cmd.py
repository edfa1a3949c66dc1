"""`vea-bench cache ...` commands (being built; see the issue that owns this module)."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
