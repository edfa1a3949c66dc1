"""Heads trained against the cache: registered heads (SPEC's distill head first), the KD loss, the gates, sweeps.

Light to import: torch-based modules load lazily, so `--help` and the report layer stay fast.
"""
from __future__ import annotations

from typing import Any

_LAZY = {
    "GATES": "vea_bench.heads.gates",
    "build_gate": "vea_bench.heads.gates",
    "gate_display_name": "vea_bench.heads.gates",
    "HEADS": "vea_bench.heads.head_registry",
    "HIDDEN_DIMS": "vea_bench.heads.head_registry",
    "DistillHead": "vea_bench.heads.distill",
    "MLPLayout": "vea_bench.heads.head_registry",
    "ResMLPHead": "vea_bench.heads.resmlp",
    "build_distill_head": "vea_bench.heads.distill",
    "build_head": "vea_bench.heads.distill",
    "check_head": "vea_bench.heads.head_registry",
    "hidden_dims_for": "vea_bench.heads.head_registry",
    "count_params": "vea_bench.heads.distill",
    "kd_loss": "vea_bench.heads.losses",
    "DistillConfig": "vea_bench.heads.pipeline",
    "GateConfig": "vea_bench.heads.pipeline",
    "train_distill": "vea_bench.heads.pipeline",
    "train_gates": "vea_bench.heads.pipeline",
    "load_head_data": "vea_bench.heads.data",
    "make_complementary_cache": "vea_bench.heads.synthetic_cache",
    "parse_grid": "vea_bench.heads.sweep",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vea_bench.heads' has no attribute {name!r}")
