"""Per-image test predictions of a run, stored beside its record so that two runs can be paired.

Tables need only a run's accuracy; a reviewer's questions (is this difference real? where do the
VLM and the head disagree? is the gate calibrated?) need its per-image predictions. Every run that
reads the cache (VLM alone, baselines, distill heads, gates) writes them to
``<results>/artifacts/<run_id>/predictions.safetensors`` (no pickle), with tensors per split:

- ``<split>/rows``  int32: row indices in the cache's split order (with the split's manifest hash in
  the metadata, the identity of each image, so two runs pair on the same test rows);
- ``<split>/y``     int16: ground-truth class;
- ``<split>/pred``  int16: predicted class, -1 where the run gave no answer (unparsed VLM reply);
- ``<split>/prob``  float16 N x C: the run's class probabilities (softmax of logits, the VLM's
  one-hot), absent for runs that only predict a class (the oracle);
- extra ``<split>/<name>`` arrays a run adds: a gate stores its inputs' predictions (``vlm_pred``,
  ``distill_pred``) and, where its architecture has them, its per-image ``source_weights`` N x 2
  (distill, VLM).

The record names the file in ``artifacts["predictions"]``. A run hands them to
`ResultsStore.save` with its record; this module holds their type and file format only.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.errors import ConfigError

PRED_SPLITS = ("test",)


@dataclass
class SplitPredictions:
    """One split's per-image predictions (see the module docstring for each array)."""

    rows: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    prob: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.y = np.asarray(self.y, dtype=np.int64)
        self.pred = np.asarray(self.pred, dtype=np.int64)
        n = self.rows.shape[0]
        if self.y.shape != (n,) or self.pred.shape != (n,) or (self.prob is not None and self.prob.shape[0] != n):
            raise ConfigError(f"predictions: rows ({n}), labels {self.y.shape}, predictions {self.pred.shape} differ")

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.y

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def from_scores(y: np.ndarray, scores: np.ndarray, rows: np.ndarray | None, *, logits: bool,
                extra: Mapping[str, np.ndarray] | None = None) -> SplitPredictions:
    """Predictions from N x C scores as `vea_bench.metrics.split_metrics` reads them.

    ``logits=True`` turns scores into probabilities by softmax; otherwise they already are (the
    VLM's one-hot, an ensemble's mixture). An all-zero row predicts nothing (-1), as in the metrics.
    """
    s = np.asarray(scores, dtype=np.float64)
    pred = s.argmax(1)
    if not logits:
        pred = np.where(np.any(s != 0, axis=1), pred, -1)
    prob = softmax(s) if logits else s
    rows = np.arange(len(y)) if rows is None else rows
    return SplitPredictions(rows=rows, y=y, pred=pred, prob=prob, extra=dict(extra or {}))


def write_predictions(path: str | Path, preds: Mapping[str, SplitPredictions], meta: Mapping[str, Any]) -> Path:
    """Write ``preds`` to the safetensors file ``path``, ints as int16/int32, probabilities float16.

    The file is written in place; `ResultsStore.save` gives it a temporary name and renames it once
    complete, so a reader never sees half a file."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for split, p in preds.items():
        tensors[f"{split}/rows"] = p.rows.astype(np.int32)
        tensors[f"{split}/y"] = p.y.astype(np.int16)
        tensors[f"{split}/pred"] = p.pred.astype(np.int16)
        if p.prob is not None:
            tensors[f"{split}/prob"] = np.asarray(p.prob, dtype=np.float16)
        for k, v in p.extra.items():
            arr = np.asarray(v)
            tensors[f"{split}/{k}"] = arr.astype(np.float16 if arr.dtype.kind == "f" else np.int16)
    path = Path(path)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata={"meta": json.dumps(dict(meta), default=str)})
    return path


def read_predictions(path: str | Path) -> tuple[dict[str, SplitPredictions], dict[str, Any]]:
    """A predictions file: split -> predictions, and its metadata; an unreadable file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, safe_open

    path = Path(path)
    try:
        arrays = load_file(str(path))
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except (OSError, SafetensorError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable predictions file ({exc.__class__.__name__})") from None
    out: dict[str, SplitPredictions] = {}
    for split in sorted({k.split("/", 1)[0] for k in arrays}):
        a = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(split + "/")}
        if not {"rows", "y", "pred"} <= set(a):
            raise ConfigError(f"{path}: split '{split}' lacks rows, y or pred")
        prob = a.pop("prob", None)
        base = {k: a.pop(k) for k in ("rows", "y", "pred")}
        out[split] = SplitPredictions(prob=None if prob is None else prob.astype(np.float32),
                                      extra={k: (v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int64))
                                             for k, v in a.items()}, **base)
    return out, meta
