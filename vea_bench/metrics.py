"""Classification metrics shared by every stage, so that all tables compare like with like."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vea_bench.results import SplitMetrics


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C counts, rows = truth, columns = prediction."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Macro-averaged F1 over classes present in truth or prediction."""
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(0).astype(np.float64)
    true = cm.sum(1).astype(np.float64)
    denom = pred + true
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def kl_divergence(teacher_logits: np.ndarray, student_logits: np.ndarray, tau: float = 1.0) -> float:
    """Batch-mean KL(p_teacher^tau || p_student^tau), the divergence the paper's Figure 3 plots."""
    t = np.asarray(teacher_logits, dtype=np.float64) / tau
    s = np.asarray(student_logits, dtype=np.float64) / tau
    t = t - t.max(1, keepdims=True)
    s = s - s.max(1, keepdims=True)
    log_pt = t - np.log(np.exp(t).sum(1, keepdims=True))
    log_ps = s - np.log(np.exp(s).sum(1, keepdims=True))
    return float((np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean())


def split_metrics(
    y_true: np.ndarray,
    scores_or_pred: np.ndarray,
    label_names: Sequence[str],
    *,
    teacher_logits: np.ndarray | None = None,
    tau: float = 1.0,
) -> SplitMetrics:
    """Accuracy, macro-F1, per-class accuracy, confusion matrix and (optionally) KL to the teacher.

    ``scores_or_pred`` is N x C scores (argmax taken; ties go to the lowest index) or N predictions.
    An all-zero score row (the paper's unparsed VLM answer) predicts nothing and counts as wrong.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    c = len(label_names)
    s = np.asarray(scores_or_pred)
    if s.ndim == 2:
        pred = s.argmax(1)
        none = ~np.any(s != 0, axis=1)
        pred = np.where(none, -1, pred)
    else:
        pred = s.astype(np.int64)
    n = int(y_true.size)
    correct = pred == y_true
    valid = pred >= 0
    cm = confusion(y_true[valid], pred[valid], c)
    per_class = {
        name: float(correct[y_true == i].mean()) if (y_true == i).any() else float("nan")
        for i, name in enumerate(label_names)
    }
    kl = None
    if teacher_logits is not None and s.ndim == 2:
        kl = kl_divergence(teacher_logits, s, tau)
    return SplitMetrics(
        accuracy=float(correct.mean()) if n else float("nan"),
        macro_f1=macro_f1(cm),
        n=n,
        per_class=per_class,
        confusion=cm.tolist(),
        kl_to_teacher=kl,
        extra={"unanswered": int((~valid).sum())} if (~valid).any() else {},
    )
