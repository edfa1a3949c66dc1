"""Run results: what a run record holds, per-image predictions, and the store that writes and reads them.

- `vea_bench.results.records`: `RunRecord` (one run: config, seed, versions, provenance, metrics).
- `vea_bench.results.predictions`: `SplitPredictions` and their safetensors file format.
- `vea_bench.results.store`: `ResultsStore(root)`, the only place that knows where records,
  weights and predictions go under a results folder.
"""
from __future__ import annotations

from vea_bench.results.predictions import PRED_SPLITS, SplitPredictions, from_scores, read_predictions, softmax
from vea_bench.results.records import (
    RECORD_SCHEMA,
    RUN_KINDS,
    RunRecord,
    SplitMetrics,
    environment,
    experiment_config,
    experiment_id,
)
from vea_bench.results.store import ARTIFACTS_DIR, ResultsStore, RunOutput, SavedWeights, load_for, writing_results

__all__ = [
    "ARTIFACTS_DIR", "PRED_SPLITS", "RECORD_SCHEMA", "RUN_KINDS", "ResultsStore", "RunOutput", "RunRecord",
    "SavedWeights", "SplitMetrics", "SplitPredictions", "environment", "experiment_config", "experiment_id",
    "from_scores", "load_for", "read_predictions", "softmax", "writing_results",
]
