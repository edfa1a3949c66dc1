"""`wandb`: Weights & Biases runs, offline where ``WANDB_MODE=offline`` (as on clusters without network).

One W&B run per trained model, grouped by the experiment; the project is ``WANDB_PROJECT`` or
``vea-bench``. Offline runs land in ``wandb/offline-run-*`` (under ``WANDB_DIR`` or the working
folder) and are uploaded later with ``wandb sync``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vea_bench.tracking.base import TRACKERS, Tracker


@TRACKERS.register("wandb", aliases=("w&b", "weights-and-biases"))
class WandbTracker(Tracker):
    """Logs through the `wandb` package (``pip install 'vea-bench[wandb]'``)."""

    name = "wandb"

    @staticmethod
    def require() -> None:
        import wandb  # noqa: F401

    def _start(self, run_name: str, config: dict[str, Any], group: str | None) -> None:
        import wandb

        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT") or self.project, name=run_name, group=group,
                               config=config, reinit="finish_previous", settings=wandb.Settings(silent=True))

    def _log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def _summary(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        self._run.config.update(config, allow_val_change=True)
        self._run.summary.update(metrics)

    def _artifacts(self, name: str, paths: list[Path]) -> None:
        import wandb

        art = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", name), type="report")
        for p in paths:
            if p.is_dir():
                art.add_dir(str(p), name=p.name)
            else:
                art.add_file(str(p))
        self._run.log_artifact(art)

    def _finish(self) -> None:
        run, self._run = self._run, None
        run.finish()
