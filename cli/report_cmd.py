"""`vea-bench table|plot|params` and `vea-bench results list|show` (being built)."""
from __future__ import annotations

import typer

results_app = typer.Typer(no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the top-level reporting commands to ``app``."""
