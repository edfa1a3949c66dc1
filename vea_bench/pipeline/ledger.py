"""Cache-aware stage bookkeeping: a stage reruns only when its config (or an upstream stage's) changed.

Each stage has a config; its identity is the hash of that config plus the identities of the
stages it depends on, so changing the teacher re-extracts and retrains everything downstream,
while adding one gate to an experiment file trains only that gate. The ledger is a JSON file in
the experiment's work folder; a stage counts as done only if its recorded outputs still exist.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.hashing import config_hash
from vea_bench.progress import Progress, ensure


@dataclass
class Stage:
    """One step of the pipeline: ``run(ctx)`` returns its outputs (paths under ``outputs['paths']``)."""

    name: str
    config: dict[str, Any]
    run: Callable[[StageContext], dict[str, Any]]
    deps: Sequence[str] = ()


@dataclass
class StageContext:
    """What a running stage can see: the outputs of the stages it depends on, and a progress sink."""

    outputs: dict[str, dict[str, Any]]
    progress: Progress
    workdir: Path
    rerun: bool = False  # the stage finished before with another config: replace, don't resume

@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    identity: str
    outputs: dict[str, Any]
    seconds: float = 0.0


@dataclass
class Ledger:
    """The experiment's record of finished stages: name -> identity, outputs, time."""

    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Ledger:
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable stage ledger ({exc.__class__.__name__}); delete it to rerun all") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise ConfigError(f"{path}: not a vea-bench stage ledger; delete it to rerun all")
        return cls(path, data["stages"])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.entries}, indent=2, default=str))
        os.replace(tmp, self.path)

    def done(self, name: str, identity: str) -> dict[str, Any] | None:
        """Outputs of ``name`` if it finished with this identity and its output paths still exist."""
        e = self.entries.get(name)
        if not e or e.get("identity") != identity:
            return None
        outputs = e.get("outputs", {})
        paths = outputs.get("paths", [])
        if any(not Path(p).exists() for p in paths):
            return None
        return outputs

    def mark(self, name: str, identity: str, outputs: dict[str, Any], seconds: float) -> None:
        self.entries[name] = {
            "identity": identity,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save()


def run_stages(
    stages: Sequence[Stage],
    ledger: Ledger,
    *,
    workdir: Path,
    progress: Progress | None = None,
    force: Sequence[str] = (),
    on_stage: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run ``stages`` in order, skipping each whose identity and outputs are already in ``ledger``."""
    progress = ensure(progress)
    by_name = {s.name: s for s in stages}
    identities: dict[str, str] = {}
    outputs: dict[str, dict[str, Any]] = {}
    results: list[StageResult] = []
    for stage in stages:
        missing = [d for d in stage.deps if d not in identities]
        if missing:
            raise ConfigError(f"stage '{stage.name}' depends on {missing}, which come later or not at all")
        identity = config_hash({"config": stage.config, "deps": {d: identities[d] for d in stage.deps}})
        identities[stage.name] = identity
        prior = None if stage.name in force else ledger.done(stage.name, identity)
        if prior is not None:
            outputs[stage.name] = prior
            res = StageResult(stage.name, "skipped", identity, prior)
        else:
            t0 = time.perf_counter()
            prev = ledger.entries.get(stage.name)
            rerun = bool(prev) and prev.get("identity") != identity
            ctx = StageContext({d: outputs[d] for d in _closure(stage, by_name)}, progress, workdir, rerun)
            out = stage.run(ctx)
            dt = time.perf_counter() - t0
            ledger.mark(stage.name, identity, out, dt)
            outputs[stage.name] = out
            res = StageResult(stage.name, "ran", identity, out, dt)
        results.append(res)
        if on_stage is not None:
            on_stage(res)
    return results


def _closure(stage: Stage, by_name: Mapping[str, Stage]) -> list[str]:
    """All upstream stages of ``stage`` (their outputs are visible to it)."""
    seen: list[str] = []
    todo = list(stage.deps)
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.append(d)
        todo.extend(by_name[d].deps)
    return seen
