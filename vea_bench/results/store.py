"""Where results go: `ResultsStore` alone knows a results folder's layout.

Every run hands its record, its weights and its per-image predictions to one store; tables, plots,
comparisons and the HTML report read them back through it. The layout, the same since the first
results folders (so any older folder still reads):

- ``<root>/<kind>/<run_id>.json``: the run record (`vea_bench.results.records.RunRecord`);
- ``<root>/artifacts/<run_id>/<name>.safetensors``: a head's weights (``distill``, ``gate``);
- ``<root>/artifacts/<run_id>/config.json``: what rebuilds those weights (architecture, config,
  the data they were trained on);
- ``<root>/artifacts/<run_id>/predictions.safetensors``: per-image predictions
  (`vea_bench.results.predictions`).

A record names its artifacts' paths in ``artifacts``; a folder moved elsewhere still reads, because
the store looks in its standard place when a named path is gone. Every file is written under a
temporary name and renamed once complete, the record last, so an interrupted run leaves no record
pointing at half a file; a full disk, a read-only folder or a missing permission is one line naming
the path.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError, os_error
from vea_bench.results.predictions import PRED_SPLITS, SplitPredictions, read_predictions, write_predictions
from vea_bench.results.records import RunRecord, json_default

# Weights, their config and predictions go under <root>/artifacts/<run_id>/, which record readers
# skip; every other *.json below a results folder is expected to be a run record.
ARTIFACTS_DIR = "artifacts"
PRED_FILE = "predictions.safetensors"
WEIGHTS_CONFIG = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
RECORD_SUFFIX = ".json"


@dataclass
class RunOutput:
    """A finished run not yet written: its record and its per-image predictions (split -> predictions)."""

    record: RunRecord
    predictions: dict[str, SplitPredictions] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedWeights:
    """A run's saved weights: their folder, the config that rebuilds them, and the weights file."""

    folder: Path
    meta: dict[str, Any]
    path: Path


@contextmanager
def writing_results(path: str | Path) -> Iterator[None]:
    """Turn a failed write under a results folder (full disk, read-only, permissions; from the OS
    or from safetensors) into one line naming the path and what to do."""
    try:
        yield
    except OSError as exc:
        raise _results_error(path, exc) from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # safetensors wraps the OS error in its own type
            raise _results_error(path, exc) from None
        raise


def _results_error(path: str | Path, exc: BaseException) -> ConfigError:
    msg = str(os_error(path, exc, "write results"))
    return ConfigError(msg.replace("--cache", "--results folder"))


def _atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write`` a temporary sibling of ``path``, then rename it into place (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with writing_results(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


class ResultsStore:
    """One results folder: records, weights and predictions, written and found by run id."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths

    def record_path(self, record: RunRecord | str, run_id: str | None = None) -> Path:
        """Where a record lives: ``record_path(rec)`` or ``record_path(kind, run_id)``."""
        if isinstance(record, RunRecord):
            kind, run_id = record.kind, record.run_id
        else:
            kind = record
        if not run_id:
            raise ConfigError("a record path needs a run id")
        return self.root / kind / f"{run_id}{RECORD_SUFFIX}"

    def artifacts_dir(self, run_id: str) -> Path:
        """The folder of a run's weights, their config and its predictions."""
        return self.root / ARTIFACTS_DIR / run_id

    def predictions_file(self, run_id: str) -> Path:
        """Where a run's per-image predictions are written."""
        return self.artifacts_dir(run_id) / PRED_FILE

    # ------------------------------------------------------------------ writing

    def save(self, record: RunRecord, *, weights: Mapping[str, Mapping[str, Any]] | None = None,
             weights_config: Mapping[str, Any] | None = None,
             predictions: Mapping[str, SplitPredictions | None] | None = None, flat: bool = False) -> Path:
        """Write a run: its ``weights`` (name -> state dict) with ``weights_config`` beside them, its
        per-image ``predictions`` (split -> predictions; the stored splits are kept), then its record,
        which names them in ``artifacts``. Returns the record's path.

        ``flat`` puts the record at ``<root>/<run_id>.json`` (a training run's own output folder)
        rather than under its kind.
        """
        written: dict[str, str] = {}
        if weights:
            written.update(self._write_weights(record.run_id, weights, weights_config or {}))
        preds = {s: p for s, p in (predictions or {}).items() if s in PRED_SPLITS and p is not None}
        if preds:
            written["predictions"] = str(self._write_predictions(record, preds))
        if written:
            record.artifacts = {**record.artifacts, **written}
        path = self.root / f"{record.run_id}{RECORD_SUFFIX}" if flat else self.record_path(record)
        text = json.dumps(record.to_dict(), indent=2, sort_keys=False, default=json_default)
        return _atomic(path, lambda tmp: tmp.write_text(text))

    def save_all(self, outputs: Iterable[RunOutput]) -> list[Path]:
        """Write several finished runs (`save` each with its predictions); returns their record paths."""
        return [self.save(o.record, predictions=o.predictions) for o in outputs]

    def _write_weights(self, run_id: str, weights: Mapping[str, Mapping[str, Any]],
                       config: Mapping[str, Any]) -> dict[str, str]:
        from safetensors.torch import save_file

        d = self.artifacts_dir(run_id)
        out: dict[str, str] = {}
        for name, sd in weights.items():
            tensors = {k: v.contiguous() for k, v in sd.items()}
            path = _atomic(d / f"{name}{WEIGHTS_SUFFIX}", lambda tmp, t=tensors: save_file(t, str(tmp)))
            out[name] = str(path)
        text = json.dumps(dict(config), indent=2, default=str)
        out["config"] = str(_atomic(d / WEIGHTS_CONFIG, lambda tmp: tmp.write_text(text)))
        return out

    def _write_predictions(self, record: RunRecord, preds: Mapping[str, SplitPredictions]) -> Path:
        manifests = (record.cache or {}).get("manifest_hashes") or {}
        meta = {"run_id": record.run_id, "dataset": record.dataset, "label_names": list(record.label_names),
                "manifest_hashes": {s: manifests.get(s) for s in preds}}
        return _atomic(self.predictions_file(record.run_id), lambda tmp: write_predictions(tmp, preds, meta))

    # ------------------------------------------------------------------ reading

    def scan(self) -> tuple[list[tuple[Path, RunRecord]], list[tuple[Path, str]]]:
        """Every record under the root (recursively) with its path, and the files skipped, each with why."""
        good: list[tuple[Path, RunRecord]] = []
        bad: list[tuple[Path, str]] = []
        if not self.root.exists():
            return good, bad
        for path in sorted(self.root.rglob(f"*{RECORD_SUFFIX}")):
            if ARTIFACTS_DIR in path.relative_to(self.root).parts:
                continue  # weights' configs and other non-record JSON live there
            try:
                good.append((path, RunRecord.load(path)))
            except ConfigError as exc:
                bad.append((path, str(exc)))
        return good, bad

    def iter(self) -> Iterator[RunRecord]:
        """The readable records under the root, in path order (`scan` also says what was skipped)."""
        for _, rec in self.scan()[0]:
            yield rec

    def find(self, run_id: str) -> Path | None:
        """The record file of ``run_id`` under any kind's folder (or at the root), or None."""
        name = f"{run_id}{RECORD_SUFFIX}"
        hits = sorted(p for p in self.root.glob(f"*/{name}") if p.parent.name != ARTIFACTS_DIR)
        if hits:
            return hits[0]
        flat = self.root / name
        return flat if flat.is_file() else None

    def load(self, run: str | Path) -> RunRecord:
        """A record by its file's path or its run id; a missing one is a one-line error."""
        p = Path(run)
        if p.suffix == RECORD_SUFFIX and p.is_file():
            return RunRecord.load(p)
        found = self.find(str(run))
        if found is None:
            raise ConfigError(f"no run '{run}' under {self.root} (see `vea-bench results list`)")
        return RunRecord.load(found)

    def predictions_path(self, record: RunRecord) -> Path | None:
        """Where ``record``'s predictions are: the path it names, else the standard place; None if neither."""
        cands = []
        named = record.artifacts.get("predictions") if isinstance(record.artifacts, dict) else None
        if named:
            cands.append(Path(named))
        cands.append(self.predictions_file(record.run_id))
        return next((p for p in cands if p.is_file()), None)

    def predictions(self, record: RunRecord, split: str = "test") -> SplitPredictions | None:
        """``record``'s predictions of ``split``, or None when the run stored none."""
        p = self.predictions_path(record)
        if p is None:
            return None
        preds, _ = read_predictions(p)
        return preds.get(split)

    def weights(self, ref: str | Path, name: str) -> SavedWeights:
        """A run's saved ``name`` weights, by run id (under this root) or by its artifacts folder."""
        p = Path(ref)
        if not (p.is_dir() and (p / WEIGHTS_CONFIG).exists()):
            p = self.artifacts_dir(str(ref))
        wfile = p / f"{name}{WEIGHTS_SUFFIX}"
        if not (p / WEIGHTS_CONFIG).exists() or not wfile.exists():
            raise ConfigError(f"no saved {name} head at '{ref}' (a run id under {self.root / ARTIFACTS_DIR} "
                              f"or a folder with {WEIGHTS_CONFIG} and {wfile.name})")
        try:
            meta = json.loads((p / WEIGHTS_CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{p / WEIGHTS_CONFIG}: unreadable ({exc.__class__.__name__})") from None
        return SavedWeights(p, meta if isinstance(meta, dict) else {}, wfile)


def load_for(record: RunRecord, results_root: str | Path, split: str = "test") -> SplitPredictions | None:
    """``record``'s predictions of ``split`` from the results folder ``results_root``, or None."""
    return ResultsStore(results_root).predictions(record, split)
