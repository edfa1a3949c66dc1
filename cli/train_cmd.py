"""`vea-bench train ...`: the group; `train_models_cmd` (teacher, vlm) and `train_heads_cmd` (distill, gate) add to it."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
