"""Linear probes on every visual and backbone source: what the features alone support.

Multinomial logistic regressions fitted full-batch with L-BFGS (deterministic: zero init, fixed
iterations, standardised features, L2 penalty) -- closed-form enough to need no seed and no
learning rate.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from vea_bench.cache.store import FeatureCache
from vea_bench.heads.baselines.base import BASELINES, Baseline, BaselineContext
from vea_bench.heads.data import _check_finite
from vea_bench.metrics import split_metrics
from vea_bench.results import PRED_SPLITS, RunOutput, from_scores


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


@BASELINES.register("probes")
class LinearProbes(Baseline):
    """One record per source (``probe:<kind>/<key>``), each fitted on train."""

    needs = ("features",)
    missing = "no visual or backbone source"

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        cache = ctx.cache
        sources = [("visual", k) for k in ([ctx.visual] if ctx.visual else cache.source_keys("visual"))]
        sources += [("backbone", k) for k in (list(ctx.backbones) if ctx.backbones else cache.source_keys("backbone"))]
        c, names = cache.num_classes, cache.label_names
        outs = []
        for kind, key in sources:
            t0 = time.perf_counter()
            cache.resolve_key(kind, key)
            feats = _feature_splits(cache, kind, key)
            xtr, ytr, _ = feats["train"]
            params = fit_linear_probe(xtr, ytr, c, l2=ctx.probe_l2, max_iter=ctx.probe_iters, device=ctx.device)
            mets = {s: split_metrics(yy, probe_logits(xx, params), names) for s, (xx, yy, _) in feats.items()}
            cfg = {"source": f"{kind}/{key}", "solver": "lbfgs-softmax-regression", "l2": ctx.probe_l2,
                   "max_iter": ctx.probe_iters, "standardised": True, "fit_split": "train"}
            preds = {s: from_scores(yy, probe_logits(xx, params), rr, logits=True)
                     for s, (xx, yy, rr) in feats.items() if s in PRED_SPLITS}
            outs.append(ctx.output("baseline", f"probe:{kind}/{key}", cfg, mets, t0=t0,
                                   params=int(xtr.shape[1] * c + c), predictions=preds))
        return outs
