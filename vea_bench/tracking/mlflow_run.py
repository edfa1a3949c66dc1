"""`mlflow`: MLflow runs in the tracking store ``MLFLOW_TRACKING_URI`` names (a server, ``sqlite:///…``, a folder).

One MLflow run per trained model in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``vea-bench``),
tagged with the vea-bench group; step figures are sent in batches. Parameters are written once
(MLflow refuses to change one), values longer than MLflow's limit are cut.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from vea_bench.tracking.base import TRACKERS, Tracker

PARAM_LIMIT = 6000
FLUSH_EVERY = 200


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . / space``)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """Logs through MLflow's client (``pip install 'vea-bench[mlflow]'``)."""

    name = "mlflow"

    @staticmethod
    def require() -> None:
        import mlflow  # noqa: F401

    def _start(self, run_name: str, config: dict[str, Any], group: str | None) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient()
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.project
        exp = self._client.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(exp_name)
        tags = {"vea_bench.group": group} if group else {}
        self._run_id = self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self._params: set[str] = set()
        self._pending: list[Any] = []
        self._params_batch(config)

    def _params_batch(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        fresh = {k: v for k, v in config.items() if k not in self._params and v is not None}
        self._params.update(fresh)
        params = [Param(k[:250], str(v)[:PARAM_LIMIT]) for k, v in fresh.items()]
        for i in range(0, len(params), 100):
            self._client.log_batch(self._run_id, params=params[i:i + 100])

    def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            self._client.log_batch(self._run_id, metrics=batch)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(metric_key(k), v, now, step) for k, v in metrics.items())
        if len(self._pending) >= FLUSH_EVERY:
            self._flush()

    def _summary(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        self._params_batch(config)
        self._log(metrics, 0)
        self._flush()

    def _artifacts(self, name: str, paths: list[Path]) -> None:
        for p in paths:
            if p.is_dir():
                self._client.log_artifacts(self._run_id, str(p), artifact_path=p.name)
            else:
                self._client.log_artifact(self._run_id, str(p))

    def _finish(self) -> None:
        try:
            self._flush()
        finally:
            self._client.set_terminated(self._run_id, "FINISHED")
