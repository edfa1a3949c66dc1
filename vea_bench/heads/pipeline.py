"""Stages 2 and 3 against the cache: distill heads and gates as batched runs, records and weights.

A *config* is one run (one seed); the functions take lists of configs and train every group of
compatible configs (same architecture, schedule and row count) as one batched model. A single
run is a list of one, so a sweep member and a single run follow exactly the same code path.

Schedules: ``default`` (``DEFAULT_SCHEDULE``) trains with mini-batches to convergence, each member
early-stopped on val with its best epoch restored, members batched together; ``reference`` reproduces the reference implementation's stages 2/3 (batch size 1, its learning
rates, the last epoch kept, gate fitted on train, one configuration at a time) for parity checks.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vea_bench.devices import torch_device
from vea_bench.errors import ConfigError
from vea_bench.heads.config import (  # noqa: F401  (the configs' home; re-exported for callers)
    CONFIGS,
    DEFAULT_BATCH,
    DEFAULT_FOLDS,
    DEFAULT_SCHEDULE,
    GATE_FITS,
    GATE_SOLVERS,
    LR_SCALINGS,
    PRECISION_CHOICES,
    REFERENCE,
    SCHEDULES,
    DistillConfig,
    GateConfig,
    apply_schedule,
    effective_lr,
    make_config,
)
from vea_bench.heads.data import HeadData
from vea_bench.heads.distill import DEFAULT_HEAD, HEADS, build_head, check_head, count_params
from vea_bench.heads.gates import GATES, build_gate, distill_vector, gate_display_name
from vea_bench.heads.losses import ce_objective, kd_objective
from vea_bench.heads.trainer import (
    MemberHistory,
    MemberHyper,
    SplitInputs,
    VmappedModules,
    batched_heads,
    build_member_modules,
    stream_seed,
    train_members,
)
from vea_bench.metrics import split_metrics
from vea_bench.progress import Progress
from vea_bench.results import PRED_SPLITS, ResultsStore, RunRecord, SplitPredictions, from_scores

log = logging.getLogger(__name__)

def resolve_precision(precision: str, device: str | torch.device | None) -> str:
    """``auto`` -> bf16 only on a CUDA device with bf16 support, else fp32.

    Why not bf16 on CPU: on a CPU without AVX512-BF16 bf16 GEMMs run slower than fp32 ones
    (`python benchmarks/heads.py` measures both), so ``auto`` keeps fp32 there.
    """
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"unknown --precision '{precision}' (choices: {', '.join(PRECISION_CHOICES)})")
    if precision != "auto":
        return precision
    dev = torch_device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


# ----------------------------------------------------------------------------- results

@dataclass
class HeadResult:
    """A trained member: its config, weights, per-split logits, metrics and how it converged."""

    kind: str
    config: Any
    state: dict[str, torch.Tensor]
    logits: dict[str, np.ndarray]
    metrics: dict[str, Any]
    params: int
    best_epoch: int
    train_loss: list[float]
    extra: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    convergence: dict[str, Any] = field(default_factory=dict)


def _to(x: np.ndarray | None, dev: torch.device) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to(dev)


def _metrics(data: HeadData, logits: dict[str, np.ndarray], tau: float) -> dict[str, Any]:
    out = {}
    for split, lg in logits.items():
        sa = data.splits[split]
        m = split_metrics(sa.y, lg, data.label_names, teacher_logits=sa.teacher, tau=tau)
        m.extra["excluded_rows"] = sa.excluded
        if sa.teacher is not None:
            m.extra["kl_tau"] = tau
        out[split] = asdict(m)
    return out


def convergence_info(h: MemberHistory, cfg: Any, *, precision: str = "fp32", solver: str = "adam",
                     select_split: str = "val") -> dict[str, Any]:
    """The record's account of how a run converged (small per-epoch arrays, the epoch kept and why)."""
    still = bool(h.val_loss) and h.best_val_epoch == h.epochs_run and h.stop_reason == "epoch budget reached"
    if not h.val_loss and h.train_loss:   # nothing to select on: judge by the training loss
        still = h.stop_reason == "epoch budget reached" and int(np.argmin(h.train_loss)) == len(h.train_loss) - 1
    return {
        "solver": solver, "precision": precision, "schedule": cfg.schedule,
        "max_epochs": h.max_epochs or cfg.epochs, "patience": h.patience if h.max_epochs else cfg.patience,
        "keep": cfg.keep, "select_split": select_split if h.val_loss else None,
        "monitor": f"{select_split} accuracy, ties broken by {select_split} loss" if h.val_loss else None,
        "epochs_run": h.epochs_run, "kept_epoch": h.kept_epoch, "kept_because": h.kept_because,
        "best_val_epoch": h.best_val_epoch or None, "stop_reason": h.stop_reason, "still_improving": still,
        "train_loss": [round(float(v), 6) for v in h.train_loss],
        "val_loss": [round(float(v), 6) for v in h.val_loss],
        "val_accuracy": [round(float(v), 6) for v in h.val_accuracy],
    }


def warn_convergence(label: str, conv: dict[str, Any]) -> None:
    """Log (not raise) what a reader of the numbers must know: a run cut short, a gate below its inputs."""
    if conv.get("still_improving"):
        log.warning("%s: still improving at its last epoch (%d of a %d-epoch budget); raise --epochs",
                    label, conv.get("epochs_run", 0), conv.get("max_epochs", 0))
    inp = conv.get("inputs_val_accuracy")
    gate_val = conv.get("gate_val_accuracy")
    if inp and gate_val is not None:
        name, best = max(inp.items(), key=lambda kv: kv[1])
        if gate_val < best:
            log.warning("%s: gate ends below its better input on val (%.2f %% vs %s alone %.2f %%)",
                        label, 100 * gate_val, name, 100 * best)


def head_precision(cfg: DistillConfig, device: str | torch.device | None) -> str:
    """The precision a head trains in: ``resolve_precision`` on the stacked MLP path; any other head
    trains in fp32 (``auto`` gives fp32, an explicit bf16 is refused by `batched_heads`)."""
    if hasattr(HEADS.get(cfg.head), "stacked_mlp") or cfg.precision != "auto":
        return resolve_precision(cfg.precision, device)
    return "fp32"


def _frozen(kwargs: dict[str, Any]) -> str:
    """A hashable, order-free key of head options (members with equal options batch together)."""
    return json.dumps(kwargs, sort_keys=True, default=str)


def _groups(items: Sequence[Any], key: Any) -> list[list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(key(it), []).append(i)
    return list(groups.values())


def train_distill(
    data: HeadData,
    configs: Sequence[DistillConfig],
    *,
    rows: Sequence[np.ndarray | None] | None = None,
    eval_splits: Sequence[str] | None = None,
    device: str | None = "cpu",
    progress: Progress | None = None,
) -> list[HeadResult]:
    """Train the heads of ``configs`` (``cfg.head`` through ``HEADS``); compatible ones as one batched model each.

    Members of one head, options, widths and schedule share a batched model: `batched_heads` gives
    the fast `StackedMLP` to heads that declare (and are verified to be) a plain MLP, vmap to any
    other. ``rows[i]`` restricts config i to those training rows (cross-fitting); ``eval_splits``
    defaults to every split but train (pass "train" too when a gate is fitted on it).
    """
    dev = torch_device(device)
    rows = list(rows) if rows is not None else [None] * len(configs)
    splits = list(eval_splits) if eval_splits is not None else data.eval_splits()
    tr = data.splits["train"]
    if tr.x is None or tr.teacher is None:
        raise ConfigError("distill training needs visual features and teacher logits")
    heads = [check_head(c.head, c.head_kwargs) for c in configs]
    precisions = [head_precision(c, dev) for c in configs]
    select = ["val"] if "val" in data.splits else []
    if any(c.keep == "best" for c in configs) and not select:
        raise ConfigError("the default schedule selects epochs on val, and this cache has no 'val' split; "
                          "use --keep last")
    inputs: dict[tuple[str, str], SplitInputs] = {}

    def split_inputs(s: str, precision: str) -> SplitInputs:
        # bf16 members read a bf16 copy of the features (half the memory traffic of each gather)
        key = (s, precision)
        if key not in inputs:
            sa = data.splits[s]
            x = _to(sa.x, dev)
            if precision == "bf16":
                x = x.to(torch.bfloat16)
            inputs[key] = SplitInputs([x], [False], _to(sa.y, dev), _to(sa.teacher, dev))
        return inputs[key]

    results: list[HeadResult | None] = [None] * len(configs)

    def key(i: int) -> Any:
        c = configs[i]
        n = len(tr) if rows[i] is None else len(rows[i])
        solo = i if c.schedule == "reference" else -1   # the reference runs one configuration at a time
        return (heads[i], _frozen(c.head_kwargs), tuple(c.hidden_dims), c.dropout, c.batch_size, c.epochs, c.keep,
                c.patience, c.early_stop, c.min_steps, precisions[i], n, solo)

    for idx in _groups(list(range(len(configs))), key):
        t0 = time.perf_counter()
        cfgs = [configs[i] for i in idx]
        c0 = cfgs[0]
        prec = precisions[idx[0]]
        members = build_member_modules(
            lambda: build_head(c0.head, data.input_dim, data.num_classes, c0.hidden_dims, depth=c0.depth,
                               dropout=c0.dropout, kwargs=c0.head_kwargs),
            [c.seed for c in cfgs])
        model = batched_heads(members, [c.seed for c in cfgs], dev, precision=prec)
        tr_rows = None
        if any(rows[i] is not None for i in idx):
            tr_rows = torch.stack([torch.as_tensor(rows[i] if rows[i] is not None else np.arange(len(tr)))
                                   for i in idx]).long()
        hyper = [MemberHyper(c.seed, c.effective_lr, c.weight_decay, c.alpha, c.tau) for c in cfgs]
        desc = f"{heads[idx[0]]} {c0.hidden_dims} x{len(cfgs)}"
        evals = {s: split_inputs(s, prec) for s in dict.fromkeys(select + splits)}
        out = train_members(model, split_inputs("train", prec), hyper, loss=kd_objective, epochs=c0.epochs,
                            batch_size=c0.batch_size, train_rows=tr_rows, evals=evals, keep=c0.keep,
                            patience=c0.patience, min_steps=c0.min_steps, early_stop=c0.early_stop,
                            progress=progress, desc=desc)
        wall = (time.perf_counter() - t0) / len(cfgs)
        n_params = count_params(members[0])
        for j, i in enumerate(idx):
            lg = {s: out.logits[s][j] for s in splits}
            h = out.history[j]
            conv = convergence_info(h, configs[i], precision=prec)
            res = HeadResult("distill", configs[i], out.states[j], lg, _metrics(data, lg, configs[i].tau),
                             n_params, out.best_epoch[j], list(h.train_loss), wall_time_s=wall, convergence=conv)
            results[i] = res
            _report_member(progress, res)
    return [r for r in results if r is not None]


def _report_member(progress: Progress | None, res: HeadResult) -> None:
    if progress is None:
        return
    info = {"member": member_label(res.config)}
    for s in ("val", "test"):
        if s in res.metrics:
            info[f"{s}_acc"] = float(res.metrics[s]["accuracy"])
    progress.advance(0, **info)


def member_label(cfg: Any) -> str:
    if isinstance(cfg, GateConfig):
        return f"{GATES.canonical(cfg.gate)} fit={cfg.gate_fit} seed={cfg.seed}"
    head = HEADS.canonical(cfg.head)
    shown = "" if head == DEFAULT_HEAD else f"head={head} "
    return f"{shown}depth={cfg.depth} alpha={cfg.alpha:g} lr={cfg.lr:g} seed={cfg.seed}"


def fold_rows(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified K-fold assignment of training rows (held-out rows per fold), from the seed."""
    rng = np.random.default_rng(stream_seed(seed, "folds"))
    assign = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        start = int(rng.integers(folds))
        assign[idx] = (np.arange(len(idx)) + start) % folds
    return [np.flatnonzero(assign == k) for k in range(folds)]


def crossfit_train_logits(
    data: HeadData, cfgs: Sequence[DistillConfig], folds: int, *, device: str | None, progress: Progress | None,
) -> list[np.ndarray]:
    """Out-of-fold distill logits on train for each config: K heads per config, each blind to its fold."""
    y = data.splits["train"].y
    n = len(y)
    fold_cfgs, fold_rows_list, owners = [], [], []
    for ci, c in enumerate(cfgs):
        for held in fold_rows(y, folds, c.seed):
            fold_cfgs.append(c)
            fold_rows_list.append(np.setdiff1d(np.arange(n), held))
            owners.append((ci, held))
    res = train_distill(data, fold_cfgs, rows=fold_rows_list, eval_splits=["train"], device=device, progress=progress)
    out = [np.zeros((n, data.num_classes), dtype=np.float32) for _ in cfgs]
    for r, (ci, held) in zip(res, owners):
        out[ci][held] = r.logits["train"][held]
    return out


def gate_inputs(
    data: HeadData, distill: Sequence[HeadResult], gate_fit: str, folds: int, *, device: str | None,
    progress: Progress | None,
) -> list[dict[str, np.ndarray]]:
    """The gate's v1 (distill logits) per split for each distill head, honest to ``gate_fit``."""
    outs = [dict(r.logits) for r in distill]
    if gate_fit == "crossfit":
        oof = crossfit_train_logits(data, [r.config for r in distill], folds, device=device, progress=progress)
        for o, lg in zip(outs, oof):
            o["train"] = lg
    return outs


def _input_accuracy(v: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of one gate input alone: its argmax (an all-zero VLM row, an unparsed answer, is wrong)."""
    ok = (v.argmax(1) == y) & (np.abs(v).sum(1) > 0)
    return float(ok.mean()) if len(y) else float("nan")


def fit_concat_lbfgs(v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, weight_decay: float,
                     *, max_iter: int = 1000, tol: float = 1e-5) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The Concat & Linear gate fitted exactly: full-batch L-BFGS on mean CE + (wd / 2) * ||params||^2.

    Why: the gate is multinomial logistic regression on ``[v1, v2]``, a convex problem with one
    optimum (strictly convex for wd > 0), so no lr, epochs, batch or init matter; fp64 for a tight
    optimum. The L2 term is what Adam's L2 weight decay ``wd`` adds to the gradient.
    """
    x = torch.cat([v1, v2], dim=-1).double()
    c = int(v1.shape[-1])
    w = torch.zeros(c, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    # runs until the gradient is far below ``tol`` (or the objective stops changing in fp64);
    # "converged" is then judged against ``tol`` on the max-abs gradient
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol * 1e-2, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")
    losses: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ w.t() + b
        loss = torch.nn.functional.cross_entropy(z, y) + 0.5 * weight_decay * (w.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    opt.step(closure)
    gnorm = float(torch.cat([w.grad.reshape(-1), b.grad.reshape(-1)]).abs().max())
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    reason = (f"converged: max |gradient| {gnorm:.2e} <= {tol:g}" if gnorm <= tol
              else f"stopped after {n_iter} L-BFGS iterations (max |gradient| {gnorm:.2e}, tolerance {tol:g})")
    state = {"fc.weight": w.detach().float().contiguous(), "fc.bias": b.detach().float().contiguous()}
    return state, {"iterations": n_iter, "function_evals": len(losses), "objective": losses[-1] if losses else None,
                   "max_abs_gradient": gnorm, "stop_reason": reason}


def train_gates(
    data: HeadData,
    configs: Sequence[GateConfig],
    v1: Sequence[dict[str, np.ndarray]],
    *,
    device: str | None = "cpu",
    progress: Progress | None = None,
    tau: float = 1.0,
) -> list[HeadResult]:
    """Train gates for ``configs`` (config i over distill logits ``v1[i]``), one batched model per gate type."""
    dev = torch_device(device)
    if data.splits["train"].vlm is None:
        raise ConfigError("gate training needs the VLM source")
    results: list[HeadResult | None] = [None] * len(configs)
    c = data.num_classes
    splits = list(data.splits)

    def key(i: int) -> Any:
        g = configs[i]
        solo = i if g.schedule == "reference" or g.solver == "lbfgs" else -1
        return (GATES.canonical(g.gate), g.batch_size, g.epochs, g.keep, g.patience, g.early_stop, g.gate_fit,
                g.solver, solo)

    for idx in _groups(list(range(len(configs))), key):
        t0 = time.perf_counter()
        cfgs = [configs[i] for i in idx]
        g0 = cfgs[0]
        if g0.gate_fit == "val" and "val" not in data.splits:
            raise ConfigError("--gate-fit val needs a 'val' split in the cache")
        if g0.keep == "best" and "val" not in data.splits:
            raise ConfigError("the default schedule selects epochs on val, and this cache has no 'val' split; "
                              "use --keep last")
        inputs = {}
        for s in splits:
            sa = data.splits[s]
            v1s = np.stack([distill_vector(v1[i][s], configs[i].distill_input) for i in idx])
            inputs[s] = SplitInputs([_to(v1s, dev), _to(sa.vlm, dev)], [True, False], _to(sa.y, dev), None)
        fit = "val" if g0.gate_fit == "val" else "train"
        seeds = [g.seed for g in cfgs]
        mods = build_member_modules(lambda: build_gate(g0.gate, c), seeds, stream="gate-init")
        model = VmappedModules(mods, dev, dropout_seeds=seeds, dropout_stream="gate-dropout")
        if g0.solver == "lbfgs":
            sp = inputs[fit]
            state, info = fit_concat_lbfgs(sp.tables[0][0].cpu(), sp.tables[1].cpu(), sp.y.cpu(), g0.weight_decay)
            mods[0].load_state_dict(state)
            model = VmappedModules(mods, dev, dropout_seeds=seeds, dropout_stream="gate-dropout")
            logits = {s: model.forward(inputs[s].gather(torch.arange(len(inputs[s]), device=dev), 1), train=False)
                      .detach().float().cpu().numpy() for s in splits}
            hist = [MemberHistory(kept_epoch=0, kept_because="exact optimum (L-BFGS)", stop_reason=info["stop_reason"])]
            out_states, out_logits, best = [state], logits, [0]
        else:
            hyper = [MemberHyper(g.seed, g.effective_lr, g.weight_decay) for g in cfgs]
            evals = dict(inputs)
            out = train_members(model, inputs[fit], hyper, loss=ce_objective, epochs=g0.epochs, batch_size=g0.batch_size,
                                evals=evals, keep=g0.keep, patience=g0.patience, early_stop=g0.early_stop,
                                order_stream="gate-order",
                                select_split="val", progress=progress, desc=f"gate {GATES.canonical(g0.gate)} x{len(cfgs)}")
            hist, out_states, out_logits, best = out.history, out.states, out.logits, out.best_epoch
        wall = (time.perf_counter() - t0) / len(cfgs)
        n_params = count_params(mods[0])
        for j, i in enumerate(idx):
            lg = {s: out_logits[s][j] for s in splits}
            h = hist[j]
            conv = convergence_info(h, configs[i], solver=g0.solver)
            if g0.solver == "lbfgs":
                conv.update(lbfgs=info, still_improving=False)
            if "val" in data.splits:
                va = data.splits["val"]
                conv["inputs_val_accuracy"] = {"distill": _input_accuracy(v1[i]["val"], va.y),
                                               "vlm": _input_accuracy(va.vlm, va.y)}
                conv["gate_val_accuracy"] = float((lg["val"].argmax(1) == va.y).mean())
            res = HeadResult("gate", configs[i], out_states[j], lg, _metrics(data, lg, tau), n_params, best[j],
                             list(h.train_loss), wall_time_s=wall, convergence=conv)
            results[i] = res
            _report_member(progress, res)
    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------- records

def gate_source_weights(gate: str, num_classes: int, state: dict[str, Any], v1: np.ndarray,
                        v2: np.ndarray, *, distill_input: str) -> np.ndarray | None:
    """Per-image weights (distill, VLM) of a gate whose architecture weighs its two sources, else None.

    ``v1`` is the distill head's raw logits; ``distill_input`` (the gate's config) says what the gate
    read from them, so it is required: a gate trained on log-probs weighs them, not the logits.

    The gate class says what its weights are (`Gate.source_weights`), so a new gate shows them
    without an edit here.
    """
    g = build_gate(gate, num_classes)
    g.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    a = torch.from_numpy(distill_vector(v1, distill_input))
    b = torch.from_numpy(np.asarray(v2, dtype=np.float32))
    with torch.no_grad():
        w = g.source_weights(a, b)
    return None if w is None else w.numpy()


def head_predictions(data: HeadData, res: HeadResult, distill: HeadResult | None = None) -> dict[str, SplitPredictions]:
    """A distill head's or gate's per-image predictions (from its `HeadResult`), split -> predictions.

    For a gate, also its inputs' predictions (the VLM's answer and the distill head's) and, where
    the gate has them, its source weights: Figure 4 reads all of them from the gate's file.
    """
    preds: dict[str, SplitPredictions] = {}
    for split in PRED_SPLITS:
        sa = data.splits.get(split)
        lg = res.logits.get(split) if isinstance(res.logits, dict) else None
        if sa is None or lg is None:
            continue
        extra: dict[str, np.ndarray] = {}
        if res.kind == "gate" and sa.vlm is not None:
            vlm = np.asarray(sa.vlm)
            extra["vlm_pred"] = np.where(np.any(vlm != 0, axis=1), vlm.argmax(1), -1)
            v1 = distill.logits.get(split) if distill is not None else None
            if v1 is not None:
                extra["distill_pred"] = np.asarray(v1).argmax(1)
                w = gate_source_weights(res.config.gate, len(data.label_names), res.state, v1, vlm,
                                        distill_input=res.config.distill_input)
                if w is not None:
                    extra["source_weights"] = w
        preds[split] = from_scores(sa.y, lg, sa.rows, logits=True, extra=extra)
    return preds


def _lineage(data: HeadData) -> dict[str, Any]:
    """The splits a head was trained on, so reusing it elsewhere can be checked (`vea_bench.lineage`)."""
    from vea_bench.lineage import of_provenance

    return of_provenance(data.provenance).to_dict()


def distill_arch(data: HeadData, cfg: DistillConfig) -> dict[str, Any]:
    return {"head": HEADS.canonical(cfg.head), "head_kwargs": dict(cfg.head_kwargs), "in_dim": data.input_dim,
            "num_classes": data.num_classes,
            "hidden_dims": cfg.hidden_dims, "dropout": cfg.dropout}


def distill_record(data: HeadData, res: HeadResult, *, results_dir: str | Path, group: str | None = None,
                   device: str | None = None) -> RunRecord:
    """Write the run record and safetensors weights of a distill head; returns the saved record.

    Its variant is the head's registry name (``config["head"]`` may spell an alias).
    """
    cfg: DistillConfig = res.config
    config = {**cfg.to_dict(), "visual": data.sources.get("visual"), "teacher": data.sources.get("teacher"),
              "input_dim": data.input_dim, "num_classes": data.num_classes, "device": device,
              "kept_epoch": "best-on-val" if cfg.keep == "best" else "last",
              "precision": res.convergence.get("precision", cfg.precision), "precision_requested": cfg.precision}
    rec = RunRecord(kind="distill", method="distill", variant=HEADS.canonical(cfg.head), dataset=data.dataset,
                    config=config, metrics=res.metrics, seed=cfg.seed, params=res.params, group=group, label_names=list(data.label_names),
                    cache=data.provenance, wall_time_s=res.wall_time_s, convergence=res.convergence or None)
    ResultsStore(results_dir).save(
        rec, weights={"distill": res.state}, predictions=head_predictions(data, res),
        weights_config={"run_id": rec.run_id, "distill": distill_arch(data, cfg), "config": config,
                        "data": _lineage(data)})
    return rec


def gate_record(data: HeadData, res: HeadResult, distill: HeadResult | None, *, results_dir: str | Path,
                group: str | None = None, distill_run: str | None = None, device: str | None = None) -> RunRecord:
    """Write the record of a gate run (method "EmoVLM-KD", variant the gate's registry name), with gate and
    distill weights; ``params`` counts the gate alone (the distill head has its own record)."""
    cfg: GateConfig = res.config
    dcfg = distill.config.to_dict() if distill is not None else {}
    config = {**cfg.to_dict(), "gate": GATES.canonical(cfg.gate), "gate_display": gate_display_name(cfg.gate),
              "vlm": data.sources.get("vlm"), "visual": data.sources.get("visual"),
              "teacher": data.sources.get("teacher"), "num_classes": data.num_classes, "device": device,
              "distill": dcfg, "distill_run": distill_run,
              "depth": dcfg.get("depth"), "hidden_dims": dcfg.get("hidden_dims"), "alpha": dcfg.get("alpha"),
              "tau": dcfg.get("tau"), "kept_epoch": "best-on-val" if cfg.keep == "best" else "last"}
    if cfg.gate_fit == "val":
        config["note"] = "gate fitted on val: val metrics are in-sample; read test"
    rec = RunRecord(kind="gate", method="EmoVLM-KD", variant=GATES.canonical(cfg.gate), dataset=data.dataset,
                    config=config, metrics=res.metrics, seed=cfg.seed, params=res.params, group=group, label_names=list(data.label_names),
                    cache=data.provenance, wall_time_s=res.wall_time_s, convergence=res.convergence or None)
    weights = {"gate": res.state}
    arch: dict[str, Any] = {"gate": {"name": GATES.canonical(cfg.gate), "num_classes": data.num_classes}}
    if distill is not None:
        weights["distill"] = distill.state
        arch["distill"] = distill_arch(data, distill.config)
    ResultsStore(results_dir).save(rec, weights=weights, predictions=head_predictions(data, res, distill),
                                   weights_config={"run_id": rec.run_id, **arch, "config": config,
                                                   "data": _lineage(data)})
    return rec


# ----------------------------------------------------------------------------- reuse saved heads

def load_distill_run(ref: str | Path, results_dir: str | Path, data: HeadData) -> HeadResult:
    """A saved distill head (a run id under ``<results>/artifacts`` or its folder), checked against the cache."""
    from safetensors.torch import load_file

    from vea_bench import lineage

    saved = ResultsStore(results_dir).weights(ref, "distill")
    p, meta = saved.folder, saved.meta

    # A head trained on another split of this dataset has seen this cache's test rows: refused.
    lineage.check_head(p, lineage.head_lineage(p, meta, results_dir), lineage.of_provenance(data.provenance))
    arch = meta.get("distill") or {}
    if arch.get("in_dim") != data.input_dim or arch.get("num_classes") != data.num_classes:
        raise ConfigError(f"{p}: head of input {arch.get('in_dim')} x {arch.get('num_classes')} classes does not "
                          f"fit this cache's {data.input_dim} x {data.num_classes}")
    cfg_d = dict(meta.get("config") or {})
    known = set(DistillConfig.__dataclass_fields__)
    cfg = DistillConfig(**{k: v for k, v in cfg_d.items() if k in known and k != "effective_lr"})
    head = build_head(arch.get("head", DEFAULT_HEAD), arch["in_dim"], arch["num_classes"], arch["hidden_dims"],
                      dropout=arch["dropout"], kwargs=arch.get("head_kwargs") or {})   # old records: the default head
    head.load_state_dict(load_file(str(saved.path)))
    head.eval()
    logits = {}
    with torch.no_grad():
        for s, sa in data.splits.items():
            logits[s] = head(torch.from_numpy(sa.x)).numpy() if sa.x is not None else None
    return HeadResult("distill", cfg, head.state_dict(), logits, _metrics(data, logits, cfg.tau),
                      count_params(head), -1, [], extra={"run_id": meta.get("run_id"), "dir": str(p)})
