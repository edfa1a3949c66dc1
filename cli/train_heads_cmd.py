"""`vea-bench train distill|gate` (being built)."""
from __future__ import annotations

from vea_bench_cli.train_cmd import app  # noqa: F401
