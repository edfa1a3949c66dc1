"""Experiment trackers: where the heavy stages' curves and every run record go besides JSON.

    from vea_bench.tracking import make_tracker
    tracker = make_tracker("wandb", group="fi-study")   # or "mlflow"; None: nothing is logged
    train_teacher(index, cfg, out, tracker=tracker)      # per-step loss and lr, per-epoch val
    tracker.records(records); tracker.artifacts("report", [tables, report_dir]); tracker.close()

Each tracker is one class in one module registered in `TRACKERS`; its package is an optional
extra (``vea-bench[wandb]``, ``vea-bench[mlflow]``) imported only when the tracker is used.
"""
from __future__ import annotations

from vea_bench.tracking import wandb_run, mlflow_run  # noqa: F401,I001  (registration order: what --help lists)
from vea_bench.tracking.base import TRACKERS, NullTracker, Tracker, ensure_tracker, flat_numbers, make_tracker

__all__ = ["TRACKERS", "NullTracker", "Tracker", "ensure_tracker", "flat_numbers", "make_tracker"]
