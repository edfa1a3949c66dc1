"""Cheap baselines from the cache: each source alone, linear probes, the costly ensemble, the oracle.

They bound EmoVLM-KD from both sides: the VLM alone and the teacher alone are what the gate must
beat; the VLM + teacher ensemble is the run-both alternative the paper avoids; the oracle (right
when either source is right) is the ceiling of any fusion of the two; the complementarity counts
are the paper's Figure 1.

Linear probes are multinomial logistic regressions fitted full-batch with L-BFGS (deterministic:
zero init, fixed iterations, standardised features, L2 penalty) -- closed-form enough to need no
seed and no learning rate.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.cache.store import FeatureCache
from vea_bench.errors import CacheError, ConfigError
from vea_bench.heads.data import HeadData, _check_finite, load_head_data
from vea_bench.metrics import split_metrics
from vea_bench.progress import Progress, ensure
from vea_bench.records import RunRecord, SplitMetrics
from vea_bench.report.predictions import PRED_SPLITS, SplitPredictions, attach, from_scores

log = logging.getLogger(__name__)

BASELINES = ("vlm", "teacher", "distill", "probes", "ensemble", "oracle", "complementarity")
ENSEMBLE_GRID = tuple(round(0.05 * k, 2) for k in range(21))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def complementarity_counts(y: np.ndarray, teacher_pred: np.ndarray, vlm_onehot: np.ndarray) -> dict[str, int]:
    """Figure 1: images only the teacher gets right, only the VLM, both, neither (unparsed = wrong)."""
    vlm_ok = (vlm_onehot.sum(1) > 0) & (vlm_onehot.argmax(1) == y)
    t_ok = teacher_pred == y
    return {"teacher_only": int((t_ok & ~vlm_ok).sum()), "vlm_only": int((~t_ok & vlm_ok).sum()),
            "both": int((t_ok & vlm_ok).sum()), "neither": int((~t_ok & ~vlm_ok).sum())}


def oracle_predictions(y: np.ndarray, teacher_pred: np.ndarray, vlm_onehot: np.ndarray) -> np.ndarray:
    """Right whenever the teacher or the VLM is right; otherwise the teacher's (wrong) answer."""
    vlm_ok = (vlm_onehot.sum(1) > 0) & (vlm_onehot.argmax(1) == y)
    return np.where((teacher_pred == y) | vlm_ok, y, teacher_pred)


def ensemble_scores(teacher_logits: np.ndarray, vlm_vec: np.ndarray, weight: float) -> np.ndarray:
    """``w * softmax(teacher) + (1 - w) * vlm`` (one-hot or normalised VLM probabilities)."""
    return weight * _softmax(teacher_logits) + (1.0 - weight) * np.asarray(vlm_vec, dtype=np.float64)


def pick_ensemble_weight(y: np.ndarray, teacher_logits: np.ndarray, vlm_vec: np.ndarray,
                         grid: Sequence[float] = ENSEMBLE_GRID) -> float:
    """The teacher weight with the best accuracy on the given split (first of ties)."""
    accs = [float((ensemble_scores(teacher_logits, vlm_vec, w).argmax(1) == y).mean()) for w in grid]
    return float(grid[int(np.argmax(accs))])


def fit_linear_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float = 1e-4, max_iter: int = 100,
                     device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Softmax regression by full-batch L-BFGS on standardised features: (W, b, mean, std)."""
    import torch

    xt = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(device)
    mean = xt.mean(0)
    std = xt.std(0).clamp_min(1e-6)
    xs = (xt - mean) / std
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    w = torch.zeros(xs.shape[1], num_classes, device=device, requires_grad=True)
    b = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w.detach().cpu().numpy(), b.detach().cpu().numpy(), mean.cpu().numpy(), std.cpu().numpy())


def probe_logits(x: np.ndarray, params: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    w, b, mean, std = params
    return ((np.asarray(x, dtype=np.float32) - mean) / std) @ w + b


def _feature_splits(cache: FeatureCache, kind: str, key: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    field = {"visual": "emb", "backbone": "feat"}[kind]
    out = {}
    for split in cache.splits:
        d = cache.read(kind, key, split, [field])
        _check_finite(cache, f"{kind}/{key}", split, d[field], d.valid)
        rows = np.flatnonzero(d.valid)
        out[split] = (np.asarray(d[field][rows], dtype=np.float32), cache.labels(split)[rows], rows)
    return out


def _record(kind: str, method: str, cache_prov: dict[str, Any], dataset: str, labels: list[str],
            config: dict[str, Any], metrics: dict[str, SplitMetrics], *, params: int | None = None,
            t0: float, preds: dict[str, Any] | None = None) -> RunRecord:
    rec = RunRecord(kind=kind, method=method, dataset=dataset, config=config,
                    metrics={s: asdict(m) for s, m in metrics.items()}, params=params, label_names=labels,
                    cache=cache_prov, wall_time_s=time.perf_counter() - t0)
    attach(rec, preds or {})  # per-image test predictions, written beside the record when it is saved
    return rec


def run_baselines(
    cache: FeatureCache,
    *,
    only: Sequence[str] | None = None,
    vlm: str | None = None,
    teacher: str | None = None,
    visual: str | None = None,
    backbones: Sequence[str] | None = None,
    vlm_input: str = "onehot",
    distill: Any | None = None,
    distill_data: HeadData | None = None,
    probe_l2: float = 1e-4,
    probe_iters: int = 100,
    device: str = "cpu",
    progress: Progress | None = None,
) -> tuple[list[RunRecord], list[str]]:
    """All baselines the cache's sources allow; returns the (unsaved) records and what was skipped, with why.

    A baseline whose source kind is absent is skipped; a key the user named that does not exist is
    a one-line error. ``distill`` is a `HeadResult` of a saved distill head (see `load_distill_run`).
    """
    want = list(only) if only else list(BASELINES)
    unknown = [w for w in want if w not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown} (choices: {', '.join(BASELINES)})")
    progress = ensure(progress)
    prov, ds, names, c = cache.provenance(), cache.dataset, cache.label_names, cache.num_classes
    records: list[RunRecord] = []
    skipped: list[str] = []
    have = {k: bool(cache.source_keys(k)) or key is not None
            for k, key in (("vlm", vlm), ("teacher", teacher), ("visual", visual), ("backbone", None))}
    feasible = {"vlm": have["vlm"], "teacher": have["teacher"], "distill": distill is not None,
                "probes": have["visual"] or have["backbone"], "ensemble": have["vlm"] and have["teacher"],
                "oracle": have["vlm"] and have["teacher"], "complementarity": have["vlm"] and have["teacher"]}
    if not any(feasible[w] for w in want):
        raise CacheError(f"{cache.path}: no baseline could run: {', '.join(want)} need sources the cache lacks "
                         f"(has: {', '.join(s.name for s in cache.sources()) or 'none'})")
    progress.start("baselines", total=len(want))

    pair: HeadData | None = None
    need_pair = [w for w in want if w in ("ensemble", "oracle", "complementarity")]
    if need_pair and have["vlm"] and have["teacher"]:
        pair = load_head_data(cache, vlm=vlm, teacher=teacher, need=("teacher", "vlm"), vlm_input=vlm_input)
    for w in need_pair:
        if pair is None:
            skipped.append(f"{w}: needs both a vlm and a teacher source")

    for w in want:
        t0 = time.perf_counter()
        if w == "vlm":
            if not have["vlm"]:
                skipped.append("vlm: no vlm source")
            else:
                d = pair if pair is not None else load_head_data(cache, vlm=vlm, need=("vlm",), vlm_input="onehot")
                src = d.sources["vlm"]
                if pair is not None and vlm_input != "onehot":
                    d = load_head_data(cache, vlm=vlm, need=("vlm",), vlm_input="onehot")
                mets = {s: split_metrics(sa.y, sa.vlm, names) for s, sa in d.splits.items()}
                # The VLM alone is Table 1's zero-shot / instruction-tuned row and Table 2's row (1):
                # a "vlm-eval" record, tuned when its source was extracted with a LoRA adapter.
                vprov = cache.source("vlm", src.split("/", 1)[-1]).provenance
                cfg = {"source": src, "input": "onehot", "tuned": bool(vprov.get("adapter")),
                       "backend": vprov.get("backend"), "model": vprov.get("model")}
                records.append(_record("vlm-eval", "VLM", prov, ds, names, cfg, mets, t0=t0,
                                       preds={s: from_scores(sa.y, sa.vlm, sa.rows, logits=False)
                                              for s, sa in d.splits.items() if s in PRED_SPLITS}))
        elif w == "teacher":
            if not have["teacher"]:
                skipped.append("teacher: no teacher source")
            else:
                d = pair if pair is not None else load_head_data(cache, teacher=teacher, need=("teacher",))
                mets = {s: split_metrics(sa.y, sa.teacher, names, teacher_logits=sa.teacher)
                        for s, sa in d.splits.items()}
                records.append(_record("baseline", "teacher", prov, ds, names, {"source": d.sources["teacher"]},
                                       mets, t0=t0, preds={s: from_scores(sa.y, sa.teacher, sa.rows, logits=True)
                                                           for s, sa in d.splits.items() if s in PRED_SPLITS}))
        elif w == "distill":
            if distill is None or distill_data is None:
                skipped.append("distill: pass --distill RUN_ID to evaluate a saved distill head")
            else:
                mets = {s: SplitMetrics(**m) for s, m in distill.metrics.items()}
                records.append(_record("baseline", "distill", prov, ds, names,
                                       {**distill.config.to_dict(), "distill_run": distill.extra.get("run_id"),
                                        "visual": distill_data.sources.get("visual")},
                                       mets, params=distill.params, t0=t0,
                                       preds={s: from_scores(sa.y, distill.logits[s], sa.rows, logits=True)
                                              for s, sa in distill_data.splits.items()
                                              if s in PRED_SPLITS and distill.logits.get(s) is not None}))
        elif w == "probes":
            sources = [("visual", k) for k in ([visual] if visual else cache.source_keys("visual"))]
            bkeys = list(backbones) if backbones else cache.source_keys("backbone")
            sources += [("backbone", k) for k in bkeys]
            if not sources:
                skipped.append("probes: no visual or backbone source")
            for kind, key in sources:
                t1 = time.perf_counter()
                cache.resolve_key(kind, key)
                feats = _feature_splits(cache, kind, key)
                xtr, ytr, _ = feats["train"]
                params = fit_linear_probe(xtr, ytr, c, l2=probe_l2, max_iter=probe_iters, device=device)
                mets = {s: split_metrics(yy, probe_logits(xx, params), names) for s, (xx, yy, _) in feats.items()}
                cfg = {"source": f"{kind}/{key}", "solver": "lbfgs-softmax-regression", "l2": probe_l2,
                       "max_iter": probe_iters, "standardised": True, "fit_split": "train"}
                records.append(_record("baseline", f"probe:{kind}/{key}", prov, ds, names, cfg, mets,
                                       params=int(xtr.shape[1] * c + c), t0=t1,
                                       preds={s: from_scores(yy, probe_logits(xx, params), rr, logits=True)
                                              for s, (xx, yy, rr) in feats.items() if s in PRED_SPLITS}))
        elif w == "ensemble" and pair is not None:
            sel = "val" if "val" in pair.splits else "train"
            sv = pair.splits[sel]
            weight = pick_ensemble_weight(sv.y, sv.teacher, sv.vlm)
            mets = {s: split_metrics(sa.y, ensemble_scores(sa.teacher, sa.vlm, weight), names)
                    for s, sa in pair.splits.items()}
            cfg = {"teacher": pair.sources["teacher"], "vlm": pair.sources["vlm"], "vlm_input": vlm_input,
                   "teacher_weight": weight, "weight_picked_on": sel, "rule": "w*softmax(teacher)+(1-w)*vlm"}
            records.append(_record("baseline", "ensemble", prov, ds, names, cfg, mets, t0=t0,
                                   preds={s: from_scores(sa.y, ensemble_scores(sa.teacher, sa.vlm, weight), sa.rows,
                                                         logits=False)
                                          for s, sa in pair.splits.items() if s in PRED_SPLITS}))
        elif w == "oracle" and pair is not None:
            onehots = load_head_data(cache, vlm=vlm, teacher=teacher, need=("teacher", "vlm"), vlm_input="onehot")
            mets = {s: split_metrics(sa.y, oracle_predictions(sa.y, sa.teacher.argmax(1), sa.vlm), names)
                    for s, sa in onehots.splits.items()}
            cfg = {"teacher": onehots.sources["teacher"], "vlm": onehots.sources["vlm"], "rule": "teacher or vlm right"}
            records.append(_record("baseline", "oracle", prov, ds, names, cfg, mets, t0=t0,
                                   preds={s: SplitPredictions(sa.rows, sa.y,
                                                              oracle_predictions(sa.y, sa.teacher.argmax(1), sa.vlm))
                                          for s, sa in onehots.splits.items() if s in PRED_SPLITS}))
        elif w == "complementarity" and pair is not None:
            onehots = load_head_data(cache, vlm=vlm, teacher=teacher, need=("teacher", "vlm"), vlm_input="onehot")
            mets = {}
            for s, sa in onehots.splits.items():
                counts = complementarity_counts(sa.y, sa.teacher.argmax(1), sa.vlm)
                n = max(1, len(sa))
                mets[s] = SplitMetrics(accuracy=(n - counts["neither"]) / n if len(sa) else float("nan"), n=len(sa),
                                       extra=dict(counts))
            cfg = {"teacher": onehots.sources["teacher"], "vlm": onehots.sources["vlm"]}
            records.append(_record("complementarity", "complementarity", prov, ds, names, cfg, mets, t0=t0))
        progress.advance(1, baseline=w)
    progress.finish()
    if not records:
        raise CacheError(f"{cache.path}: no baseline could run ({'; '.join(skipped)})")
    for s in skipped:
        log.info("skipped %s", s)
    return records, skipped


def save_records(records: Sequence[RunRecord], results_dir: str | Path) -> list[Path]:
    return [r.save(results_dir) for r in records]
